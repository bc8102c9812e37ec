//! LAN hosts behind two sites: traffic between them takes the XDP fast paths both ways (encap
//! straight from the LAN port, decap straight to it), and falls back to the kernel for what the
//! fast path must not handle: path MTU discovery and fragmentation.

use std::net::SocketAddr;

use gre_tests::{
    gre, privilege,
    topology::{HOST_A, HOST_B, SitesWithLans, ns_sh},
    traffic,
};

#[test]
fn lan_to_lan_takes_the_fast_paths_and_pmtu_works() {
    if !privilege::require_root("lan_to_lan_takes_the_fast_paths_and_pmtu_works") {
        return;
    }
    let mut lab = SitesWithLans::new("gl").expect("topology");
    let (ia, ib) = lab.tunnel(77).expect("gre up");
    let (a, b, ha, hb) = (lab.sites.a.clone(), lab.sites.b.clone(), lab.host_a.clone(), lab.host_b.clone());
    let routes = gre::show(&a, &ia).unwrap()["routes"].clone();
    assert_eq!(routes, serde_json::json!([{"prefix": "203.0.113.128/26", "tunnel": "gre0", "via": null, "source": "configured"}]));

    // The first packets resolve neighbours through the kernel; then everything is known.
    traffic::ping(&ha, HOST_B, 2).expect("warm-up ping");
    let before = [gre::counter(&a, &ia, "fast_tx"), gre::counter(&b, &ib, "fast_rx"), gre::counter(&b, &ib, "fast_tx"), gre::counter(&a, &ia, "fast_rx")];
    traffic::ping(&ha, HOST_B, 5).expect("ping host a -> host b");
    let after = [gre::counter(&a, &ia, "fast_tx"), gre::counter(&b, &ib, "fast_rx"), gre::counter(&b, &ib, "fast_tx"), gre::counter(&a, &ia, "fast_rx")];
    let delta: Vec<u64> = after.iter().zip(before).map(|(x, y)| x - y).collect();
    assert_eq!(delta, vec![5, 5, 5, 5], "requests and replies all took both fast paths (a tx, b rx, b tx, a rx)");

    // Too big for the tunnel with DF: the fast path leaves it to the kernel, which tells the
    // sender the tunnel MTU (1500 - 28).
    let out = ns_sh(&ha, &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1460", HOST_B]).err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(out.contains("mtu = 1472"), "ICMP fragmentation needed with the tunnel MTU: {out}");
    // The sender learned it: a packet of exactly 1472 bytes goes.
    traffic::ping_sized(&ha, HOST_B, 1444, true).expect("ping at the path MTU");
    // Without DF the kernel fragments before encapsulating.
    traffic::ping_sized(&hb, HOST_A, 2000, false).expect("fragmented ping");

    // TCP from host to host: MSS and path MTU adapt, data intact, mostly on the fast paths.
    let fast_before = gre::counter(&a, &ia, "fast_tx");
    let server: SocketAddr = format!("{HOST_B}:5005").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&hb, server, &ha, 10 << 20).expect("tcp host to host");
    assert_eq!(sent, received);
    let fast = gre::counter(&a, &ia, "fast_tx") - fast_before;
    assert!(fast > 7000, "{fast} of the data packets took the encap fast path");
    let drops = gre::counters::drops(&gre::show(&b, &ib).unwrap());
    assert_eq!(drops, 0);
}

/// Forwarded TCP that GRO merged on the way in reaches the tunnel netdev as GSO packets. On a
/// tunnel with checksums and sequence numbers each segment needs its own: the kernel segments
/// them on the tunnel netdev and the datapath encapsulates each (it dropped them as
/// `checksum_gso`, and numbered every segment of a packet alike).
#[test]
fn forwarded_gro_traffic_is_segmented_for_csum_and_seq() {
    if !privilege::require_root("forwarded_gro_traffic_is_segmented_for_csum_and_seq") {
        return;
    }
    let mut lab = SitesWithLans::new("gg").expect("topology");
    let (a, b, ha, hb) = (lab.sites.a.clone(), lab.sites.b.clone(), lab.host_a.clone(), lab.host_b.clone());
    // No LAN fast path here: the kernel routes, and GRO on the LAN ports merges what arrives.
    let conf = |local: &str, remote: &str, o4: &str, lan: &str| {
        format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n\
             key = 8\ncsum = true\nseq = true\naddress = [\"{o4}/30\"]\n\n[[route]]\nprefix = \"{lan}\"\ntunnel = \"gre0\"\n"
        )
    };
    let ia = lab
        .sites
        .lab
        .gre_up(&a, "a", &conf(gre_tests::topology::A_UNDERLAY, gre_tests::topology::B_UNDERLAY, "203.0.113.1", "203.0.113.128/26"))
        .expect("gre up a");
    let ib = lab
        .sites
        .lab
        .gre_up(&b, "b", &conf(gre_tests::topology::B_UNDERLAY, gre_tests::topology::A_UNDERLAY, "203.0.113.2", "203.0.113.64/26"))
        .expect("gre up b");
    for ns in [&a, &b] {
        ns_sh(ns, &["ethtool", "-K", "lan0", "gro", "on"]).unwrap();
    }
    traffic::ping(&ha, HOST_B, 2).expect("warm-up ping");
    let server: SocketAddr = format!("{HOST_B}:5006").parse().unwrap();
    let started = std::time::Instant::now();
    let (sent, received) = traffic::tcp_transfer(&hb, server, &ha, 10 << 20).expect("tcp host to host over csum and seq");
    assert_eq!(sent, received);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
    for (ns, instance) in [(&a, &ia), (&b, &ib)] {
        let v = gre::show(ns, instance).unwrap();
        assert_eq!(gre::counters::tunnel_drops(&v), 0, "{ns}: {}", v["tunnels"][0]["drops"]);
    }
}

/// With `gre daemon` running, a change in the kernel reaches the fast paths at once: the host
/// behind site b takes a new MAC address, and the very next packet decapsulated straight to it
/// goes to the new one (a cached answer used to hold the old one for up to 100 ms).
#[test]
fn a_neighbour_change_reaches_the_fast_path_at_once() {
    if !privilege::require_root("a_neighbour_change_reaches_the_fast_path_at_once") {
        return;
    }
    let mut lab = SitesWithLans::new("gn").expect("topology");
    let (_, ib) = lab.tunnel(78).expect("gre up");
    let (b, ha, hb) = (lab.sites.b.clone(), lab.host_a.clone(), lab.host_b.clone());
    let _daemon = gre::Daemon::start(&b, &ib);
    std::thread::sleep(std::time::Duration::from_millis(500));
    traffic::ping(&ha, HOST_B, 2).expect("warm-up ping");
    let fast = gre::counter(&b, &ib, "fast_rx");
    for round in 0..3u8 {
        let mac = format!("02:00:00:00:b0:0{round}");
        // A fresh answer in the cache, then the change, then a packet well within 100 ms.
        traffic::ping(&ha, HOST_B, 1).expect("ping before the change");
        ns_sh(&hb, &["ip", "link", "set", "eth0", "address", &mac]).unwrap();
        ns_sh(&b, &["ip", "neigh", "replace", HOST_B, "lladdr", &mac, "dev", "lan0", "nud", "permanent"]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        ns_sh(&ha, &["ping", "-c", "1", "-W", "1", HOST_B])
            .unwrap_or_else(|e| panic!("round {round}: the first packet after the change went to the old MAC: {e:#}"));
    }
    assert!(gre::counter(&b, &ib, "fast_rx") > fast, "the packets took the fast path");
}
