//! The demo behind `cargo xtask demo`: two sites in network namespaces, an underlay router
//! between them, a keyed GRE tunnel brought up with `gre`, real traffic across it, what
//! `gre show` prints, and everything removed at the end — also on Ctrl-C or a failed step.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Result, bail};
use gre_tests::{
    gre,
    topology::{A_OVERLAY4, A_OVERLAY6, B_OVERLAY4, B_OVERLAY6, TwoSites, ns_sh},
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
    let code = match TwoSites::new("gre-demo").and_then(|mut sites| {
        let r = demo(&mut sites);
        println!("\n==> removing the namespaces, tunnels and pins");
        let names = [sites.a.clone(), sites.wan.clone(), sites.b.clone()];
        drop(sites);
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
        let pins = std::path::Path::new(gre_user::loader::PIN_ROOT).join(ns);
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
    let started = Instant::now();
    let (sent, received) = traffic::tcp_transfer(&b, server, &a, 10 << 20)?;
    let secs = started.elapsed().as_secs_f64();
    let hex = |h: &[u8; 32]| h.iter().fold(String::new(), |s, b| s + &format!("{b:02x}"));
    println!("sent     {} bytes, sha256 {}", sent.bytes, hex(&sent.sha256));
    println!("received {} bytes, sha256 {}", received.bytes, hex(&received.sha256));
    if sent != received {
        bail!("the received data differs from what was sent");
    }
    println!("identical; {:.0} Mbit/s through two namespaces and a router", f64::from(u32::try_from(sent.bytes).unwrap_or(u32::MAX)) * 8.0 / secs / 1e6);

    for (ns, instance) in [(&a, &ia), (&b, &ib)] {
        step(&format!("gre -n {ns} -i {instance} show"))?;
        print!("{}", gre::run(ns, instance, &["show"])?);
    }
    Ok(())
}
