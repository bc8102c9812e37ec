//! Runtime changes to a running instance: `gre tunnel|peer|route add|del`, `gre up` over it —
//! checked first, made whole or not at all, a full map reported.

use gre_tests::{
    gre, privilege,
    topology::{HUB_NBMA, HUB_OVERLAY, HubAndSpokes, ns_sh},
    traffic,
};
use serde_json::Value;

fn rx(ns: &str, instance: &str) -> u64 {
    gre::show(ns, instance).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap()
}

fn peers(ns: &str, instance: &str) -> Value {
    gre::show(ns, instance).unwrap()["peers"].clone()
}

/// Spokes that know only the hub, and a hub that knows nobody: peers added at run time make
/// traffic flow through the hub, then directly; removing one sends it back through the hub.
#[test]
fn peers_added_and_removed_at_run_time() {
    if !privilege::require_root("peers_added_and_removed_at_run_time") {
        return;
    }
    let mut t = HubAndSpokes::new("gr", 2).expect("topology");
    let hub = t.hub.clone();
    let (ih, spokes) = t.up("", &format!("nhs = \"{HUB_OVERLAY}\"\n"), "").unwrap();
    let (s1, i1) = spokes[0].clone();
    assert!(traffic::ping(&s1, "203.0.113.2", 1).is_err(), "the hub does not know the spokes yet");

    for i in 1..=2u8 {
        gre::run(&hub, &ih, &["peer", "add", "gre0", &HubAndSpokes::spoke_overlay(i), &HubAndSpokes::spoke_nbma(i)]).expect("peer add");
    }
    traffic::ping(&s1, "203.0.113.2", 2).expect("through the hub");
    // A direct peer on both spokes: the hub sees none of the next pings.
    gre::run(&s1, &i1, &["peer", "add", "gre0", "203.0.113.2", &HubAndSpokes::spoke_nbma(2)]).unwrap();
    gre::run(&spokes[1].0, &spokes[1].1, &["peer", "add", "gre0", "203.0.113.1", &HubAndSpokes::spoke_nbma(1)]).unwrap();
    let before = rx(&hub, &ih);
    let count = |ns: &str, i: &str, overlay: &str, k: &str| {
        peers(ns, i).as_array().unwrap().iter().find(|p| p["overlay"] == overlay).map_or(0, |p| p[k].as_u64().unwrap())
    };
    let (tx0, rx0) = (count(&s1, &i1, "203.0.113.2", "tx_packets"), count(&s1, &i1, "203.0.113.2", "rx_packets"));
    traffic::ping(&s1, "203.0.113.2", 3).expect("direct");
    assert_eq!(rx(&hub, &ih), before, "nothing crossed the hub");
    // Per-peer counters: three echo requests to spoke 2 (84 bytes each), three replies from it.
    assert_eq!(count(&s1, &i1, "203.0.113.2", "tx_packets") - tx0, 3);
    assert_eq!(count(&s1, &i1, "203.0.113.2", "rx_packets") - rx0, 3);
    assert_eq!(count(&s1, &i1, "203.0.113.2", "tx_bytes"), 84 * count(&s1, &i1, "203.0.113.2", "tx_packets"));
    // The hub relayed the first two pings each way: two from spoke 1, two to spoke 2.
    assert_eq!((count(&hub, &ih, "203.0.113.1", "rx_packets"), count(&hub, &ih, "203.0.113.2", "tx_packets")), (2, 2));
    let p = peers(&s1, &i1);
    assert!(p.as_array().unwrap().iter().any(|p| p["overlay"] == "203.0.113.2" && p["kind"] == "static" && p["nbma"] == "198.51.100.33"), "{p}");
    assert!(gre::run(&s1, &i1, &["showconf"]).unwrap().contains("overlay = \"203.0.113.2\""));

    // Refused, and nothing changes: unknown tunnel, duplicate, wrong family, not unicast.
    let unchanged = peers(&s1, &i1);
    for (args, why) in [
        (vec!["peer", "add", "gre9", "203.0.113.3", "198.51.100.49"], "no tunnel named \"gre9\""),
        (vec!["peer", "add", "gre0", "203.0.113.2", "198.51.100.49"], "has a static peer 203.0.113.2 already"),
        (vec!["peer", "add", "gre0", "203.0.113.3", "2001:db8::3"], "of the tunnel's outer family"),
        (vec!["peer", "add", "gre0", "224.0.0.5", "198.51.100.49"], "must be unicast"),
        (vec!["peer", "del", "gre0", "203.0.113.9"], "has no peer 203.0.113.9"),
    ] {
        let e = gre::run(&s1, &i1, &args).unwrap_err().to_string();
        assert!(e.contains(why), "{args:?}: {e}");
    }
    // (Without the seconds since last use, which move on by themselves.)
    let timeless = |mut v: Value| {
        v.as_array_mut().unwrap().iter_mut().for_each(|p| p["used_ago"] = Value::Null);
        v
    };
    assert_eq!(timeless(peers(&s1, &i1)), timeless(unchanged));

    // Removed: spoke 1's traffic goes through the hub again.
    gre::run(&s1, &i1, &["peer", "del", "gre0", "203.0.113.2"]).unwrap();
    let before = rx(&hub, &ih);
    traffic::ping(&s1, "203.0.113.2", 2).expect("through the hub again");
    assert!(rx(&hub, &ih) >= before + 2);
}

/// Routes added and removed at run time go into the kernel and the datapath together; the
/// tunnel's own subnet is never taken from the kernel; a full route table is reported and
/// leaves nothing behind.
#[test]
fn routes_added_and_removed_at_run_time() {
    if !privilege::require_root("routes_added_and_removed_at_run_time") {
        return;
    }
    let mut t = HubAndSpokes::new("gR", 1).expect("topology");
    let s1 = t.spokes[0].clone();
    let nhs = format!("nhs = \"{HUB_OVERLAY}\"\n");
    let i1 = t.lab.gre_up(&s1, "s1", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(1), "203.0.113.1", &nhs, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let routes = || gre::show(&s1, &i1).unwrap()["routes"].clone();
    let kernel = |prefix: &str| ns_sh(&s1, &["ip", "route", "show", prefix]).unwrap();

    gre::run(&s1, &i1, &["route", "add", "198.51.100.200/29", "gre0", "--via", HUB_OVERLAY]).expect("route add");
    assert_eq!(routes(), serde_json::json!([{ "prefix": "198.51.100.200/29", "tunnel": "gre0", "via": HUB_OVERLAY, "source": "configured" }]));
    assert!(kernel("198.51.100.200/29").contains("dev gre0 proto static"), "{}", kernel("198.51.100.200/29"));
    let e = gre::run(&s1, &i1, &["route", "add", "198.51.100.200/29", "gre0"]).unwrap_err().to_string();
    assert!(e.contains("exists already"), "{e}");
    gre::run(&s1, &i1, &["route", "del", "198.51.100.200/29"]).expect("route del");
    assert_eq!(routes(), serde_json::json!([]));
    assert_eq!(kernel("198.51.100.200/29"), "");

    // The tunnel's subnet: the kernel's connected route stays through add and del.
    let connected = kernel("203.0.113.0/24");
    gre::run(&s1, &i1, &["route", "add", "203.0.113.0/24", "gre0", "--via", HUB_OVERLAY]).unwrap();
    gre::run(&s1, &i1, &["route", "del", "203.0.113.0/24"]).unwrap();
    assert_eq!(kernel("203.0.113.0/24"), connected);
    assert!(!connected.is_empty());

    // Fill the route table behind gre's back, then ask for one more.
    let dir = std::path::Path::new(gre_user::instance::PIN_ROOT).join(&i1).join("maps");
    let mut maps = gre_user::maps::Maps::open_pinned(&dir).unwrap();
    let mut n = 0u32;
    while maps.add_route(format!("2001:db8:f::{n:x}/128").parse().unwrap(), 0, None).is_ok() {
        n += 1;
    }
    assert_eq!(n, gre_common::maps::MAX_ROUTES);
    let e = gre::run(&s1, &i1, &["route", "add", "198.51.100.208/28", "gre0"]).unwrap_err().to_string();
    assert!(e.contains("ROUTES is full"), "{e}");
    assert_eq!(kernel("198.51.100.208/28"), "", "the kernel route was taken back");
}

/// `gre up` over a running instance makes the file's routes and static peers the running ones
/// and reloads the programs; a file that changes a tunnel is refused and changes nothing.
#[test]
fn up_over_a_running_instance_converges() {
    if !privilege::require_root("up_over_a_running_instance_converges") {
        return;
    }
    let mut t = HubAndSpokes::new("gu", 2).expect("topology");
    let hub = t.hub.clone();
    let with = |peers: &[(&str, &str, bool)], route: &str, via: &str, key: u32| {
        let mut c = HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "", &[]).replace("key = 100", &format!("key = {key}"));
        for (overlay, nbma, multicast) in peers {
            c += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{overlay}\"\nnbma = \"{nbma}\"\nmulticast = {multicast}\n");
        }
        c + &format!("\n[[route]]\nprefix = \"{route}\"\ntunnel = \"gre0\"\nvia = \"{via}\"\n")
    };
    let v1 = with(&[("203.0.113.1", "198.51.100.17", false), ("203.0.113.2", "198.51.100.33", false)], "198.51.100.200/29", "203.0.113.1", 100);
    let ih = t.lab.gre_up(&hub, "hub", &v1).unwrap();
    let s2 = t.spokes[1].clone();
    let nhs = format!("nhs = \"{HUB_OVERLAY}\"\n");
    t.lab.gre_up(&s2, "s2", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(2), "203.0.113.2", &nhs, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let prog = |ns: &str| {
        ns_sh(ns, &["ip", "-d", "link", "show", "dev", "eth0"]).unwrap().split("prog/xdp id ").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let before = prog(&hub);

    let v2 = with(&[("203.0.113.2", "198.51.100.33", false), ("203.0.113.3", "198.51.100.49", true)], "198.51.100.208/29", "203.0.113.2", 100);
    let path = std::env::temp_dir().join(format!("gre-converge-{}.toml", std::process::id()));
    std::fs::write(&path, &v2).unwrap();
    let out = gre::run(&hub, &ih, &["up", "-c", path.to_str().unwrap()]).expect("gre up over the running instance");
    assert!(out.contains("routes +1 -1, peers +1 -1"), "{out}");
    let show = gre::show(&hub, &ih).unwrap();
    let overlays: Vec<&str> = show["peers"].as_array().unwrap().iter().map(|p| p["overlay"].as_str().unwrap()).collect();
    assert_eq!(overlays, ["203.0.113.2", "203.0.113.3"]);
    assert_eq!(show["routes"], serde_json::json!([{ "prefix": "198.51.100.208/29", "tunnel": "gre0", "via": "203.0.113.2", "source": "configured" }]));
    assert_ne!(prog(&hub), before, "the programs were reloaded");
    traffic::ping(&s2, HUB_OVERLAY, 2).expect("spoke 2 still reaches the hub");
    // The same file again: nothing to change but the programs.
    let out = gre::run(&hub, &ih, &["up", "-c", path.to_str().unwrap()]).unwrap();
    assert!(out.contains("routes +0 -0, peers +0 -0"), "{out}");

    // Another key is another tunnel: refused, nothing changed.
    std::fs::write(&path, with(&[], "198.51.100.216/29", "203.0.113.2", 101)).unwrap();
    let e = gre::run(&hub, &ih, &["up", "-c", path.to_str().unwrap()]).unwrap_err().to_string();
    let _ = std::fs::remove_file(&path);
    assert!(e.contains("tunnel settings differ from the running ones (gre0: ikey: Some(101), okey: Some(101))"), "{e}");
    let after = gre::show(&hub, &ih).unwrap();
    assert_eq!((after["peers"].as_array().unwrap().len(), after["routes"].clone()), (2, show["routes"].clone()));
}

/// `gre tunnel add` and `gre tunnel del` on a running instance: the other tunnel carries on,
/// the new one works at once, refusals change nothing, and a slot freed and reused starts from
/// zero.
#[test]
fn tunnels_added_and_removed_at_run_time() {
    use gre_tests::topology::{A_UNDERLAY, B_OVERLAY4, B_UNDERLAY, TwoSites};
    if !privilege::require_root("tunnels_added_and_removed_at_run_time") {
        return;
    }
    let mut sites = TwoSites::new("gT").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    let (ia, ib) = sites.tunnel(Some(5)).expect("gre0");
    let extra = |local: &str, remote: &str, address: &str, key: u32| {
        format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre1\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nkey = {key}\naddress = [\"{address}/30\"]\n"
        )
    };
    let file = |ns: &str, text: String| {
        let p = std::env::temp_dir().join(format!("gre-tunnel-add-{ns}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let fa = file(&a, extra(A_UNDERLAY, B_UNDERLAY, "203.0.113.5", 6));
    let fb = file(&b, extra(B_UNDERLAY, A_UNDERLAY, "203.0.113.6", 6));
    for (ns, inst, f) in [(&a, &ia, &fa), (&b, &ib, &fb)] {
        let out = gre::run(ns, inst, &["tunnel", "add", "-c", f.to_str().unwrap()]).expect("tunnel add");
        assert!(out.contains("added gre1"), "{out}");
    }
    traffic::ping(&a, "203.0.113.6", 2).expect("over the new tunnel");
    traffic::ping(&a, B_OVERLAY4, 2).expect("over the first one");
    let names = |ns: &str, i: &str| {
        gre::show(ns, i).unwrap()["tunnels"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(&a, &ia), ["gre0", "gre1"]);
    assert!(gre::run(&a, &ia, &["showconf"]).unwrap().contains("name = \"gre1\""));

    // Refused, nothing changed: the same again, another name on gre0's match, an unknown port.
    let e = gre::run(&a, &ia, &["tunnel", "add", "-c", fa.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("defined twice"), "{e}");
    let clash = file("clash", extra(A_UNDERLAY, B_UNDERLAY, "203.0.113.9", 5).replace("gre1", "gre2"));
    let e = gre::run(&a, &ia, &["tunnel", "add", "-c", clash.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("already receives"), "{e}");
    let elsewhere = file("elsewhere", extra(A_UNDERLAY, B_UNDERLAY, "203.0.113.9", 7).replace("eth0", "eth9").replace("gre1", "gre2"));
    let e = gre::run(&a, &ia, &["tunnel", "add", "-c", elsewhere.to_str().unwrap()]).unwrap_err().to_string();
    assert!(e.contains("interface eth9 is not one of the instance's"), "{e}");
    assert_eq!(names(&a, &ia), ["gre0", "gre1"]);

    // Removed: its netdev and routes go, gre0 carries on; added back, it counts from zero.
    gre::run(&a, &ia, &["tunnel", "del", "gre1"]).expect("tunnel del");
    assert!(ns_sh(&a, &["ip", "link", "show", "gre1"]).is_err(), "the netdev is gone");
    assert_eq!(names(&a, &ia), ["gre0"]);
    traffic::ping(&a, B_OVERLAY4, 2).expect("gre0 after gre1 went");
    gre::run(&a, &ia, &["tunnel", "add", "-c", fa.to_str().unwrap()]).expect("added back");
    let t1 = gre::show(&a, &ia).unwrap()["tunnels"][1].clone();
    assert_eq!((t1["name"].as_str(), t1["tx_packets"].as_u64(), t1["id"].as_u64()), (Some("gre1"), Some(0), Some(1)), "{t1}");
    traffic::ping(&a, "203.0.113.6", 1).expect("over the tunnel added back");
    for f in [fa, fb, clash, elsewhere] {
        let _ = std::fs::remove_file(f);
    }
}

/// `[limits]` sizes the peer and route tables: a full table is reported by name, `showconf`
/// gives the limits back, `reload` keeps them, and `up` with other limits is refused.
#[test]
fn limits_size_the_tables() {
    if !privilege::require_root("limits_size_the_tables") {
        return;
    }
    let mut t = HubAndSpokes::new("gL", 1).expect("topology");
    let hub = t.hub.clone();
    let conf = HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "", &[]) + "\n[limits]\npeers = 2\nroutes = 3\n";
    let ih = t.lab.gre_up(&hub, "hub", &conf).unwrap();
    let shown = gre::run(&hub, &ih, &["showconf"]).unwrap();
    assert!(shown.contains("[limits]\npeers = 2\nroutes = 3\n"), "{shown}");

    gre::run(&hub, &ih, &["peer", "add", "gre0", "203.0.113.1", "198.51.100.17"]).expect("first peer");
    gre::run(&hub, &ih, &["peer", "add", "gre0", "203.0.113.2", "198.51.100.33"]).expect("second peer");
    let e = gre::run(&hub, &ih, &["peer", "add", "gre0", "203.0.113.3", "198.51.100.49"]).unwrap_err().to_string();
    assert!(e.contains("PEERS is full"), "{e}");
    for prefix in ["198.51.100.200/29", "198.51.100.208/29", "198.51.100.216/29"] {
        gre::run(&hub, &ih, &["route", "add", prefix, "gre0"]).expect("route within the limit");
    }
    let e = gre::run(&hub, &ih, &["route", "add", "198.51.100.224/29", "gre0"]).unwrap_err().to_string();
    assert!(e.contains("ROUTES is full"), "{e}");

    gre::run(&hub, &ih, &["reload"]).expect("reload keeps the limits");
    assert!(gre::run(&hub, &ih, &["showconf"]).unwrap().contains("[limits]\npeers = 2\nroutes = 3\n"));
    let other = t.lab.instance("other");
    let path = std::env::temp_dir().join(format!("{other}.toml"));
    std::fs::write(&path, conf.replace("peers = 2", "peers = 4")).unwrap();
    let e = gre::run(&hub, &ih, &["up", "-c", &path.to_string_lossy()]).unwrap_err().to_string();
    let _ = std::fs::remove_file(&path);
    assert!(e.contains("limits differ from the running ones (peers 2 → 4, routes 3 → 3)"), "{e}");
}
