//! Inspection of a running instance: `gre show PART` (tables and JSON), `gre stats`.

use gre_tests::{
    gre, privilege,
    topology::{A_OVERLAY4, A_OVERLAY6, A_UNDERLAY, B_OVERLAY4, B_OVERLAY6, B_UNDERLAY, TwoSites},
    traffic,
};
use serde_json::Value;

fn json(ns: &str, instance: &str, args: &[&str]) -> Value {
    serde_json::from_str(&gre::run(ns, instance, args).expect("gre")).expect("JSON")
}

/// Each part alone is what the whole report holds, in both forms; drops say which tunnel.
#[test]
fn show_parts_are_the_report_in_pieces() {
    if !privilege::require_root("show_parts_are_the_report_in_pieces") {
        return;
    }
    let mut sites = TwoSites::new("gi").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    // a sends with key 7 to a b that expects 8: b drops them as key_mismatch.
    let ca = TwoSites::site_config(A_UNDERLAY, B_UNDERLAY, Some(7), A_OVERLAY4, A_OVERLAY6);
    let cb = TwoSites::site_config(B_UNDERLAY, A_UNDERLAY, Some(8), B_OVERLAY4, B_OVERLAY6);
    let _ia = sites.lab.gre_up(&a, "a", &ca).expect("gre up a");
    let ib = sites.lab.gre_up(&b, "b", &cb).expect("gre up b");
    assert!(traffic::ping(&a, B_OVERLAY4, 2).is_err());
    // b's replies never come, but b's own pings leave it: tx counters move.
    let _ = traffic::ping(&b, A_OVERLAY4, 1);

    let all = gre::show(&b, &ib).unwrap();
    assert_eq!(json(&b, &ib, &["show", "tunnels", "-j"]), all["tunnels"]);
    assert_eq!(json(&b, &ib, &["show", "routes", "-j"]), all["routes"]);
    assert_eq!(json(&b, &ib, &["show", "nhs", "-j"]), all["nhs"]);
    assert_eq!(json(&b, &ib, &["show", "peers", "-p"]), all["peers"]);
    let stats = json(&b, &ib, &["show", "stats", "-j"]);
    let t = &all["tunnels"][0];
    for k in ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "fast_rx", "fast_tx", "keepalives_sent", "nhrp_received", "drops"] {
        assert_eq!(stats[0][k], t[k], "{k}");
    }
    assert_eq!((stats[0]["tunnel"].as_str(), stats[0]["tx_packets"].as_u64()), (Some("gre0"), Some(1)));
    let drops = json(&b, &ib, &["show", "drops", "-j"]);
    assert_eq!(drops["all"], all["drops"]);
    assert_eq!(drops["all"]["key_mismatch"], 2, "{drops}");
    // No tunnel matched, but gre0 is the only one between these endpoints: it is counted there.
    assert_eq!(drops["by_tunnel"]["gre0"]["key_mismatch"], 2, "{drops}");

    // The tables: headers, and the figures of the JSON.
    let tunnels = gre::run(&b, &ib, &["show", "tunnels"]).unwrap();
    let row: Vec<&str> = tunnels.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["gre0", "gre", "-", "eth0", B_UNDERLAY, A_UNDERLAY], "{tunnels}");
    let stats = gre::run(&b, &ib, &["show", "stats"]).unwrap();
    assert!(stats.starts_with("tunnel  rx packets"), "{stats}");
    let drops = gre::run(&b, &ib, &["show", "drops"]).unwrap();
    assert!(drops.lines().any(|l| l.split_whitespace().eq(["key_mismatch", "2", "gre0", "2"])), "{drops}");
    assert_eq!(gre::run(&b, &ib, &["show", "peers"]).unwrap().lines().count(), 1, "only the header: no peers");
    // `gre show` is the parts together.
    let whole = gre::run(&b, &ib, &["show"]).unwrap();
    assert!(whole.contains(&tunnels) && whole.contains(&drops), "{whole}");
}

/// `gre stats`: what crossed the tunnel in the interval, and its rates.
#[test]
fn stats_count_what_crossed_in_the_interval() {
    if !privilege::require_root("stats_count_what_crossed_in_the_interval") {
        return;
    }
    let mut sites = TwoSites::new("gs").expect("topology");
    let a = sites.a.clone();
    let (ia, _ib) = sites.tunnel(Some(5)).expect("tunnel");
    // Two readings of 2 s each; 20 pings (84 inner bytes each) in the first, nothing after.
    let stats =
        std::process::Command::new(gre::bin()).args(["-n", &a, "-I", &ia, "stats", "--watch", "--interval", "2", "--count", "2", "-j"]).output_in_background();
    std::thread::sleep(std::time::Duration::from_millis(300));
    traffic::ping_fast(&a, B_OVERLAY4, 20, 0.05).expect("ping");
    let out = stats.join();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let t = &lines[0]["tunnels"][0];
    assert_eq!((t["tunnel"].as_str(), t["tx_packets"].as_u64(), t["rx_packets"].as_u64()), (Some("gre0"), Some(20), Some(20)), "{out}");
    assert_eq!(t["tx_bytes"], 20 * 84, "{out}");
    let secs = lines[0]["interval"].as_f64().unwrap();
    assert!((1.9..2.5).contains(&secs), "{out}");
    let pps = t["tx_pps"].as_f64().unwrap();
    assert!((pps - 20.0 / secs).abs() < 1e-6, "{out}");
    assert!((t["tx_bps"].as_f64().unwrap() - 20.0 * 84.0 * 8.0 / secs).abs() < 1e-6, "{out}");
    assert_eq!(lines[1]["tunnels"][0]["tx_packets"], 0, "nothing in the second interval: {out}");
    assert!(lines[1]["drops"].as_object().unwrap().values().all(|v| v == 0));
    // The table form names the columns and the tunnel.
    let table = gre::run(&a, &ia, &["stats", "--interval", "0.2"]).unwrap();
    assert!(table.starts_with("tunnel") && table.lines().nth(1).is_some_and(|l| l.starts_with("gre0")), "{table}");
    let e = gre::run(&a, &ia, &["stats", "--interval", "0"]).unwrap_err();
    assert!(e.to_string().contains("--interval is between"), "{e}");
}

/// Runs a command on a thread and hands its stdout back when joined.
trait Background {
    fn output_in_background(&mut self) -> Pending;
}

struct Pending(std::thread::JoinHandle<String>);

impl Pending {
    fn join(self) -> String {
        self.0.join().expect("the command's thread")
    }
}

impl Background for std::process::Command {
    fn output_in_background(&mut self) -> Pending {
        let child = self.stdout(std::process::Stdio::piped()).spawn().expect("spawn");
        Pending(std::thread::spawn(move || String::from_utf8_lossy(&child.wait_with_output().expect("output").stdout).into_owned()))
    }
}

/// `gre daemon` serves Prometheus metrics where the config's `[metrics]` says; the values are
/// the traffic that was sent, and every one agrees with `gre show -j`.
#[test]
fn metrics_are_the_counters_of_the_traffic() {
    if !privilege::require_root("metrics_are_the_counters_of_the_traffic") {
        return;
    }
    let mut sites = TwoSites::new("gp").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    sites.lab.gre_up(&a, "a", &TwoSites::site_config(A_UNDERLAY, B_UNDERLAY, Some(5), A_OVERLAY4, A_OVERLAY6)).unwrap();
    let mut cb = TwoSites::site_config(B_UNDERLAY, A_UNDERLAY, Some(5), B_OVERLAY4, B_OVERLAY6);
    cb += "\n[metrics]\nlisten = \"127.0.0.1:9477\"\n";
    let path = std::env::temp_dir().join(format!("gre-metrics-{}.toml", std::process::id()));
    std::fs::write(&path, cb).unwrap();
    let ib = sites.lab.adopt(&b, "b");
    let _daemon = gre::Daemon::start_with(&b, &ib, &path);
    // The daemon listens once the instance is up.
    let up = || traffic::in_netns(&b, || Ok(std::net::TcpStream::connect("127.0.0.1:9477")?)).is_ok();
    traffic::wait_for("the daemon to bring b up and serve metrics", 10, up);
    let _ = std::fs::remove_file(&path);
    traffic::ping_fast(&a, B_OVERLAY4, 4, 0.05).expect("ping");
    let (status, body) = traffic::http_get(&b, "127.0.0.1:9477", "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    let value = |series: &str| traffic::metric(&body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"));
    let show = gre::show(&b, &ib).unwrap();
    let t = &show["tunnels"][0];
    for (series, field) in [("rx_packets", "rx_packets"), ("rx_bytes", "rx_bytes"), ("tx_packets", "tx_packets"), ("tx_bytes", "tx_bytes")] {
        assert_eq!(value(&format!("gre_tunnel_{series}_total{{tunnel=\"gre0\"}}")), t[field].as_u64().unwrap(), "{series}");
    }
    assert_eq!(value("gre_tunnel_rx_packets_total{tunnel=\"gre0\"}"), 4);
    assert_eq!(value("gre_tunnel_rx_bytes_total{tunnel=\"gre0\"}"), 4 * 84);
    assert_eq!(value("gre_tunnel_tx_packets_total{tunnel=\"gre0\"}"), 4, "b's replies");
    assert_eq!(value("gre_drops_total{reason=\"key_mismatch\"}"), 0);
    assert_eq!(value("gre_tunnel_state{tunnel=\"gre0\",state=\"unknown\"}"), 1, "no keepalives: unknown");
    assert_eq!(body.lines().filter(|l| l.starts_with("gre_drops_total{")).count(), show["drops"].as_object().unwrap().len(), "every reason");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text");
    assert!(traffic::http_get(&b, "127.0.0.1:9477", "/").unwrap().0.contains("404"));
}

/// `gre showconf` prints what runs, as a file `gre up -c` takes again: the tunnels, peers and
/// routes it describes are those of the original file, and bringing the instance up from it
/// gives the same `showconf` back.
#[test]
fn showconf_round_trips() {
    if !privilege::require_root("showconf_round_trips") {
        return;
    }
    let mut sites = TwoSites::new("gc").expect("topology");
    let a = sites.a.clone();
    let original = format!(
        "[[interface]]\nname = \"eth0\"\n\n\
         [[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{A_UNDERLAY}\"\nremote = \"{B_UNDERLAY}\"\n\
         ikey = 7\nokey = 8\nicsum = true\niseq = true\nttl = 64\ntos = \"inherit\"\npmtudisc = false\nignore_df = true\n\
         keepalive = {{ period = 10, retries = 5 }}\naddress = [\"{A_OVERLAY4}/30\", \"{A_OVERLAY6}/64\"]\n\n\
         [[tunnel]]\nname = \"dmvpn0\"\ninterface = \"eth0\"\nlocal = \"{A_UNDERLAY}\"\nkey = 100\nnhs = \"203.0.113.254\"\nstrict = true\n\
         nhrp = {{ role = \"nhc\", holdtime = 60, network_id = 7, auth = \"secret\" }}\naddress = [\"203.0.113.129/25\"]\n\n\
         [[route]]\nprefix = \"203.0.113.64/27\"\ntunnel = \"dmvpn0\"\nvia = \"203.0.113.254\"\n\n\
         [[peer]]\ntunnel = \"dmvpn0\"\noverlay = \"203.0.113.254\"\nnbma = \"{B_UNDERLAY}\"\nmulticast = true\n"
    );
    let ia = sites.lab.gre_up(&a, "a", &original).expect("gre up");
    let shown = gre::run(&a, &ia, &["showconf"]).unwrap();
    let parse = |text: &str| gre_user::config::parse(std::path::Path::new("showconf.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let (was, now) = (parse(&original), parse(&shown));
    assert_eq!(now.tunnels, was.tunnels, "{shown}");
    assert_eq!((now.routes, now.peers), (was.routes, was.peers), "{shown}");
    assert_eq!(now.interfaces.len(), 1);
    assert!(shown.contains("xdp_mode = \"native\""), "auto resolved to what runs: {shown}");
    // Down, and up again from what showconf printed: the same configuration runs.
    sites.lab.gre_down(&a, &ia).unwrap();
    let ia = sites.lab.gre_up(&a, "a2", &shown).expect("gre up from showconf");
    let again = gre::run(&a, &ia, &["showconf"]).unwrap();
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&shown));
}

/// `gre log` follows the datapath's slow-path events: a spoke with traffic for an unknown peer
/// asks for a resolution, once a second at most, and says so.
#[test]
fn log_shows_slow_path_events() {
    use gre_tests::topology::{HUB_NBMA, HUB_OVERLAY, HubAndSpokes};
    if !privilege::require_root("log_shows_slow_path_events") {
        return;
    }
    let mut t = HubAndSpokes::new("gL", 1).expect("topology");
    let s1 = t.spokes[0].clone();
    let nhs = format!("nhs = \"{HUB_OVERLAY}\"\n");
    let i1 = t.lab.gre_up(&s1, "s1", &HubAndSpokes::config(&HubAndSpokes::spoke_nbma(1), "203.0.113.1", &nhs, &[(HUB_OVERLAY, HUB_NBMA)])).unwrap();
    let log = std::process::Command::new(gre::bin()).args(["-n", &s1, "-I", &i1, "log", "-c", "1"]).output_in_background();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Pings to a spoke nobody knows: the datapath asks the daemon for a resolution.
    let _ = traffic::ping_fast(&s1, "203.0.113.9", 3, 0.2);
    let out = log.join();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].ends_with("INFO tunnel 0: no peer for 203.0.113.9 (from 203.0.113.1): resolution asked"), "{out}");
}

/// With `gre daemon` running, `gre log` interleaves its lines with the datapath's: a spoke's
/// traffic for another spoke makes the datapath ask, and the daemon learn the answer.
#[test]
fn log_follows_the_daemon_too() {
    use gre_tests::topology::{HUB_OVERLAY, HubAndSpokes};
    if !privilege::require_root("log_follows_the_daemon_too") {
        return;
    }
    let mut t = HubAndSpokes::new("gF", 2).expect("topology");
    let hub = t.hub.clone();
    let extra = format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 30 }}\n");
    let (ih, spokes) = t.up("nhrp = { role = \"nhs\", holdtime = 30 }\n", &extra, "").unwrap();
    let _daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();
    traffic::wait_for("two registrations", 10, || gre::show(&hub, &ih).unwrap()["peers"].as_array().is_some_and(|p| p.len() == 2));
    let (s1, i1) = spokes[0].clone();
    traffic::wait_for("spoke 1 to see its NHS up", 5, || gre::show(&s1, &i1).unwrap()["tunnels"][0]["state"] == "up");
    let log = std::process::Command::new(gre::bin()).args(["-n", &s1, "-I", &i1, "log", "-c", "2"]).output_in_background();
    std::thread::sleep(std::time::Duration::from_millis(500));
    traffic::ping(&s1, "203.0.113.2", 2).expect("spoke to spoke");
    let out = log.join();
    assert!(out.lines().any(|l| l.contains(" datapath INFO tunnel 0: no peer for 203.0.113.2 (from 203.0.113.1): resolution asked")), "{out}");
    assert!(out.lines().any(|l| l.contains(" daemon INFO tunnel 0: peer 203.0.113.2 is at 198.51.100.33 for 30s")), "{out}");
}
