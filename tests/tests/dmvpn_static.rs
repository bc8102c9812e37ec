//! A hub and two spokes on one multipoint tunnel, with static peers (no NHRP yet): spoke-to-spoke
//! traffic without a peer entry crosses the hub; with one it goes direct.

use gre_tests::{
    gre, privilege,
    topology::{Lab, ns_sh, sh},
    traffic,
};

const HUB: &str = "203.0.113.254";
const SPOKE1: &str = "203.0.113.1";
const SPOKE2: &str = "203.0.113.2";

fn config(local: &str, overlay: &str, nhs: Option<&str>, peers: &[(&str, &str)]) -> String {
    let nhs = nhs.map_or_else(String::new, |n| format!("nhs = \"{n}\"\n"));
    let mut c = format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nkey = 100\n{nhs}address = [\"{overlay}/24\"]\n"
    );
    for (overlay, nbma) in peers {
        c += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{overlay}\"\nnbma = \"{nbma}\"\n");
    }
    c
}

fn counters(ns: &str, instance: &str) -> (u64, u64) {
    let v = gre::show(ns, instance).expect("show");
    (v["tunnels"][0]["rx_packets"].as_u64().unwrap(), v["tunnels"][0]["tx_packets"].as_u64().unwrap())
}

#[test]
fn spokes_talk_through_the_hub_or_direct() {
    if !privilege::require_root("spokes_talk_through_the_hub_or_direct") {
        return;
    }
    let mut lab = Lab::new("gd");
    let wan = lab.add_ns("wan").unwrap();
    let hub = lab.add_ns("hub").unwrap();
    let s1 = lab.add_ns("s1").unwrap();
    let s2 = lab.add_ns("s2").unwrap();
    lab.link((&hub, "eth0", "198.51.100.10/28"), (&wan, "h0", "198.51.100.14/28")).unwrap();
    lab.link((&s1, "eth0", "198.51.100.17/28"), (&wan, "s1", "198.51.100.30/28")).unwrap();
    lab.link((&s2, "eth0", "198.51.100.33/28"), (&wan, "s2", "198.51.100.46/28")).unwrap();
    ns_sh(&wan, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).unwrap();
    for (ns, gw) in [(&hub, "198.51.100.14"), (&s1, "198.51.100.30"), (&s2, "198.51.100.46")] {
        sh(&["ip", "-n", ns, "route", "add", "default", "via", gw]).unwrap();
    }
    // The hub routes spoke-to-spoke traffic back into the tunnel; no ICMP redirects for it.
    for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"] {
        ns_sh(&hub, &["sysctl", "-q", "-w", key]).unwrap();
    }
    let ih = lab.gre_up(&hub, "hub", &config("198.51.100.10", HUB, None, &[(SPOKE1, "198.51.100.17"), (SPOKE2, "198.51.100.33")])).unwrap();
    // Spoke 1 knows spoke 2; spoke 2 knows only the hub.
    let i1 = lab.gre_up(&s1, "s1", &config("198.51.100.17", SPOKE1, Some(HUB), &[(HUB, "198.51.100.10"), (SPOKE2, "198.51.100.33")])).unwrap();
    let i2 = lab.gre_up(&s2, "s2", &config("198.51.100.33", SPOKE2, Some(HUB), &[(HUB, "198.51.100.10")])).unwrap();
    let link = ns_sh(&hub, &["ip", "link", "show", "gre0"]).unwrap();
    assert!(link.contains("mtu 1472"), "{link}");

    traffic::ping(&s1, HUB, 2).expect("spoke 1 to the hub");
    traffic::ping(&s2, HUB, 2).expect("spoke 2 to the hub");
    // Spoke 2 to spoke 1: requests cross the hub (no peer for spoke 1 on spoke 2), replies come
    // straight back (spoke 1 has spoke 2 as a peer).
    let hub_before = counters(&hub, &ih);
    let s1_before = counters(&s1, &i1);
    traffic::ping(&s2, SPOKE1, 5).expect("spoke 2 to spoke 1");
    let hub_after = counters(&hub, &ih);
    let s1_after = counters(&s1, &i1);
    assert_eq!((hub_after.0 - hub_before.0, hub_after.1 - hub_before.1), (5, 5), "the hub relayed the 5 requests, not the replies");
    assert_eq!((s1_after.0 - s1_before.0, s1_after.1 - s1_before.1), (5, 5));
    let peers = gre::show(&s1, &i1).unwrap()["peers"].clone();
    assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");
    assert_eq!(peers[0]["overlay"], SPOKE2);
    assert_eq!(peers[0]["kind"], "static");
    let _ = i2;
}
