//! Routing daemons over the multipoint tunnel: FRR's zebra and bgpd (Debian's packages) in each
//! node's namespace, iBGP over the tunnel with the hub as route reflector, each spoke announcing
//! the LAN behind it. The routes zebra installs into the kernel (`… via 203.0.113.2 dev gre0
//! proto bgp`) steer our datapath with no `[[route]]` of ours: the hub forwards LAN-to-LAN
//! traffic to the spoke the route names, the spokes then take a phase 3 shortcut for the
//! BGP-learned prefix, and a withdrawn prefix takes its shortcut with it.

use gre_tests::{
    frr::Frr,
    gre, privilege,
    topology::{HUB_NBMA, HUB_OVERLAY, HubAndSpokes, ns_sh},
    traffic,
};
use serde_json::Value;

/// The LAN behind spoke `i` (from 1): (spoke's address, host's address, prefix).
fn lan(i: u8) -> (String, String, String) {
    let base = 176 + 16 * u32::from(i);
    (format!("198.51.100.{}/28", base + 1), format!("198.51.100.{}", base + 2), format!("198.51.100.{base}/28"))
}

const HUB_BGP: &str = "router bgp 65000\n bgp router-id 203.0.113.254\n no bgp ebgp-requires-policy\n\
     neighbor SPOKES peer-group\n neighbor SPOKES remote-as 65000\n neighbor SPOKES timers 1 3\n neighbor SPOKES advertisement-interval 0\n\
     bgp listen range 203.0.113.0/24 peer-group SPOKES\n address-family ipv4 unicast\n  neighbor SPOKES route-reflector-client\n\
     \x20 neighbor SPOKES next-hop-self force\n exit-address-family\n";

fn spoke_bgp(i: u8) -> String {
    format!(
        "router bgp 65000\n bgp router-id 203.0.113.{i}\n neighbor {HUB_OVERLAY} remote-as 65000\n neighbor {HUB_OVERLAY} timers 1 3\n\
         \x20neighbor {HUB_OVERLAY} timers connect 1\n neighbor {HUB_OVERLAY} advertisement-interval 0\n address-family ipv4 unicast\n\
         \x20 network {}\n exit-address-family\n",
        lan(i).2
    )
}

fn routes(ns: &str, instance: &str) -> Vec<Value> {
    gre::show(ns, instance).unwrap()["routes"].as_array().cloned().unwrap_or_default()
}

fn has_route(ns: &str, instance: &str, prefix: &str, via: &str, source: &str) -> bool {
    routes(ns, instance).iter().any(|r| r["prefix"] == prefix && r["via"] == via && r["source"] == source)
}

/// Whether the kernel of `ns` has a BGP route to `prefix` through the tunnel.
fn kernel_bgp_route(ns: &str, prefix: &str) -> bool {
    ns_sh(ns, &["ip", "route", "show", prefix, "proto", "bgp"]).is_ok_and(|o| o.contains("dev gre0"))
}

/// NHRP's route to `prefix` in the kernel of `ns` (table 47, protocol 47), or nothing.
fn nhrp_route(ns: &str, prefix: &str) -> String {
    ns_sh(ns, &["ip", "route", "show", "table", "47", prefix, "proto", "47"]).unwrap_or_default().trim().to_string()
}

/// How many packets the kernel of `ns` has forwarded (the IP MIB's ForwDatagrams).
fn forwarded(ns: &str) -> u64 {
    let snmp = ns_sh(ns, &["cat", "/proc/net/snmp"]).unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let i = names.split_whitespace().position(|w| w == "ForwDatagrams").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A LAN behind each spoke, with a host whose default route is the spoke: the hosts.
fn lans(t: &mut HubAndSpokes) -> Vec<String> {
    let mut hosts = Vec::new();
    for i in 1..=3u8 {
        let spoke = t.spokes[usize::from(i - 1)].clone();
        let ns = t.lab.add_ns(&format!("lan{i}")).unwrap();
        let (gw, host, _) = lan(i);
        t.lab.link((&spoke, "lan0", &gw), (&ns, "eth0", &format!("{host}/28"))).unwrap();
        ns_sh(&ns, &["ip", "route", "add", "default", "via", gw.split('/').next().unwrap()]).unwrap();
        ns_sh(&spoke, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).unwrap();
        hosts.push(ns);
    }
    hosts
}

#[test]
fn bgp_routes_steer_the_tunnel_and_phase_3_shortcuts_follow_them() {
    if !privilege::require_root("bgp_routes_steer_the_tunnel_and_phase_3_shortcuts_follow_them") {
        return;
    }
    let mut t = HubAndSpokes::new("rb", 3).expect("topology");
    let hub = t.hub.clone();
    let hosts = lans(&mut t);
    // No [[route]] anywhere: what crosses the tunnel beyond its subnet follows BGP.
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30 }\n", &[])).unwrap();
    let nhc = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let mut spokes = Vec::new();
    for i in 1..=3u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &nhc, &[(HUB_OVERLAY, HUB_NBMA)]);
        spokes.push((ns.clone(), t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap()));
    }
    let mut daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();
    traffic::wait_for("three registrations on the hub", 10, || gre::show(&hub, &ih).unwrap()["peers"].as_array().map_or(0, Vec::len) == 3);

    // The hub's zebra takes in NHRP's table (our routes there, protocol 47).
    let hub_frr = Frr::start(&hub, &[("zebra", "ip import-table 47\n"), ("bgpd", HUB_BGP)]).expect("FRR on the hub");
    let spoke_frr: Vec<Frr> = (1..=3u8).map(|i| Frr::start(&spokes[usize::from(i - 1)].0, &[("bgpd", &spoke_bgp(i))]).expect("FRR on a spoke")).collect();
    let report = || {
        format!(
            "hub bgpd:\n{}\nhub routes:\n{}\nspoke 1 routes:\n{}",
            hub_frr.log_tail("bgpd"),
            hub_frr.vtysh("show ip route").unwrap_or_default(),
            spoke_frr[0].vtysh("show ip route").unwrap_or_default()
        )
    };
    // Every LAN reaches every node's kernel by iBGP over the tunnel: the hub's routes point at
    // each spoke's overlay address, the spokes' at the hub (next-hop-self).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(1..=3u8).all(|i| kernel_bgp_route(&hub, &lan(i).2)) || !(2..=3u8).all(|i| kernel_bgp_route(&spokes[0].0, &lan(i).2)) {
        assert!(std::time::Instant::now() < deadline, "BGP did not converge over the tunnel:\n{}", report());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Our datapath took them over: the hub's toward each spoke, spoke 1's toward the hub.
    for i in 1..=3u8 {
        let via = HubAndSpokes::spoke_overlay(i);
        traffic::wait_for("the hub's kernel routes in its datapath", 5, || has_route(&hub, &ih, &lan(i).2, &via, "kernel"));
    }
    traffic::wait_for("spoke 1's kernel route to LAN 2", 5, || has_route(&spokes[0].0, &spokes[0].1, &lan(2).2, HUB_OVERLAY, "kernel"));

    // What NHRP learned is in the kernel for routing daemons, in table 47 with protocol 47: a
    // host route for each registered spoke, which the hub's zebra imports (`ip import-table`).
    for i in 1..=3u8 {
        let overlay = HubAndSpokes::spoke_overlay(i);
        traffic::wait_for("the hub's NHRP route to each spoke", 5, || nhrp_route(&hub, &overlay).contains("dev gre0 scope link"));
        traffic::wait_for("zebra to take it in", 5, || {
            hub_frr.vtysh(&format!("show ip route {overlay}/32 json")).is_ok_and(|o| {
                serde_json::from_str::<Value>(&o)
                    .is_ok_and(|v| v[format!("{overlay}/32")].as_array().is_some_and(|rs| rs.iter().any(|r| r["protocol"] == "table")))
            })
        });
    }

    // LAN 1 to LAN 2: through the hub (steered by its BGP route to spoke 2), then the phase 3
    // shortcut replaces spoke 1's BGP route for LAN 2's prefix; traffic leaves the hub.
    traffic::ping(&hosts[0], &lan(2).1, 3).unwrap_or_else(|e| panic!("LAN 1 to LAN 2 through the hub: {e}\n{}", report()));
    traffic::wait_for("spoke 1's shortcut to LAN 2", 10, || has_route(&spokes[0].0, &spokes[0].1, &lan(2).2, "203.0.113.2", "shortcut"));
    // The shortcut both ways (spoke 2's for LAN 1 too); then the hub forwards nothing more
    // (BGP to the hub is local delivery, NHRP the daemon's).
    traffic::wait_for("spoke 2's shortcut to LAN 1", 10, || has_route(&spokes[1].0, &spokes[1].1, &lan(1).2, "203.0.113.1", "shortcut"));
    // The shortcut is in NHRP's table too, beside the peer; the BGP route stays in the main one.
    traffic::wait_for("spoke 1's shortcut in table 47", 5, || nhrp_route(&spokes[0].0, &lan(2).2).contains("via 203.0.113.2 dev gre0"));
    assert!(kernel_bgp_route(&spokes[0].0, &lan(2).2));
    let before = forwarded(&hub);
    traffic::ping(&hosts[0], &lan(2).1, 20).expect("LAN 1 to LAN 2 on the shortcut");
    assert_eq!(forwarded(&hub), before, "the hub forwarded packets of LAN 1 to LAN 2 on the shortcut");

    // Spoke 2 withdraws LAN 2: the BGP route goes from spoke 1's kernel and with it the shortcut.
    spoke_frr[1].configure(&["router bgp 65000", "address-family ipv4 unicast", &format!("no network {}", lan(2).2)]).expect("withdrawing LAN 2");
    traffic::wait_for("LAN 2's route withdrawn from spoke 1", 15, || !kernel_bgp_route(&spokes[0].0, &lan(2).2));
    traffic::wait_for("spoke 1's shortcut to LAN 2 gone with it", 5, || !routes(&spokes[0].0, &spokes[0].1).iter().any(|r| r["prefix"] == lan(2).2.as_str()));
    traffic::wait_for("and from table 47", 5, || nhrp_route(&spokes[0].0, &lan(2).2).is_empty());
    assert!(traffic::ping(&hosts[0], &lan(2).1, 1).is_err(), "LAN 2 is withdrawn");
    // Announced again: back through the hub, and the shortcut again.
    spoke_frr[1].configure(&["router bgp 65000", "address-family ipv4 unicast", &format!("network {}", lan(2).2)]).expect("announcing LAN 2");
    traffic::wait_for("spoke 1's kernel route to LAN 2 again", 15, || has_route(&spokes[0].0, &spokes[0].1, &lan(2).2, HUB_OVERLAY, "kernel"));
    traffic::ping(&hosts[0], &lan(2).1, 3).expect("LAN 1 to LAN 2 again");
    traffic::wait_for("spoke 1's shortcut to LAN 2 again", 10, || has_route(&spokes[0].0, &spokes[0].1, &lan(2).2, "203.0.113.2", "shortcut"));

    // LAN 3 never talked to LAN 1: its traffic still follows the kernel's route through the hub.
    assert!(has_route(&spokes[0].0, &spokes[0].1, &lan(3).2, HUB_OVERLAY, "kernel"));
    traffic::ping(&hosts[0], &lan(3).1, 2).expect("LAN 1 to LAN 3");
    // A peer that goes takes its NHRP route with it: spoke 3's daemon stops (no more
    // registrations) and the hub clears its entry.
    drop(daemons.pop());
    gre::run(&hub, &ih, &["nhrp", "clear", "203.0.113.3"]).expect("gre nhrp clear");
    traffic::wait_for("the hub's NHRP route to spoke 3 gone", 5, || nhrp_route(&hub, "203.0.113.3").is_empty());
    assert!(nhrp_route(&hub, "203.0.113.1").contains("dev gre0"), "spoke 1's stays");
    drop(spoke_frr);
    drop(hub_frr);
}

fn ospf(router_id: &str, lan: Option<&str>) -> String {
    let mut c = format!(
        "interface gre0\n ip ospf network point-to-multipoint\n ip ospf hello-interval 1\n ip ospf dead-interval 4\n\
         router ospf\n ospf router-id {router_id}\n network 203.0.113.0/24 area 0\n"
    );
    if let Some(lan) = lan {
        c += &format!(" network {lan} area 0\n passive-interface lan0\n");
    }
    c
}

/// OSPF point-to-multipoint over the multipoint tunnel (FRR's ospfd): the hub's hellos reach
/// every registered spoke through our multicast replication, each spoke's reach the hub (its
/// NHS mapped for multicast); adjacencies form, the LANs' OSPF routes steer the datapath, and
/// LAN-to-LAN traffic takes a phase 3 shortcut off the hub.
#[test]
fn ospf_point_to_multipoint_forms_adjacencies_through_replication() {
    if !privilege::require_root("ospf_point_to_multipoint_forms_adjacencies_through_replication") {
        return;
    }
    let mut t = HubAndSpokes::new("ro", 3).expect("topology");
    let hub = t.hub.clone();
    let hosts = lans(&mut t);
    // A fixed outer TTL, as over any routed underlay: inherited, the hellos' TTL 1 would die
    // at the first router (ip_gre's `ttl inherit` does the same).
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "ttl = 64\nnhrp = { role = \"nhs\", holdtime = 30 }\n", &[])).unwrap();
    let nhc = format!("ttl = 64\nnhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let mut spokes = Vec::new();
    for i in 1..=3u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let mut conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &nhc, &[]);
        conf += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{HUB_OVERLAY}\"\nnbma = \"{HUB_NBMA}\"\nmulticast = true\n");
        spokes.push((ns.clone(), t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap()));
    }
    let _daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();
    traffic::wait_for("three registrations on the hub", 10, || gre::show(&hub, &ih).unwrap()["peers"].as_array().map_or(0, Vec::len) == 3);

    let hub_frr = Frr::start(&hub, &[("ospfd", &ospf(HUB_OVERLAY, None))]).expect("FRR on the hub");
    let spoke_frr: Vec<Frr> = (1..=3u8)
        .map(|i| Frr::start(&spokes[usize::from(i - 1)].0, &[("ospfd", &ospf(&HubAndSpokes::spoke_overlay(i), Some(&lan(i).2)))]).expect("FRR on a spoke"))
        .collect();
    // The hub is adjacent (Full) with every spoke: its hellos were replicated to each.
    let full = |frr: &Frr| -> usize {
        let v: Value = frr.vtysh("show ip ospf neighbor json").ok().and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default();
        v["neighbors"].as_object().map_or(0, |n| n.values().filter(|e| e[0]["state"].as_str().is_some_and(|s| s.starts_with("Full"))).count())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while full(&hub_frr) < 3 || spoke_frr.iter().any(|f| full(f) < 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "OSPF adjacencies did not form:\n{}\n{}",
            hub_frr.vtysh("show ip ospf neighbor").unwrap_or_default(),
            hub_frr.log_tail("ospfd")
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // Each spoke learns the others' LANs by OSPF, through the hub, and our datapath takes them.
    for (i, (ns, inst)) in spokes.iter().enumerate() {
        for j in 1..=3u8 {
            if usize::from(j) == i + 1 {
                continue;
            }
            traffic::wait_for("an OSPF route to another spoke's LAN", 20, || {
                ns_sh(ns, &["ip", "route", "show", &lan(j).2, "proto", "ospf"]).is_ok_and(|o| o.contains("dev gre0"))
            });
            traffic::wait_for("the datapath's copy", 5, || has_route(ns, inst, &lan(j).2, HUB_OVERLAY, "kernel"));
        }
    }
    traffic::ping(&hosts[0], &lan(2).1, 3).expect("LAN 1 to LAN 2 through the hub");
    traffic::wait_for("spoke 1's shortcut to LAN 2", 10, || has_route(&spokes[0].0, &spokes[0].1, &lan(2).2, "203.0.113.2", "shortcut"));
    traffic::wait_for("spoke 2's shortcut to LAN 1", 10, || has_route(&spokes[1].0, &spokes[1].1, &lan(1).2, "203.0.113.1", "shortcut"));
    let before = forwarded(&hub);
    traffic::ping(&hosts[0], &lan(2).1, 10).expect("LAN 1 to LAN 2 on the shortcut");
    assert_eq!(forwarded(&hub), before, "the hub forwarded packets of LAN 1 to LAN 2 on the shortcut");
    // The adjacencies hold meanwhile (the spokes' hellos keep reaching the hub).
    assert_eq!(full(&hub_frr), 3);
}
