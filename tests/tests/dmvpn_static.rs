//! A hub and two spokes on one multipoint tunnel, with static peers (no NHRP yet): spoke-to-spoke
//! traffic without a peer entry crosses the hub; with one it goes direct.

use gre_tests::{
    gre, privilege,
    topology::{HUB_NBMA, HUB_OVERLAY as HUB, HubAndSpokes, ns_sh},
    traffic,
};

/// A fixed outer TTL (inherited from a link-local hello, TTL 1, it would die at the first
/// underlay router), and the test group replicated besides the link-local scope.
const GROUP_TUNNEL: &str = "ttl = 64\nmulticast = { groups = [\"224.0.0.0/24\", \"233.252.0.0/24\"] }\n";
const SPOKE1: &str = "203.0.113.1";
const SPOKE2: &str = "203.0.113.2";

/// Brings up the three spokes with the hub as NHS, has a host on each join the test group, and
/// routes the group from the hub into the tunnel; the members' sockets.
fn spokes_join_the_group(t: &mut HubAndSpokes, hub: &str, spokes: &[String]) -> Vec<std::net::UdpSocket> {
    let nhs = format!("nhs = \"{HUB}\"\n");
    for (i, ns) in (1..=3u8).zip(spokes) {
        let c = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &nhs, &[(HUB, HUB_NBMA)]);
        t.lab.gre_up(ns, &format!("s{i}"), &c).unwrap();
    }
    let members = (1..=3u8).zip(spokes).map(|(i, ns)| traffic::group_member(ns, HubAndSpokes::spoke_overlay(i).parse().unwrap()).unwrap()).collect();
    ns_sh(hub, &["ip", "route", "add", "233.252.0.0/24", "dev", "gre0"]).unwrap();
    members
}

fn counters(ns: &str, instance: &str) -> (u64, u64) {
    gre::counters::packets(&gre::show(ns, instance).expect("show")).expect("counters")
}

#[test]
fn spokes_talk_through_the_hub_or_direct() {
    if !privilege::require_root("spokes_talk_through_the_hub_or_direct") {
        return;
    }
    let mut t = HubAndSpokes::new("gd", 2).expect("topology");
    let (hub, s1, s2) = (t.hub.clone(), t.spokes[0].clone(), t.spokes[1].clone());
    let nhs = format!("nhs = \"{HUB}\"\n");
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB, "", &[(SPOKE1, "198.51.100.17"), (SPOKE2, "198.51.100.33")])).unwrap();
    // Spoke 1 knows spoke 2; spoke 2 knows only the hub.
    let i1 = t.lab.gre_up(&s1, "s1", &HubAndSpokes::config("198.51.100.17", SPOKE1, &nhs, &[(HUB, HUB_NBMA), (SPOKE2, "198.51.100.33")])).unwrap();
    t.lab.gre_up(&s2, "s2", &HubAndSpokes::config("198.51.100.33", SPOKE2, &nhs, &[(HUB, HUB_NBMA)])).unwrap();
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
}

#[test]
fn multicast_reaches_every_mapped_peer() {
    if !privilege::require_root("multicast_reaches_every_mapped_peer") {
        return;
    }
    let mut t = HubAndSpokes::new("gm", 3).expect("topology");
    let (hub, spokes) = (t.hub.clone(), t.spokes.clone());
    // Spokes 1 and 2 are mapped for multicast, spoke 3 is a unicast-only peer. A fixed outer
    // TTL: inherited from a link-local hello (TTL 1) it would die at the first underlay router.
    let mut config = HubAndSpokes::config(HUB_NBMA, HUB, GROUP_TUNNEL, &[]);
    for i in 1..=3u8 {
        let multicast = i != 3;
        config += &format!(
            "\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{}\"\nnbma = \"{}\"\nmulticast = {multicast}\n",
            HubAndSpokes::spoke_overlay(i),
            HubAndSpokes::spoke_nbma(i)
        );
    }
    let ih = t.lab.gre_up(&hub, "hub", &config).unwrap();
    let members = spokes_join_the_group(&mut t, &hub, &spokes);
    let before = counters(&hub, &ih);
    traffic::send_to_group(&hub, HUB.parse().unwrap(), 1, 3).expect("send");
    for (i, m) in members.iter().enumerate().take(2) {
        let from = traffic::receive_from_group(m, 3).unwrap_or_else(|e| panic!("spoke {}: {e:#}", i + 1));
        assert_eq!(from.ip().to_string(), HUB);
    }
    assert!(traffic::receive_from_group(&members[2], 1).is_err(), "spoke 3 is not mapped for multicast");
    let after = counters(&hub, &ih);
    assert_eq!(after.1 - before.1, 6, "one replica per mapped peer");
    let peers = gre::show(&hub, &ih).unwrap()["peers"].clone();
    let mapped: Vec<bool> = peers.as_array().unwrap().iter().map(|p| p["multicast"].as_bool().unwrap()).collect();
    assert_eq!(mapped, [true, true, false], "{peers}");
}

/// Well past what one tail call per replica allowed: 128 multicast peers — three real spokes and
/// 125 addresses behind the router that nobody answers — each get exactly one replica per
/// packet, as the router's capture shows.
#[test]
fn multicast_reaches_a_hundred_and_more_peers() {
    if !privilege::require_root("multicast_reaches_a_hundred_and_more_peers") {
        return;
    }
    let mut t = HubAndSpokes::new("gM", 3).expect("topology");
    let (hub, spokes) = (t.hub.clone(), t.spokes.clone());
    let mut nbmas: Vec<String> = (1..=3u8).map(HubAndSpokes::spoke_nbma).collect();
    nbmas.extend((130..=254).map(|i| format!("198.51.100.{i}")));
    let mut config = HubAndSpokes::config(HUB_NBMA, HUB, GROUP_TUNNEL, &[]);
    for (n, nbma) in nbmas.iter().enumerate() {
        let overlay = if n < 3 { HubAndSpokes::spoke_overlay(u8::try_from(n + 1).unwrap()) } else { format!("203.0.113.{}", n + 97) };
        config += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{overlay}\"\nnbma = \"{nbma}\"\nmulticast = true\n");
    }
    let ih = t.lab.gre_up(&hub, "hub", &config).unwrap();
    let members = spokes_join_the_group(&mut t, &hub, &spokes);
    let mut capture = gre_tests::capture::Capture::start(&t.wan, "h0", "ip proto 47 and src 198.51.100.10");
    let before = counters(&hub, &ih);
    traffic::send_to_group(&hub, HUB.parse().unwrap(), 1, 2).expect("send");
    for (i, m) in members.iter().enumerate() {
        traffic::receive_from_group(m, 2).unwrap_or_else(|e| panic!("spoke {}: {e:#}", i + 1));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let packets = capture.decode("gre", &["ip.dst"]);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for p in &packets {
        // The outer destination (the inner one is the group).
        *seen.entry(gre_tests::capture::field(p, "ip.dst")[0].clone()).or_default() += 1;
    }
    let wanted: std::collections::BTreeMap<String, usize> = nbmas.iter().map(|n| (n.clone(), 2)).collect();
    assert_eq!(seen, wanted, "two replicas to each of the {} peers", nbmas.len());
    assert_eq!(counters(&hub, &ih).1 - before.1, 2 * 128);
    assert_eq!(gre::show(&hub, &ih).unwrap()["tunnels"][0]["drops"]["no_neighbour"], 0);
}

/// A smaller hop on the way to one spoke: the router's ICMP about the hub's GRE lowers the
/// multipoint tunnel's MTU to what that path carries (the smallest among the peers: one netdev
/// for all), so TCP from the hub to that spoke completes instead of black-holing.
#[test]
fn a_smaller_path_to_one_spoke_lowers_the_multipoint_mtu() {
    if !privilege::require_root("a_smaller_path_to_one_spoke_lowers_the_multipoint_mtu") {
        return;
    }
    let mut t = HubAndSpokes::new("gmm", 2).expect("topology");
    let (hub, spokes) = (t.hub.clone(), t.spokes.clone());
    // The router's port toward spoke 1 only: spoke 1 still offers the MSS of a 1500-byte path.
    ns_sh(&t.wan, &["ip", "link", "set", "s1", "mtu", "1400"]).unwrap();
    let peers: Vec<(String, String)> = (1..=2u8).map(|i| (HubAndSpokes::spoke_overlay(i), HubAndSpokes::spoke_nbma(i))).collect();
    let peer_refs: Vec<(&str, &str)> = peers.iter().map(|(o, n)| (o.as_str(), n.as_str())).collect();
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB, "ttl = 64\n", &peer_refs)).unwrap();
    for (i, ns) in (1..=2u8).zip(&spokes) {
        let c = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), "ttl = 64\n", &[(HUB, HUB_NBMA)]);
        t.lab.gre_up(ns, &format!("s{i}"), &c).unwrap();
    }
    let mtu = |ns: &str| ns_sh(ns, &["cat", "/sys/class/net/gre0/mtu"]).unwrap().trim().parse::<u32>().unwrap();
    assert_eq!(mtu(&hub), 1472);
    let _daemon = gre::Daemon::start(&hub, &ih);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let server: std::net::SocketAddr = format!("{}:5020", HubAndSpokes::spoke_overlay(1)).parse().unwrap();
    let started = std::time::Instant::now();
    let (sent, received) = traffic::tcp_transfer(&spokes[0], server, &hub, 2 << 20).expect("TCP from the hub to spoke 1");
    assert_eq!(sent, received);
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(mtu(&hub), 1400 - 28, "the multipoint tunnel's MTU follows its smallest path");
    traffic::ping(&hub, &HubAndSpokes::spoke_overlay(2), 2).expect("the other spoke still answers");
}
