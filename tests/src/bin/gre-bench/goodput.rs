//! Part 4 — TCP goodput (iperf3) between two LAN hosts, through the same namespaces:
//!
//! ```text
//!   host_a ── lan0 [site a] eth0 ── wan ── eth0 [site b] lan0 ── host_b
//! ```
//!
//! routed without a tunnel, then through the tunnel with the fast paths (LAN ports declared),
//! then through the tunnel by the kernel path (no LAN ports: the kernel routes into the tunnel
//! netdev, and decapsulated packets go up through it). The tunnel carries 28 bytes more per
//! packet (outer IPv4 and keyed GRE), so its TCP segments are 1432 bytes instead of 1460: the
//! goodput the tunnel can reach at best is that share of the untunnelled one.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use gre_tests::{
    gre,
    topology::{A_OVERLAY4, A_UNDERLAY, B_OVERLAY4, B_UNDERLAY, HOST_B, SitesWithLans, sh},
};
use serde_json::{Value, json};

const KEY: u32 = 1001;
/// TCP payload per segment without and with the tunnel (MTU 1500 and 1472).
const MSS_PLAIN: f64 = 1460.0;
const MSS_TUNNEL: f64 = 1432.0;

/// An iperf3 server in `ns` for one test.
struct Server(Child);

impl Server {
    fn start(ns: &str) -> Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "--server", "--one-off", "--bind", HOST_B])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 (cargo xtask setup installs it)")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Goodput from host a to host b over `seconds`, in bit/s, as the receiver counted it.
fn iperf(t: &SitesWithLans, seconds: u32) -> Result<f64> {
    let _server = Server::start(&t.host_b)?;
    for _ in 0..50 {
        let out = Command::new("ip")
            .args(["netns", "exec", &t.host_a, "iperf3", "--client", HOST_B, "--time", &seconds.to_string(), "--json"])
            .output()
            .context("running iperf3")?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        // The server may not listen yet.
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 did not connect from {} to {HOST_B}", t.host_a)
}

fn config(local: &str, remote: &str, overlay: &str, lan_prefix: &str, lan_port: bool) -> String {
    let lan = if lan_port { "[[interface]]\nname = \"lan0\"\nrole = \"lan\"\n\n" } else { "" };
    format!(
        "[[interface]]\nname = \"eth0\"\n\n{lan}[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nkey = {KEY}\n\
         address = [\"{overlay}/30\"]\n\n[[route]]\nprefix = \"{lan_prefix}\"\ntunnel = \"gre0\"\n"
    )
}

fn fast(ns: &str, instance: &str) -> Result<u64> {
    let v = gre::show(ns, instance)?;
    Ok(v["tunnels"][0]["fast_tx"].as_u64().unwrap_or(0) + v["tunnels"][0]["fast_rx"].as_u64().unwrap_or(0))
}

/// Runs the three cases; prints the table and returns the figures.
pub fn run(seconds: u32) -> Result<Value> {
    let mut t = SitesWithLans::new("gre-goodput")?;
    let (a, b, wan) = (t.sites.a.clone(), t.sites.b.clone(), t.sites.wan.clone());

    // No tunnel: the router knows the LANs.
    sh(&["ip", "-n", &wan, "route", "add", "203.0.113.64/26", "via", A_UNDERLAY])?;
    sh(&["ip", "-n", &wan, "route", "add", "203.0.113.128/26", "via", B_UNDERLAY])?;
    let plain = iperf(&t, seconds)?;
    sh(&["ip", "-n", &wan, "route", "del", "203.0.113.64/26"])?;
    sh(&["ip", "-n", &wan, "route", "del", "203.0.113.128/26"])?;

    let mut through = |lan_port: bool| -> Result<(f64, u64)> {
        let ia = t.sites.lab.gre_up(&a, "a", &config(A_UNDERLAY, B_UNDERLAY, A_OVERLAY4, "203.0.113.128/26", lan_port))?;
        let ib = t.sites.lab.gre_up(&b, "b", &config(B_UNDERLAY, A_UNDERLAY, B_OVERLAY4, "203.0.113.64/26", lan_port))?;
        let bps = iperf(&t, seconds)?;
        let fast_packets = fast(&a, &ia)? + fast(&b, &ib)?;
        t.sites.lab.gre_down(&a, &ia)?;
        t.sites.lab.gre_down(&b, &ib)?;
        Ok((bps, fast_packets))
    };
    let (fast_bps, fast_packets) = through(true)?;
    let (kernel_bps, kernel_fast_packets) = through(false)?;
    if fast_packets == 0 || kernel_fast_packets != 0 {
        bail!("the fast paths carried {fast_packets} packets with LAN ports and {kernel_fast_packets} without: the cases are not what they say");
    }

    let best = MSS_TUNNEL / MSS_PLAIN;
    println!("{:<40} {:>12} {:>14} {:>20}", "TCP goodput, host a → host b (iperf3)", "Gbit/s", "× no tunnel", "× best after overhead");
    println!("{:<40} {:>12.2} {:>14.2} {:>20}", "no tunnel (routed)", plain / 1e9, 1.0, "-");
    for (name, bps) in [("tunnel, fast paths (XDP)", fast_bps), ("tunnel, kernel path (tunnel netdev)", kernel_bps)] {
        println!("{name:<40} {:>12.2} {:>14.2} {:>20.2}", bps / 1e9, bps / plain, bps / plain / best);
    }
    println!("(one stream, {seconds} s each; the tunnel's segments carry {MSS_TUNNEL} bytes instead of {MSS_PLAIN}, so {best:.3} × no tunnel is the ceiling)");
    Ok(json!({
        "seconds": seconds,
        "no_tunnel_bps": plain,
        "fast_path_bps": fast_bps,
        "kernel_path_bps": kernel_bps,
        "overhead_ceiling": best,
        "fast_vs_no_tunnel_after_overhead": fast_bps / plain / best,
        "kernel_vs_no_tunnel_after_overhead": kernel_bps / plain / best,
        "fast_vs_kernel": fast_bps / kernel_bps,
    }))
}
