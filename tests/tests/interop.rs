//! Real captures from other implementations through the datapath: the bytes a Cisco router sent
//! go in, and what comes out is compared with what the other Cisco router answered.

use gre_common::maps::{Tunnel, tunnel_flags};
use gre_tests::fixture::*;
use gre_user::maps::store_addr;
use pcap_file::pcap::PcapReader;

/// The frames of a capture in tests/data, in order.
fn frames(name: &str) -> Vec<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(name);
    let mut reader = PcapReader::new(std::fs::File::open(&path).expect("capture")).expect("pcap");
    let mut out = Vec::new();
    while let Some(p) = reader.next_packet() {
        out.push(p.expect("packet").data.into_owned());
    }
    out
}

#[test]
fn a_cisco_keepalive_is_answered_as_the_cisco_peer_answered_it() {
    let Some(mut f) = setup("a_cisco_keepalive_is_answered_as_the_cisco_peer_answered_it") else { return };
    // The tunnel of the router at 10.172.64.6 (addresses of the capture; nothing is sent
    // anywhere: BPF_PROG_TEST_RUN in a private namespace).
    let (id, _) = f.add(Tunnel {
        local: store_addr("10.172.64.6".parse().unwrap()),
        remote: store_addr("10.172.64.7".parse().unwrap()),
        ikey: 0x28,
        okey: 0x28,
        flags: tunnel_flags::IKEY | tunnel_flags::OKEY,
        ..Tunnel::default()
    });
    let capture = frames("cisco-gre-keepalives.pcap");
    // Frame 11: 10.172.64.7's keepalive (VLAN 1213, GRE key 0x28, Cisco MetaData, then the
    // packet to send back). Frame 12: what 10.172.64.6 sent back.
    let (keepalive, answer) = (&capture[10], &capture[11]);
    let (action, out) = f.decap(keepalive);
    assert_eq!(action, XDP_TX);
    assert_eq!(&out, answer, "byte for byte what the Cisco router answered");
    assert_eq!(f.stats(id).keepalives_answered, 1);
    // The other direction: 10.172.64.6's keepalive (frame 16), answered by .7 (frame 17).
    let (id7, _) = f.add(Tunnel {
        local: store_addr("10.172.64.7".parse().unwrap()),
        remote: store_addr("10.172.64.6".parse().unwrap()),
        ikey: 0x28,
        okey: 0x28,
        flags: tunnel_flags::IKEY | tunnel_flags::OKEY,
        ..Tunnel::default()
    });
    let (action, out) = f.decap(&capture[15]);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, capture[16]);
    assert_eq!(f.stats(id7).keepalives_answered, 1);
    // The answers themselves, arriving back at each originator: counted as returned.
    assert_eq!(f.decap(&capture[16]).0, XDP_DROP);
    assert_eq!(f.stats(id).keepalives_returned, 1);
    assert!(f.drops().iter().all(|d| *d == 0), "{:?}", f.drops());
}
