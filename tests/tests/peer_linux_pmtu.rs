//! Path MTU against Linux's own GRE (ip_gre in a Debian guest), across an underlay with a
//! 1400-byte link between two routers: what does not fit is fragmented on the way (outer
//! fragments, reassembled by `gre daemon` on our side and by the guest's kernel on its side),
//! and DF packets make each end learn the smaller path from the routers' ICMP.
//!
//! ```text
//!   guest eth0 198.51.100.2/24 ─ bridge ─ rt1 198.51.100.126/24
//!   rt1 203.0.113.129/30 ══ MTU 1400 ══ rt2 203.0.113.130/30
//!   rt2 203.0.113.65/26 ══ far (our datapath) 203.0.113.66/26
//! ```

use std::{net::SocketAddr, thread, time::Duration};

use anyhow::{Context as _, Result, ensure};
use gre_tests::{
    gre,
    peers::{GUEST, LinuxPeer},
    privilege,
    topology::ns_sh,
    traffic,
    vm::Kernel,
};

const FAR: &str = "203.0.113.66";
const OUR_OVERLAY: &str = "203.0.113.1";
const GUEST_OVERLAY: &str = "203.0.113.2";
/// The tunnel MTU of both ends (1500 less IPv4 and GRE with key) and what the path carries.
const TUNNEL_MTU: u32 = 1472;
const PATH_MTU: u32 = 1400;

#[test]
fn linux_gre_across_a_smaller_hop() {
    if !privilege::require_root("linux_gre_across_a_smaller_hop") {
        return;
    }
    let mut p = LinuxPeer::new("vmt", &Kernel::bookworm().expect("kernel")).expect("guest");
    if let Err(e) = run(&mut p) {
        panic!("{e:#}\n--- guest console ---\n{}", p.guest.console());
    }
}

fn run(p: &mut LinuxPeer) -> Result<()> {
    let (rt1, _) = p.add_ours("rt1", "198.51.100.126")?;
    let rt2 = p.lab.add_ns("rt2")?;
    let far = p.lab.add_ns("far")?;
    p.lab.link((&rt1, "l0", "203.0.113.129/30"), (&rt2, "l0", "203.0.113.130/30"))?;
    p.lab.link((&rt2, "o0", "203.0.113.65/26"), (&far, "eth0", &format!("{FAR}/26")))?;
    for ns in [&rt1, &rt2] {
        ns_sh(ns, &["ip", "link", "set", "l0", "mtu", &PATH_MTU.to_string()])?;
        ns_sh(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    }
    ns_sh(&rt1, &["ip", "route", "add", "203.0.113.64/26", "via", "203.0.113.130"])?;
    ns_sh(&rt2, &["ip", "route", "add", "198.51.100.0/24", "via", "203.0.113.129"])?;
    ns_sh(&far, &["ip", "route", "add", "default", "via", "203.0.113.65"])?;
    ns_sh(&far, &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
    // The guest's GRE leaves DF to the inner packet (nopmtudisc), as ours does: what has no DF
    // is fragmented by rt1 / rt2, what has it brings their ICMP.
    p.guest.ok(&format!(
        "ip route add 203.0.113.64/26 via 198.51.100.126\n\
         ip link add gre1 type gre local {GUEST} remote {FAR} key 5 nopmtudisc\n\
         ip addr add {GUEST_OVERLAY}/30 dev gre1\nip link set gre1 addrgenmode none up\n\
         ping -c 1 -W 5 {FAR} > /dev/null"
    ))?;
    let config = format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{FAR}\"\nremote = \"{GUEST}\"\n\
         key = 5\npmtudisc = false\naddress = [\"{OUR_OVERLAY}/30\"]\n"
    );
    let instance = p.lab.gre_up(&far, "far", &config)?;
    let _daemon = gre::Daemon::start(&far, &instance);
    thread::sleep(Duration::from_millis(500));
    p.ours.clone_from(&far);
    let mtu = |ns: &str| -> Result<u32> { Ok(ns_sh(ns, &["cat", "/sys/class/net/gre0/mtu"])?.trim().parse()?) };
    ensure!(mtu(&far)? == TUNNEL_MTU);

    // Without DF, both ways: 3000-byte pings are inner fragments of the tunnel MTU, each in a
    // GRE packet too big for the 1400-byte link, fragmented again on the way.
    let reassembled = |v: &serde_json::Value| v["tunnels"][0]["reassembled"].as_u64().unwrap_or(0);
    let before = gre::show(&far, &instance)?;
    p.guest.ok("ping -c 3 -i 0.5 -W 5 -M dont -s 3000 203.0.113.1 | grep -q '3 received'").context("3000-byte pings from the guest")?;
    ns_sh(&far, &["ping", "-c", "3", "-i", "0.5", "-W", "5", "-M", "dont", "-s", "3000", GUEST_OVERLAY]).context("3000-byte pings to the guest")?;
    let after = gre::show(&far, &instance)?;
    ensure!(reassembled(&after) - reassembled(&before) >= 6, "outer fragments reassembled and delivered: {}", after["tunnels"][0]);
    ensure!(mtu(&far)? == TUNNEL_MTU, "no DF, no path MTU learned");

    // With DF: the guest's first full-size ping brings rt1's ICMP; its gre1 then refuses what
    // does not fit the path, as Linux does.
    let full = TUNNEL_MTU - 28;
    let learned = PATH_MTU - 28;
    let mut said = String::new();
    for _ in 0..4 {
        let out = p.guest.run_timeout(&format!("ping -c 1 -W 2 -M do -s {full} {OUR_OVERLAY}"), Duration::from_secs(30))?;
        said = format!("{}{}", out.stdout, out.stderr);
        // Its tunnel's ICMP at first, then the local error of a socket that knows the path.
        if said.contains(&format!("mtu = {learned}")) || said.contains(&format!("mtu={learned}")) {
            break;
        }
    }
    ensure!(said.contains(&format!("mtu = {learned}")) || said.contains(&format!("mtu={learned}")), "the guest's gre1 did not learn {learned}: {said}");
    // Ours: rt2's ICMP lowers our tunnel MTU the same way.
    let _ = ns_sh(&far, &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &full.to_string(), GUEST_OVERLAY]);
    traffic::wait_for("our tunnel MTU to follow the path", 5, || mtu(&far).is_ok_and(|m| m == learned));
    ns_sh(&far, &["ping", "-c", "3", "-i", "0.3", "-W", "3", "-M", "do", "-s", &(learned - 28).to_string(), GUEST_OVERLAY])
        .context("DF pings that fit the path")?;

    // TCP both ways fits itself to the path.
    let to: SocketAddr = format!("{GUEST_OVERLAY}:5001").parse()?;
    let (sent, got) = p.tcp_to_guest(to, 1 << 20)?;
    ensure!(sent == got, "to the guest: sent {sent:?}, received {got:?}");
    let from: SocketAddr = format!("{OUR_OVERLAY}:5002").parse()?;
    let (sent, got) = p.tcp_from_guest(from, 1 << 20)?;
    ensure!(sent == got, "from the guest: sent {sent:?}, received {got:?}");
    let end = gre::show(&far, &instance)?;
    ensure!(gre::counters::drops(&end) == 0, "our drops: {}", end["drops"]);
    Ok(())
}
