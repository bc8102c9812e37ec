//! What ships beside the binary: man pages and completions generated from the command line, the
//! example configurations, the systemd unit.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use gre_tests::{
    gre, privilege,
    topology::{HubAndSpokes, TwoSites},
    traffic,
};

/// The capabilities the unit grants (setpriv's names).
const UNIT_CAPS: [&str; 4] = ["bpf", "perfmon", "net_admin", "net_raw"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The man pages and completions in docs/ are what the current command line generates (after
/// a change to it: `cargo xtask man`), one page per command.
#[test]
fn man_pages_and_completions_are_current() {
    let out = std::env::temp_dir().join(format!("gre-docs-{}", std::process::id()));
    let status = std::process::Command::new(gre::bin()).args(["gen-docs", "--out"]).arg(&out).status().expect("gre gen-docs");
    assert!(status.success());
    for part in ["man", "completions"] {
        let (fresh, committed) = (files(&out.join(part)), files(&repo().join("docs").join(part)));
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&fresh), names(&committed), "docs/{part} is stale: run `cargo xtask man`");
        for ((name, a), (_, b)) in fresh.iter().zip(&committed) {
            assert!(a == b, "docs/{part}/{name} is stale: run `cargo xtask man`");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    let pages = files(&repo().join("docs/man"));
    for cmd in ["gre.1", "gre-up.1", "gre-down.1", "gre-show.1", "gre-stats.1", "gre-daemon.1", "gre-nhrp-dump.1", "gre-check.1"] {
        let page = pages.iter().find(|(n, _)| n == cmd).unwrap_or_else(|| panic!("no {cmd}"));
        assert!(String::from_utf8_lossy(&page.1).contains(".SH SYNOPSIS"), "{cmd}");
    }
}

/// The unit's command line is one `gre` accepts (it fails on the missing file, not on usage),
/// and every example configuration passes `gre check`.
#[test]
fn the_unit_and_the_examples_are_accepted() {
    let unit = std::fs::read_to_string(repo().join("packaging/gre@.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut args: Vec<String> = exec.split_whitespace().skip(1).map(|a| a.replace("%i", "unit-test")).collect();
    assert_eq!(args.iter().map(String::as_str).collect::<Vec<_>>(), ["-I", "unit-test", "daemon", "-c", "/etc/gre/unit-test.toml"]);
    args[4] = "/nonexistent/unit-test.toml".to_string();
    let out = std::process::Command::new(gre::bin()).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/unit-test.toml") && !err.contains("Usage"), "{err}");
    for caps in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        let line = unit.lines().find(|l| l.starts_with(caps)).unwrap();
        assert_eq!(line[caps.len()..].split_whitespace().collect::<Vec<_>>(), UNIT_CAPS.map(|c| format!("CAP_{}", c.to_uppercase())));
    }
    for example in ["site-a", "site-b", "hub", "spoke"] {
        let path = repo().join(format!("examples/{example}.toml"));
        let out = std::process::Command::new(gre::bin()).args(["check", "-c"]).arg(&path).output().unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The examples as they are, in namespaces with their addresses: the two sites talk over IPv4
/// and IPv6; the hub and the spoke, each run by `gre daemon -c` as the unit runs it, register
/// and talk.
#[test]
fn the_examples_come_up_and_carry_traffic() {
    if !privilege::require_root("the_examples_come_up_and_carry_traffic") {
        return;
    }
    let mut sites = TwoSites::new("gx").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    for (ns, example) in [(&a, "site-a"), (&b, "site-b")] {
        let conf = std::fs::read_to_string(repo().join(format!("examples/{example}.toml"))).unwrap();
        sites.lab.gre_up(ns, example, &conf).unwrap();
    }
    for (from, to) in [(&a, "203.0.113.2"), (&b, "203.0.113.1"), (&a, "2001:db8:100::2")] {
        traffic::ping(from, to, 2).unwrap_or_else(|e| panic!("{e:#}"));
    }
    drop(sites);

    let mut net = HubAndSpokes::new("gX", 1).expect("topology");
    let (hub, spoke) = (net.hub.clone(), net.spokes[0].clone());
    let ih = net.lab.adopt(&hub, "hub");
    let is = net.lab.adopt(&spoke, "spoke");
    let _hub = gre::Daemon::start_with(&hub, &ih, &repo().join("examples/hub.toml"));
    let _spoke = gre::Daemon::start_with(&spoke, &is, &repo().join("examples/spoke.toml"));
    traffic::wait_for("the spoke to register", 10, || {
        gre::show(&hub, &ih).is_ok_and(|v| v["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["overlay"] == "203.0.113.1")))
    });
    traffic::ping(&spoke, "203.0.113.254", 2).expect("spoke to hub");
    traffic::wait_for("the NHS up on the spoke", 5, || gre::show(&spoke, &is).is_ok_and(|v| v["tunnels"][0]["state"] == "up"));
}

/// Without the capabilities a command needs, it says which and how to grant them, before it
/// touches anything.
#[test]
fn missing_capabilities_are_named() {
    if !privilege::require_root("missing_capabilities_are_named") {
        return;
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args(["--bounding-set=-bpf,-sys_admin,-net_admin,-perfmon,-net_raw", "--inh-caps=-all", "--"])
            .arg(gre::bin())
            .args(args)
            .output()
            .expect("setpriv");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["-I", "no-such-instance", "down"]);
    assert!(e.contains("missing CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON") && e.contains("setcap"), "{e}");
    let e = run(&["-I", "no-such-instance", "daemon"]);
    assert!(e.contains("CAP_NET_RAW"), "{e}");
    let e = run(&["-I", "no-such-instance", "show"]);
    assert!(e.contains("missing CAP_BPF:") || e.contains("missing CAP_BPF "), "{e}");
    assert!(!e.contains("CAP_NET_ADMIN"), "reading needs only CAP_BPF: {e}");
}

/// An underlay whose driver has no native XDP (a bridge device): `auto` falls back to generic
/// mode and says so; `native` refuses with a hint, leaving nothing behind.
#[test]
fn xdp_modes_on_a_driver_without_native_xdp() {
    if !privilege::require_root("xdp_modes_on_a_driver_without_native_xdp") {
        return;
    }
    let mut lab = gre_tests::topology::Lab::new("gd");
    let ns = lab.add_ns("x").unwrap();
    gre_tests::topology::ns_sh(&ns, &["ip", "link", "add", "br0", "type", "bridge"]).unwrap();
    gre_tests::topology::ns_sh(&ns, &["ip", "addr", "add", "198.51.100.1/24", "dev", "br0"]).unwrap();
    gre_tests::topology::ns_sh(&ns, &["ip", "link", "set", "br0", "up"]).unwrap();
    let config = |mode: &str| {
        format!(
            "[[interface]]\nname = \"br0\"\nxdp_mode = \"{mode}\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"br0\"\nlocal = \"198.51.100.1\"\nremote = \"198.51.100.2\"\naddress = [\"203.0.113.1/30\"]\n"
        )
    };
    let path = std::env::temp_dir().join(format!("gre-xdp-mode-{}.toml", std::process::id()));
    std::fs::write(&path, config("native")).unwrap();
    let instance = lab.instance("native");
    let out = std::process::Command::new(gre::bin()).args(["-n", &ns, "-I", &instance, "up", "-c"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("native mode (try xdp_mode = \"skb\")"), "{err}");
    assert!(!std::path::Path::new(gre_user::instance::PIN_ROOT).join(&instance).exists(), "nothing left behind");
    assert!(gre_tests::topology::ns_sh(&ns, &["ip", "link", "show", "gre0"]).is_err(), "nothing left behind");
    std::fs::write(&path, config("auto")).unwrap();
    let instance = lab.adopt(&ns, "auto");
    let out = std::process::Command::new(gre::bin()).args(["-n", &ns, "-I", &instance, "up", "-c"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("br0: native XDP refused") && err.contains("falling back to generic (skb) mode"), "{err}");
    assert!(gre_tests::topology::ns_sh(&ns, &["ip", "link", "show", "br0"]).unwrap().contains("xdpgeneric"));
    assert!(gre::run(&ns, &instance, &["showconf"]).unwrap().contains("xdp_mode = \"skb\""));
}

/// The unit as systemd reads it: `systemd-analyze verify` accepts it, and `systemd-analyze
/// security` rates its exposure low (under 5 of 10).
#[test]
fn systemd_accepts_the_unit() {
    let dir = tempdir("gre-unit");
    let unit = std::fs::read_to_string(repo().join("packaging/gre@.service")).unwrap();
    let path = dir.join("gre@unit-test.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/gre", gre::bin().to_str().unwrap())).unwrap();
    let verify = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze (cargo xtask setup)");
    assert!(verify.status.success() && verify.stderr.is_empty(), "{}", String::from_utf8_lossy(&verify.stderr));
    let security = std::process::Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for gre@unit-test.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(level < 5.0, "exposure {level}:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The unit's command line under the unit's restrictions, as far as this machine allows without
/// systemd: only the unit's capabilities (none other in the bounding set, none gained later),
/// the file system read-only but for the pins (/sys/fs/bpf) and the runtime directory
/// (/run/gre), a private /tmp. The example hub and spoke come up that way and register.
#[test]
fn the_unit_s_command_runs_under_its_restrictions() {
    if !privilege::require_root("the_unit_s_command_runs_under_its_restrictions") {
        return;
    }
    let mut net = HubAndSpokes::new("gu", 1).expect("topology");
    let (hub, spoke) = (net.hub.clone(), net.spokes[0].clone());
    let ih = net.lab.adopt(&hub, "hub");
    let is = net.lab.adopt(&spoke, "spoke");
    let caps = UNIT_CAPS.map(|c| format!("+{c}")).join(",");
    let confined = |ns: &str, instance: &str, example: &str| {
        let script = format!(
            "set -e; mkdir -p /run/gre; mount --bind /run/gre /run/gre; mount -t tmpfs tmpfs /tmp; \
             mount -o remount,bind,ro /; if mountpoint -q /run; then mount -o remount,bind,ro /run; fi; \
             if touch /etc/gre-confinement-test 2> /dev/null; then echo 'the file system is writable' >&2; exit 1; fi; \
             exec setpriv --no-new-privs --inh-caps=-all,{caps} --ambient-caps=-all,{caps} --bounding-set=-all,{caps} \
             {} -I {instance} daemon -c {}",
            gre::bin().display(),
            repo().join(format!("examples/{example}.toml")).display()
        );
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", &script])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nsenter")
    };
    let hub_daemon = Running(Some(confined(&hub, &ih, "hub")));
    let spoke_daemon = Running(Some(confined(&spoke, &is, "spoke")));
    traffic::wait_for("the spoke to register, both confined", 15, || {
        gre::show(&hub, &ih).is_ok_and(|v| v["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["overlay"] == "203.0.113.1")))
    });
    traffic::ping(&spoke, "203.0.113.254", 2).expect("spoke to hub");
    // What they could not do: write outside their directories, or gain a capability.
    for d in [&hub_daemon, &spoke_daemon] {
        let pid = d.0.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| u64::from_str_radix(v.trim(), 16).unwrap()).unwrap();
        // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_PERFMON 38, CAP_BPF 39.
        let unit = (1u64 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
        assert_eq!((field("CapEff:"), field("CapBnd:"), field("NoNewPrivs:")), (unit, unit, 1), "{status}");
    }
    drop((hub_daemon, spoke_daemon));
}

/// A confined daemon, stopped with SIGTERM (as systemd stops it) when dropped.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(i32::try_from(c.id()).unwrap(), libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}
