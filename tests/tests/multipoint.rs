//! Multipoint GRE in BPF_PROG_TEST_RUN fixtures: one tunnel, many peers. The outer destination
//! comes from the peer table (the NHRP cache) by overlay next hop; unknown peers go through the
//! NHS while the daemon is asked, once a second per destination, to resolve them.

use etherparse::EtherType;
use gre_common::{
    drop,
    maps::{Peer, Tunnel, event_kind, peer_kind, tunnel_flags as tf},
};
use gre_tests::fixture::*;
use gre_user::maps::{show_addr, store_addr};

const SRC_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const HUB: &str = "203.0.113.254";
const HUB_NBMA: &str = "198.51.100.20";
const SPOKE: &str = "203.0.113.2";
const SPOKE_NBMA: &str = "198.51.100.21";

fn multipoint(f: &mut Fixture, flags: u32, key: u32, nhs: Option<&str>) -> (u32, Netdev) {
    let id_dev = f.add(Tunnel {
        local: store_addr("198.51.100.1".parse().unwrap()),
        ikey: key,
        okey: key,
        ttl: 64,
        nhs: nhs.map_or([0; 16], |n| store_addr(n.parse().unwrap())),
        flags: tf::MULTIPOINT | tf::IKEY | tf::OKEY | flags,
        ..Tunnel::default()
    });
    for (overlay, nbma) in [(HUB, HUB_NBMA), (SPOKE, SPOKE_NBMA)] {
        let peer = Peer { nbma: store_addr(nbma.parse().unwrap()), kind: peer_kind::STATIC, ..Peer::default() };
        f.maps.set_peer(id_dev.0, overlay.parse().unwrap(), &peer).expect("peer");
    }
    id_dev
}

fn packet_to(dst: &str) -> Vec<u8> {
    scapy(&format!("IP(src='203.0.113.1', dst='{dst}', ttl=9)/UDP(sport=1, dport=2)/Raw(b'overlay')"))
}

fn expected(dev: &Netdev, nbma: &str, key: u32, inner: &[u8]) -> Vec<u8> {
    scapy(&format!(
        "Ether(dst='{}', src='{}')/IP(src='198.51.100.1', dst='{nbma}', ttl=64, id=0, flags='DF')/GRE(key_present=1, key={key}, proto=0x0800)/Raw({})",
        mac_str(dev.mac),
        mac_str(SRC_MAC),
        hex_bytes(inner)
    ))
}

#[test]
fn encap_goes_to_the_peer_or_through_the_nhs() {
    let Some(mut f) = setup("encap_goes_to_the_peer_or_through_the_nhs") else { return };
    let (id, dev) = multipoint(&mut f, 0, 100, Some(HUB));
    // Packets are built first: the rate limit is one second, and scapy takes a while to start.
    let packets: Vec<(&str, Vec<u8>)> = [SPOKE, "203.0.113.3", "203.0.113.130"].iter().map(|d| (*d, packet_to(d))).collect();
    let send = |f: &mut Fixture, dst: &str| {
        let inner = packets.iter().find(|(d, _)| *d == dst).expect("built").1.clone();
        let (ret, out) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), inner.clone()].concat(), dev.index);
        assert_eq!(ret, TC_ACT_REDIRECT, "{dst}");
        (inner, out)
    };
    // A resolved peer: straight to its NBMA address.
    let (inner, out) = send(&mut f, SPOKE);
    assert_eq!(out, expected(&dev, SPOKE_NBMA, 100, &inner));
    assert!(f.maps.next_event().is_none(), "nothing to resolve");
    // An unknown one: through the NHS, and the daemon is asked once.
    let (inner, out) = send(&mut f, "203.0.113.3");
    send(&mut f, "203.0.113.3");
    assert_eq!(out, expected(&dev, HUB_NBMA, 100, &inner));
    let event = f.maps.next_event().expect("a resolution request");
    assert_eq!((event.kind, event.tunnel), (event_kind::RESOLUTION_WANTED, id));
    assert_eq!((show_addr(&event.target).to_string(), show_addr(&event.source).to_string()), ("203.0.113.3".into(), "203.0.113.1".into()));
    assert!(f.maps.next_event().is_none(), "rate-limited: one request per destination per second");
    // An overlay route with a next hop: to the next hop's NBMA address.
    f.maps.add_route("203.0.113.128/26".parse().unwrap(), id, Some(SPOKE.parse().unwrap())).expect("route");
    let (inner, out) = send(&mut f, "203.0.113.130");
    assert_eq!(out, expected(&dev, SPOKE_NBMA, 100, &inner));
    // Once the peer is known (a resolution reply installs it), traffic goes direct.
    let peer = Peer { nbma: store_addr("198.51.100.22".parse().unwrap()), kind: peer_kind::DYNAMIC, ..Peer::default() };
    f.maps.set_peer(id, "203.0.113.3".parse().unwrap(), &peer).expect("peer");
    let (inner, out) = send(&mut f, "203.0.113.3");
    assert_eq!(out, expected(&dev, "198.51.100.22", 100, &inner));
    assert_eq!(f.stats(id).tx_packets, 5);
}

#[test]
fn without_a_peer_or_an_nhs_it_is_a_counted_drop() {
    let Some(mut f) = setup("without_a_peer_or_an_nhs_it_is_a_counted_drop") else { return };
    let (id, dev) = multipoint(&mut f, 0, 100, None);
    let (ret, _) = f.encap(&[eth([2, 0, 0, 0, 0, 9], SRC_MAC, EtherType::IPV4), packet_to("203.0.113.3")].concat(), dev.index);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(f.stats(id).drops[drop::NO_PEER as usize], 1);
    assert!(f.maps.next_event().is_some(), "the daemon is still asked");
}

#[test]
fn decap_accepts_any_peer_and_strict_only_known_ones() {
    let Some(mut f) = setup("decap_accepts_any_peer_and_strict_only_known_ones") else { return };
    let (open, open_dev) = multipoint(&mut f, 0, 100, Some(HUB));
    let (strict, strict_dev) = multipoint(&mut f, tf::STRICT, 200, Some(HUB));
    let inner = packet_to("203.0.113.1");
    let wire = |from: &str, key: u32| {
        scapy(&format!("Ether()/IP(src='{from}', dst='198.51.100.1')/GRE(key_present=1, key={key}, proto=0x0800)/Raw({})", hex_bytes(&inner)))
    };
    // Any NBMA address may reach an open multipoint tunnel (a spoke not yet known to us).
    let (action, out) = f.decap(&wire("198.51.100.77", 100));
    assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, open_dev.mac.to_vec()));
    // A strict one takes only its peers.
    assert_eq!(f.decap(&wire("198.51.100.77", 200)).0, XDP_DROP);
    assert_eq!(f.stats(strict).drops[drop::UNKNOWN_PEER as usize], 1);
    let (action, out) = f.decap(&wire(SPOKE_NBMA, 200));
    assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, strict_dev.mac.to_vec()));
    // Removing the peer takes its NBMA address off the list.
    assert!(f.maps.remove_peer(strict, SPOKE.parse().unwrap()));
    assert_eq!(f.decap(&wire(SPOKE_NBMA, 200)).0, XDP_DROP);
    assert_eq!(f.stats(strict).drops[drop::UNKNOWN_PEER as usize], 2);
    assert_eq!(f.stats(open).rx_packets, 1);
}

/// NHRP reaches the daemon even on a strict tunnel (how a new spoke registers), but strangers
/// get a budget per source address: one sender cannot use up what the others' registrations
/// need, and peers have a budget of their own.
#[test]
fn nhrp_from_strangers_is_limited_per_source() {
    let Some(mut f) = setup("nhrp_from_strangers_is_limited_per_source") else { return };
    let (id, _) = multipoint(&mut f, tf::STRICT, 300, Some(HUB));
    let nhrp = |from: &str| scapy(&format!("Ether()/IP(src='{from}', dst='198.51.100.1')/GRE(key_present=1, key=300, proto=0x2001)/Raw(b'\\x00\\x01' * 20)"));
    let (flood, other, peer) = (nhrp("198.51.100.77"), nhrp("198.51.100.78"), nhrp(SPOKE_NBMA));
    let data = scapy("Ether()/IP(src='198.51.100.77', dst='198.51.100.1')/GRE(key_present=1, key=300, proto=0x0800)/IP(src='203.0.113.9', dst='203.0.113.1')");
    for _ in 0..15 {
        assert_eq!(f.decap(&flood).0, XDP_DROP);
    }
    let s = f.stats(id);
    assert_eq!((s.nhrp_punted, s.drops[drop::NHRP_RATE as usize]), (10, 5), "ten a second from one stranger");
    // Another stranger and a known peer still get through; the stranger's data does not.
    assert_eq!(f.decap(&other).0, XDP_DROP);
    for _ in 0..15 {
        assert_eq!(f.decap(&peer).0, XDP_DROP);
    }
    assert_eq!(f.decap(&data).0, XDP_DROP);
    let s = f.stats(id);
    assert_eq!((s.nhrp_punted, s.drops[drop::NHRP_RATE as usize], s.drops[drop::UNKNOWN_PEER as usize]), (26, 5, 1));
    let mut punted = Vec::new();
    while let Some((_, _, remote, _, _)) = f.maps.next_nhrp() {
        punted.push(remote.to_string());
    }
    assert_eq!(punted.len(), 26);
    assert_eq!(punted.iter().filter(|r| *r == "198.51.100.78").count(), 1);
}

/// Replication multiplies each packet by the peers mapped for multicast: only the tunnel's
/// groups are replicated, and only so many replicas a second.
#[test]
fn multicast_only_to_its_groups_and_at_its_rate() {
    let Some(mut f) = setup("multicast_only_to_its_groups_and_at_its_rate") else { return };
    let mut groups = [[0u8; 16]; gre_common::maps::MAX_MULTICAST_GROUPS];
    let mut lens = [0u8; gre_common::maps::MAX_MULTICAST_GROUPS];
    groups[0] = store_addr("224.0.0.0".parse().unwrap());
    lens[0] = 96 + 24;
    let (id, dev) = f.add(Tunnel {
        local: store_addr("198.51.100.1".parse().unwrap()),
        ttl: 64,
        flags: tf::MULTIPOINT,
        multicast_rate: 5,
        multicast_groups: groups,
        multicast_group_lens: lens,
        ..Tunnel::default()
    });
    for (overlay, nbma) in [(HUB, HUB_NBMA), (SPOKE, SPOKE_NBMA)] {
        let peer = Peer { nbma: store_addr(nbma.parse().unwrap()), kind: peer_kind::STATIC, flags: gre_common::maps::peer_flags::MULTICAST, ..Peer::default() };
        f.maps.set_peer(id, overlay.parse().unwrap(), &peer).expect("peer");
    }
    let to = |group: &str| {
        [
            eth([1, 0, 0x5e, 0, 0, 5], SRC_MAC, EtherType::IPV4),
            scapy(&format!("IP(src='203.0.113.1', dst='{group}', ttl=1)/UDP(sport=1, dport=2)/Raw(b'hello')")),
        ]
        .concat()
    };
    let (hello, wide) = (to("224.0.0.5"), to("233.252.0.1"));
    // A group outside the link-local scope: not replicated.
    assert_eq!(f.encap(&wide, dev.index).0, TC_ACT_SHOT);
    assert_eq!(f.stats(id).drops[drop::MULTICAST_SCOPE as usize], 1);
    // Hellos: two replicas each, five a second: the third packet would be the sixth replica.
    // (Where the replicas go is the namespace tests' part: here the underlay has no next hops.)
    let rate_drops = |f: &mut Fixture| {
        f.encap(&hello, dev.index);
        f.stats(id).drops[drop::MULTICAST_RATE as usize]
    };
    assert_eq!([rate_drops(&mut f), rate_drops(&mut f), rate_drops(&mut f)], [0, 0, 1]);
    assert_eq!(f.stats(id).drops[drop::MULTICAST_SCOPE as usize], 1);
}
