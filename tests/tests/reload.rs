//! `gre reload`: new programs, same maps, no packet lost.

use gre_tests::{
    gre, privilege,
    topology::{A_OVERLAY4, B_OVERLAY4, TwoSites, ns_sh},
    traffic,
};

/// The id of the XDP program attached to `dev` in `ns`.
fn xdp_prog_id(ns: &str, dev: &str) -> String {
    let out = ns_sh(ns, &["ip", "-d", "link", "show", "dev", dev]).unwrap();
    let at = out.find("prog/xdp id ").unwrap_or_else(|| panic!("no XDP on {dev}: {out}"));
    out[at + 12..].split_whitespace().next().unwrap().to_string()
}

/// 100 000 numbered datagrams cross the tunnel while both sites reload their programs three
/// times each: every datagram arrives, the counters count every one, and the programs on the
/// hooks are new ones.
#[test]
fn reload_loses_nothing() {
    if !privilege::require_root("reload_loses_nothing") {
        return;
    }
    let mut sites = TwoSites::new("gz").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    let (ia, ib) = sites.tunnel(Some(9)).expect("tunnel");
    traffic::ping(&a, B_OVERLAY4, 1).expect("the tunnel works");
    let (tx0, rx0) = (gre::counter(&a, &ia, "tx_packets"), gre::counter(&b, &ib, "rx_packets"));
    let ids0 = (xdp_prog_id(&a, "eth0"), xdp_prog_id(&b, "eth0"));

    const COUNT: u32 = 100_000;
    let (na, nb) = (a.clone(), b.clone());
    let stream =
        std::thread::spawn(move || traffic::udp_stream(&na, A_OVERLAY4.parse().unwrap(), &nb, format!("{B_OVERLAY4}:7000").parse().unwrap(), COUNT, 20_000));
    let mut ids = vec![ids0.clone()];
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(700));
        for (ns, inst) in [(&a, &ia), (&b, &ib)] {
            let out = gre::run(ns, inst, &["reload"]).expect("gre reload");
            assert!(out.contains("links run the new programs"), "{out}");
        }
        ids.push((xdp_prog_id(&a, "eth0"), xdp_prog_id(&b, "eth0")));
    }
    let missing = stream.join().unwrap().expect("stream");
    assert!(missing.is_empty(), "{} of {COUNT} datagrams lost, first {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_eq!(gre::counter(&a, &ia, "tx_packets") - tx0, u64::from(COUNT), "a counted every datagram it sent");
    assert_eq!(gre::counter(&b, &ib, "rx_packets") - rx0, u64::from(COUNT), "b counted every datagram it received");
    for w in ids.windows(2) {
        assert!(w[0].0 != w[1].0 && w[0].1 != w[1].1, "every reload put new programs on the hooks: {ids:?}");
    }
    // Still one instance, still working, still as configured.
    traffic::ping(&a, B_OVERLAY4, 2).expect("after the reloads");
    let pins = std::fs::read_dir(std::path::Path::new(gre_user::instance::PIN_ROOT).join(&ia).join("progs")).unwrap().count();
    assert_eq!(pins, 5, "one pin per program");
}

/// Sequence numbers live in a map that a reload keeps: after one, the sender's numbers go on
/// where they were (a receiver with `iseq` would drop a restart from zero as old).
#[test]
fn reload_keeps_sequence_numbers() {
    if !privilege::require_root("reload_keeps_sequence_numbers") {
        return;
    }
    let mut sites = TwoSites::new("gq").expect("topology");
    let (a, wan) = (sites.a.clone(), sites.wan.clone());
    let (ia, _ib) = sites.tunnel_with(gre_tests::topology::A_UNDERLAY, gre_tests::topology::B_UNDERLAY, "key = 9\nseq = true\n").expect("tunnel");
    let mut capture = gre_tests::capture::Capture::start(&wan, "a0", "ip proto 47 and src host 198.51.100.1");
    traffic::ping(&a, B_OVERLAY4, 3).expect("before");
    gre::run(&a, &ia, &["reload"]).expect("gre reload");
    traffic::ping(&a, B_OVERLAY4, 3).expect("after: b's iseq accepts what a sends");
    let packets = capture.decode("gre", &["gre.sequence_number"]);
    let seqs: Vec<u64> = packets.iter().map(|p| gre_tests::capture::field(p, "gre.sequence_number")[0].parse().unwrap()).collect();
    assert_eq!(seqs.len(), 6, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "one run of numbers across the reload: {seqs:?}");
}
