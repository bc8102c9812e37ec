//! BPF_PROG_TEST_RUN fixtures for the tunnel options: checksums, sequence numbers, IPv6 outer
//! headers, TOS/ECN (RFC 6040), DF policies, keepalives and loops. Expected packets come from
//! scapy (GRE checksums included), an encoder independent of ours.

use etherparse::{EtherType, Ipv4Header};
use gre_common::{
    drop,
    maps::{Tunnel, TunnelStats, tunnel_flags as tf},
};
use gre_tests::fixture::*;
use gre_user::maps::store_addr;

const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];

fn tunnel(local: &str, remote: &str, flags: u32) -> Tunnel {
    Tunnel { local: store_addr(local.parse().unwrap()), remote: store_addr(remote.parse().unwrap()), flags, ..Tunnel::default() }
}

/// Inner IPv4/UDP with `len` bytes of payload, as scapy builds it.
fn inner4(tos: u8, ttl: u8, len: usize) -> Vec<u8> {
    scapy(&format!(
        "IP(src='203.0.113.2', dst='203.0.113.1', tos={tos}, ttl={ttl})/UDP(sport=4000, dport=5000)/Raw(bytes(range(256))*{}+bytes({}))",
        len / 256,
        len % 256
    ))
}

/// The "full" tunnel: key 7, checksums and sequence numbers both ways, TOS inherited, TTL 64.
fn full(f: &mut Fixture) -> (u32, Netdev) {
    f.add(Tunnel {
        ikey: 7,
        okey: 7,
        ttl: 64,
        ..tunnel("198.51.100.1", "198.51.100.4", tf::IKEY | tf::OKEY | tf::ICSUM | tf::OCSUM | tf::ISEQ | tf::OSEQ | tf::TOS_INHERIT)
    })
}

fn wire_full(seq: Option<u32>, csum: bool, payload: &[u8]) -> Vec<u8> {
    let seq = seq.map_or_else(String::new, |s| format!(", seqnum_present=1, sequence_number={s}"));
    scapy(&format!(
        "Ether(dst='02:00:00:00:00:01', src='02:00:00:00:00:02')/IP(src='198.51.100.4', dst='198.51.100.1', ttl=64)/GRE(chksum_present={}, key_present=1, key=7, proto=0x0800{seq})/Raw({})",
        u8::from(csum),
        hex_bytes(payload)
    ))
}

#[test]
fn checksum_and_sequence_on_receive() {
    let Some(mut f) = setup("checksum_and_sequence_on_receive") else { return };
    let (id, dev) = full(&mut f);
    // 1001 bytes of payload: an odd length, and many rounds of the checksum loop.
    let inner = inner4(0, 9, 1001);
    let expected = [eth(dev.mac, dev.inject_mac, EtherType::IPV4), inner.clone()].concat();
    let cases: [(&str, Vec<u8>, Option<u32>); 8] = [
        ("first packet, sequence 5", wire_full(Some(5), true, &inner), None),
        ("sequence 5 again", wire_full(Some(5), true, &inner), Some(drop::SEQUENCE)),
        ("older sequence 4", wire_full(Some(4), true, &inner), Some(drop::SEQUENCE)),
        ("gap to sequence 9", wire_full(Some(9), true, &inner), None),
        ("no sequence number", wire_full(None, true, &inner), Some(drop::SEQUENCE)),
        ("no checksum", wire_full(Some(10), false, &inner), Some(drop::CHECKSUM_POLICY)),
        (
            "corrupted payload",
            {
                let mut p = wire_full(Some(10), true, &inner);
                let last = p.len() - 1;
                p[last] ^= 0x01;
                p
            },
            Some(drop::BAD_CHECKSUM),
        ),
        ("sequence 10 after the rejects", wire_full(Some(10), true, &inner), None),
    ];
    let mut want = TunnelStats::default();
    for (what, input, reason) in cases {
        let (action, out) = f.decap(&input);
        match reason {
            None => {
                assert_eq!(action, XDP_REDIRECT, "{what}");
                assert_eq!(out, expected, "{what}");
                want.rx_packets += 1;
                want.rx_bytes += inner.len() as u64;
            }
            Some(r) => {
                assert_eq!(action, XDP_DROP, "{what}");
                want.drops[r as usize] += 1;
            }
        }
        assert_eq!(f.stats(id), want, "{what}");
    }
    // A checksum on a tunnel that does not expect one is refused too (ip_tunnel_rcv).
    let keyed = scapy("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(chksum_present=1, key_present=1, key=42, proto=0x0800)/Raw(b'abcd')");
    assert_eq!(f.decap(&keyed).0, XDP_DROP);
    assert_eq!(f.stats(0).drops[drop::CHECKSUM_POLICY as usize], 1);
}

#[test]
fn checksum_sequence_and_tos_on_transmit() {
    let Some(mut f) = setup("checksum_sequence_and_tos_on_transmit") else { return };
    let (id, dev) = full(&mut f);
    // TOS inherited: EF and not ECN-capable; then EF with CE, which leaves as ECT(0) (RFC 6040).
    for (seq, inner_tos, outer_tos, len) in [(1, 0xb8, 0xb8, 1001), (2, 0xbb, 0xba, 64), (3, 0x00, 0x00, 0)] {
        let inner = inner4(inner_tos, 17, len);
        let (ret, out) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner.clone()].concat(), dev.index);
        assert_eq!(ret, TC_ACT_REDIRECT, "packet {seq}");
        let expected = scapy(&format!(
            "Ether(dst='{}', src='{}')/IP(src='198.51.100.1', dst='198.51.100.4', ttl=64, tos={outer_tos}, id=0, flags='DF')/GRE(chksum_present=1, key_present=1, key=7, seqnum_present=1, sequence_number={seq}, proto=0x0800)/Raw({})",
            mac_str(dev.mac),
            mac_str(SRC_MAC),
            hex_bytes(&inner)
        ));
        assert_eq!(out, expected, "packet {seq}");
    }
    assert_eq!(f.stats(id).tx_packets, 3);
    // What we send, our receive side accepts (checksum and sequence verified).
    let (_, wire) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner4(0, 5, 333)].concat(), dev.index);
    let mut back = wire.clone();
    back[26..30].copy_from_slice(&[198, 51, 100, 4]);
    back[30..34].copy_from_slice(&[198, 51, 100, 1]);
    let mut ip = Ipv4Header::from_slice(&back[14..]).unwrap().0;
    ip.header_checksum = ip.calc_header_checksum();
    back[14..34].copy_from_slice(&ip.to_bytes());
    assert_eq!(f.decap(&back).0, XDP_REDIRECT);
}

/// Without a configured flow label, ip6gre labels each inner flow (ip6_make_flowlabel with the
/// skb's flow hash), so that ECMP and RSS in the underlay spread tunnels' flows: one flow keeps
/// one label, different flows get different ones, and a configured label is kept as it is.
#[test]
fn ip6gre_flow_labels_follow_the_inner_flow() {
    let Some(mut f) = setup("ip6gre_flow_labels_follow_the_inner_flow") else { return };
    let (_, auto) = f.add(tunnel("2001:db8::1", "2001:db8::2", tf::OUTER_V6));
    let (_, fixed) = f.add(Tunnel { flowlabel: 0x12345, ..tunnel("2001:db8::1", "2001:db8::3", tf::OUTER_V6) });
    let flows: Vec<Vec<u8>> = (0..8)
        .map(|port| {
            scapy(&format!("Ether(src='{}')/IP(src='203.0.113.1', dst='203.0.113.2')/UDP(sport={}, dport=53)/Raw(b'q')", mac_str(SRC_MAC), 1000 + port))
        })
        .collect();
    let label = |f: &mut Fixture, dev: Netdev, frame: &[u8]| {
        let (ret, out) = f.encap(frame, dev.index);
        assert_eq!(ret, TC_ACT_REDIRECT);
        let ip = etherparse::Ipv6Header::from_slice(&out[14..]).unwrap().0;
        ip.flow_label.value()
    };
    let labels: Vec<u32> = flows.iter().map(|p| label(&mut f, auto, p)).collect();
    assert_eq!(labels.iter().copied().collect::<std::collections::BTreeSet<_>>().len(), 8, "eight flows, eight labels: {labels:x?}");
    assert!(labels.iter().all(|l| *l != 0));
    assert_eq!(label(&mut f, auto, &flows[3]), labels[3], "one flow keeps its label");
    assert!(flows.iter().all(|p| label(&mut f, fixed, p) == 0x12345));
}

/// A GSO packet on a tunnel with checksums or sequence numbers goes on, untouched, through the
/// tunnel netdev, where the kernel segments it (its GSO is off); each segment then gets its own
/// checksum at the netdev's datapath end (see `forwarded_gro_traffic_is_segmented_for_csum_and_seq`).
#[test]
fn gso_packets_of_checksummed_tunnels_are_left_to_segment() {
    let Some(mut f) = setup("gso_packets_of_checksummed_tunnels_are_left_to_segment") else { return };
    let (id, dev) = full(&mut f);
    let input = [eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner4(0, 5, 1400)].concat();
    let (ret, out) = f.encap_gso(&input, dev.index, 1400);
    assert_eq!((ret, &out), (0, &input), "TC_ACT_OK, unchanged");
    assert_eq!(f.stats(id), gre_common::maps::TunnelStats::default(), "neither sent nor dropped yet");
    // The same packet, not GSO, gets its checksum.
    let (ret, out) = f.encap(&input, dev.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out[34..36], [0xb0, 0x00], "C, K and S set");
}

#[test]
fn ipv6_outer_both_ways() {
    let Some(mut f) = setup("ipv6_outer_both_ways") else { return };
    let (id, dev) = f.add(Tunnel { tos: 0x20, flowlabel: 0x12345, ..tunnel("2001:db8::1", "2001:db8::2", tf::OUTER_V6) });
    // Encap: hop limit inherited (33), traffic class fixed 0x20 with the inner ECT(1) copied in.
    let inner = inner4(0x01, 33, 200);
    let (ret, out) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner.clone()].concat(), dev.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let expected = scapy(&format!(
        "Ether(dst='{}', src='{}', type=0x86dd)/IPv6(src='2001:db8::1', dst='2001:db8::2', hlim=33, tc=0x21, fl=0x12345, nh=47)/GRE(proto=0x0800)/Raw({})",
        mac_str(dev.mac),
        mac_str(SRC_MAC),
        hex_bytes(&inner)
    ));
    assert_eq!(out, expected);

    // Decap, plain and with the encapsulation-limit destination option ip6gre senders add.
    let inner6 = scapy("IPv6(src='2001:db8:100::2', dst='2001:db8:100::1', hlim=9)/UDP(sport=1, dport=2)/Raw(b'inner six')");
    let plain = scapy(&format!("Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=47)/GRE(proto=0x86dd)/Raw({})", hex_bytes(&inner6)));
    let with_option = scapy(&format!(
        "Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=60)/IPv6ExtHdrDestOpt(nh=47, options=[HBHOptUnknown(otype=4, optdata=b'\\x04'), PadN(optdata=b'\\x00')])/GRE(proto=0x86dd)/Raw({})",
        hex_bytes(&inner6)
    ));
    for input in [plain, with_option] {
        let (action, out) = f.decap(&input);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out, [eth(dev.mac, dev.inject_mac, EtherType::IPV6), inner6.clone()].concat());
    }
    assert_eq!((f.stats(id).rx_packets, f.stats(id).tx_packets), (2, 1));
    // The same addresses with a key match nothing: a key mismatch for IPv6 endpoints too.
    let keyed =
        scapy(&format!("Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=47)/GRE(key_present=1, key=1, proto=0x86dd)/Raw({})", hex_bytes(&inner6)));
    assert_eq!(f.decap(&keyed).0, XDP_DROP);
    assert_eq!(f.drops()[drop::KEY_MISMATCH as usize], 1);
}

#[test]
fn ecn_on_receive_follows_rfc_6040() {
    let Some(mut f) = setup("ecn_on_receive_follows_rfc_6040") else { return };
    let wire = |outer_tos: u8, inner: &[u8], proto: u16| {
        scapy(&format!("Ether()/IP(src='198.51.100.3', dst='198.51.100.1', tos={outer_tos})/GRE(proto={proto})/Raw({})", hex_bytes(inner)))
    };
    let plain = f.plain;
    // Outer CE, inner not ECN-capable: dropped.
    assert_eq!(f.decap(&wire(0x03, &inner4(0, 9, 10), 0x0800)).0, XDP_DROP);
    assert_eq!(f.stats(1).drops[drop::ECN as usize], 1);
    // Outer CE, inner ECT(0): the inner packet is marked CE, its checksum updated.
    let (action, out) = f.decap(&wire(0x03, &inner4(0x02, 9, 10), 0x0800));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, [eth(plain.mac, plain.inject_mac, EtherType::IPV4), inner4(0x03, 9, 10)].concat());
    // Outer ECT(0), inner not-ECT: passed unchanged.
    let (_, out) = f.decap(&wire(0x02, &inner4(0x00, 9, 10), 0x0800));
    assert_eq!(&out[14..], &inner4(0x00, 9, 10)[..]);
    // IPv6 inner, ECT(1) under outer CE becomes CE.
    let v6 = |tc: u8| scapy(&format!("IPv6(src='2001:db8:100::2', dst='2001:db8:100::1', tc={tc})/UDP(sport=1, dport=2)/Raw(b'x')"));
    let (action, out) = f.decap(&wire(0x03, &v6(0x01), 0x86dd));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[14..], &v6(0x03)[..]);
}

#[test]
fn df_policies() {
    let Some(mut f) = setup("df_policies") else { return };
    let (_, nopmtu) = f.add(tunnel("198.51.100.1", "198.51.100.5", tf::NOPMTUDISC));
    let (_, ignore) = f.add(tunnel("198.51.100.1", "198.51.100.6", tf::NOPMTUDISC | tf::IGNORE_DF));
    let with_df = scapy("IP(src='203.0.113.2', dst='203.0.113.1', flags='DF')/UDP()/Raw(b'df')");
    let without_df = scapy("IP(src='203.0.113.2', dst='203.0.113.1', flags=0)/UDP()/Raw(b'no df')");
    for (dev, inner, df) in [(nopmtu, &with_df, true), (nopmtu, &without_df, false), (ignore, &with_df, false), (f.keyed, &without_df, true)] {
        let (ret, out) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner.clone()].concat(), dev.index);
        assert_eq!(ret, TC_ACT_REDIRECT);
        let ip = Ipv4Header::from_slice(&out[14..]).unwrap().0;
        assert_eq!(ip.dont_fragment, df, "outer DF for inner DF {}", inner == &with_df);
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    }
}

#[test]
fn keepalives_are_answered_and_counted() {
    let Some(mut f) = setup("keepalives_are_answered_and_counted") else { return };
    // The remote's keepalive: GRE to us carrying a GRE packet addressed back to the remote.
    let from_remote = scapy(
        "Ether(dst='02:00:00:00:00:01', src='02:00:00:00:00:02')/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=42, proto=0x0800)/IP(src='198.51.100.1', dst='198.51.100.2', ttl=255)/GRE(key_present=1, key=42, proto=0)",
    );
    let (action, out) = f.decap(&from_remote);
    assert_eq!(action, XDP_TX, "sent back out of the port it came in on");
    let expected = scapy(
        "Ether(dst='02:00:00:00:00:02', src='02:00:00:00:00:01')/IP(src='198.51.100.1', dst='198.51.100.2', ttl=254)/GRE(key_present=1, key=42, proto=0)",
    );
    assert_eq!(out, expected);
    // Our own keepalive coming back from the remote: counted, consumed, no error.
    let returned = scapy("Ether()/IP(src='198.51.100.2', dst='198.51.100.1', ttl=254)/GRE(key_present=1, key=42, proto=0)");
    assert_eq!(f.decap(&returned).0, XDP_DROP);
    let s = f.stats(0);
    assert_eq!((s.keepalives_answered, s.keepalives_returned, s.rx_packets), (1, 1, 0));
    assert!(f.drops().iter().all(|d| *d == 0));
}

/// Only a keepalive is reflected — a bare GRE header of protocol type 0 — and at most ten a
/// second per tunnel: other GRE from us to the remote is an inner packet like any other, and a
/// forger cannot turn the tunnel into a reflector.
#[test]
fn only_keepalives_are_reflected_and_at_a_bounded_rate() {
    let Some(mut f) = setup("only_keepalives_are_reflected_and_at_a_bounded_rate") else { return };
    let wrap = |inner: &str| {
        scapy(&format!(
            "Ether(dst='02:00:00:00:00:01', src='02:00:00:00:00:02')/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=42, proto=0x0800)/IP(src='198.51.100.1', dst='198.51.100.2', ttl=255)/{inner}"
        ))
    };
    let keepalive = wrap("GRE(key_present=1, key=42, proto=0)");
    let not_keepalives = [
        wrap("GRE(key_present=1, key=42, proto=0x0800)/IP(dst='203.0.113.9')/UDP()/Raw(b'x' * 64)"),
        wrap("GRE(key_present=1, key=42, proto=0)/Raw(b'x' * 600)"),
    ];
    for (i, p) in not_keepalives.iter().enumerate() {
        let (action, out) = f.decap(p);
        assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, f.keyed.mac.to_vec()), "packet {i} goes into the tunnel, not back out");
    }
    let answered = (0..14).filter(|_| f.decap(&keepalive).0 == XDP_TX).count();
    let s = f.stats(0);
    assert_eq!((answered, s.keepalives_answered, s.drops[drop::KEEPALIVE_RATE as usize], s.rx_packets), (10, 10, 4, 2));
}

#[test]
fn gre_inside_its_own_tunnel_is_a_loop() {
    let Some(mut f) = setup("gre_inside_its_own_tunnel_is_a_loop") else { return };
    let own = scapy("IP(src='198.51.100.1', dst='198.51.100.2')/GRE(key_present=1, key=42, proto=0x0800)/IP()/Raw(b'x')");
    let (ret, _) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), own].concat(), f.keyed.index);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.stats(0).drops[drop::LOOP as usize], 1);
    // GRE of another tunnel inside this one is fine (GRE over GRE, not a loop).
    let other = scapy("IP(src='198.51.100.1', dst='198.51.100.9')/GRE(proto=0x0800)/IP()/Raw(b'x')");
    let (ret, _) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), other].concat(), f.keyed.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
}

#[test]
fn tunnels_between_the_same_endpoints_are_told_apart_by_key() {
    let Some(mut f) = setup("tunnels_between_the_same_endpoints_are_told_apart_by_key") else { return };
    // Tunnel 0 is 198.51.100.2 → .1 with key 42; add key 43 and separate in/out keys 50/51.
    let (k43, dev43) = f.add(Tunnel { ikey: 43, okey: 43, ..tunnel("198.51.100.1", "198.51.100.2", tf::IKEY | tf::OKEY) });
    let (split, dev_split) = f.add(Tunnel { ikey: 50, okey: 51, ..tunnel("198.51.100.1", "198.51.100.2", tf::IKEY | tf::OKEY) });
    let inner = inner4(0, 9, 20);
    for (key, id, dev) in [(42, 0, f.keyed), (43, k43, dev43), (50, split, dev_split)] {
        let wire = scapy(&format!("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key={key}, proto=0x0800)/Raw({})", hex_bytes(&inner)));
        let (action, out) = f.decap(&wire);
        assert_eq!(action, XDP_REDIRECT, "key {key}");
        assert_eq!(out[..6], dev.mac, "key {key} goes to its own tunnel netdev");
        assert_eq!(f.stats(id).rx_packets, 1, "key {key}");
    }
    // 51 is the split tunnel's output key, not an input key.
    let wire = scapy(&format!("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=51, proto=0x0800)/Raw({})", hex_bytes(&inner)));
    assert_eq!(f.decap(&wire).0, XDP_DROP);
    assert_eq!(f.drops()[drop::KEY_MISMATCH as usize], 1);
    let (_, out) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner].concat(), dev_split.index);
    assert_eq!(out[34..42], [0x20, 0x00, 0x08, 0x00, 0, 0, 0, 51], "sent with okey 51");
}

/// A gretap netdev takes a frame of its MTU plus the Ethernet header, and four bytes more when
/// the frame carries a VLAN tag (as a veth, and the kernel's gretap, do); beyond that, too big.
#[test]
fn gretap_takes_full_size_tagged_frames() {
    let Some(mut f) = setup("gretap_takes_full_size_tagged_frames") else { return };
    let (id, _) = f.add(Tunnel { ikey: 9, okey: 9, mtu: 1400, ..tunnel("198.51.100.1", "198.51.100.8", tf::IKEY | tf::OKEY | tf::TEB) });
    let frame = |tagged: bool, ip_len: usize| {
        let tag = if tagged { "/Dot1Q(vlan=5)" } else { "" };
        scapy(&format!("Ether(dst='02:11:11:11:11:11', src='02:22:22:22:22:22'){tag}/IP(src='203.0.113.2', dst='203.0.113.1')/Raw(b'x' * {})", ip_len - 20))
    };
    let wire = |payload: &[u8]| {
        scapy(&format!("Ether()/IP(src='198.51.100.8', dst='198.51.100.1')/GRE(key_present=1, key=9, proto=0x6558)/Raw({})", hex_bytes(payload)))
    };
    for (tagged, ip_len, taken) in [(false, 1400, true), (false, 1401, false), (true, 1400, true), (true, 1401, false)] {
        let (action, out) = f.decap(&wire(&frame(tagged, ip_len)));
        if taken {
            assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, vec![0x02, 0x11, 0x11, 0x11, 0x11, 0x11]), "tagged {tagged}, {ip_len}");
        } else {
            assert_eq!(action, XDP_DROP, "tagged {tagged}, {ip_len}");
        }
    }
    assert_eq!((f.stats(id).rx_packets, f.stats(id).drops[drop::TOO_BIG as usize]), (2, 2));
}

#[test]
fn gretap_frames_both_ways() {
    let Some(mut f) = setup("gretap_frames_both_ways") else { return };
    let (id, dev) = f.add(Tunnel { ikey: 9, okey: 9, ttl: 64, ..tunnel("198.51.100.1", "198.51.100.8", tf::IKEY | tf::OKEY | tf::TEB) });
    // A plain gre tunnel between the same endpoints and key, as the kernel allows.
    let (gre_id, gre_dev) = f.add(Tunnel { ikey: 9, okey: 9, ..tunnel("198.51.100.1", "198.51.100.8", tf::IKEY | tf::OKEY) });
    let frame =
        scapy("Ether(dst='02:11:11:11:11:11', src='02:22:22:22:22:22')/IP(src='203.0.113.2', dst='203.0.113.1', ttl=7)/UDP(sport=1, dport=2)/Raw(b'bridged')");
    let wire = |proto: &str, payload: &[u8]| {
        scapy(&format!("Ether()/IP(src='198.51.100.8', dst='198.51.100.1')/GRE(key_present=1, key=9, proto={proto})/Raw({})", hex_bytes(payload)))
    };
    // Decap: the inner frame goes into the gretap netdev as it is.
    let (action, out) = f.decap(&wire("0x6558", &frame));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, frame);
    assert_eq!((f.stats(id).rx_packets, f.stats(id).rx_bytes), (1, frame.len() as u64));
    // An IP packet with the same key goes to the gre tunnel, not the gretap.
    let (action, out) = f.decap(&wire("0x0800", &frame[14..]));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out[..6], gre_dev.mac);
    assert_eq!(f.stats(gre_id).rx_packets, 1);

    // Encap of an IP frame: the whole frame, Ethernet header included, follows the GRE header.
    let (ret, out) = f.encap(&frame, dev.index);
    assert_eq!(ret, TC_ACT_REDIRECT, "{:?}", f.stats(id).drops);
    let expected = scapy(&format!(
        "Ether(dst='{}', src='02:22:22:22:22:22')/IP(src='198.51.100.1', dst='198.51.100.8', ttl=64, id=0, flags='DF')/GRE(key_present=1, key=9, proto=0x6558)/Raw({})",
        mac_str(dev.mac),
        hex_bytes(&frame)
    ));
    assert_eq!(out, expected);

    // ARP has to go straight to the underlay next hop: without a neighbour, a counted drop.
    let arp = scapy("Ether(dst='ff:ff:ff:ff:ff:ff', src='02:22:22:22:22:22')/ARP(psrc='203.0.113.2', pdst='203.0.113.1')");
    let (ret, _) = f.encap(&arp, dev.index);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.stats(id).drops[drop::NO_NEIGHBOUR as usize], 1);
    // With the underlay routed and the next hop resolved, it leaves with the next hop's MAC.
    let t = format!("t{id}");
    // The kernel's FIB helper answers only for interfaces that forward.
    for cmd in [
        vec!["sysctl", "-q", "-w", &format!("net.ipv4.conf.{t}.forwarding=1")],
        vec!["ip", "addr", "add", "198.51.100.1/24", "dev", &t],
        vec!["ip", "link", "set", &format!("{t}-dp"), "up"],
        vec!["ip", "link", "set", &t, "up"],
        vec!["ip", "neigh", "replace", "198.51.100.8", "lladdr", "02:00:00:00:00:08", "dev", &t, "nud", "permanent"],
    ] {
        gre_tests::topology::sh(&cmd).expect("fixture underlay");
    }
    let (ret, out) = f.encap(&arp, dev.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let expected = scapy(&format!(
        "Ether(dst='02:00:00:00:00:08', src='{}')/IP(src='198.51.100.1', dst='198.51.100.8', ttl=64, id=0, flags='DF')/GRE(key_present=1, key=9, proto=0x6558)/Raw({})",
        mac_str(dev.mac),
        hex_bytes(&arp)
    ));
    assert_eq!(out, expected);
    assert_eq!(f.stats(id).tx_packets, 2);
}

#[test]
fn packets_larger_than_the_tunnel_mtu_are_counted() {
    let Some(mut f) = setup("packets_larger_than_the_tunnel_mtu_are_counted") else { return };
    // The remote's tunnel MTU is larger than ours (1280): the tunnel netdev cannot take it.
    let (id, dev) = f.add(Tunnel { mtu: 1280, ..tunnel("198.51.100.1", "198.51.100.10", 0) });
    let wire = |len: usize| scapy(&format!("Ether()/IP(src='198.51.100.10', dst='198.51.100.1')/GRE(proto=0x0800)/Raw({})", hex_bytes(&inner4(0, 9, len))));
    let (action, out) = f.decap(&wire(1280 - 28));
    assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, dev.mac.to_vec()), "exactly the MTU fits");
    assert_eq!(f.decap(&wire(1280 - 27)).0, XDP_DROP);
    assert_eq!(f.stats(id).drops[drop::TOO_BIG as usize], 1);
}

#[test]
fn ipv6_and_gretap_truncation_and_ipv4_options() {
    let Some(mut f) = setup("ipv6_and_gretap_truncation_and_ipv4_options") else { return };
    let (v6, _) = f.add(tunnel("2001:db8::1", "2001:db8::2", tf::OUTER_V6));
    let (tap, _) = f.add(Tunnel { ikey: 4, okey: 4, ..tunnel("198.51.100.1", "198.51.100.11", tf::IKEY | tf::OKEY | tf::TEB) });
    let inner6 = scapy("IPv6(src='2001:db8:100::2', dst='2001:db8:100::1')/UDP()/Raw(b'six')");
    let full6 = scapy(&format!(
        "Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=60)/IPv6ExtHdrDestOpt(nh=47, options=[PadN(optdata=b'\\x00\\x00\\x00\\x00')])/GRE(proto=0x86dd)/Raw({})",
        hex_bytes(&inner6)
    ));
    // Ethernet 14, IPv6 40, destination options 8, GRE 4.
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("IPv6 header cut short", full6[..14 + 30].to_vec(), drop::TRUNCATED),
        ("destination options cut short", full6[..=14 + 40].to_vec(), drop::TRUNCATED),
        ("GRE after IPv6 cut short", full6[..14 + 48 + 2].to_vec(), drop::TRUNCATED),
        (
            "gretap frame shorter than an Ethernet header",
            scapy("Ether()/IP(src='198.51.100.11', dst='198.51.100.1')/GRE(key_present=1, key=4, proto=0x6558)/Raw(b'0123456789')"),
            drop::TRUNCATED,
        ),
    ];
    for (what, input, reason) in cases {
        let before = f.drops()[reason as usize];
        assert_eq!(f.decap(&input).0, XDP_DROP, "{what}");
        assert_eq!(f.drops()[reason as usize] - before, 1, "{what}");
    }
    assert_eq!(f.stats(tap).drops[drop::TRUNCATED as usize], 1, "the frame was the gretap's");
    // Intact, the same IPv6 packet is delivered.
    assert_eq!(f.decap(&full6).0, XDP_REDIRECT);
    assert_eq!(f.stats(v6).rx_packets, 1);
    // An outer IPv4 header with options (IHL 6) is parsed, not misread.
    let with_options = scapy(&format!(
        "Ether()/IP(src='198.51.100.2', dst='198.51.100.1', options=[IPOption_Router_Alert()])/GRE(key_present=1, key=42, proto=0x0800)/Raw({})",
        hex_bytes(&inner4(0, 9, 30))
    ));
    assert_eq!(with_options[14] & 0x0f, 6);
    let (action, out) = f.decap(&with_options);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out[14..], inner4(0, 9, 30)[..]);
}

#[test]
fn encap_failure_is_counted() {
    let Some(mut f) = setup("encap_failure_is_counted") else { return };
    // bpf_skb_adjust_room refuses a GSO packet whose segments are not TCP (here: UDP claiming
    // a gso_size, which no real stack sends without a gso_type); the packet is dropped, counted.
    let input = [eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner4(0, 5, 1400)].concat();
    let (ret, _) = f.encap_gso(&input, f.keyed.index, 1400);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.stats(0).drops[drop::ENCAP_FAILED as usize], 1);
}

#[test]
fn a_tunnel_without_its_injection_port_drops_and_counts() {
    let Some(mut f) = setup("a_tunnel_without_its_injection_port_drops_and_counts") else { return };
    f.maps.remove_inject_port(1).expect("remove");
    let wire = scapy(&format!("Ether()/IP(src='198.51.100.3', dst='198.51.100.1')/GRE(proto=0x0800)/Raw({})", hex_bytes(&inner4(0, 9, 30))));
    assert_eq!(f.decap(&wire).0, XDP_DROP);
    assert_eq!(f.stats(1).drops[drop::NO_INJECT_PORT as usize], 1);
    assert_eq!(f.stats(1).rx_packets, 0);
}

#[test]
fn ip6gretap_both_ways() {
    let Some(mut f) = setup("ip6gretap_both_ways") else { return };
    let (id, dev) = f.add(Tunnel { ikey: 6, okey: 6, ttl: 64, ..tunnel("2001:db8::1", "2001:db8::2", tf::IKEY | tf::OKEY | tf::TEB | tf::OUTER_V6) });
    let frame = scapy(
        "Ether(dst='02:11:11:11:11:11', src='02:22:22:22:22:22')/IPv6(src='2001:db8:100::2', dst='2001:db8:100::1', tc=0x02)/UDP(sport=1, dport=2)/Raw(b'bridged six')",
    );
    let wire = scapy(&format!("Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=47)/GRE(key_present=1, key=6, proto=0x6558)/Raw({})", hex_bytes(&frame)));
    let (action, out) = f.decap(&wire);
    assert_eq!((action, out.clone()), (XDP_REDIRECT, frame.clone()));
    let (ret, out) = f.encap(&frame, dev.index);
    assert_eq!(ret, TC_ACT_REDIRECT);
    // Traffic class: fixed 0 with the inner ECT(0) copied; hop limit fixed 64; the flow label
    // the inner flow's (see ip6gre_flow_labels_follow_the_inner_flow).
    let label = etherparse::Ipv6Header::from_slice(&out[14..]).unwrap().0.flow_label.value();
    assert_ne!(label, 0);
    let expected = scapy(&format!(
        "Ether(dst='{}', src='02:22:22:22:22:22', type=0x86dd)/IPv6(src='2001:db8::1', dst='2001:db8::2', hlim=64, tc=0x02, fl={label}, nh=47)/GRE(key_present=1, key=6, proto=0x6558)/Raw({})",
        mac_str(dev.mac),
        hex_bytes(&frame)
    ));
    assert_eq!(out, expected);
    assert_eq!((f.stats(id).rx_packets, f.stats(id).tx_packets), (1, 1));
}
