//! Our datapath against Linux's own GRE (ip_gre, ip6_gre, gretap in a Debian guest): for each
//! variant, pings both ways with exact counts over IPv4 and IPv6 inner, TCP both ways with a
//! SHA-256 at each end, a capture tshark finds nothing wrong with, our counters equal to what
//! crossed the wire, and nothing dropped on either side. One guest serves every case.

use std::{fmt::Write as _, net::SocketAddr, time::Instant};

use anyhow::{Result, ensure};
use gre_tests::{
    capture::{Capture, field},
    gre::{self, counters},
    peers::{GUEST, GUEST6, LinuxPeer, OURS, OURS6},
    privilege, traffic,
    vm::Kernel,
};

const OUR_OVERLAY: &str = "203.0.113.1";
const GUEST_OVERLAY: &str = "203.0.113.2";
const OUR_OVERLAY6: &str = "2001:db8:100::1";
const GUEST_OVERLAY6: &str = "2001:db8:100::2";
const PINGS: u32 = 5;
const TCP_BYTES: u64 = 2 << 20;

/// One variant: the guest's `ip link add gre1 type …` and our tunnel's options.
struct Case {
    name: &'static str,
    /// After `ip link add gre1 type`; LOCAL and REMOTE are replaced by the guest's and our
    /// underlay addresses of the case's family.
    linux: &'static str,
    /// Lines of our `[[tunnel]]`.
    ours: &'static str,
    outer6: bool,
    /// Our end a multipoint hub with the guest as a static peer, the guest an NBMA Linux spoke
    /// (a GRE device without remote, its hub in the neighbour table).
    multipoint: bool,
}

const CASES: &[Case] = &[
    Case { name: "key", linux: "gre local LOCAL remote REMOTE key 1001", ours: "key = 1001", outer6: false, multipoint: false },
    Case { name: "keyless", linux: "gre local LOCAL remote REMOTE", ours: "", outer6: false, multipoint: false },
    Case {
        name: "ikey != okey",
        linux: "gre local LOCAL remote REMOTE ikey 2001 okey 1002",
        ours: "ikey = 1002\nokey = 2001",
        outer6: false,
        multipoint: false,
    },
    Case { name: "csum both ways", linux: "gre local LOCAL remote REMOTE key 7 csum", ours: "key = 7\ncsum = true", outer6: false, multipoint: false },
    // Linux's iseq drops every packet whose number is not newer (rx_fifo_errors): each GSO
    // segment must carry its own.
    Case { name: "seq both ways", linux: "gre local LOCAL remote REMOTE key 9 seq", ours: "key = 9\nseq = true", outer6: false, multipoint: false },
    Case { name: "ip6gre", linux: "ip6gre local LOCAL remote REMOTE key 1001", ours: "key = 1001", outer6: true, multipoint: false },
    Case { name: "ip6gre csum", linux: "ip6gre local LOCAL remote REMOTE csum", ours: "csum = true", outer6: true, multipoint: false },
    Case { name: "gretap", linux: "gretap local LOCAL remote REMOTE key 1001", ours: "mode = \"gretap\"\nkey = 1001", outer6: false, multipoint: false },
    Case { name: "ip6gretap", linux: "ip6gretap local LOCAL remote REMOTE", ours: "mode = \"gretap\"", outer6: true, multipoint: false },
    Case { name: "nbma spoke", linux: "gre local LOCAL key 77", ours: "key = 77", outer6: false, multipoint: true },
];

/// GRE frames in a capture whose outer source is `src`.
fn gre_from(cap: &[serde_json::Value], src: &str) -> u64 {
    let outer = if src.contains(':') { "ipv6.src" } else { "ip.src" };
    cap.iter().filter(|p| field(p, outer).first().is_some_and(|s| s == src)).count() as u64
}

fn run_case(p: &mut LinuxPeer, c: &Case) -> Result<()> {
    let (local, remote) = if c.outer6 { (GUEST6, OURS6) } else { (GUEST, OURS) };
    let (our_local, our_remote) = (remote, local);
    let linux = c.linux.replace("LOCAL", local).replace("REMOTE", remote);
    let len4 = if c.multipoint { 24 } else { 30 };
    let mut script = format!(
        "ip link add gre1 type {linux}\nip addr add {GUEST_OVERLAY}/{len4} dev gre1\n\
         ip addr add {GUEST_OVERLAY6}/64 dev gre1 nodad\nip link set gre1 addrgenmode none up\n"
    );
    let mut config = format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{our_local}\"\n{}\n\
         address = [\"{OUR_OVERLAY}/{len4}\", \"{OUR_OVERLAY6}/64\"]\n",
        c.ours
    );
    if c.multipoint {
        for (ours, theirs) in [(OUR_OVERLAY, GUEST_OVERLAY), (OUR_OVERLAY6, GUEST_OVERLAY6)] {
            writeln!(script, "ip neigh replace {ours} lladdr {our_local} dev gre1 nud permanent")?;
            write!(config, "\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{theirs}\"\nnbma = \"{our_remote}\"\n")?;
        }
    } else {
        config = config.replace("\naddress", &format!("\nremote = \"{our_remote}\"\naddress"));
    }
    p.guest.ok(&script)?;
    let ours = p.ours.clone();
    let instance = p.lab.gre_up(&ours, "gre", &config)?;
    let result = exchange(p, &instance, c);
    p.lab.gre_down(&ours, &instance)?;
    p.guest.ok("ip link del gre1")?;
    result
}

fn exchange(p: &mut LinuxPeer, instance: &str, c: &Case) -> Result<()> {
    let ours = p.ours.clone();
    let (local, remote) = if c.outer6 { (OURS6, GUEST6) } else { (OURS, GUEST) };
    // Neighbours first (a gretap resolves over the tunnel, after DAD of our address on it).
    p.guest.ok(&format!(
        "for a in {OUR_OVERLAY} {OUR_OVERLAY6}; do for i in 1 2 3 4 5 6; do ping -c 1 -W 2 $a > /dev/null && break; done; done\n\
         ping -c 1 -W 2 {OUR_OVERLAY} > /dev/null && ping -c 1 -W 2 {OUR_OVERLAY6} > /dev/null"
    ))?;
    traffic::ping(&ours, GUEST_OVERLAY, 1)?;
    traffic::ping(&ours, GUEST_OVERLAY6, 1)?;
    let mut cap = Capture::start(&p.sw, "up0", "");
    let before = gre::show(&ours, instance)?;
    traffic::ping(&ours, GUEST_OVERLAY, PINGS)?;
    traffic::ping(&ours, GUEST_OVERLAY6, PINGS)?;
    p.guest_ping(OUR_OVERLAY, PINGS)?;
    p.guest_ping(OUR_OVERLAY6, PINGS)?;
    let after = gre::show(&ours, instance)?;
    let wire = cap.decode("gre", &["ip.src", "ipv6.src", "icmp.type", "icmpv6.type", "gre.sequence_number"]);
    let mut our_seqs = sequence_numbers(&wire, local);
    let (rx, tx) = counters::packets(&after)?;
    let (rx0, tx0) = counters::packets(&before)?;
    let (wire_rx, wire_tx) = (gre_from(&wire, remote), gre_from(&wire, local));
    ensure!((rx - rx0, tx - tx0) == (wire_rx, wire_tx), "counters rx {} tx {} but the wire carried {wire_rx} in, {wire_tx} out", rx - rx0, tx - tx0);
    ensure!(wire_rx >= u64::from(4 * PINGS) && wire_tx >= u64::from(4 * PINGS), "{wire_rx} in, {wire_tx} out: fewer than the pings");
    if !c.ours.contains("gretap") {
        // A routed tunnel carries nothing but the pings.
        let others: Vec<String> = wire.iter().map(|f| format!("{:?}{:?}", field(f, "icmp.type"), field(f, "icmpv6.type"))).collect();
        ensure!((wire_rx, wire_tx) == (u64::from(4 * PINGS), u64::from(4 * PINGS)), "{wire_rx} in, {wire_tx} out; besides the pings: {others:?}");
    }
    ensure!(cap.faults().is_empty(), "tshark: {:?}", cap.faults());

    // TCP both ways, the whole frames captured so tshark can verify every checksum.
    let mut cap = Capture::start_snap(&p.sw, "up0", "", 2048);
    let to: SocketAddr = format!("{GUEST_OVERLAY}:5001").parse()?;
    let (sent, got) = p.tcp_to_guest(to, TCP_BYTES)?;
    ensure!(sent == got, "to the guest: sent {sent:?}, received {got:?}");
    let from: SocketAddr = format!("{OUR_OVERLAY}:5002").parse()?;
    let (sent, got) = p.tcp_from_guest(from, TCP_BYTES)?;
    ensure!(sent == got, "from the guest: sent {sent:?}, received {got:?}");
    let faults = cap.faults();
    ensure!(faults.is_empty(), "tshark found {} faulty frames: {:?}", faults.len(), &faults[..faults.len().min(5)]);
    let tcp = cap.decode("gre && tcp", &["gre.checksum.status"]);
    ensure!(tcp.len() > 1000, "only {} GRE frames with TCP", tcp.len());
    if c.ours.contains("csum") {
        let good = tcp.iter().filter(|f| field(f, "gre.checksum.status").first().is_some_and(|s| s == "1")).count();
        ensure!(good == tcp.len(), "{good} of {} GRE checksums verified good", tcp.len());
    }
    let end = gre::show(&ours, instance)?;
    ensure!(counters::drops(&end) == 0, "our drops: {}", end["drops"]);
    let mut quiet = vec!["rx_dropped", "rx_crc_errors", "rx_frame_errors"];
    if c.ours.contains("seq") {
        our_seqs.extend(sequence_numbers(&cap.decode("gre", &["ip.src", "ipv6.src", "gre.sequence_number"]), local));
        let mut sorted = our_seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure!(sorted.len() == our_seqs.len(), "{} of our {} packets repeat a sequence number", our_seqs.len() - sorted.len(), our_seqs.len());
        // Two CPUs may hand consecutive packets to the underlay in the other order (Linux's own
        // GRE too), and the two ends of the emulated link may reorder them again, so a rare
        // late packet that Linux drops is no fault of the numbering; a repeated number is.
        let (mut newest, mut late) = (0, 0u64);
        for &s in &our_seqs {
            if s <= newest {
                late += 1;
            } else {
                newest = s;
            }
        }
        let dropped = p.guest_counter("gre1", "rx_fifo_errors")?;
        let n = our_seqs.len() as u64;
        eprintln!("linux seq: {n} numbered packets, {late} late on our side of the link, {dropped} dropped by Linux as out of sequence");
        ensure!(late * 200 <= n && dropped * 200 <= n, "{late} late and {dropped} dropped of {n}");
    } else {
        quiet.extend(["rx_errors", "rx_fifo_errors"]);
    }
    for counter in quiet {
        let n = p.guest_counter("gre1", counter)?;
        ensure!(n == 0, "the guest's gre1 {counter} = {n}");
    }
    Ok(())
}

/// The GRE sequence numbers of the frames from `src`, in wire order.
fn sequence_numbers(cap: &[serde_json::Value], src: &str) -> Vec<u64> {
    let outer = if src.contains(':') { "ipv6.src" } else { "ip.src" };
    cap.iter()
        .filter(|p| field(p, outer).first().is_some_and(|s| s == src))
        .filter_map(|p| field(p, "gre.sequence_number").first().and_then(|s| s.parse().ok()))
        .collect()
}

#[test]
fn linux_gre_peers() {
    if !privilege::require_root("linux_gre_peers") {
        return;
    }
    let kernel = Kernel::bookworm().expect("the bookworm kernel (cargo xtask setup)");
    let start = Instant::now();
    let mut p = LinuxPeer::new("lg", &kernel).expect("guest and underlay");
    eprintln!("guest up in {:.1} s", start.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    // GRE_CASES=NAME,… runs only the cases whose names contain one of them.
    let only = std::env::var("GRE_CASES").ok();
    for c in CASES.iter().filter(|c| only.as_deref().is_none_or(|o| o.split(',').any(|w| c.name.contains(w)))) {
        let t = Instant::now();
        match run_case(&mut p, c) {
            Ok(()) => eprintln!("linux {:<16} ok ({:.1} s)", c.name, t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("linux {:<16} FAILED ({:.1} s): {e:#}", c.name, t.elapsed().as_secs_f64());
                failed.push(c.name);
                // Leave the next case a clean guest.
                let _ = p.guest.run_timeout("ip link del gre1", std::time::Duration::from_secs(10));
            }
        }
    }
    assert!(failed.is_empty(), "failed against Linux: {failed:?}");
}
