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
    // A key mismatch belongs to no tunnel (none matched); the per-tunnel view has it at 0.
    assert_eq!(drops["by_tunnel"]["gre0"]["key_mismatch"], 0, "{drops}");

    // The tables: headers, and the figures of the JSON.
    let tunnels = gre::run(&b, &ib, &["show", "tunnels"]).unwrap();
    let row: Vec<&str> = tunnels.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..6], ["gre0", "gre", "-", "eth0", B_UNDERLAY, A_UNDERLAY], "{tunnels}");
    let stats = gre::run(&b, &ib, &["show", "stats"]).unwrap();
    assert!(stats.starts_with("tunnel  rx packets"), "{stats}");
    let drops = gre::run(&b, &ib, &["show", "drops"]).unwrap();
    assert!(drops.lines().any(|l| l.split_whitespace().eq(["key_mismatch", "2", "-"])), "{drops}");
    assert_eq!(gre::run(&b, &ib, &["show", "peers"]).unwrap().lines().count(), 1, "only the header: no peers");
    // `gre show` is the parts together.
    let whole = gre::run(&b, &ib, &["show"]).unwrap();
    assert!(whole.contains(&tunnels) && whole.contains(&drops), "{whole}");
}
