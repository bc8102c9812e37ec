//! The datapath programs run on test packets with BPF_PROG_TEST_RUN, fixture style: input bytes
//! and map state → expected action, output bytes and counters.

use etherparse::{EtherType, IpNumber, Ipv4Header, PacketBuilder};
use gre_common::{drop, maps::TunnelStats};
use gre_tests::fixture::*;

#[test]
fn decap_keyed_ipv4_inner() {
    let Some(mut f) = setup("decap_keyed_ipv4_inner") else { return };
    let inner = inner_v4(63);
    let input = outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY), &inner]));
    let (action, out) = f.decap(&input);
    assert_eq!(action, XDP_REDIRECT);
    let expected = cat(&[&eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV4), &inner]);
    assert_eq!(out, expected);
    let s = f.stats(0);
    assert_eq!((s.rx_packets, s.rx_bytes, s.tx_packets), (1, inner.len() as u64, 0));
    assert_eq!(f.stats(1), TunnelStats::default());
    assert!(f.drops().iter().all(|d| *d == 0));
}

#[test]
fn decap_keyless_ipv6_inner() {
    let Some(mut f) = setup("decap_keyless_ipv6_inner") else { return };
    let inner = inner_v6(63);
    let input = outer(PLAIN_REMOTE, LOCAL, &cat(&[&gre_plain(0x86dd), &inner]));
    let (action, out) = f.decap(&input);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, cat(&[&eth(f.plain.mac, f.plain.inject_mac, EtherType::IPV6), &inner]));
    assert_eq!((f.stats(1).rx_packets, f.stats(1).rx_bytes), (1, inner.len() as u64));
    assert_eq!(f.stats(0), TunnelStats::default());
}

#[test]
fn decap_keyed_ipv6_inner_and_keyless_ipv4_inner() {
    let Some(mut f) = setup("decap_keyed_ipv6_inner_and_keyless_ipv4_inner") else { return };
    let v6 = inner_v6(10);
    let (action, out) = f.decap(&outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x86dd, KEY), &v6])));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, cat(&[&eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV6), &v6]));
    let v4 = inner_v4(10);
    let (action, out) = f.decap(&outer(PLAIN_REMOTE, LOCAL, &cat(&[&gre_plain(0x0800), &v4])));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, cat(&[&eth(f.plain.mac, f.plain.inject_mac, EtherType::IPV4), &v4]));
    assert_eq!((f.stats(0).rx_packets, f.stats(1).rx_packets), (1, 1));
}

#[test]
fn decap_vlan_tagged_and_ethernet_padding() {
    let Some(mut f) = setup("decap_vlan_tagged_and_ethernet_padding") else { return };
    let inner = inner_v4(5);
    let untagged = outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY), &inner]));
    // Insert an 802.1Q tag (VID 100) after the MAC addresses.
    let tagged = cat(&[&untagged[..12], &[0x81, 0x00, 0x00, 100], &untagged[12..]]);
    let (action, out) = f.decap(&tagged);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, cat(&[&eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV4), &inner]));
    // Bytes past the outer total length (Ethernet padding, a trailer) are not part of the tunnel
    // packet: trimmed, as ip_rcv does, not handed on as part of the inner packet.
    let padded = cat(&[&untagged, &[0xa5u8; 6]]);
    let (action, out) = f.decap(&padded);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, cat(&[&eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV4), &inner]), "the trailer was delivered");
    assert_eq!(f.stats(0).rx_bytes, 2 * inner.len() as u64);
}

#[test]
fn encap_keyed_ipv6_inner_inherits_ttl() {
    let Some(mut f) = setup("encap_keyed_ipv6_inner_inherits_ttl") else { return };
    let inner = inner_v6(37);
    let src_mac = [0x02, 0xaa, 0, 0, 0, 1];
    // IPv6 from the kernel leaves gre0 with a multicast MAC on a NOARP device; it is replaced.
    let input = cat(&[&eth([0x33, 0x33, 0, 0, 0, 1], src_mac, EtherType::IPV6), &inner]);
    let (ret, out) = f.encap(&input, f.keyed.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let gre = gre_keyed(0x86dd, KEY);
    let mut ip = Ipv4Header::new(u16::try_from(gre.len() + inner.len()).unwrap(), 37, IpNumber::GRE, LOCAL, KEYED_REMOTE).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let expected = cat(&[&eth(f.keyed.mac, src_mac, EtherType::IPV4), &ip.to_bytes(), &gre, &inner]);
    assert_eq!(out, expected);
    let s = f.stats(0);
    assert_eq!((s.tx_packets, s.tx_bytes, s.rx_packets), (1, inner.len() as u64, 0));
}

#[test]
fn encap_keyless_ipv4_inner_fixed_ttl() {
    let Some(mut f) = setup("encap_keyless_ipv4_inner_fixed_ttl") else { return };
    let inner = inner_v4(9);
    let src_mac = [0x02, 0xaa, 0, 0, 0, 2];
    let input = cat(&[&eth([0x02, 0xbb, 0, 0, 0, 2], src_mac, EtherType::IPV4), &inner]);
    let (ret, out) = f.encap(&input, f.plain.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let gre = gre_plain(0x0800);
    let mut ip = Ipv4Header::new(u16::try_from(gre.len() + inner.len()).unwrap(), 64, IpNumber::GRE, LOCAL, PLAIN_REMOTE).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    assert_eq!(out, cat(&[&eth(f.plain.mac, src_mac, EtherType::IPV4), &ip.to_bytes(), &gre, &inner]));
    assert_eq!(f.stats(1).tx_packets, 1);
}

#[test]
fn encap_then_decap_round_trip() {
    let Some(mut f) = setup("encap_then_decap_round_trip") else { return };
    // What one end encapsulates, the other end (here: the keyed tunnel seen from its remote,
    // with addresses swapped) decapsulates back to the same inner packet.
    let inner = inner_v4(30);
    let (_, wire) = f.encap(&cat(&[&eth(WIRE_DST, WIRE_SRC, EtherType::IPV4), &inner]), f.keyed.index);
    let mut swapped = wire.clone();
    swapped[14 + 12..14 + 16].copy_from_slice(&KEYED_REMOTE);
    swapped[14 + 16..14 + 20].copy_from_slice(&LOCAL);
    let mut ip = Ipv4Header::from_slice(&swapped[14..]).unwrap().0;
    ip.header_checksum = ip.calc_header_checksum();
    swapped[14..34].copy_from_slice(&ip.to_bytes());
    let (action, out) = f.decap(&swapped);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[14..], &inner[..]);
}

/// Packets that are ours but malformed or unmatched: dropped, and counted under exactly one
/// reason; no tunnel counter moves.
#[test]
fn malformed_and_unmatched_are_dropped_by_reason() {
    let Some(mut f) = setup("malformed_and_unmatched_are_dropped_by_reason") else { return };
    let inner = inner_v4(5);
    let keyed = cat(&[&gre_keyed(0x0800, KEY), &inner]);
    let good = outer(KEYED_REMOTE, LOCAL, &keyed);
    let mut bad_tot_len = good.clone();
    // Claim 10 more bytes than the frame has.
    let tot = u16::from_be_bytes([good[16], good[17]]) + 10;
    bad_tot_len[16..18].copy_from_slice(&tot.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("VLAN tag cut short", cat(&[&eth(WIRE_DST, WIRE_SRC, EtherType::VLAN_TAGGED_FRAME), &[0x00]]), drop::TRUNCATED),
        ("IPv4 header cut short", good[..14 + 12].to_vec(), drop::TRUNCATED),
        ("GRE base header cut short", outer(KEYED_REMOTE, LOCAL, &[0x20, 0x00]), drop::TRUNCATED),
        ("GRE key cut short", outer(KEYED_REMOTE, LOCAL, &[0x20, 0x00, 0x08, 0x00, 0x00]), drop::TRUNCATED),
        ("GRE checksum+key cut short", outer(KEYED_REMOTE, LOCAL, &[0xa0, 0x00, 0x08, 0x00, 0, 0, 0, 0, 0]), drop::TRUNCATED),
        ("GRE checksum cut short", outer(KEYED_REMOTE, LOCAL, &[0x80, 0x00, 0x08, 0x00, 0, 0]), drop::TRUNCATED),
        ("GRE sequence cut short", outer(KEYED_REMOTE, LOCAL, &[0x10, 0x00, 0x08, 0x00, 0, 0, 0]), drop::TRUNCATED),
        ("GRE key+sequence cut short", outer(KEYED_REMOTE, LOCAL, &[0x30, 0x00, 0x08, 0x00, 0, 0, 0, 42, 0]), drop::TRUNCATED),
        ("IPv4 total length beyond the frame", bad_tot_len, drop::TRUNCATED),
        ("version 2", outer(KEYED_REMOTE, LOCAL, &cat(&[&[0x20, 0x02, 0x08, 0x00], &KEY.to_be_bytes(), &inner])), drop::BAD_VERSION),
        ("version 7", outer(KEYED_REMOTE, LOCAL, &cat(&[&[0x00, 0x07, 0x08, 0x00], &inner])), drop::BAD_VERSION),
        ("routing bit", outer(KEYED_REMOTE, LOCAL, &cat(&[&[0x60, 0x00, 0x08, 0x00], &KEY.to_be_bytes(), &inner])), drop::ROUTING),
        ("unknown key", outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY + 1), &inner])), drop::KEY_MISMATCH),
        ("no key to a keyed tunnel", outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_plain(0x0800), &inner])), drop::KEY_MISMATCH),
        ("a key to a keyless tunnel", outer(PLAIN_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY), &inner])), drop::KEY_MISMATCH),
        ("unknown remote", outer([198, 51, 100, 9], LOCAL, &keyed), drop::NO_TUNNEL),
        ("unknown protocol type", outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x6558, KEY), &inner])), drop::UNKNOWN_PROTOCOL),
    ];
    for (what, input, reason) in cases {
        let before = f.drops();
        let (action, _) = f.decap(&input);
        assert_eq!(action, XDP_DROP, "{what}: action");
        let after = f.drops();
        for (r, (b, a)) in before.iter().zip(&after).enumerate() {
            let want = u64::from(r == reason as usize);
            assert_eq!(a - b, want, "{what}: counter {} moved by {}", drop::NAMES[r], a - b);
        }
    }
    // What the endpoints tie to one tunnel is counted against it too: the unknown protocol type,
    // and the key mismatches between the only tunnel of a pair of endpoints.
    let mut want = TunnelStats::default();
    want.drops[drop::UNKNOWN_PROTOCOL as usize] = 1;
    want.drops[drop::KEY_MISMATCH as usize] = 2;
    assert_eq!(f.stats(0), want);
    let mut want = TunnelStats::default();
    want.drops[drop::KEY_MISMATCH as usize] = 1;
    assert_eq!(f.stats(1), want);
    // With a second tunnel between the same endpoints, a mismatch names neither.
    let (other, _) = f.add(gre_common::maps::Tunnel {
        local: gre_user::maps::store_addr(LOCAL.into()),
        remote: gre_user::maps::store_addr(KEYED_REMOTE.into()),
        ikey: 7,
        okey: 7,
        flags: gre_common::maps::tunnel_flags::IKEY | gre_common::maps::tunnel_flags::OKEY,
        ..gre_common::maps::Tunnel::default()
    });
    assert_eq!(f.decap(&outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY + 1), &inner]))).0, XDP_DROP);
    assert_eq!((f.stats(0).drops[drop::KEY_MISMATCH as usize], f.stats(other).drops[drop::KEY_MISMATCH as usize]), (2, 0));
    assert_eq!(f.drops()[drop::KEY_MISMATCH as usize], 4);
    // Removed again, the pair names tunnel 0 once more.
    f.maps.uninstall_tunnel(other).expect("uninstall");
    assert_eq!(f.decap(&outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY + 1), &inner]))).0, XDP_DROP);
    assert_eq!(f.stats(0).drops[drop::KEY_MISMATCH as usize], 3);
}

/// What is not ours passes untouched and counts nothing.
#[test]
fn foreign_traffic_passes_untouched() {
    let Some(mut f) = setup("foreign_traffic_passes_untouched") else { return };
    let inner = inner_v4(5);
    let keyed = cat(&[&gre_keyed(0x0800, KEY), &inner]);
    let mut fragment = outer(KEYED_REMOTE, LOCAL, &keyed);
    fragment[14 + 6] |= 0x20; // MF: the kernel reassembles first.
    let mut udp = Vec::new();
    PacketBuilder::ethernet2(WIRE_SRC, WIRE_DST).ipv4(KEYED_REMOTE, LOCAL, 64).udp(1, 2).write(&mut udp, b"not gre").unwrap();
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(WIRE_SRC, WIRE_DST).ipv6([0x20; 16], [0x21; 16], 64).udp(1, 2).write(&mut v6, b"v6").unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("GRE to an address that is not a tunnel endpoint", outer(KEYED_REMOTE, [198, 51, 100, 77], &keyed)),
        ("broken GRE to an address that is not ours", outer(KEYED_REMOTE, [198, 51, 100, 77], &[0x60, 0x01])),
        ("an outer fragment", fragment),
        ("UDP to a tunnel endpoint", udp),
        ("IPv6", v6),
        ("ARP", cat(&[&eth([0xff; 6], WIRE_SRC, EtherType::ARP), &[0u8; 28]])),
        // Enhanced GRE of PPTP (RFC 2637: version 1, K and S, PPP): Linux hands it to pptp.
        (
            "PPTP's GRE version 1 to a tunnel endpoint",
            outer(KEYED_REMOTE, LOCAL, &cat(&[&[0x30, 0x81, 0x88, 0x0b, 0x00, 0x04, 0x12, 0x34, 0, 0, 0, 1], &[0xff, 0x03, 0x00, 0x21]])),
        ),
    ];
    for (what, input) in cases {
        let (action, out) = f.decap(&input);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(out, input, "{what}: passed packets are untouched");
    }
    assert!(f.drops().iter().all(|d| *d == 0), "{:?}", f.drops());
    assert_eq!(f.stats(0), TunnelStats::default());
}

#[test]
fn encap_drops_what_it_cannot_carry() {
    let Some(mut f) = setup("encap_drops_what_it_cannot_carry") else { return };
    let arp = cat(&[&eth([0xff; 6], WIRE_SRC, EtherType::ARP), &[0u8; 28]]);
    let (ret, _) = f.encap(&arp, f.keyed.index);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.drops()[drop::ENCAP_UNSUPPORTED as usize], 1);
    // A device with no tunnel (the injection end) has nothing to encapsulate with.
    let ip = cat(&[&eth(WIRE_DST, WIRE_SRC, EtherType::IPV4), &inner_v4(5)]);
    let (ret, _) = f.encap(&ip, f.keyed.inject_index);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.drops()[drop::NO_TX_TUNNEL as usize], 1);
    let mut want = TunnelStats::default();
    want.drops[drop::ENCAP_UNSUPPORTED as usize] = 1;
    assert_eq!(f.stats(0), want, "the ARP frame counts against the tunnel; the orphan device's packet cannot");
}

/// GRE in a frame for another host's MAC (a port in promiscuous mode, a bridge member) or on a
/// VLAN is not the port's: the kernel would drop the first as PACKET_OTHERHOST and give the
/// second to the VLAN's device, so the datapath passes both untouched and counts nothing. Our
/// MAC, broadcast and multicast frames are taken, as eth_type_trans does.
#[test]
fn frames_for_another_mac_or_vlan_are_not_decapsulated() {
    let Some(mut f) = setup("frames_for_another_mac_or_vlan_are_not_decapsulated") else { return };
    let (id, dev) = f.add(gre_common::maps::Tunnel {
        local: gre_user::maps::store_addr(LOCAL.into()),
        remote: gre_user::maps::store_addr([198, 51, 100, 9].into()),
        underlay_mac: WIRE_DST,
        ..gre_common::maps::Tunnel::default()
    });
    let inner = inner_v4(63);
    let mut frame = outer([198, 51, 100, 9], LOCAL, &cat(&[&gre_plain(0x0800), &inner]));
    for (dst, taken) in [([0x02, 0, 0, 0, 0, 0x77], false), (WIRE_DST, true), ([0xff; 6], true), ([0x01, 0, 0x5e, 0, 0, 1], true)] {
        frame[..6].copy_from_slice(&dst);
        let (action, out) = f.decap(&frame);
        if taken {
            assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, dev.mac.to_vec()), "to {}", mac_str(dst));
        } else {
            assert_eq!((action, &out), (XDP_PASS, &frame), "to {}", mac_str(dst));
        }
    }
    assert_eq!(f.stats(id).rx_packets, 3);
    // Tagged, even for our MAC: VLAN 7's traffic, which the kernel hands to that VLAN's device
    // (to carry a tunnel over a VLAN, give the VLAN device as its interface).
    let mut tagged = cat(&[&eth(WIRE_DST, WIRE_SRC, EtherType::VLAN_TAGGED_FRAME), &[0x00, 0x07, 0x08, 0x00]]);
    tagged.extend_from_slice(&frame[14..]);
    let (action, out) = f.decap(&tagged);
    assert_eq!((action, &out), (XDP_PASS, &tagged));
    assert_eq!(f.stats(id).rx_packets, 3);
    assert!(f.drops().iter().all(|d| *d == 0));
}
