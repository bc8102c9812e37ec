//! Our datapath against Open vSwitch's userspace GRE (ovs-vswitchd with the netdev datapath, in a
//! namespace of the test): for each variant, pings both ways with exact counts, TCP both ways
//! with a SHA-256 at each end, a capture on the underlay that tshark finds nothing wrong with and
//! that carries nothing but GRE and ARP, our counters equal to what crossed the wire, and nothing
//! dropped on either side. One OVS serves every case; each replaces its tunnel port.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use gre_tests::{
    capture::{Capture, field},
    gre::{self, counters},
    ovs::{self, HOST_OVERLAY, HOST_OVERLAY6, OUR_OVERLAY, OUR_OVERLAY6, OURS, OVS, OvsPeer},
    privilege, topology, traffic,
};

const PINGS: u32 = 5;
const TCP_BYTES: u64 = 2 << 20;

/// One variant: OVS's tunnel port and our tunnel.
struct Case {
    name: &'static str,
    /// Options of OVS's GRE port besides `remote_ip` (`ovs-vsctl … options:K=V`).
    ovs: &'static [&'static str],
    /// Lines of our `[[tunnel]]`.
    ours: &'static str,
    /// Ethernet over GRE (OVS's default GRE, our gretap) rather than L3 GRE.
    ethernet: bool,
    /// TCP over IPv6 as well as IPv4 (the pings are over both in every case).
    tcp6: bool,
}

const CASES: &[Case] = &[
    Case { name: "key", ovs: &["key=1001"], ours: "key = 1001", ethernet: false, tcp6: false },
    Case { name: "keyless", ovs: &[], ours: "", ethernet: false, tcp6: false },
    // OVS verifies every checksum it receives and drops what does not verify (as
    // `datapath_drop_tunnel_pop_error`, which each case checks).
    Case { name: "csum", ovs: &["key=7", "csum=true"], ours: "key = 7\ncsum = true", ethernet: false, tcp6: false },
    Case { name: "ipv6 inner", ovs: &["key=1001"], ours: "key = 1001", ethernet: false, tcp6: true },
    Case { name: "gretap", ovs: &["key=1001"], ours: "mode = \"gretap\"\nkey = 1001", ethernet: true, tcp6: true },
];

/// What crossed the underlay, read by tshark.
#[derive(Debug, Default)]
struct Wire {
    from_us: u64,
    from_ovs: u64,
    /// GRE frames carrying TCP.
    tcp: u64,
    /// GRE frames whose checksum tshark verified good.
    csum_good: u64,
    /// The protocols of every frame that is neither GRE between the two ends nor ARP.
    other: Vec<String>,
}

impl Wire {
    fn read(cap: &mut Capture) -> Self {
        let mut w = Self::default();
        for f in cap.decode("frame", &["frame.protocols", "ip.src", "gre.checksum.status"]) {
            let protocols = field(&f, "frame.protocols").first().cloned().unwrap_or_default();
            // By the outermost layers: an ICMP error quoting GRE is not GRE.
            if !protocols.starts_with("eth:ethertype:ip:gre:") {
                if !protocols.starts_with("eth:ethertype:arp") {
                    w.other.push(protocols);
                }
                continue;
            }
            match field(&f, "ip.src").first().map(String::as_str) {
                Some(OURS) => w.from_us += 1,
                Some(OVS) => w.from_ovs += 1,
                src => w.other.push(format!("{protocols} from {src:?}")),
            }
            w.tcp += u64::from(protocols.contains(":tcp"));
            w.csum_good += u64::from(field(&f, "gre.checksum.status").first().is_some_and(|s| s == "1"));
        }
        w
    }

    fn gre(&self) -> u64 {
        self.from_us + self.from_ovs
    }
}

fn mtu(ns: &str, dev: &str) -> Result<u32> {
    let out = topology::sh(&["ip", "-n", ns, "-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()).with_context(|| format!("no MTU for {dev} in {out}"))
}

/// Pings until one reply comes back (neighbours, DAD, OVS's flow cache), at most 10 times.
fn settle(ns: &str, dst: &str) -> Result<()> {
    let mut last = Ok(String::new());
    for _ in 0..10 {
        last = traffic::ping(ns, dst, 1);
        if last.is_ok() {
            break;
        }
    }
    last.map(|_| ())
}

/// Lets what is still in flight land before the counters are read and the capture stops: the
/// last ACK of a TCP close, what tcpdump has not yet written.
fn landed() {
    thread::sleep(Duration::from_millis(300));
}

fn run_case(p: &mut OvsPeer, c: &Case) -> Result<()> {
    let mark = p.ovs.log_mark();
    p.tunnel(c.ovs, c.ethernet)?;
    let config = format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{OURS}\"\nremote = \"{OVS}\"\n{}\n\
         address = [\"{OUR_OVERLAY}/24\", \"{OUR_OVERLAY6}/64\"]\n",
        c.ours
    );
    let ours = p.ours.clone();
    let instance = p.lab.gre_up(&ours, "gre", &config)?;
    let result = exchange(p, &instance, c);
    let down = p.lab.gre_down(&ours, &instance);
    result?;
    down?;
    // What OVS could not take it says in its log ("receive tunnel port not found" for a key
    // it has no port for, say), even where no counter shows it.
    let log = p.ovs.log_since(mark);
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| ["|WARN|", "|ERR|", "|EMER|"].iter().any(|level| l.contains(level)))
        // It looks for kernel datapaths now and then; there is no OVS kernel module here.
        .filter(|l| !l.contains("failed to enumerate system datapaths"))
        .collect();
    ensure!(complaints.is_empty(), "ovs-vswitchd complained: {complaints:#?}");
    Ok(())
}

fn exchange(p: &OvsPeer, instance: &str, c: &Case) -> Result<()> {
    let (ours, host) = (p.ours.as_str(), p.host.as_str());
    p.set_host_mtu(mtu(ours, "gre0")?)?;
    let pairs = [(OUR_OVERLAY, HOST_OVERLAY), (OUR_OVERLAY6, HOST_OVERLAY6)];
    for &(us, them) in &pairs {
        settle(ours, them)?;
        settle(host, us)?;
    }
    let ovs_drops = p.ovs.drops()?;

    let mut cap = Capture::start(&p.sw, "up0", "");
    let before = gre::show(ours, instance)?;
    for &(us, them) in &pairs {
        traffic::ping(ours, them, PINGS)?;
        traffic::ping(host, us, PINGS)?;
    }
    landed();
    let after = gre::show(ours, instance)?;
    let wire = Wire::read(&mut cap);
    ensure!(wire.other.is_empty(), "the underlay carried more than GRE and ARP: {:?}", wire.other);
    let ((rx0, tx0), (rx, tx)) = (counters::packets(&before)?, counters::packets(&after)?);
    ensure!(
        (rx - rx0, tx - tx0) == (wire.from_ovs, wire.from_us),
        "counters rx {} tx {} but the wire carried {} in, {} out",
        rx - rx0,
        tx - tx0,
        wire.from_ovs,
        wire.from_us
    );
    // Each direction: our requests and our replies to the host's, per family.
    let pings = u64::from(2 * PINGS) * pairs.len() as u64;
    if c.ethernet {
        ensure!(wire.from_ovs >= pings && wire.from_us >= pings, "{} in, {} out: fewer than the pings ({pings} each way)", wire.from_ovs, wire.from_us);
    } else {
        // A routed tunnel carries nothing but the pings.
        ensure!((wire.from_ovs, wire.from_us) == (pings, pings), "{} in, {} out: {pings} pings each way", wire.from_ovs, wire.from_us);
    }
    if c.ours.contains("csum") {
        ensure!(wire.csum_good == wire.gre(), "{} of {} GRE checksums verified good", wire.csum_good, wire.gre());
    }
    let faults = cap.faults();
    ensure!(faults.is_empty(), "tshark: {faults:?}");

    // TCP both ways, the whole frames captured so tshark can verify every checksum.
    let mut cap = Capture::start_snap(&p.sw, "up0", "", 2048);
    let before = gre::show(ours, instance)?;
    let tcp = if c.tcp6 { &pairs[..] } else { &pairs[..1] };
    for &(us, them) in tcp {
        let to = SocketAddr::new(them.parse::<IpAddr>()?, 5001);
        let (sent, got) = traffic::tcp_transfer(host, to, ours, TCP_BYTES)?;
        ensure!(sent == got, "to the host at {to}: sent {sent:?}, received {got:?}");
        let from = SocketAddr::new(us.parse::<IpAddr>()?, 5002);
        let (sent, got) = traffic::tcp_transfer(ours, from, host, TCP_BYTES)?;
        ensure!(sent == got, "from the host to {from}: sent {sent:?}, received {got:?}");
    }
    landed();
    let after = gre::show(ours, instance)?;
    let faults = cap.faults();
    ensure!(faults.is_empty(), "tshark found {} faulty frames: {:?}", faults.len(), &faults[..faults.len().min(5)]);
    let wire = Wire::read(&mut cap);
    ensure!(wire.other.is_empty(), "the underlay carried more than GRE and ARP: {:?}", &wire.other[..wire.other.len().min(5)]);
    ensure!(wire.tcp > 1000 * tcp.len() as u64, "only {} GRE frames with TCP", wire.tcp);
    let ((rx0, tx0), (rx, tx)) = (counters::packets(&before)?, counters::packets(&after)?);
    ensure!(rx - rx0 == wire.from_ovs, "counted rx {} but the wire carried {} in", rx - rx0, wire.from_ovs);
    // A GSO packet counts once, as the kernel's GRE devices count it, and leaves as several
    // segments; with checksums every segment is a packet of its own.
    if c.ours.contains("csum") {
        ensure!(tx - tx0 == wire.from_us, "counted tx {} but the wire carried {} out", tx - tx0, wire.from_us);
        ensure!(wire.csum_good == wire.gre(), "{} of {} GRE checksums verified good", wire.csum_good, wire.gre());
    } else {
        ensure!(tx - tx0 <= wire.from_us, "counted tx {} but the wire carried only {} out", tx - tx0, wire.from_us);
    }
    ensure!(counters::drops(&after) == 0, "our drops: {}", after["drops"]);
    let ovs_after = p.ovs.drops()?;
    ensure!(ovs_after == ovs_drops, "OVS dropped: before {ovs_drops:?}, after {ovs_after:?}");
    Ok(())
}

#[test]
fn ovs_gre_peer() {
    if !privilege::require_root("ovs_gre_peer") {
        return;
    }
    if let Err(e) = ovs::installed() {
        assert!(std::env::var_os("CI").is_none(), "ovs_gre_peer: {e:#}, and CI is set (cargo xtask setup installs Open vSwitch)");
        eprintln!("ovs_gre_peer: skipped ({e:#})");
        return;
    }
    let start = Instant::now();
    let mut p = OvsPeer::new("ov").expect("Open vSwitch and the underlay");
    eprintln!("Open vSwitch up in {:.1} s", start.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    // GRE_CASES=NAME,… runs only the cases whose names contain one of them.
    let only = std::env::var("GRE_CASES").ok();
    for c in CASES.iter().filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|w| c.name.contains(w)))) {
        let (t, mark) = (Instant::now(), p.ovs.log_mark());
        match run_case(&mut p, c) {
            Ok(()) => eprintln!("ovs {:<12} ok ({:.1} s)", c.name, t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("ovs {:<12} FAILED ({:.1} s): {e:#}\n{}", c.name, t.elapsed().as_secs_f64(), p.report(mark));
                failed.push(c.name);
            }
        }
    }
    assert!(failed.is_empty(), "failed against Open vSwitch: {failed:?}");
}
