//! DMVPN with NHRP: a hub (NHS) and spokes (NHC) that know only the hub. The spokes register,
//! the hub learns them; spoke-to-spoke traffic starts through the hub, the spokes resolve each
//! other through it, and then talk directly (phase 2). Registrations expire without refresh and
//! come back when the spoke does; multicast follows the registrations.

use std::{process::Command, thread, time::Duration};

use gre_tests::{
    capture::{Capture, field},
    gre, privilege,
    topology::{HUB_NBMA, HUB_NBMA6, HUB_OVERLAY, HubAndSpokes, ns_sh},
    traffic,
};
use serde_json::Value;

fn peers(ns: &str, instance: &str) -> Vec<Value> {
    gre::show(ns, instance).expect("show")["peers"].as_array().cloned().unwrap_or_default()
}

/// Waits for a child's output, killing it after `secs`.
fn wait_with_timeout(mut child: std::process::Child, secs: u64) -> Result<String, String> {
    for _ in 0..secs * 10 {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Err(format!("still running after {secs}s; printed: {}", String::from_utf8_lossy(&out.stdout)))
}

fn peer<'a>(list: &'a [Value], overlay: &str) -> Option<&'a Value> {
    list.iter().find(|p| p["overlay"] == overlay)
}

#[test]
fn spokes_register_resolve_and_go_direct() {
    if !privilege::require_root("spokes_register_resolve_and_go_direct") {
        return;
    }
    let mut t = HubAndSpokes::new("gn", 4).expect("topology");
    let hub = t.hub.clone();
    // The test group is replicated besides the link-local scopes.
    let nhrp_hub = "nhrp = { role = \"nhs\", holdtime = 6, auth = \"dmvpn\" }\nmulticast = { groups = [\"224.0.0.0/24\", \"233.252.0.0/24\"] }\n";
    let nhrp_spoke = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 6, auth = \"dmvpn\" }}\n");
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, nhrp_hub, &[])).unwrap();
    let mut spokes = Vec::new();
    for i in 1..=3u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &nhrp_spoke, &[(HUB_OVERLAY, HUB_NBMA)]);
        let inst = t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap();
        spokes.push((ns, inst));
    }
    let _hub_daemon = gre::Daemon::start(&hub, &ih);
    // Spoke 2 leaves for good when it stops, below.
    let mut spoke_daemons: Vec<Option<gre::Daemon>> =
        spokes.iter().enumerate().map(|(n, (ns, i))| Some(gre::Daemon::start_args(ns, i, if n == 1 { &["--purge-on-exit"] } else { &[] }))).collect();

    // Registrations appear on the hub, with the spokes' NBMA addresses; the spokes see the NHS up.
    traffic::wait_for("three registrations on the hub", 10, || peers(&hub, &ih).len() == 3);
    for i in 1..=3u8 {
        let list = peers(&hub, &ih);
        let p = peer(&list, &HubAndSpokes::spoke_overlay(i)).expect("registered");
        assert_eq!((p["nbma"].as_str().unwrap(), p["kind"].as_str().unwrap()), (HubAndSpokes::spoke_nbma(i).as_str(), "dynamic"));
        assert!(p["expires_in"].as_u64().unwrap() <= 6);
        assert_eq!(p["multicast"], true, "registered spokes get the hub's multicast");
    }
    // Multicast replicas are cloned straight to the underlay next hop (the router here): the
    // daemon has the kernel keep it resolved.
    traffic::wait_for("a managed neighbour for the spokes' next hop", 5, || {
        ns_sh(&hub, &["ip", "neigh", "show", "198.51.100.14", "dev", "eth0"]).is_ok_and(|o| o.split_whitespace().any(|w| w == "managed"))
    });
    for (ns, inst) in &spokes {
        traffic::wait_for("the NHS up on every spoke", 10, || gre::show(ns, inst).unwrap()["tunnels"][0]["state"] == "up");
        let nhs: Value = serde_json::from_str(&gre::run(ns, inst, &["show", "nhs", "-j"]).unwrap()).unwrap();
        assert_eq!(nhs, serde_json::json!([{ "tunnel": "gre0", "overlay": HUB_OVERLAY, "nbma": HUB_NBMA, "priority": 0, "current": true, "state": "up" }]));
        let table = gre::run(ns, inst, &["show", "nhs"]).unwrap();
        assert!(table.lines().nth(1).is_some_and(|l| l.split_whitespace().eq(["gre0", HUB_OVERLAY, HUB_NBMA, "0", "up", "yes"])), "{table}");
    }
    // Nothing has crossed spoke 3's tunnel yet (NHRP goes its own way): the hub is unused there.
    assert_eq!(peer(&peers(&spokes[2].0, &spokes[2].1), HUB_OVERLAY).unwrap()["used_ago"], Value::Null);
    // `gre show peers` is the peer list of `gre show`, alone (expiry counts down between reads).
    let undated = |mut v: Value| {
        v.as_array_mut().unwrap().iter_mut().for_each(|p| {
            p["expires_in"] = Value::Null;
            p["used_ago"] = Value::Null;
        });
        v
    };
    let alone: Value = serde_json::from_str(&gre::run(&hub, &ih, &["show", "peers", "-j"]).unwrap()).unwrap();
    assert_eq!(undated(alone), undated(gre::show(&hub, &ih).unwrap()["peers"].clone()));
    assert_eq!(gre::run(&hub, &ih, &["show", "nhs", "-j"]).unwrap().trim(), "[]", "the hub has no NHS");

    // What tshark's NHRP dissector makes of what we send: registrations and resolutions both
    // ways, well formed, with the fields we meant.
    let mut capture = Capture::start(&t.wan, "any", "ip proto 47 and ip[22:2] = 0x2001");
    thread::sleep(Duration::from_millis(1000));
    // `gre nhrp dump -i` live on the router's port toward spoke 1, alongside tcpdump.
    let live = Command::new(gre::bin())
        .args(["-n", &t.wan, "nhrp", "dump", "-i", "s1", "-c", "4", "-j"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gre nhrp dump -i");
    // Spoke 4 has the wrong password: the hub refuses it with an Error Indication.
    let wrong = nhrp_spoke.replace("dmvpn", "guess");
    let s4 = t.spokes[3].clone();
    let i4 = t.lab.gre_up(&s4, "s4", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(4), "203.0.113.4", &wrong, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let _s4_daemon = gre::Daemon::start(&s4, &i4);

    // Spoke 1 to spoke 2: the first packets cross the hub while spoke 1 resolves spoke 2 (and
    // spoke 2 resolves spoke 1 for its replies); then the traffic is direct.
    let (s1, i1) = spokes[0].clone();
    let (s2, i2) = spokes[1].clone();
    traffic::ping(&s1, &HubAndSpokes::spoke_overlay(2), 3).expect("spoke 1 to spoke 2");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&s1, &i1), "203.0.113.2").is_some());
    traffic::wait_for("spoke 2 to learn spoke 1", 5, || peer(&peers(&s2, &i2), "203.0.113.1").is_some());
    let nhrp = |ns: &str, inst: &str, dir: &str, kind: &str| gre::show(ns, inst).unwrap()["tunnels"][0][dir][kind].as_u64().unwrap();
    traffic::wait_for("the hub to refuse spoke 4", 5, || nhrp(&s4, &i4, "nhrp_received", "error_indication") >= 1);
    let live = wait_with_timeout(live, 15).expect("the live dump sees 4 NHRP messages");
    // Everything up to here (re-registrations and the hub's Traffic Indications come and go).
    let decoded = capture.decode(
        "nhrp",
        &[
            "nhrp.hdr.op.type",
            "nhrp.src.prot.addr",
            "nhrp.dst.prot.addr",
            "nhrp.src.nbma.addr",
            "nhrp.hdr.chksum.status",
            "nhrp.htime",
            "nhrp.code",
            "nhrp.client.nbma.addr",
            "_ws.malformed",
            "_ws.expert",
            "nhrp.err.code",
            "nhrp.err.offset",
        ],
    );
    assert!(decoded.len() >= 2, "{decoded:?}");
    let f = field;
    let mut types = Vec::new();
    for p in &decoded {
        assert!(f(p, "_ws.malformed").is_empty() && f(p, "_ws.expert").is_empty(), "tshark objects to {p}");
        // (An Error Indication carries the packet in error: two NHRP headers.)
        let sums = f(p, "nhrp.hdr.chksum.status");
        assert!(!sums.is_empty() && sums.iter().all(|c| c == "1"), "checksums verified and good: {p}");
        types.push(f(p, "nhrp.hdr.op.type")[0].clone());
        if f(p, "nhrp.hdr.op.type")[0] == "2" {
            // The resolution replies the hub sent: spoke 2 is at 198.51.100.33, spoke 1 at .17.
            let at = match f(p, "nhrp.dst.prot.addr")[0].as_str() {
                "203.0.113.2" => "198.51.100.33",
                "203.0.113.1" => "198.51.100.17",
                other => panic!("a resolution of {other}"),
            };
            assert!(f(p, "nhrp.client.nbma.addr").contains(&at.to_string()), "{p}");
        }
    }
    // Resolutions, registrations, the Error Indication to spoke 4 and the hub's Traffic
    // Indications (it relayed spoke to spoke); purges are checked below, where they happen.
    for ty in ["1", "2", "3", "4", "7", "8"] {
        assert!(types.contains(&ty.to_string()), "type {ty} among {types:?}");
    }
    // Every message the live dump showed is in tcpdump's capture, as `gre nhrp dump FILE` reads it.
    let from_file = gre::run(&t.wan, "default", &["nhrp", "dump", "-j", capture.path().to_str().unwrap()]).expect("gre nhrp dump FILE");
    let identity = |v: &Value| (v["outer_src"].clone(), v["outer_dst"].clone(), v["nhrp"]["type"].clone(), v["nhrp"]["request_id"].clone());
    let recorded: Vec<_> = from_file.lines().map(|l| identity(&serde_json::from_str(l).unwrap())).collect();
    assert_eq!(live.lines().count(), 4, "{live}");
    for l in live.lines() {
        let v: Value = serde_json::from_str(l).expect("JSON lines");
        assert_eq!((v["checksum_ok"].as_bool(), v["gre_key"].as_u64()), (Some(true), Some(100)), "{l}");
        let ends = [v["outer_src"].as_str().unwrap(), v["outer_dst"].as_str().unwrap()];
        // With the hub, or with spoke 2: each answers the other's resolution itself.
        let other = if ends[0] == "198.51.100.17" { ends[1] } else { ends[0] };
        assert!(ends.contains(&"198.51.100.17") && [HUB_NBMA, "198.51.100.33"].contains(&other), "{l}");
        assert!(recorded.contains(&identity(&v)), "{l} is not in the capture");
    }

    // The hub's answer to spoke 4: Authentication Failure, pointing into spoke 4's registration
    // request, which it carries.
    let refusal = decoded.iter().find(|p| f(p, "nhrp.hdr.op.type").first().is_some_and(|t| t == "7")).expect("an Error Indication");
    assert_eq!(f(refusal, "nhrp.err.code"), ["11"], "{refusal}");
    assert_eq!(f(refusal, "nhrp.hdr.op.type"), ["7", "3"], "{refusal}");
    assert_eq!(f(refusal, "nhrp.src.prot.addr"), [HUB_OVERLAY, "203.0.113.4"], "{refusal}");

    // Per-type NHRP counters: registrations answered by the hub; spoke 1's resolution passed
    // on by the hub to spoke 2, which answered it.
    assert!(nhrp(&hub, &ih, "nhrp_received", "registration_request") >= 3);
    assert!(nhrp(&hub, &ih, "nhrp_sent", "registration_reply") >= 3);
    assert!(nhrp(&hub, &ih, "nhrp_received", "resolution_request") >= 1);
    assert!(nhrp(&hub, &ih, "nhrp_sent", "resolution_request") >= 1);
    assert!(nhrp(&s2, &i2, "nhrp_sent", "resolution_reply") >= 1);
    assert!(nhrp(&s1, &i1, "nhrp_sent", "resolution_request") >= 1);
    assert!(nhrp(&s1, &i1, "nhrp_received", "resolution_reply") >= 1);
    assert_eq!(nhrp(&s1, &i1, "nhrp_sent", "purge_request"), 0);
    for (ns, inst) in [(&hub, &ih), (&s1, &i1)] {
        assert_eq!(gre::show(ns, inst).unwrap()["tunnels"][0]["nhrp_errors"], 0);
    }
    assert!(nhrp(&hub, &ih, "nhrp_sent", "error_indication") >= 1);
    assert!(nhrp(&s4, &i4, "nhrp_received", "error_indication") >= 1);
    assert_eq!(gre::show(&s4, &i4).unwrap()["tunnels"][0]["state"], "down", "spoke 4 never registered");
    assert!(peer(&peers(&hub, &ih), "203.0.113.4").is_none());
    let table = gre::run(&hub, &ih, &["show"]).unwrap();
    assert!(table.lines().any(|l| l.split_whitespace().take(2).eq(["registration_request", "gre0"])), "{table}");

    let learned = peers(&s1, &i1);
    let p = peer(&learned, "203.0.113.2").unwrap();
    assert_eq!((p["nbma"].as_str().unwrap(), p["kind"].as_str().unwrap()), ("198.51.100.33", "dynamic"));
    let hub_rx = |h: &str| gre::show(&hub, h).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let before = hub_rx(&ih);
    traffic::ping(&s1, &HubAndSpokes::spoke_overlay(2), 5).expect("spoke 1 to spoke 2, direct");
    let after = hub_rx(&ih);
    // Only NHRP (re-registrations, counted apart as nhrp_punted) may reach the hub meanwhile:
    // not one packet of the ping crosses it.
    assert_eq!(after - before, 0, "the hub decapsulated {} packets during a direct ping", after - before);
    let used = peer(&peers(&s1, &i1), "203.0.113.2").unwrap()["used_ago"].as_u64();
    assert!(used.is_some_and(|s| s <= 2), "spoke 1 just sent to spoke 2: used {used:?}");

    // A spoke that leaves for good says so: spoke 2 withdraws its registration, and the hub
    // purges it from spoke 1, which had resolved it. Both well before the holding time.
    let mut purges = Capture::start(&t.wan, "any", "ip proto 47 and ip[22:2] = 0x2001");
    drop(spoke_daemons[1].take());
    traffic::wait_for("the hub to forget spoke 2", 3, || peer(&peers(&hub, &ih), "203.0.113.2").is_none());
    traffic::wait_for("spoke 1 to be purged of spoke 2", 3, || peer(&peers(&s1, &i1), "203.0.113.2").is_none());
    // What tshark makes of them: spoke 2 withdrawing itself (N: no reply), the hub purging
    // spoke 2's address from spoke 1, spoke 1's reply.
    let fields = ["nhrp.hdr.op.type", "nhrp.src.prot.addr", "nhrp.dst.prot.addr", "nhrp.client.prot.addr", "nhrp.flag.n", "_ws.malformed", "_ws.expert"];
    let seen = purges.decode("nhrp.hdr.op.type == 5 || nhrp.hdr.op.type == 6", &fields);
    let mut got: Vec<(String, String, String, String)> = seen
        .iter()
        .map(|p| {
            assert!(field(p, "_ws.malformed").is_empty() && field(p, "_ws.expert").is_empty(), "tshark objects to {p}");
            let one = |k: &str| field(p, k).first().cloned().unwrap_or_default();
            (one("nhrp.hdr.op.type"), one("nhrp.src.prot.addr"), one("nhrp.dst.prot.addr"), one("nhrp.client.prot.addr"))
        })
        .collect();
    got.dedup(); // `-i any` sees each packet on its way in and out of the router
    let q = |a: &str, b: &str, c: &str, d: &str| (a.to_string(), b.to_string(), c.to_string(), d.to_string());
    assert_eq!(
        got,
        [
            q("5", "203.0.113.2", HUB_OVERLAY, "203.0.113.2"),
            q("5", HUB_OVERLAY, "203.0.113.1", "203.0.113.2"),
            q("6", HUB_OVERLAY, "203.0.113.1", "203.0.113.2"),
        ],
        "{seen:?}"
    );
    assert!(nhrp(&hub, &ih, "nhrp_received", "purge_request") >= 1);
    assert!(nhrp(&hub, &ih, "nhrp_sent", "purge_request") >= 1);
    assert!(nhrp(&s1, &i1, "nhrp_received", "purge_request") >= 1);
    assert!(nhrp(&s1, &i1, "nhrp_sent", "purge_reply") >= 1);
    spoke_daemons[1] = Some(gre::Daemon::start(&s2, &i2));
    traffic::wait_for("spoke 2 to register again", 10, || peer(&peers(&hub, &ih), "203.0.113.2").is_some());

    // A spoke that stops refreshing (gone without a word) is forgotten after its holding time.
    spoke_daemons[2].take().expect("running").kill();
    traffic::wait_for("spoke 3's registration to expire", 12, || peer(&peers(&hub, &ih), "203.0.113.3").is_none());
    assert!(peer(&peers(&hub, &ih), "203.0.113.1").is_some(), "the others refresh theirs");

    // Multicast from the hub reaches the registered spokes, not the one that expired (outer TTL
    // inherited from the sender's 8).
    let members: Vec<_> =
        (1..=3u8).zip(&spokes).map(|(i, (ns, _))| traffic::group_member(ns, HubAndSpokes::spoke_overlay(i).parse().unwrap()).unwrap()).collect();
    ns_sh(&hub, &["ip", "route", "add", "233.252.0.0/24", "dev", "gre0"]).unwrap();
    traffic::send_to_group(&hub, HUB_OVERLAY.parse().unwrap(), 8, 2).expect("send");
    for (i, m) in members.iter().enumerate().take(2) {
        traffic::receive_from_group(m, 2).unwrap_or_else(|e| panic!("spoke {}: {e:#}", i + 1));
    }
    assert!(traffic::receive_from_group(&members[2], 1).is_err(), "spoke 3's registration expired");

    // A restarted spoke registers again, with its NBMA address, and gets multicast again.
    spoke_daemons[2] = Some(gre::Daemon::start(&spokes[2].0, &spokes[2].1));
    traffic::wait_for("spoke 3 to register again", 10, || peer(&peers(&hub, &ih), "203.0.113.3").is_some());
    let list = peers(&hub, &ih);
    assert_eq!(peer(&list, "203.0.113.3").unwrap()["nbma"], HubAndSpokes::spoke_nbma(3).as_str());
    traffic::send_to_group(&hub, HUB_OVERLAY.parse().unwrap(), 8, 1).expect("send");
    for (i, m) in members.iter().enumerate() {
        traffic::receive_from_group(m, 1).unwrap_or_else(|e| panic!("spoke {} after the restart: {e:#}", i + 1));
    }
}

#[test]
fn phase_3_the_hub_redirects_and_spokes_take_shortcuts() {
    if !privilege::require_root("phase_3_the_hub_redirects_and_spokes_take_shortcuts") {
        return;
    }
    let mut t = HubAndSpokes::new("g3", 2).expect("topology");
    let hub = t.hub.clone();
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30 }\n", &[])).unwrap();
    // Phase 3 spokes route the whole overlay through the hub; nothing would make them resolve.
    let spoke_extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let mut spokes = Vec::new();
    for i in 1..=2u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let mut conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &spoke_extra, &[(HUB_OVERLAY, HUB_NBMA)]);
        conf += &format!("\n[[route]]\nprefix = \"203.0.113.0/24\"\ntunnel = \"gre0\"\nvia = \"{HUB_OVERLAY}\"\n");
        let inst = t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap();
        spokes.push((ns, inst));
    }
    let _hub_daemon = gre::Daemon::start_args(&hub, &ih, &["--metrics", "127.0.0.1:9477"]);
    let _daemons: Vec<gre::Daemon> = spokes.iter().map(|(ns, i)| gre::Daemon::start(ns, i)).collect();
    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);
    // The hub's metrics: its peers by kind and its NHRP messages, as `gre show` counts them.
    let (_, body) = traffic::http_get(&hub, "127.0.0.1:9477", "/metrics").expect("metrics");
    assert_eq!(traffic::metric(&body, "gre_peers{tunnel=\"gre0\",kind=\"dynamic\"}"), Some(2), "{body}");
    assert_eq!(traffic::metric(&body, "gre_peers{tunnel=\"gre0\",kind=\"static\"}"), Some(0), "{body}");
    let received = |body: &str| traffic::metric(body, "gre_nhrp_messages_total{tunnel=\"gre0\",direction=\"received\",type=\"registration_request\"}");
    assert!(received(&body).is_some_and(|n| n >= 2), "{body}");
    // Per-peer series exist from registration on (the registration itself came before the peer).
    assert!(traffic::metric(&body, "gre_peer_rx_packets_total{tunnel=\"gre0\",nbma=\"198.51.100.17\"}").is_some(), "{body}");
    let (s1, i1) = spokes[0].clone();
    // The hub relays the first packets, then sends a Traffic Indication; spoke 1 resolves spoke
    // 2 and installs a host route to it (and spoke 2 likewise for its replies).
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2");
    let routes = |ns: &str, i: &str| gre::show(ns, i).unwrap()["routes"].as_array().cloned().unwrap_or_default();
    traffic::wait_for("a shortcut on spoke 1", 5, || routes(&s1, &i1).iter().any(|r| r["prefix"] == "203.0.113.2/32"));
    traffic::wait_for("a shortcut on spoke 2", 5, || routes(&spokes[1].0, &spokes[1].1).iter().any(|r| r["prefix"] == "203.0.113.1/32"));
    let hub_rx = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let before = hub_rx();
    traffic::ping(&s1, "203.0.113.2", 5).expect("spoke 1 to spoke 2 on the shortcut");
    assert_eq!(hub_rx() - before, 0, "nothing crossed the hub once the shortcut was there");
}

/// Hierarchical DMVPN: hub 1 (the topology's hub) has spoke 1; hub 2 (in spoke 3's namespace,
/// overlay 203.0.113.3) is an NHS for spoke 2 and registers with hub 1, which routes spoke 2 via
/// hub 2. Resolutions cross both hubs, down (by hub 1's route) and up (hub 2 asks its own NHS),
/// and the spokes end up talking directly.
#[test]
fn two_hubs_forward_resolutions_hop_by_hop() {
    if !privilege::require_root("two_hubs_forward_resolutions_hop_by_hop") {
        return;
    }
    let mut t = HubAndSpokes::new("gh", 3).expect("topology");
    let hub1 = t.hub.clone();
    let hub2 = t.spokes[2].clone();
    let hub2_nbma = HubAndSpokes::spoke_nbma(3);
    let mut conf = HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30 }\n", &[]);
    conf += "\n[[route]]\nprefix = \"203.0.113.2/32\"\ntunnel = \"gre0\"\nvia = \"203.0.113.3\"\n";
    let ih1 = t.lab.gre_up(&hub1, "hub1", &conf).unwrap();
    let up = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhs\", holdtime = 30 }}\n");
    let ih2 = t.lab.gre_up(&hub2, "hub2", &HubAndSpokes::config(&hub2_nbma, "203.0.113.3", &up, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    ns_sh(&hub2, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).unwrap();
    let (s1, s2) = (t.spokes[0].clone(), t.spokes[1].clone());
    let to_hub1 = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let i1 = t.lab.gre_up(&s1, "s1", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(1), "203.0.113.1", &to_hub1, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let to_hub2 = "nhs = \"203.0.113.3\"\nnhrp = { role = \"nhc\", holdtime = 30 }\n";
    let i2 = t.lab.gre_up(&s2, "s2", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(2), "203.0.113.2", to_hub2, &[("203.0.113.3", &hub2_nbma)])).unwrap();
    let _daemons: Vec<gre::Daemon> = [(&hub1, &ih1), (&hub2, &ih2), (&s1, &i1), (&s2, &i2)].iter().map(|(ns, i)| gre::Daemon::start(ns, i)).collect();

    traffic::wait_for("spoke 1 and hub 2 registered with hub 1", 10, || {
        let list = peers(&hub1, &ih1);
        peer(&list, "203.0.113.1").is_some() && peer(&list, "203.0.113.3").is_some()
    });
    traffic::wait_for("spoke 2 registered with hub 2", 10, || peer(&peers(&hub2, &ih2), "203.0.113.2").is_some());
    traffic::wait_for("hub 2 to see its own NHS up", 5, || gre::show(&hub2, &ih2).unwrap()["tunnels"][0]["state"] == "up");

    // The first packets cross both hubs while each spoke resolves the other through them.
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2 across two hubs");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&s1, &i1), "203.0.113.2").is_some_and(|p| p["nbma"] == "198.51.100.33"));
    traffic::wait_for("spoke 2 to learn spoke 1", 5, || peer(&peers(&s2, &i2), "203.0.113.1").is_some_and(|p| p["nbma"] == "198.51.100.17"));
    let nhrp = |ns: &str, inst: &str, dir: &str, kind: &str| gre::show(ns, inst).unwrap()["tunnels"][0][dir][kind].as_u64().unwrap();
    // Each hub passed on both requests: one toward the other hub (by route, or up to its NHS),
    // one to its own registered spoke, which answered the requester itself (as phase 3 hubs of
    // Cisco and FRR do): no hub answered or relayed a reply.
    for (ns, inst) in [(&hub1, &ih1), (&hub2, &ih2)] {
        assert!(nhrp(ns, inst, "nhrp_sent", "resolution_request") >= 2, "{ns} forwarded both requests");
        assert_eq!(nhrp(ns, inst, "nhrp_sent", "resolution_reply"), 0, "{ns} answered nothing itself");
        assert_eq!(gre::show(ns, inst).unwrap()["tunnels"][0]["nhrp_errors"], 0);
    }
    // Then directly: neither hub sees the pings.
    let rx = |ns: &str, inst: &str| gre::show(ns, inst).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let punted = |ns: &str, inst: &str| gre::show(ns, inst).unwrap()["tunnels"][0]["nhrp_punted"].as_u64().unwrap();
    let before = [(rx(&hub1, &ih1), punted(&hub1, &ih1)), (rx(&hub2, &ih2), punted(&hub2, &ih2))];
    traffic::ping(&s1, "203.0.113.2", 5).expect("spoke 1 to spoke 2, direct");
    let after = [(rx(&hub1, &ih1), punted(&hub1, &ih1)), (rx(&hub2, &ih2), punted(&hub2, &ih2))];
    for ((rx0, nhrp0), (rx1, nhrp1)) in before.iter().zip(&after) {
        assert_eq!(rx1 - rx0, nhrp1 - nhrp0, "only NHRP reached a hub during the direct ping");
    }
}

/// DMVPN over an IPv6 underlay: NBMA addresses are IPv6, the overlay IPv4. Registrations,
/// resolution and the direct path as over IPv4; tshark reads NHRP with address family 2.
#[test]
fn over_ipv6_nbma() {
    if !privilege::require_root("over_ipv6_nbma") {
        return;
    }
    let mut t = HubAndSpokes::new("g6", 2).expect("topology");
    t.add_ipv6().expect("IPv6 underlay");
    let hub = t.hub.clone();
    let mut capture = Capture::start(&t.wan, "any", "ip6 proto 47");
    thread::sleep(Duration::from_millis(1000));
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA6, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30 }\n", &[])).unwrap();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let spokes: Vec<(String, String)> = (1..=2u8)
        .map(|i| {
            let ns = t.spokes[usize::from(i - 1)].clone();
            let conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma6(i), &HubAndSpokes::spoke_overlay(i), &extra, &[(HUB_OVERLAY, HUB_NBMA6)]);
            let inst = t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap();
            (ns, inst)
        })
        .collect();
    let _daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();

    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);
    for i in 1..=2u8 {
        assert_eq!(peer(&peers(&hub, &ih), &HubAndSpokes::spoke_overlay(i)).unwrap()["nbma"], HubAndSpokes::spoke_nbma6(i).as_str());
    }
    let (s1, i1) = spokes[0].clone();
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2 through the hub");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&s1, &i1), "203.0.113.2").is_some_and(|p| p["nbma"] == "2001:db8:2::1"));
    let hub_rx = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let hub_nhrp = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["nhrp_punted"].as_u64().unwrap();
    let before = (hub_rx(), hub_nhrp());
    traffic::ping(&s1, "203.0.113.2", 5).expect("spoke 1 to spoke 2, direct over IPv6");
    assert_eq!(hub_rx() - before.0, hub_nhrp() - before.1, "only NHRP reached the hub");

    let decoded =
        capture.decode("nhrp", &["nhrp.hdr.op.type", "nhrp.hdr.afn", "nhrp.src.nbma.addr_bytes", "nhrp.hdr.chksum.status", "_ws.malformed", "_ws.expert"]);
    let f = field;
    let hex = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().octets().iter().map(|b| format!("{b:02x}")).collect::<String>();
    let nbmas = [hex(HUB_NBMA6), hex(&HubAndSpokes::spoke_nbma6(1)), hex(&HubAndSpokes::spoke_nbma6(2))];
    let mut types = std::collections::BTreeSet::new();
    for p in &decoded {
        assert!(f(p, "_ws.malformed").is_empty() && f(p, "_ws.expert").is_empty(), "tshark objects to {p}");
        assert_eq!(f(p, "nhrp.hdr.chksum.status"), ["1"], "{p}");
        let afn = f(p, "nhrp.hdr.afn")[0].clone();
        assert!(afn == "2" || afn == "0x0002", "address family IPv6: {p}");
        assert!(nbmas.contains(&f(p, "nhrp.src.nbma.addr_bytes")[0].replace(':', "")), "the sender's IPv6 NBMA address: {p}");
        types.insert(f(p, "nhrp.hdr.op.type")[0].clone());
    }
    for ty in ["1", "2", "3", "4"] {
        assert!(types.contains(ty), "type {ty} among {types:?}");
    }
}

/// Phase 3 between the LANs behind two spokes: the hub relays the first packets and redirects;
/// the source spoke resolves the destination host, the hub forwards the request by its route to
/// the spoke behind which that LAN is, and that spoke answers for its LAN's prefix. Each spoke
/// then routes the other's whole LAN (/28) straight to it.
#[test]
fn phase_3_shortcuts_cover_the_lans_behind_spokes() {
    if !privilege::require_root("phase_3_shortcuts_cover_the_lans_behind_spokes") {
        return;
    }
    let mut t = HubAndSpokes::new("gl", 2).expect("topology");
    let hub = t.hub.clone();
    let lans = [("198.51.100.193/28", "198.51.100.194/28", "198.51.100.192/28"), ("198.51.100.209/28", "198.51.100.210/28", "198.51.100.208/28")];
    let mut hosts = Vec::new();
    for (i, (gw, host, _)) in lans.iter().enumerate() {
        let spoke = t.spokes[i].clone();
        let ns = t.lab.add_ns(&format!("lan{}", i + 1)).unwrap();
        t.lab.link((&spoke, "lan0", gw), (&ns, "eth0", host)).unwrap();
        ns_sh(&ns, &["ip", "route", "add", "default", "via", gw.split('/').next().unwrap()]).unwrap();
        ns_sh(&spoke, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).unwrap();
        hosts.push(ns);
    }
    let mut hub_conf = HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30 }\n", &[]);
    for (i, (_, _, lan)) in lans.iter().enumerate() {
        hub_conf += &format!("\n[[route]]\nprefix = \"{lan}\"\ntunnel = \"gre0\"\nvia = \"{}\"\n", HubAndSpokes::spoke_overlay(u8::try_from(i + 1).unwrap()));
    }
    let ih = t.lab.gre_up(&hub, "hub", &hub_conf).unwrap();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let mut spokes = Vec::new();
    for i in 1..=2u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let mut conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &extra, &[(HUB_OVERLAY, HUB_NBMA)]);
        for prefix in ["203.0.113.0/24", "198.51.100.192/27"] {
            conf += &format!("\n[[route]]\nprefix = \"{prefix}\"\ntunnel = \"gre0\"\nvia = \"{HUB_OVERLAY}\"\n");
        }
        spokes.push((ns.clone(), t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap()));
    }
    let _daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();
    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);

    traffic::ping(&hosts[0], "198.51.100.210", 3).expect("LAN 1 to LAN 2 through the hub");
    let routes = |ns: &str, i: &str| gre::show(ns, i).unwrap()["routes"].as_array().cloned().unwrap_or_default();
    let shortcut = |ns: &str, i: &str, prefix: &str, via: &str| routes(ns, i).iter().any(|r| r["prefix"] == prefix && r["via"] == via);
    traffic::wait_for("spoke 1's shortcut to LAN 2", 5, || shortcut(&spokes[0].0, &spokes[0].1, "198.51.100.208/28", "203.0.113.2"));
    traffic::wait_for("spoke 2's shortcut to LAN 1", 5, || shortcut(&spokes[1].0, &spokes[1].1, "198.51.100.192/28", "203.0.113.1"));
    let hub_rx = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let hub_nhrp = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["nhrp_punted"].as_u64().unwrap();
    let before = (hub_rx(), hub_nhrp());
    traffic::ping(&hosts[0], "198.51.100.210", 5).expect("LAN 1 to LAN 2 on the shortcut");
    // Another host of LAN 2 is covered by the same shortcut.
    ns_sh(&hosts[1], &["ip", "addr", "add", "198.51.100.211/28", "dev", "eth0"]).unwrap();
    traffic::ping(&hosts[0], "198.51.100.211", 2).expect("LAN 1 to another host of LAN 2");
    assert_eq!(hub_rx() - before.0, hub_nhrp() - before.1, "only NHRP reached the hub once the shortcuts were there");
    // The hub forwarded the resolutions (it has no binding for LAN hosts); the spokes answered.
    let nhrp = |ns: &str, inst: &str, dir: &str, kind: &str| gre::show(ns, inst).unwrap()["tunnels"][0][dir][kind].as_u64().unwrap();
    assert!(nhrp(&hub, &ih, "nhrp_sent", "resolution_request") >= 2);
    for (ns, inst) in &spokes {
        assert!(nhrp(ns, inst, "nhrp_sent", "resolution_reply") >= 1, "{ns} answered for its LAN");
    }
}

/// Two hubs, three spokes that register with both (hub 1 preferred): the spokes resolve through
/// hub 1; hub 1 dies (its link goes down); spokes that resolved each other go on talking
/// directly, each spoke sees hub 1 down and sends through hub 2 within the registration timeout,
/// and a new resolution goes through hub 2.
#[test]
fn a_spoke_with_two_hubs_survives_one() {
    if !privilege::require_root("a_spoke_with_two_hubs_survives_one") {
        return;
    }
    const HOLD: u64 = 45;
    let t = HubAndSpokes::new("gt", 4).expect("topology");
    let (hub1, hub2) = (t.hub.clone(), t.spokes[3].clone());
    let hub2_nbma = HubAndSpokes::spoke_nbma(4);
    let hub2_overlay = "203.0.113.253";
    for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"] {
        ns_sh(&hub2, &["sysctl", "-q", "-w", key]).unwrap();
    }
    let mut t = t;
    let hub_nhrp = format!("nhrp = {{ role = \"nhs\", holdtime = {HOLD} }}\n");
    let ih1 = t.lab.gre_up(&hub1, "h1", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, &hub_nhrp, &[])).unwrap();
    let ih2 = t.lab.gre_up(&hub2, "h2", &HubAndSpokes::config(&hub2_nbma, hub2_overlay, &hub_nhrp, &[])).unwrap();
    let spoke_nhrp = format!(
        "nhs = [{{ address = \"{HUB_OVERLAY}\", priority = 1 }}, {{ address = \"{hub2_overlay}\", priority = 2 }}]\nnhrp = {{ role = \"nhc\", holdtime = {HOLD} }}\n"
    );
    let mut spokes = Vec::new();
    for i in 1..=3u8 {
        let ns = t.spokes[usize::from(i - 1)].clone();
        let conf = HubAndSpokes::config(
            &HubAndSpokes::spoke_nbma(i),
            &HubAndSpokes::spoke_overlay(i),
            &spoke_nhrp,
            &[(HUB_OVERLAY, HUB_NBMA), (hub2_overlay, &hub2_nbma)],
        );
        let inst = t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap();
        spokes.push((ns, inst));
    }
    let mut hub1_daemon = Some(gre::Daemon::start(&hub1, &ih1));
    let _others: Vec<gre::Daemon> = [(&hub2, &ih2)].into_iter().chain(spokes.iter().map(|(n, i)| (n, i))).map(|(n, i)| gre::Daemon::start(n, i)).collect();
    let nhs = |ns: &str, i: &str| -> Vec<(String, String, bool)> {
        let v: Value = serde_json::from_str(&gre::run(ns, i, &["show", "nhs", "-j"]).unwrap()).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| (n["overlay"].as_str().unwrap().to_string(), n["state"].as_str().unwrap().to_string(), n["current"] == true))
            .collect()
    };
    let both_up = vec![(HUB_OVERLAY.to_string(), "up".to_string(), true), (hub2_overlay.to_string(), "up".to_string(), false)];
    for (ns, i) in &spokes {
        traffic::wait_for("a spoke registered with both hubs", 10, || nhs(ns, i) == both_up);
    }
    for (h, ih) in [(&hub1, &ih1), (&hub2, &ih2)] {
        traffic::wait_for("three registrations on each hub", 5, || peers(h, ih).len() == 3);
    }
    // Spoke 1 and spoke 2 resolve each other through hub 1, the preferred one.
    let (s1, i1) = spokes[0].clone();
    let (s2, i2) = spokes[1].clone();
    let (s3, i3) = spokes[2].clone();
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&s1, &i1), "203.0.113.2").is_some_and(|p| p["nbma"] == "198.51.100.33"));
    let sent = |ns: &str, i: &str, kind: &str| gre::show(ns, i).unwrap()["tunnels"][0]["nhrp_sent"][kind].as_u64().unwrap();
    assert!(sent(&hub1, &ih1, "resolution_request") >= 1, "hub 1 passed the resolution on");
    assert_eq!(sent(&hub2, &ih2, "resolution_request"), 0, "hub 2 was not asked");

    // Hub 1 dies.
    drop(hub1_daemon.take());
    ns_sh(&hub1, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let died = std::time::Instant::now();
    // Spoke 1 and spoke 2 go on directly meanwhile.
    traffic::ping(&s1, "203.0.113.2", 10).expect("spoke 1 to spoke 2 while hub 1 is dead");
    // Every spoke sees hub 1 down and hub 2 take over, within the registration timeout: the
    // next registration (a third of the holding time) and its three unanswered attempts (7 s).
    let failed_over = vec![(HUB_OVERLAY.to_string(), "down".to_string(), false), (hub2_overlay.to_string(), "up".to_string(), true)];
    for (ns, i) in &spokes {
        traffic::wait_for("hub 2 to take over", HOLD / 3 + 10, || nhs(ns, i) == failed_over);
    }
    let took = died.elapsed().as_secs();
    assert!(took <= HOLD / 3 + 9, "failover took {took} s");
    // A new resolution (spoke 3 had not resolved spoke 1) goes through hub 2, and then direct.
    traffic::ping(&s3, "203.0.113.1", 3).expect("spoke 3 to spoke 1 through hub 2");
    traffic::wait_for("spoke 3 to learn spoke 1", 5, || peer(&peers(&s3, &i3), "203.0.113.1").is_some_and(|p| p["nbma"] == "198.51.100.17"));
    assert!(sent(&hub2, &ih2, "resolution_request") >= 1, "hub 2 passed spoke 3's resolution on");
    let rx = || gre::show(&hub2, &ih2).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let before = rx();
    traffic::ping(&s3, "203.0.113.1", 5).expect("spoke 3 to spoke 1, direct");
    assert_eq!(rx() - before, 0, "the direct pings crossed hub 2");
    // The binding between spokes 1 and 2 outlived its holding time: renewed through hub 2.
    thread::sleep(Duration::from_secs((HOLD + 2).saturating_sub(died.elapsed().as_secs())));
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2 after a holding time");
    assert!(peer(&peers(&s1, &i1), "203.0.113.2").is_some_and(|p| p["nbma"] == "198.51.100.33"));
    assert!(peer(&peers(&s2, &i2), "203.0.113.1").is_some());
}

/// NHRP on a tunnel with GRE checksums (`csum`: both ends send and require them): NHRP carries
/// the checksum as the data does, so spokes register and resolve; tshark finds every GRE
/// checksum good.
#[test]
fn nhrp_carries_the_tunnels_checksums() {
    if !privilege::require_root("nhrp_carries_the_tunnels_checksums") {
        return;
    }
    let mut t = HubAndSpokes::new("gc", 2).expect("topology");
    let hub = t.hub.clone();
    let mut capture = Capture::start_snap(&t.wan, "any", "ip proto 47", 2048);
    let extra = format!("csum = true\nnhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let (ih, spokes) = t.up("csum = true\nnhrp = { role = \"nhs\", holdtime = 30 }\n", &extra, "").unwrap();
    let _daemons: Vec<gre::Daemon> = [(&hub, &ih)].into_iter().chain(spokes.iter().map(|(n, i)| (n, i))).map(|(n, i)| gre::Daemon::start(n, i)).collect();
    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);
    traffic::ping(&spokes[0].0, "203.0.113.2", 3).expect("spoke 1 to spoke 2");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&spokes[0].0, &spokes[0].1), "203.0.113.2").is_some());
    let nhrp = capture.decode("gre.proto == 0x2001", &["gre.checksum.status", "nhrp.hdr.op.type"]);
    let types: std::collections::BTreeSet<String> = nhrp.iter().flat_map(|p| field(p, "nhrp.hdr.op.type")).collect();
    assert!(["1", "2", "3", "4"].iter().all(|k| types.contains(*k)), "NHRP types seen: {types:?}");
    assert!(nhrp.iter().all(|p| field(p, "gre.checksum.status") == ["1"]), "a GRE checksum missing or bad: {nhrp:?}");
    assert!(capture.faults().is_empty());
    for (ns, i) in [(&hub, &ih), (&spokes[0].0, &spokes[0].1)] {
        let drops = gre::show(ns, i).unwrap()["tunnels"][0]["drops"].clone();
        assert_eq!((&drops["checksum_policy"], &drops["bad_checksum"]), (&Value::from(0), &Value::from(0)), "{ns}: {drops}");
    }
}

/// A restart is not an outage: a stopped daemon withdraws nothing; the next one takes up the
/// registrations, bindings, shortcuts and who-was-told it finds, and one daemon per instance.
#[test]
fn a_restart_is_not_an_outage() {
    if !privilege::require_root("a_restart_is_not_an_outage") {
        return;
    }
    let mut t = HubAndSpokes::new("gr", 2).expect("topology");
    let hub = t.hub.clone();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 60 }}\n");
    let via_hub = format!("\n[[route]]\nprefix = \"203.0.113.0/24\"\ntunnel = \"gre0\"\nvia = \"{HUB_OVERLAY}\"\n");
    let (ih, spokes) = t.up("nhrp = { role = \"nhs\", holdtime = 60 }\n", &extra, &via_hub).unwrap();
    let (s1, i1) = spokes[0].clone();
    let (s2, i2) = spokes[1].clone();
    let mut hub_daemon = Some(gre::Daemon::start(&hub, &ih));
    let mut d1 = Some(gre::Daemon::start(&s1, &i1));
    let mut d2 = Some(gre::Daemon::start_args(&s2, &i2, &["--purge-on-exit"]));
    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);
    // Phase 3: a shortcut each way.
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2");
    let routes = |ns: &str, i: &str| gre::show(ns, i).unwrap()["routes"].as_array().cloned().unwrap_or_default();
    traffic::wait_for("a shortcut on spoke 1", 5, || routes(&s1, &i1).iter().any(|r| r["prefix"] == "203.0.113.2/32"));

    // One daemon per instance.
    let second = Command::new(gre::bin()).args(["-n", &hub, "-I", &ih, "daemon"]).output().unwrap();
    assert!(!second.status.success() && String::from_utf8_lossy(&second.stderr).contains("runs for instance"), "{second:?}");

    // The hub restarts: its registrations stay in place meanwhile, and the new daemon takes
    // them up (with who was told: below).
    drop(hub_daemon.take());
    assert_eq!(peers(&hub, &ih).len(), 2, "a stop purged the registrations");
    hub_daemon = Some(gre::Daemon::start(&hub, &ih));
    // Spoke 1 restarts: its binding of spoke 2 and its shortcut stay, and so does the direct path.
    drop(d1.take());
    d1 = Some(gre::Daemon::start(&s1, &i1));
    assert!(routes(&s1, &i1).iter().any(|r| r["prefix"] == "203.0.113.2/32"), "the shortcut went with the daemon");
    let hub_rx = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let before = hub_rx();
    traffic::ping(&s1, "203.0.113.2", 5).expect("spoke 1 to spoke 2 after the restarts");
    assert_eq!(hub_rx() - before, 0, "the direct path broke");
    // Spoke 2 leaves for good: the restarted hub takes its withdrawal (it knows the
    // registration) and purges spoke 1, which it told before its restart.
    thread::sleep(Duration::from_secs(1));
    drop(d2.take());
    traffic::wait_for("the hub to forget spoke 2", 3, || peer(&peers(&hub, &ih), "203.0.113.2").is_none());
    traffic::wait_for("spoke 1 to be purged of spoke 2", 3, || peer(&peers(&s1, &i1), "203.0.113.2").is_none());
    drop((hub_daemon, d1));
    // The hub's stop saved its state for the next daemon; `gre down` takes it away with the rest,
    // so that no later instance of that name takes it up.
    let left = |i: &str| ["log", "ctl", "lock", "nhrp"].into_iter().filter(|w| std::path::Path::new(&format!("/run/gre/{i}.{w}")).exists()).collect::<Vec<_>>();
    assert!(left(&ih).contains(&"nhrp"), "the stopped hub saved nothing");
    t.lab.gre_down(&hub, &ih).unwrap();
    assert_eq!(left(&ih), Vec::<&str>::new(), "gre down left runtime files");
}

/// libfaketime (Debian's faketime package), which moves the wall clock a process sees.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .ok()
        .and_then(|dirs| dirs.filter_map(Result::ok).map(|d| d.path().join("faketime/libfaketime.so.1")).find(|p| p.exists()));
    found.expect("libfaketime (cargo xtask setup installs faketime)").display().to_string()
}

/// NHRP's timers run on the monotonic clock: stepping the wall clock the daemons see an hour
/// forward, then an hour back, neither expires the hub's table nor stops the spoke's
/// re-registration (holding time 6 s: a registration every 2 s).
#[test]
fn a_wall_clock_step_changes_nothing() {
    if !privilege::require_root("a_wall_clock_step_changes_nothing") {
        return;
    }
    let mut t = HubAndSpokes::new("gw", 1).expect("topology");
    let (hub, spoke) = (t.hub.clone(), t.spokes[0].clone());
    let ih = t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 6 }\n", &[])).unwrap();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 6 }}\n");
    let is = t.lab.gre_up(&spoke, "s1", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(1), "203.0.113.1", &extra, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let offset = std::env::temp_dir().join(format!("gre-clock-{}", std::process::id()));
    std::fs::write(&offset, "+0\n").unwrap();
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.as_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let _daemons = [gre::Daemon::start_env(&hub, &ih, &env), gre::Daemon::start_env(&spoke, &is, &env)];
    traffic::wait_for("the registration", 10, || peer(&peers(&hub, &ih), "203.0.113.1").is_some());
    let registrations = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["nhrp_received"]["registration_request"].as_u64().unwrap();
    for step in ["+3600", "-3600"] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        let before = registrations();
        // Longer than the holding time: a table on the wall clock would have expired, or a
        // spoke waited an hour to register again.
        for _ in 0..8 {
            thread::sleep(Duration::from_secs(1));
            assert!(peer(&peers(&hub, &ih), "203.0.113.1").is_some(), "the hub forgot the spoke after a step of {step} s");
        }
        let after = registrations();
        assert!(after >= before + 3, "{} registrations in 8 s after a step of {step} s", after - before);
        assert_eq!(gre::show(&spoke, &is).unwrap()["tunnels"][0]["state"], "up");
    }
    let _ = std::fs::remove_file(&offset);
}

/// The control socket: `gre show dmvpn` and `gre show peer` ask the daemon (the DMVPN table with
/// NBMA and claimed addresses, up times and attributes; the NHSs' registrations; one peer in
/// full, with who was told of it), `gre nhrp clear` forgets dynamic state through it, `gre log
/// --level` changes the daemon's level; root only.
#[test]
fn the_daemon_answers_on_its_control_socket() {
    if !privilege::require_root("the_daemon_answers_on_its_control_socket") {
        return;
    }
    let mut t = HubAndSpokes::new("gk", 2).expect("topology");
    let hub = t.hub.clone();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let (ih, spokes) = t.up("nhrp = { role = \"nhs\", holdtime = 30 }\n", &extra, "").unwrap();
    let (s1, i1) = spokes[0].clone();
    let ask = |ns: &str, i: &str, args: &[&str]| -> Value { serde_json::from_str(&gre::run(ns, i, args).unwrap()).unwrap() };
    // No daemon: said so.
    let none = Command::new(gre::bin()).args(["-n", &hub, "-I", &ih, "show", "dmvpn"]).output().unwrap();
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("no gre daemon answers"), "{none:?}");
    let _daemons: Vec<gre::Daemon> = [(&hub, &ih)].into_iter().chain(spokes.iter().map(|(n, i)| (n, i))).map(|(n, i)| gre::Daemon::start(n, i)).collect();
    traffic::wait_for("two registrations on the hub", 10, || peers(&hub, &ih).len() == 2);
    traffic::ping(&s1, "203.0.113.2", 3).expect("spoke 1 to spoke 2");
    traffic::wait_for("spoke 1 to learn spoke 2", 5, || peer(&peers(&s1, &i1), "203.0.113.2").is_some());

    let d = ask(&hub, &ih, &["show", "dmvpn", "-j"]);
    let rows = d["peers"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{d}");
    for (r, (overlay, nbma)) in rows.iter().zip([("203.0.113.1", "198.51.100.17"), ("203.0.113.2", "198.51.100.33")]) {
        assert_eq!(
            (r["tunnel"].as_str(), r["overlay"].as_str(), r["nbma"].as_str(), r["state"].as_str()),
            (Some("gre0"), Some(overlay), Some(nbma), Some("up")),
            "{r}"
        );
        assert_eq!(r["attributes"], serde_json::json!(["dynamic", "registered", "unique", "multicast"]), "{r}");
        assert_eq!(r["claimed_nbma"], Value::Null, "not NATed: {r}");
        assert!(r["up_for"].as_u64().is_some_and(|s| s < 60) && r["expires_in"].as_u64().is_some_and(|s| s <= 30), "{r}");
    }
    let table = gre::run(&hub, &ih, &["show", "dmvpn"]).unwrap();
    assert!(table.lines().next().is_some_and(|l| l.starts_with("tunnel") && l.contains("claimed nbma") && l.contains("attributes")), "{table}");
    assert!(table.lines().any(|l| l.split_whitespace().take(4).eq(["gre0", "198.51.100.33", "-", "203.0.113.2"])), "{table}");
    // A spoke: its hub (static) and spoke 2 (learned), and its registration with the hub.
    let d = ask(&s1, &i1, &["show", "dmvpn", "-j"]);
    let attrs = |overlay: &str| d["peers"].as_array().unwrap().iter().find(|r| r["overlay"] == overlay).map(|r| r["attributes"].clone());
    assert_eq!(attrs(HUB_OVERLAY), Some(serde_json::json!(["static"])), "{d}");
    // (The hub relayed the first pings and said so: a shortcut too.)
    assert_eq!(attrs("203.0.113.2"), Some(serde_json::json!(["dynamic", "shortcut"])), "{d}");
    let nhs = &d["nhs"][0];
    assert_eq!(
        (nhs["overlay"].as_str(), nhs["state"].as_str(), nhs["priority"].as_u64(), nhs["unanswered"].as_u64()),
        (Some(HUB_OVERLAY), Some("up"), Some(0), Some(0)),
        "{d}"
    );
    assert!(nhs["last_reply_ago"].as_u64().is_some_and(|s| s <= 10), "{d}");
    // One peer in full: the hub told spoke 1 where spoke 2 is.
    let p = ask(&hub, &ih, &["show", "peer", "203.0.113.2", "-j"]);
    let p = &p["peers"][0];
    assert_eq!(p["told"], serde_json::json!([{ "overlay": "203.0.113.1", "nbma": "198.51.100.17" }]), "{p}");
    assert_eq!(p["registration"]["unique"], true, "{p}");
    assert!(p["rx_packets"].as_u64().is_some_and(|n| n >= 1), "{p}");
    assert!(Command::new(gre::bin()).args(["-n", &hub, "-I", &ih, "show", "peer", "203.0.113.9"]).output().unwrap().status.code() != Some(0));
    // Clearing: one peer on spoke 1, then the hub's whole cache (the spokes register again).
    let out = gre::run(&s1, &i1, &["nhrp", "clear", "203.0.113.2"]).unwrap();
    assert!(out.contains("2 entries cleared"), "the peer and its shortcut: {out}");
    assert!(peer(&peers(&s1, &i1), "203.0.113.2").is_none());
    assert!(!gre::show(&s1, &i1).unwrap()["routes"].as_array().unwrap().iter().any(|r| r["prefix"] == "203.0.113.2/32"));
    assert!(peer(&peers(&s1, &i1), HUB_OVERLAY).is_some(), "static entries stay");
    let out = gre::run(&hub, &ih, &["nhrp", "clear"]).unwrap();
    assert!(out.contains("2 entries cleared"), "{out}");
    assert!(peers(&hub, &ih).is_empty());
    traffic::wait_for("the spokes to register again", 15, || peers(&hub, &ih).len() == 2);
    // The log level at run time; a bad one refused.
    assert!(gre::run(&hub, &ih, &["log", "--level", "debug"]).unwrap().contains("log level debug"));
    assert!(Command::new(gre::bin()).args(["-n", &hub, "-I", &ih, "log", "--level", "[nonsense"]).output().unwrap().status.code() != Some(0));
    // Root only: the socket's mode keeps others out, and so do the credentials if the mode
    // were loosened.
    let socket = format!("/run/gre/{ih}.ctl");
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let nobody =
        Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(gre::bin()).args(["-I", &ih, "show", "dmvpn"]).output().unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert!(!nobody.status.success() && String::from_utf8_lossy(&nobody.stderr).contains("root only"), "{nobody:?}");
}

/// An IPv6 overlay beside the IPv4 one: IPv6 NHRP (protocol type 0x86DD, /128 bindings)
/// registers each spoke's IPv6 address with the hub's, and an IPv6 ping between spokes is
/// resolved through the hub and then goes direct. tshark reads every NHRP message as sent.
#[test]
fn an_ipv6_overlay_resolves_too() {
    if !privilege::require_root("an_ipv6_overlay_resolves_too") {
        return;
    }
    let mut t = HubAndSpokes::new("g6", 2).expect("topology");
    let hub = t.hub.clone();
    // The hub relays IPv6 between spokes until they resolve each other.
    ns_sh(&hub, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]).unwrap();
    let tunnel = |local: &str, nhrp: &str, v4: &str, v6: &str| {
        format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nkey = 100\n{nhrp}address = [\"{v4}/24\", \"{v6}/64\"]\n"
        )
    };
    let hub_conf = tunnel(HUB_NBMA, "nhrp = { role = \"nhs\", holdtime = 30 }\n", HUB_OVERLAY, "2001:db8:100::fe");
    let ih = t.lab.gre_up(&hub, "hub", &hub_conf).unwrap();
    let mut capture = Capture::start(&t.wan, "any", "ip proto 47 and ip[22:2] = 0x2001");
    let spokes: Vec<(String, String)> = (1..=2u8)
        .map(|i| {
            let ns = t.spokes[usize::from(i - 1)].clone();
            let nhrp = format!("nhs = [\"{HUB_OVERLAY}\", \"2001:db8:100::fe\"]\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
            let mut conf = tunnel(&HubAndSpokes::spoke_nbma(i), &nhrp, &HubAndSpokes::spoke_overlay(i), &format!("2001:db8:100::{i}"));
            for overlay in [HUB_OVERLAY, "2001:db8:100::fe"] {
                conf += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{overlay}\"\nnbma = \"{HUB_NBMA}\"\n");
            }
            (ns.clone(), t.lab.gre_up(&ns, &format!("s{i}"), &conf).unwrap())
        })
        .collect();
    let _daemons: Vec<gre::Daemon> = [(&hub, &ih)].into_iter().chain(spokes.iter().map(|(n, i)| (n, i))).map(|(n, i)| gre::Daemon::start(n, i)).collect();
    // Each spoke registers both its addresses.
    traffic::wait_for("four registrations on the hub", 10, || peers(&hub, &ih).len() == 4);
    for i in 1..=2u8 {
        let list = peers(&hub, &ih);
        let p = peer(&list, &format!("2001:db8:100::{i}")).expect("the IPv6 registration");
        assert_eq!(p["nbma"].as_str(), Some(HubAndSpokes::spoke_nbma(i).as_str()));
    }
    let (s1, i1) = spokes[0].clone();
    traffic::ping(&s1, "2001:db8:100::2", 3).expect("spoke 1 to spoke 2 over IPv6");
    traffic::wait_for("spoke 1 to learn spoke 2's IPv6 address", 5, || peer(&peers(&s1, &i1), "2001:db8:100::2").is_some_and(|p| p["nbma"] == "198.51.100.33"));
    let hub_rx = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["rx_packets"].as_u64().unwrap();
    let before = hub_rx();
    traffic::ping(&s1, "2001:db8:100::2", 5).expect("spoke 1 to spoke 2 over IPv6, direct");
    assert_eq!(hub_rx() - before, 0, "the direct IPv6 pings crossed the hub");
    let v6 = capture.decode("nhrp.hdr.pro.type == 0x86dd", &["nhrp.hdr.op.type", "nhrp.prefix", "_ws.malformed", "_ws.expert"]);
    assert!(v6.iter().all(|p| field(p, "_ws.malformed").is_empty() && field(p, "_ws.expert").is_empty()), "tshark objects: {v6:?}");
    let kinds: std::collections::BTreeSet<String> = v6.iter().flat_map(|p| field(p, "nhrp.hdr.op.type")).collect();
    assert!(["1", "2", "3", "4"].iter().all(|k| kinds.contains(*k)), "IPv6 NHRP types seen: {kinds:?}");
    // (tshark shows IPv6 protocol addresses only as bytes: the binding's prefix says enough.)
    let replies: Vec<&Value> = v6.iter().filter(|p| field(p, "nhrp.hdr.op.type") == ["2"]).collect();
    assert!(!replies.is_empty() && replies.iter().all(|p| field(p, "nhrp.prefix").first().map(String::as_str) == Some("128")), "{replies:?}");
}

/// A new spoke joins through a flood: Registration Requests without the password come from a
/// thousand /64s (5 000 a second from each CPU, far beyond the 200 a second all strangers share
/// on a CPU) while spoke 1
/// starts; it carries the hub's password, which gives it a budget of its own, and registers with
/// its first request or the next. The flood is refused by rate, and nothing of it is registered.
#[test]
fn a_spoke_joins_through_a_registration_flood() {
    use gre_user::nhrp::engine::{Action, Engine, Nhs, Settings};
    use std::{
        net::{IpAddr, Ipv6Addr},
        os::fd::AsRawFd as _,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };
    if !privilege::require_root("a_spoke_joins_through_a_registration_flood") {
        return;
    }
    let mut t = HubAndSpokes::new("gF", 1).expect("topology");
    t.add_ipv6().expect("IPv6 underlay");
    let hub = t.hub.clone();
    let ih =
        t.lab.gre_up(&hub, "hub", &HubAndSpokes::config(HUB_NBMA6, HUB_OVERLAY, "nhrp = { role = \"nhs\", holdtime = 30, auth = \"dmvpn\" }\n", &[])).unwrap();
    // A registration every second (the shortest holding time, 3 s), to count how many get through.
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 3, auth = \"dmvpn\" }}\n");
    let spoke = t.spokes[0].clone();
    let is = t.lab.gre_up(&spoke, "s1", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma6(1), "203.0.113.1", &extra, &[(HUB_OVERLAY, HUB_NBMA6)])).unwrap();
    let _hub_daemon = gre::Daemon::start(&hub, &ih);
    let macs = (gre_tests::topology::link(&hub, "eth0").unwrap().1, gre_tests::topology::link(&t.wan, "h0").unwrap().1);
    // Our client's Registration Request without the password, from a /64 of its own each.
    let hub_nbma: IpAddr = HUB_NBMA6.parse().unwrap();
    let frames: Vec<Vec<u8>> = (0..1000u16)
        .map(|i| {
            let src = IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0x8000 | i, 0, 0, 0, 0, 1));
            let mut e = Engine::new(Settings {
                nhs: vec![Nhs { overlay: HUB_OVERLAY.parse().unwrap(), nbma: hub_nbma, priority: 0 }],
                ..Settings::new(false, "203.0.113.100".parse().unwrap(), "203.0.113.0/24".parse().unwrap(), src)
            });
            let nhrp = e.tick(0).into_iter().find_map(|a| if let Action::Send { packet, .. } = a { Some(packet) } else { None }).unwrap();
            traffic::gre_frame(macs, (src, hub_nbma), 100, 0x2001, &nhrp)
        })
        .collect();
    // One sender per CPU: the budgets are per CPU, and the spoke's packets may be taken on any.
    let frames = Arc::new(frames);
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let flooding: Vec<_> = (0..cpus)
        .map(|cpu| {
            let (stop, frames) = (Arc::clone(&stop), Arc::clone(&frames));
            let tx = traffic::packet_socket(&t.wan, "h0").unwrap();
            thread::spawn(move || {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).unwrap();
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
                let start = std::time::Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start.elapsed().as_millis() * 5;
                    while u128::from(sent) < due {
                        let f = &frames[usize::try_from((sent + cpu as u64 * 500) % 1000).unwrap()];
                        // SAFETY: sending our buffer on our socket.
                        unsafe { libc::send(tx.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                        sent += 1;
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                sent
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let rate_drops = || gre::show(&hub, &ih).unwrap()["tunnels"][0]["drops"]["nhrp_rate"].as_u64().unwrap_or(0);
    assert!(rate_drops() > 5000, "the flood is refused by rate: {}", rate_drops());
    let _spoke_daemon = gre::Daemon::start(&spoke, &is);
    // Its first request, or the one a second later: the flood does not hold it back (without a
    // budget of its own, each would pass one time in 25).
    traffic::wait_for("spoke 1 to register through the flood", 2, || peer(&peers(&hub, &ih), "203.0.113.1").is_some());
    // And every renewal after it is answered: a registered spoke is a known peer, whose budget
    // strangers cannot touch.
    let counter = |dir: &str, kind: &str| gre::show(&spoke, &is).unwrap()["tunnels"][0][dir][kind].as_u64().unwrap();
    let (sent0, answered0) = (counter("nhrp_sent", "registration_request"), counter("nhrp_received", "registration_reply"));
    thread::sleep(Duration::from_secs(6));
    let (sent, answered) = (counter("nhrp_sent", "registration_request") - sent0, counter("nhrp_received", "registration_reply") - answered0);
    assert!(sent >= 5 && answered + 1 >= sent, "during the flood spoke 1 sent {sent} registrations, {answered} were answered");
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = flooding.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(sent > 30_000, "{sent} flood frames");
    assert_eq!(peers(&hub, &ih).len(), 1, "nothing of the flood registered");
    traffic::ping(&spoke, HUB_OVERLAY, 2).expect("spoke 1 to the hub");
}
