//! The demo behind `cargo xtask demo`: two sites in network namespaces, an underlay router
//! between them, a keyed GRE tunnel brought up with `gre`, real traffic across it, what
//! `gre show` prints; then a DMVPN (phase 3: one hub, three spokes, NHRP) in which spokes find
//! each other and take shortcuts. Everything is removed at the end — also on Ctrl-C or a failed
//! step.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Result, bail};
use gre_tests::{
    gre,
    topology::{A_OVERLAY4, A_OVERLAY6, B_OVERLAY4, B_OVERLAY6, HUB_NBMA, HUB_OVERLAY, HubAndSpokes, TwoSites, ns_sh},
    traffic,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn step(what: &str) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    println!("\n==> {what}");
    Ok(())
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo creates network namespaces and loads eBPF: run it as root");
        std::process::exit(1);
    }
    if let Err(e) = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: cleaning up");
    }) {
        eprintln!("cannot install the Ctrl-C handler: {e}");
    }
    // The sites are removed when `sites` drops, whatever happened.
    let code = match TwoSites::new("gre-demo")
        .and_then(|mut sites| {
            let r = demo(&mut sites);
            println!("\n==> removing the namespaces, tunnels and pins");
            let names = [sites.a.clone(), sites.wan.clone(), sites.b.clone()];
            drop(sites);
            r.and_then(|()| gone(&names))
        })
        .and_then(|()| {
            let mut net = HubAndSpokes::new("gre-dmvpn", 3)?;
            let r = dmvpn(&mut net);
            println!("\n==> removing the namespaces, tunnels and pins");
            let mut names = vec![net.hub.clone(), net.wan.clone()];
            names.extend(net.spokes.iter().cloned());
            drop(net);
            r.and_then(|()| gone(&names))
        }) {
        Ok(()) => {
            println!("demo finished: everything it created is gone");
            0
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("demo interrupted; what it had created is removed");
            130
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Checks that the namespaces and the pins of the demo are gone.
fn gone(namespaces: &[String]) -> Result<()> {
    let listed = gre_tests::topology::sh(&["ip", "netns", "list"])?;
    for ns in namespaces {
        if listed.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())) {
            bail!("namespace {ns} is still there");
        }
        let pins = std::path::Path::new(gre_user::instance::PIN_ROOT).join(ns);
        if pins.exists() {
            bail!("{} is still there", pins.display());
        }
    }
    Ok(())
}

fn demo(sites: &mut TwoSites) -> Result<()> {
    let (a, b, wan) = (sites.a.clone(), sites.b.clone(), sites.wan.clone());
    println!("namespaces: {a} (site a), {wan} (underlay router), {b} (site b)");
    step("bringing up a GRE tunnel with key 1001 on both sites (gre up)")?;
    println!("{}", gre_tests::topology::TwoSites::site_config("198.51.100.1", "198.51.100.65", Some(1001), A_OVERLAY4, A_OVERLAY6));
    let (ia, ib) = sites.tunnel(Some(1001))?;
    print!("{}", ns_sh(&a, &["ip", "-br", "addr", "show", "dev", "gre0"])?);
    print!("{}", ns_sh(&a, &["ip", "link", "show", "dev", "gre0"])?);

    step("ping across the overlay, both ways, IPv4 and IPv6 inside GRE/IPv4")?;
    for (from, to) in [(&a, B_OVERLAY4), (&b, A_OVERLAY4), (&a, B_OVERLAY6), (&b, A_OVERLAY6)] {
        let out = traffic::ping(from, to, 3)?;
        let summary = out.lines().filter(|l| l.contains("packets transmitted") || l.starts_with("rtt")).collect::<Vec<_>>().join("; ");
        println!("{from} -> {to}: {summary}");
    }

    step("TCP: 10 MiB from site a to site b across the tunnel, SHA-256 checked at both ends")?;
    let server: SocketAddr = format!("{B_OVERLAY4}:5001").parse()?;
    // `gre stats --watch` on site a while the transfer runs: four quarter-second readings.
    let watch = std::process::Command::new(gre::bin())
        .args(["-n", &a, "-I", &ia, "stats", "--watch", "--interval", "0.25", "-c", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let (sent, received) = traffic::tcp_transfer(&b, server, &a, 10 << 20)?;
    let secs = started.elapsed().as_secs_f64();
    let watched = watch.wait_with_output()?;
    let hex = |h: &[u8; 32]| h.iter().fold(String::new(), |s, b| s + &format!("{b:02x}"));
    println!("sent     {} bytes, sha256 {}", sent.bytes, hex(&sent.sha256));
    println!("received {} bytes, sha256 {}", received.bytes, hex(&received.sha256));
    if sent != received {
        bail!("the received data differs from what was sent");
    }
    println!("identical; {:.0} Mbit/s through two namespaces and a router", f64::from(u32::try_from(sent.bytes).unwrap_or(u32::MAX)) * 8.0 / secs / 1e6);
    step(&format!("gre -n {a} -I {ia} stats --watch --interval 0.25 -c 4, during the transfer"))?;
    print!("{}", String::from_utf8_lossy(&watched.stdout));

    for (ns, instance) in [(&a, &ia), (&b, &ib)] {
        step(&format!("gre -n {ns} -I {instance} show"))?;
        print!("{}", gre::run(ns, instance, &["show"])?);
    }
    Ok(())
}

/// DMVPN phase 3: spokes route the overlay through the hub; the hub relays the first packets and
/// tells the source (Traffic Indication); the source resolves the destination and takes a
/// shortcut.
fn dmvpn(net: &mut HubAndSpokes) -> Result<()> {
    let hub = net.hub.clone();
    println!("\nnamespaces: {hub} (hub), {} (underlay router), spokes {}", net.wan, net.spokes.join(", "));
    step("bringing up the hub: a multipoint GRE tunnel with NHRP as next-hop server")?;
    let hub_conf = HubAndSpokes::config(HUB_NBMA, HUB_OVERLAY, "ttl = 64\nnhrp = { role = \"nhs\", holdtime = 600, auth = \"dmvpn\" }\n", &[]);
    println!("{hub_conf}");
    let ih = net.lab.gre_up(&hub, "hub", &hub_conf)?;
    step("bringing up three spokes: NHRP clients of the hub, the overlay routed through it")?;
    let extra = format!("ttl = 64\nnhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 600, auth = \"dmvpn\" }}\n");
    let mut spokes = Vec::new();
    for i in 1..=3u8 {
        let ns = net.spokes[usize::from(i - 1)].clone();
        let mut conf = HubAndSpokes::config(&HubAndSpokes::spoke_nbma(i), &HubAndSpokes::spoke_overlay(i), &extra, &[(HUB_OVERLAY, HUB_NBMA)]);
        conf += &format!("\n[[route]]\nprefix = \"203.0.113.0/24\"\ntunnel = \"gre0\"\nvia = \"{HUB_OVERLAY}\"\n");
        if i == 1 {
            println!("{conf}");
        }
        let inst = net.lab.gre_up(&ns, &format!("s{i}"), &conf)?;
        spokes.push((ns, inst));
    }
    step("gre daemon on every node: spokes register with the hub")?;
    let _daemons: Vec<gre::Daemon> =
        std::iter::once((hub.clone(), ih.clone())).chain(spokes.iter().cloned()).map(|(ns, i)| gre::Daemon::start(&ns, &i)).collect();
    let peers = |ns: &str, i: &str| -> Result<usize> { Ok(gre::show(ns, i)?["peers"].as_array().map_or(0, Vec::len)) };
    wait("three registrations on the hub", || peers(&hub, &ih).is_ok_and(|n| n == 3))?;
    print!("{}", gre::run(&hub, &ih, &["show", "peers"])?);

    let (s1, i1) = spokes[0].clone();
    step("spoke 1 pings spoke 2: the hub relays, then redirects; spoke 1 takes a shortcut")?;
    let out = traffic::ping(&s1, &HubAndSpokes::spoke_overlay(2), 3)?;
    println!("{}", out.lines().filter(|l| l.contains("packets transmitted")).collect::<Vec<_>>().join("; "));
    let shortcut =
        |ns: &str, i: &str| gre::show(ns, i).is_ok_and(|v| v["routes"].as_array().is_some_and(|r| r.iter().any(|r| r["prefix"] == "203.0.113.2/32")));
    wait("a shortcut to spoke 2 on spoke 1", || shortcut(&s1, &i1))?;
    let hub_rx = || -> Result<u64> { Ok(gre::show(&hub, &ih)?["tunnels"][0]["rx_packets"].as_u64().unwrap_or(0)) };
    let before = hub_rx()?;
    let out = traffic::ping(&s1, &HubAndSpokes::spoke_overlay(2), 5)?;
    println!("{}", out.lines().filter(|l| l.contains("packets transmitted")).collect::<Vec<_>>().join("; "));
    println!("packets the hub received meanwhile: {} (the shortcut is direct)", hub_rx()? - before);

    for (ns, instance, who) in [(&hub, &ih, "hub"), (&s1, &i1, "spoke 1")] {
        step(&format!("gre show on the {who}"))?;
        print!("{}", gre::run(ns, instance, &["show"])?);
    }
    Ok(())
}

/// Waits up to 10 s for `ready`.
fn wait(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..100 {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}
