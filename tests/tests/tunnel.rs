//! A point-to-point GRE tunnel between two site namespaces across an underlay router: real ping
//! and TCP across the overlay, what tshark sees on the wire, the counters, and `gre down`.

use std::{net::SocketAddr, path::Path, thread, time::Duration};

use gre_tests::{
    capture::{self, Capture},
    gre, privilege,
    topology::{A_OVERLAY4, A_OVERLAY6, A_UNDERLAY, A_UNDERLAY6, B_OVERLAY4, B_OVERLAY6, B_UNDERLAY, B_UNDERLAY6, TwoSites, ns_sh, sh},
    traffic,
};
use serde_json::Value;

const KEY: u32 = 0x0102_0304;

fn counters(ns: &str, instance: &str) -> (u64, u64, u64, u64) {
    let n = |f: &str| gre::counter(ns, instance, f);
    (n("rx_packets"), n("rx_bytes"), n("tx_packets"), n("tx_bytes"))
}

fn drops(ns: &str, instance: &str) -> u64 {
    gre::counters::drops(&gre::show(ns, instance).expect("gre show -j"))
}

#[test]
fn keyed_tunnel_carries_ping_and_tcp() {
    if !privilege::require_root("keyed_tunnel_carries_ping_and_tcp") {
        return;
    }
    let mut sites = TwoSites::new("gt").expect("topology");
    let (ia, ib) = sites.tunnel(Some(KEY)).expect("gre up");
    let (a, b) = (sites.a.clone(), sites.b.clone());

    // The tunnel netdev: MTU = underlay 1500 - 28 (IPv4 20 + GRE with key 8), NOARP.
    let link = ns_sh(&a, &["ip", "-d", "link", "show", "gre0"]).expect("ip link");
    assert!(link.contains("mtu 1472"), "{link}");
    assert!(link.contains("NOARP"), "{link}");
    assert!(ns_sh(&a, &["ip", "addr", "show", "gre0"]).unwrap().contains("203.0.113.1/30"));

    // Ping both ways, IPv4 and IPv6 inner. Exactly what was sent is counted: the tunnel is silent
    // otherwise (no link-local, no ND on a NOARP device).
    let before_a = counters(&a, &ia);
    let before_b = counters(&b, &ib);
    traffic::ping(&a, B_OVERLAY4, 5).expect("ping a -> b");
    traffic::ping(&b, A_OVERLAY4, 5).expect("ping b -> a");
    traffic::ping(&a, B_OVERLAY6, 5).expect("ping6 a -> b");
    traffic::ping(&b, A_OVERLAY6, 5).expect("ping6 b -> a");
    let after_a = counters(&a, &ia);
    let after_b = counters(&b, &ib);
    // 10 IPv4 echo (84 bytes) and 10 IPv6 echo (104 bytes) packets each way.
    let bytes = 10 * 84 + 10 * 104;
    assert_eq!(after_a.0 - before_a.0, 20, "a rx packets");
    assert_eq!(after_a.2 - before_a.2, 20, "a tx packets");
    assert_eq!(after_a.1 - before_a.1, bytes, "a rx bytes");
    assert_eq!(after_a.3 - before_a.3, bytes, "a tx bytes");
    assert_eq!((after_b.0 - before_b.0, after_b.2 - before_b.2), (20, 20), "b packets");
    // The kernel's own view agrees: gre0 received what the datapath injected.
    let rx_kernel: u64 = ns_sh(&b, &["cat", "/sys/class/net/gre0/statistics/rx_packets"]).map_or(0, |s| s.trim().parse().unwrap());
    assert!(rx_kernel >= after_b.0 - before_b.0, "kernel rx {rx_kernel}");

    // 10 MB of TCP across the overlay, content verified.
    let server: SocketAddr = format!("{B_OVERLAY4}:5001").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&b, server, &a, 10 << 20).expect("tcp transfer");
    assert_eq!(sent, received, "the bytes received are the bytes sent");
    let server6: SocketAddr = format!("[{B_OVERLAY6}]:5002").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&b, server6, &a, 2 << 20).expect("tcp transfer over IPv6");
    assert_eq!(sent, received);
    assert_eq!(drops(&a, &ia), 0, "no drops on a");
    assert_eq!(drops(&b, &ib), 0, "no drops on b");

    // The underlay router forwarded GRE, not overlay traffic.
    let wan_routes = ns_sh(&sites.wan, &["ip", "route"]).unwrap();
    assert!(!wan_routes.contains("203.0.113"), "{wan_routes}");

    // Take b down: nothing of it remains.
    let pins = Path::new(gre_user::instance::PIN_ROOT).join(&ib);
    assert!(pins.exists());
    let prog_ids: Vec<u32> = std::fs::read_dir(pins.join("progs"))
        .expect("pinned programs")
        .map(|e| aya::programs::ProgramInfo::from_pin(e.unwrap().path()).expect("program info").id())
        .collect();
    assert_eq!(prog_ids.len(), 5, "decap, encap, replicate, LAN and the NAPI program are pinned");
    sites.lab.gre_down(&b, &ib).expect("gre down");
    // The kernel frees released programs after an RCU grace period: give it a moment.
    let still_loaded = || -> Vec<u32> {
        let loaded: Vec<u32> = aya::programs::loaded_programs().filter_map(Result::ok).map(|p| p.id()).collect();
        prog_ids.iter().copied().filter(|id| loaded.contains(id)).collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !still_loaded().is_empty() && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(still_loaded(), Vec::<u32>::new(), "programs still loaded after gre down");
    assert!(!pins.exists(), "pins of {ib} remain");
    let links = sh(&["ip", "-n", &b, "-br", "link"]).unwrap();
    assert!(!links.contains("gre0"), "tunnel netdev remains: {links}");
    let eth0 = sh(&["ip", "-n", &b, "link", "show", "eth0"]).unwrap();
    assert!(!eth0.contains("xdp"), "XDP program still attached: {eth0}");
    assert!(gre::run(&b, &ib, &["show"]).is_err(), "show after down must fail");
    // The other instance is untouched.
    assert!(Path::new(gre_user::instance::PIN_ROOT).join(&ia).exists());
    traffic::ping(&a, A_OVERLAY4, 1).expect("a's own tunnel address still answers");

    // Dropping the lab removes the namespaces and a's instance.
    let names = [sites.a.clone(), sites.wan.clone(), sites.b.clone()];
    drop(sites);
    let listed = sh(&["ip", "netns", "list"]).unwrap();
    for ns in &names {
        assert!(!listed.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())), "{ns} remains");
    }
    assert!(!Path::new(gre_user::instance::PIN_ROOT).join(&ia).exists(), "pins of {ia} remain");
}

#[test]
fn tshark_decodes_the_tunnel_traffic() {
    if !privilege::require_root("tshark_decodes_the_tunnel_traffic") {
        return;
    }
    let mut sites = TwoSites::new("gs").expect("topology");
    sites.tunnel(Some(KEY)).expect("gre up");
    let (a, wan) = (sites.a.clone(), sites.wan.clone());
    // Capture where the router receives from a: XDP on a's own eth0 would hide received GRE.
    let fields = ["ip.src", "ip.dst", "ip.proto", "gre.flags_and_version", "gre.key", "gre.proto", "ip.flags.df"];
    let packets = Capture::first(&wan, "a0", "ip proto 47", 16, &fields, || {
        traffic::ping(&a, B_OVERLAY4, 4).expect("ping");
        traffic::ping(&a, B_OVERLAY6, 4).expect("ping6");
    });
    // 4 echo requests and 4 replies, IPv4 and IPv6 inner.
    assert_eq!(packets.len(), 16, "{packets:?}");
    let field = |p: &Value, f: &str| Some(capture::field(p, f)).filter(|v| !v.is_empty());
    let mut protos = Vec::new();
    for p in &packets {
        assert_eq!(field(p, "_ws.malformed"), None, "malformed flag on {p}");
        let src = field(p, "ip.src").unwrap();
        let dst = field(p, "ip.dst").unwrap();
        // Outer header first: a's underlay to b's, or b's to a's for replies.
        assert!((src[0] == A_UNDERLAY && dst[0] == B_UNDERLAY) || (src[0] == B_UNDERLAY && dst[0] == A_UNDERLAY), "outer {src:?} -> {dst:?}");
        assert_eq!(field(p, "ip.proto").unwrap()[0], "47");
        assert_eq!(field(p, "gre.flags_and_version").unwrap()[0], "0x2000", "K bit only, version 0");
        assert_eq!(field(p, "gre.key").unwrap()[0], format!("0x{KEY:08x}"));
        assert_eq!(field(p, "ip.flags.df").unwrap()[0], "1", "DF set on the outer header (pmtudisc)");
        protos.push(field(p, "gre.proto").unwrap()[0].clone());
    }
    assert_eq!(protos.iter().filter(|p| *p == "0x0800").count(), 8, "{protos:?}");
    assert_eq!(protos.iter().filter(|p| *p == "0x86dd").count(), 8, "{protos:?}");
}

#[test]
fn keyless_tunnel_and_key_mismatch() {
    if !privilege::require_root("keyless_tunnel_and_key_mismatch") {
        return;
    }
    let mut sites = TwoSites::new("gk").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    // a sends with key 7, b expects no key: nothing gets through, and b counts why.
    let ca = TwoSites::site_config(A_UNDERLAY, B_UNDERLAY, Some(7), A_OVERLAY4, A_OVERLAY6);
    let cb = TwoSites::site_config(B_UNDERLAY, A_UNDERLAY, None, B_OVERLAY4, B_OVERLAY6);
    let ia = sites.lab.gre_up(&a, "a", &ca).expect("gre up a");
    let ib = sites.lab.gre_up(&b, "b", &cb).expect("gre up b");
    let link = ns_sh(&b, &["ip", "link", "show", "gre0"]).unwrap();
    assert!(link.contains("mtu 1476"), "keyless overhead is 24: {link}");
    assert!(traffic::ping(&a, B_OVERLAY4, 3).is_err(), "a keyed packet must not match a keyless tunnel");
    let v = gre::show(&b, &ib).unwrap();
    assert_eq!(v["drops"]["key_mismatch"], 3, "{v}");
    assert_eq!(v["tunnels"][0]["rx_packets"], 0, "{v}");
    // Fix a's side: now both are keyless and traffic flows.
    sites.lab.gre_down(&a, &ia).expect("down a");
    let ca = TwoSites::site_config(A_UNDERLAY, B_UNDERLAY, None, A_OVERLAY4, A_OVERLAY6);
    sites.lab.gre_up(&a, "a2", &ca).expect("gre up a again");
    traffic::ping(&a, B_OVERLAY4, 3).expect("keyless ping");
    let v = gre::show(&b, &ib).unwrap();
    assert_eq!(v["tunnels"][0]["rx_packets"], 3, "{v}");
    assert_eq!(v["tunnels"][0]["okey"], Value::Null, "{v}");
}

/// The datapath sends and receives GRE past the kernel's xfrm: with an IPsec policy for the
/// tunnel's GRE in place, `gre up` refuses (naming the policy) instead of sending in clear text
/// what the operator believes protected, and changes nothing; without one it comes up.
#[test]
fn an_ipsec_policy_for_the_tunnel_refuses_gre_up() {
    if !privilege::require_root("an_ipsec_policy_for_the_tunnel_refuses_gre_up") {
        return;
    }
    let mut sites = TwoSites::new("gx").expect("topology");
    let a = sites.a.clone();
    let config = TwoSites::site_config(A_UNDERLAY, B_UNDERLAY, Some(KEY), A_OVERLAY4, A_OVERLAY6);
    // `ip xfrm policy VERB` for PROTO from SRC to DST in direction DIR, transport-mode ESP.
    let policy = |verb: &str, src: &str, dst: &str, proto: &str, dir: &str| {
        let (src, dst) = (format!("{src}/32"), format!("{dst}/32"));
        let mut cmd = vec!["ip", "xfrm", "policy", verb, "src", &src, "dst", &dst, "proto", proto, "dir", dir];
        if verb == "add" {
            cmd.extend(["tmpl", "proto", "esp", "mode", "transport"]);
        }
        ns_sh(&a, &cmd).map(|_| ())
    };
    for dir in ["out", "in"] {
        let (src, dst) = if dir == "out" { (A_UNDERLAY, B_UNDERLAY) } else { (B_UNDERLAY, A_UNDERLAY) };
        policy("add", src, dst, "gre", dir).expect("xfrm policy");
        let e = sites.lab.gre_up(&a, "a", &config).expect_err("gre up must refuse a tunnel an IPsec policy protects");
        let msg = format!("{e:#}");
        assert!(msg.contains(&format!("the xfrm policy `src {src}/32 dst {dst}/32 proto 47 dir {dir}` would protect its GRE")), "{msg}");
        assert!(ns_sh(&a, &["ip", "link", "show", "gre0"]).is_err(), "nothing was made");
        policy("delete", src, dst, "gre", dir).expect("delete");
    }
    // A policy for other traffic (ESP's own, say UDP) does not stand in the way.
    policy("add", A_UNDERLAY, B_UNDERLAY, "udp", "out").expect("xfrm policy");
    sites.lab.gre_up(&a, "a", &config).expect("gre up without a policy for GRE");
}

/// A hop with a smaller MTU in the underlay: its ICMP "fragmentation needed" (IPv4) or "packet
/// too big" (IPv6) about our GRE lowers the tunnel's MTU (with `gre daemon` running, as ip_gre
/// lowers its path MTU), so TCP through the tunnel learns the smaller size and completes instead
/// of black-holing. Over IPv4 and IPv6 underlays.
#[test]
fn a_smaller_underlay_hop_lowers_the_tunnel_mtu() {
    if !privilege::require_root("a_smaller_underlay_hop_lowers_the_tunnel_mtu") {
        return;
    }
    // IPv4 outer 20 + GRE with key 8; IPv6 outer 40 + 8.
    for (tag, local, remote, overhead) in [("gpm", A_UNDERLAY, B_UNDERLAY, 28), ("gpm6", A_UNDERLAY6, B_UNDERLAY6, 48)] {
        let mut sites = TwoSites::new(tag).expect("topology");
        let (a, b) = (sites.a.clone(), sites.b.clone());
        ns_sh(&sites.wan, &["ip", "link", "set", "b0", "mtu", "1400"]).unwrap();
        let (ia, _) = sites.tunnel_with(local, remote, &format!("key = {KEY}\nttl = 64\n")).expect("gre up");
        let mtu = |ns: &str| ns_sh(ns, &["cat", "/sys/class/net/gre0/mtu"]).unwrap().trim().parse::<u32>().unwrap();
        assert_eq!(mtu(&a), 1500 - overhead, "{tag}");
        let _daemon = gre::Daemon::start(&a, &ia);
        thread::sleep(Duration::from_millis(500));
        let server: SocketAddr = format!("{B_OVERLAY4}:5010").parse().unwrap();
        let started = std::time::Instant::now();
        let (sent, received) = traffic::tcp_transfer(&b, server, &a, 2 << 20).expect("TCP across the smaller hop");
        assert_eq!(sent, received, "{tag}");
        assert!(started.elapsed() < Duration::from_secs(20), "{tag}: took {:?}", started.elapsed());
        assert_eq!(mtu(&a), 1400 - overhead, "{tag}: the tunnel MTU follows the path");
        let v = gre::show(&a, &ia).unwrap();
        assert_eq!(gre::counters::tunnel_drops(&v), 0, "{tag}: {}", v["tunnels"][0]);
    }
}
