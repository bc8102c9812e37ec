//! LAN hosts behind two sites: traffic between them takes the XDP fast paths both ways (encap
//! straight from the LAN port, decap straight to it), and falls back to the kernel for what the
//! fast path must not handle: path MTU discovery and fragmentation.

use std::net::SocketAddr;

use gre_tests::{
    gre, privilege,
    topology::{HOST_A, HOST_B, SitesWithLans, ns_sh},
    traffic,
};

fn counter(ns: &str, instance: &str, field: &str) -> u64 {
    let v = gre::show(ns, instance).expect("gre show");
    v["tunnels"][0][field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"))
}

#[test]
fn lan_to_lan_takes_the_fast_paths_and_pmtu_works() {
    if !privilege::require_root("lan_to_lan_takes_the_fast_paths_and_pmtu_works") {
        return;
    }
    let mut lab = SitesWithLans::new("gl").expect("topology");
    let (ia, ib) = lab.tunnel(77).expect("gre up");
    let (a, b, ha, hb) = (lab.sites.a.clone(), lab.sites.b.clone(), lab.host_a.clone(), lab.host_b.clone());
    let routes = gre::show(&a, &ia).unwrap()["routes"].clone();
    assert_eq!(routes, serde_json::json!([{"prefix": "203.0.113.128/26", "tunnel": "gre0", "via": null}]));

    // The first packets resolve neighbours through the kernel; then everything is known.
    traffic::ping(&ha, HOST_B, 2).expect("warm-up ping");
    let before = [counter(&a, &ia, "fast_tx"), counter(&b, &ib, "fast_rx"), counter(&b, &ib, "fast_tx"), counter(&a, &ia, "fast_rx")];
    traffic::ping(&ha, HOST_B, 5).expect("ping host a -> host b");
    let after = [counter(&a, &ia, "fast_tx"), counter(&b, &ib, "fast_rx"), counter(&b, &ib, "fast_tx"), counter(&a, &ia, "fast_rx")];
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
    let fast_before = counter(&a, &ia, "fast_tx");
    let server: SocketAddr = format!("{HOST_B}:5005").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&hb, server, &ha, 10 << 20).expect("tcp host to host");
    assert_eq!(sent, received);
    let fast = counter(&a, &ia, "fast_tx") - fast_before;
    assert!(fast > 7000, "{fast} of the data packets took the encap fast path");
    let drops: u64 = gre::show(&b, &ib).unwrap()["drops"].as_object().unwrap().values().map(|d| d.as_u64().unwrap()).sum();
    assert_eq!(drops, 0);
}
