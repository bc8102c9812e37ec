//! Parts 2 and 3 — pipeline throughput with live frames. A generator program, run with
//! BPF_PROG_TEST_RUN's live frames on one CPU, sends real frames across veth pairs through
//! the datapath as `gre up` attached it in two namespaces, into a sink that counts them:
//!
//! ```text
//!   generator → gen0 ─ lan0 [encap: gre_lan] → eth0 ─ eth0 [decap: gre_decap] → lan0 ─ sink0 [sink]
//!              (site a)                                (site b)
//! ```
//!
//! Baselines of the same run: generator → sink, and generator → a plain XDP redirect hop →
//! sink. The generator alone sending GRE to site b times the decapsulation hop; the difference
//! to the whole pipeline is the encapsulation hop. The tunnels' fast-path counters must advance
//! by exactly the frames sent, which shows that the fast path is what was timed.

use std::{
    fs::File,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMap, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use etherparse::PacketBuilder;
use gre_common::maps::{BENCH_HEAD, BenchFrame, programs};
use gre_tests::{
    gre,
    topology::{Lab, ns_sh, sh},
};
use nix::sched::CloneFlags;
use serde_json::{Value, json};

/// Frames per trial and trials, for a full run and for the smoke run of `cargo xtask test`.
pub struct Effort {
    pub frames: u32,
    pub trials: usize,
}

/// Live frames go out in batches of this many (the kernel's default is 64).
const BATCH: u32 = 64;

const A_WAN: &str = "198.51.100.1";
const B_WAN: &str = "198.51.100.2";
const A_HOST: [u8; 4] = [203, 0, 113, 66];
const B_HOST: [u8; 4] = [203, 0, 113, 130];
const KEY: u32 = 1001;
const MP_KEY: u32 = 2000;
const A_WAN6: &str = "2001:db8:ff::1/64";
/// Peers' NBMA addresses (2001:db8:2000::i), routed through wan6.
const NBMA_SPACE: &str = "2001:db8:2000::/36";

/// The two sites, the baseline pairs, and the bench programs attached where they belong.
pub struct Bench {
    // Dropped first: the bench programs' links go before their interfaces.
    ebpf: Ebpf,
    _lab: Lab,
    a: String,
    b: String,
    instances: (String, String),
    home: File,
}

pub use gre_tests::topology::link;

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Moves this thread into namespace `ns` (attachments and map entries name interfaces of the
/// namespace they are made in).
pub fn enter(ns: &str) -> Result<()> {
    let f = File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
    nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
    Ok(())
}

fn site_config(local: &str, remote: &str, overlay: &str, lan: &str) -> String {
    format!(
        "[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"lan0\"\nrole = \"lan\"\n\n\
         [[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nkey = {KEY}\n\
         address = [\"{overlay}/30\"]\n\n[[route]]\nprefix = \"{lan}\"\ntunnel = \"gre0\"\n"
    )
}

impl Bench {
    /// Builds the namespaces, brings both sites up with `gre up` and attaches the bench programs.
    pub fn new(limits: (u32, u32)) -> Result<Self> {
        let home = File::open("/proc/self/ns/net").context("this namespace")?;
        let mut lab = Lab::new("gre-bench");
        let a = lab.add_ns("a")?;
        let b = lab.add_ns("b")?;
        lab.link((&a, "eth0", &format!("{A_WAN}/24")), (&b, "eth0", &format!("{B_WAN}/24")))?;
        lab.link((&a, "gen0", "198.51.100.145/30"), (&a, "lan0", "203.0.113.65/26"))?;
        // The sink is not the LAN host: site b forwards to .130, it does not deliver locally.
        lab.link((&b, "lan0", "203.0.113.129/26"), (&b, "sink0", "198.51.100.141/30"))?;
        // Baselines: x0 → x1 (sink); y0 → y1 (hop) → z0 → z1 (sink).
        lab.link((&a, "x0", "198.51.100.129/30"), (&a, "x1", "198.51.100.130/30"))?;
        lab.link((&a, "y0", "198.51.100.133/30"), (&a, "y1", "198.51.100.134/30"))?;
        lab.link((&a, "z0", "198.51.100.137/30"), (&a, "z1", "198.51.100.138/30"))?;
        // Scale (site a alone): a multipoint tunnel over IPv6 on wan6, whose far end is a sink;
        // what it decapsulates goes out of lan0 to gen0, a sink too.
        lab.link((&a, "wan6", "198.51.100.149/30"), (&a, "wan6s", "198.51.100.150/30"))?;
        for ns in [&a, &b] {
            ns_sh(ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
            ns_sh(ns, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        }
        let (_, wan6s_mac) = link(&a, "wan6s")?;
        let (_, gen_mac) = link(&a, "gen0")?;
        sh(&["ip", "-n", &a, "addr", "add", A_WAN6, "dev", "wan6", "nodad"])?;
        sh(&["ip", "-n", &a, "addr", "add", "2001:db8:fe::1/64", "dev", "lan0", "nodad"])?;
        sh(&["ip", "-n", &a, "neigh", "replace", "2001:db8:ff::2", "lladdr", &mac_str(wan6s_mac), "dev", "wan6", "nud", "permanent"])?;
        sh(&["ip", "-n", &a, "neigh", "replace", "2001:db8:fe::2", "lladdr", &mac_str(gen_mac), "dev", "lan0", "nud", "permanent"])?;
        sh(&["ip", "-n", &a, "route", "add", NBMA_SPACE, "via", "2001:db8:ff::2", "dev", "wan6"])?;
        sh(&["ip", "-n", &a, "route", "add", "2001:db8:6000::/48", "via", "2001:db8:fe::2", "dev", "lan0"])?;
        // Every next hop known for good: the generator never gives ARP a chance.
        let (_, a_mac) = link(&a, "eth0")?;
        let (_, b_mac) = link(&b, "eth0")?;
        let (_, sink_mac) = link(&b, "sink0")?;
        sh(&["ip", "-n", &a, "neigh", "replace", B_WAN, "lladdr", &mac_str(b_mac), "dev", "eth0", "nud", "permanent"])?;
        sh(&["ip", "-n", &b, "neigh", "replace", A_WAN, "lladdr", &mac_str(a_mac), "dev", "eth0", "nud", "permanent"])?;
        sh(&["ip", "-n", &b, "neigh", "replace", "203.0.113.130", "lladdr", &mac_str(sink_mac), "dev", "lan0", "nud", "permanent"])?;
        let scale = format!(
            "\n[[interface]]\nname = \"wan6\"\n\n[[tunnel]]\nname = \"gre1\"\ninterface = \"wan6\"\nlocal = \"2001:db8:ff::1\"\nkey = {MP_KEY}\n\
             address = [\"2001:db8:fff::1/64\"]\n\n[limits]\npeers = {}\nroutes = {}\n",
            limits.0, limits.1
        );
        let ia = lab.gre_up(&a, "a", &(site_config(A_WAN, B_WAN, "203.0.113.1", "203.0.113.128/26") + &scale))?;
        let ib = lab.gre_up(&b, "b", &site_config(B_WAN, A_WAN, "203.0.113.2", "203.0.113.64/26"))?;

        let mut ebpf = EbpfLoader::new().load(gre_user::EBPF_OBJECT).context("loading the eBPF object")?;
        for name in [programs::BENCH_GEN, programs::BENCH_HOP, programs::BENCH_SINK] {
            let p: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
            gre_user::instance::load(|| p.load()).with_context(|| format!("loading {name}"))?;
        }
        let mut bench = Self { ebpf, _lab: lab, a, b, instances: (ia, ib), home };
        bench.attach(&bench.a.clone(), programs::BENCH_SINK, &["x1", "z1", "wan6s", "gen0"])?;
        bench.attach(&bench.a.clone(), programs::BENCH_HOP, &["y1"])?;
        bench.attach(&bench.b.clone(), programs::BENCH_SINK, &["sink0"])?;
        enter(&bench.a)?;
        let (z0, _) = link(&bench.a, "z0")?;
        DevMap::try_from(bench.ebpf.map_mut("BENCH_PORTS").context("BENCH_PORTS")?)?.set(1, z0, None, 0)?;
        Ok(bench)
    }

    fn attach(&mut self, ns: &str, prog: &'static str, ifnames: &[&str]) -> Result<()> {
        enter(ns)?;
        let p: &mut Xdp = self.ebpf.program_mut(prog).context(prog)?.try_into()?;
        for ifname in ifnames {
            p.attach(ifname, XdpMode::Driver).with_context(|| format!("attaching {prog} to {ifname}"))?;
        }
        Ok(())
    }

    /// Runs the generator `n` times on `frame`; the wall-clock time it took.
    fn fire(&mut self, frame: &[u8], ctx: &[u8], n: u32) -> Result<Duration> {
        let p: &mut Xdp = self.ebpf.program_mut(programs::BENCH_GEN).context("generator")?.try_into()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(ctx);
        opts.repeat = n;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        let t = Instant::now();
        p.test_run(opts).context("BPF_PROG_TEST_RUN with live frames")?;
        Ok(t.elapsed())
    }

    fn sunk(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("BENCH_SINK").context("BENCH_SINK")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// Fast-path counters (indexed by `ENCAPSULATED` … `SUNK`).
    fn fast(&self) -> Result<[u64; 5]> {
        // The tunnels only: `show` would list every peer too.
        let tunnels = |ns: &str, instance: &str| -> Result<Value> { Ok(serde_json::from_str(&gre::run(ns, instance, &["show", "tunnels", "-j"])?)?) };
        let a = tunnels(&self.a, &self.instances.0)?;
        let b = tunnels(&self.b, &self.instances.1)?;
        let n = |v: &Value, t: usize, k: &str| v[t][k].as_u64().unwrap_or(0);
        Ok([n(&a, 0, "fast_tx"), n(&b, 0, "fast_rx"), n(&a, 1, "fast_tx"), n(&a, 1, "fast_rx"), self.sunk_after_quiet()?])
    }

    /// Sends `n` copies of `frame` from the generator to `target` (an interface of site a);
    /// returns the ns per frame and how the fast-path counters moved.
    fn trial(&mut self, frame: &[u8], target: &str, spread: Spread, n: u32) -> Result<(f64, [u64; 5])> {
        ensure!(frame.len() <= BENCH_HEAD && frame.len() >= 60, "bench frames are 60..={BENCH_HEAD} bytes");
        let (target, _) = link(&self.a, target)?;
        let (ingress, _) = link(&self.a, "gen0")?;
        let mut f =
            BenchFrame { head: [0; BENCH_HEAD], len: u32::try_from(frame.len())?, spread: spread.count, spread_base: spread.base, spread_at: spread.at };
        f.head[..frame.len()].copy_from_slice(frame);
        Array::try_from(self.ebpf.map_mut("BENCH_FRAME").context("BENCH_FRAME")?)?.set(0, f, 0)?;
        DevMap::try_from(self.ebpf.map_mut("BENCH_PORTS").context("BENCH_PORTS")?)?.set(0, target, None, 0)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        // The kernel wants data_end to be the frame's length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let before = self.fast()?;
        let d = self.fire(frame, &ctx, n)?;
        let after = self.fast()?;
        Ok((d.as_secs_f64() * 1e9 / f64::from(n), std::array::from_fn(|i| after[i] - before[i])))
    }

    /// The sink's count once frames still in flight (a softirq the run left pending) are in.
    fn sunk_after_quiet(&self) -> Result<u64> {
        let mut last = self.sunk()?;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.sunk()?;
            if now == last {
                return Ok(now);
            }
            last = now;
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET);
    }
}

/// Counters of `Bench::fast`: site a's LAN program encapsulated (point to point), site b
/// decapsulated and forwarded; the multipoint tunnel encapsulated, decapsulated; the sinks got.
const ENCAPSULATED: usize = 0;
const DECAPSULATED: usize = 1;
const MP_ENCAPSULATED: usize = 2;
const MP_DECAPSULATED: usize = 3;
const SUNK: usize = 4;

/// Which destination the generator draws at random for each frame: the big-endian u32 at
/// `at` becomes `base + random % count` (nothing is drawn when `count` is 0 or 1).
#[derive(Clone, Copy, Default)]
struct Spread {
    at: u32,
    base: u32,
    count: u32,
}

/// One pipeline: what it sends where, and what the trials measured.
struct Case {
    name: String,
    frame: Vec<u8>,
    target: &'static str,
    spread: Spread,
    ns: Vec<f64>,
    /// Totals over the trials of `Bench::fast`'s counters.
    counted: [u64; 5],
    sent: u64,
}

impl Case {
    fn new(name: impl Into<String>, frame: Vec<u8>, target: &'static str) -> Self {
        Self { name: name.into(), frame, target, spread: Spread::default(), ns: Vec::new(), counted: [0; 5], sent: 0 }
    }

    /// Every frame the sink got went through the fast path counted by `Bench::fast`'s
    /// counter `path`.
    fn all_through(&self, path: usize) -> Result<()> {
        ensure!(
            self.counted[path] == self.counted[SUNK],
            "{}: {} frames reached the sink, {} went through the fast path",
            self.name,
            self.counted[SUNK],
            self.counted[path]
        );
        Ok(())
    }

    fn median(&self) -> f64 {
        let mut v = self.ns.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn json(&self) -> Value {
        let (lo, hi) = self.ns.iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        json!({ "name": self.name, "ns_per_frame": self.median(), "low": lo, "high": hi, "mpps": 1e3 / self.median(), "sent": self.sent, "delivered": self.counted[SUNK] })
    }
}

/// Runs the cases' trials interleaved (trial 1 of every case, then trial 2, …), so that a
/// drift of the machine falls on all of them alike.
fn measure(bench: &mut Bench, cases: &mut [Case], effort: &Effort) -> Result<()> {
    for c in cases.iter_mut() {
        bench.trial(&c.frame, c.target, c.spread, effort.frames / 10)?;
    }
    for _ in 0..effort.trials {
        for c in cases.iter_mut() {
            let (ns, counted) = bench.trial(&c.frame, c.target, c.spread, effort.frames)?;
            c.ns.push(ns);
            c.sent += u64::from(effort.frames);
            for (t, d) in c.counted.iter_mut().zip(counted) {
                *t += d;
            }
        }
    }
    for c in cases.iter() {
        if c.counted[SUNK] != c.sent {
            eprintln!("warning: {}: {} of {} frames reached the sink", c.name, c.counted[SUNK], c.sent);
        }
    }
    Ok(())
}

/// The LAN host's IPv4/UDP frame as it reaches site a's LAN port: 64 bytes.
fn lan_frame(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(A_HOST, B_HOST, 64).udp(4000, 5000).write(&mut v, &[0u8; 22]).unwrap();
    v
}

/// The same frame as site a's encapsulation sends it to site b (TTL already spent by one).
fn gre_frame(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ipv4(A_HOST, B_HOST, 63).udp(4000, 5000).write(&mut inner, &[0u8; 22]).unwrap();
    let mut gre = vec![0x20, 0x00, 0x08, 0x00];
    gre.extend_from_slice(&KEY.to_be_bytes());
    gre.extend_from_slice(&inner);
    let mut v = Vec::new();
    let wan = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(wan(A_WAN), wan(B_WAN), 64).write(&mut v, etherparse::IpNumber::GRE, &gre).unwrap();
    v
}

/// Run time and runs of every loaded program of these names, summed over instances.
fn program_times(names: &[&str]) -> Result<Vec<(u64, u64)>> {
    let mut t = vec![(0, 0); names.len()];
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if let Some(i) = info.name_as_str().and_then(|n| names.iter().position(|m| *m == n)) {
            t[i].0 += u64::try_from(info.run_time().as_nanos())?;
            t[i].1 += info.run_count();
        }
    }
    Ok(t)
}

/// The programs as the kernel times them in the pipeline (BPF_ENABLE_STATS: each run is timed,
/// which adds the same to every program): one more round of every case, stats on.
fn program_stats(bench: &mut Bench, cases: &[Case], effort: &Effort) -> Result<Vec<(&'static str, f64)>> {
    let names = [programs::BENCH_GEN, programs::BENCH_SINK, programs::BENCH_HOP, programs::DECAP, programs::LAN];
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = program_times(&names)?;
    for c in cases {
        bench.trial(&c.frame, c.target, c.spread, effort.frames)?;
    }
    let after = program_times(&names)?;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds and runs")]
    Ok(names.iter().zip(before.iter().zip(after)).map(|(n, (b, a))| (*n, (a.0 - b.0) as f64 / (a.1 - b.1).max(1) as f64)).collect())
}

/// Part 2: the pipeline and its baselines; prints the table and returns the figures.
pub fn run(bench: &mut Bench, effort: &Effort) -> Result<Value> {
    let (_, gen_mac) = link(&bench.a, "gen0")?;
    let (_, lan_mac) = link(&bench.a, "lan0")?;
    let (_, a_mac) = link(&bench.a, "eth0")?;
    let (_, b_mac) = link(&bench.b, "eth0")?;
    let lan = lan_frame(lan_mac, gen_mac);
    let mut cases = [
        Case::new("generator → sink", lan.clone(), "x0"),
        Case::new("generator → redirect hop → sink", lan.clone(), "y0"),
        Case::new("generator → decap → sink", gre_frame(b_mac, a_mac), "eth0"),
        Case::new("generator → encap → decap → sink", lan, "gen0"),
    ];
    measure(bench, &mut cases, effort)?;
    // Only the fast paths carried frames to the sink: site b decapsulated and forwarded each
    // frame the sink got, and site a's LAN program encapsulated at least as many.
    let [drop, hop, decap, full] = &cases;
    decap.all_through(DECAPSULATED)?;
    full.all_through(DECAPSULATED)?;
    ensure!(
        full.counted[ENCAPSULATED] >= full.counted[DECAPSULATED],
        "whole pipeline: {} frames decapsulated on the fast path, only {} encapsulated on it",
        full.counted[DECAPSULATED],
        full.counted[ENCAPSULATED]
    );
    let stats = program_stats(bench, &cases, effort)?;
    let ns_of = |name: &str| stats.iter().find(|(n, _)| *n == name).map_or(0.0, |(_, ns)| *ns);
    let redirect_hop = hop.median() - drop.median();
    let decap_hop = decap.median() - drop.median();
    let encap_hop = full.median() - decap.median();
    println!("{:<44} {:>10} {:>8} {:>18}", "pipeline (live frames, one CPU)", "ns/frame", "Mpps", "trial spread (ns)");
    for c in &cases {
        let (lo, hi) = c.ns.iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        println!("{:<44} {:>10.1} {:>8.2} {:>8.1} .. {:<8.1}", c.name, c.median(), 1e3 / c.median(), lo, hi);
    }
    println!("{:<44} {:>10} {:>8}", "hop", "ns", "× redirect hop");
    println!("{:<44} {:>10.1} {:>8}", "plain XDP redirect hop (baseline)", redirect_hop, "1.00");
    println!("{:<44} {:>10.1} {:>8.2}", "decap hop", decap_hop, decap_hop / redirect_hop);
    println!("{:<44} {:>10.1} {:>8.2}", "encap hop", encap_hop, encap_hop / redirect_hop);
    println!("{:<44} {:>10} {:>14}", "program run time (kernel bpf_stats)", "ns/run", "over redirect");
    for (name, ns) in &stats {
        println!("{name:<44} {ns:>10.1} {:>14.1}", ns - ns_of(programs::BENCH_HOP));
    }
    println!("({} trials × {} frames of 64 B (92 B encapsulated), batches of {BATCH}, CPU 0; medians)", effort.trials, effort.frames);
    Ok(json!({
        "frames_per_trial": effort.frames,
        "trials": effort.trials,
        "batch": BATCH,
        "pipelines": cases.iter().map(Case::json).collect::<Vec<_>>(),
        "program_run_ns": stats.iter().map(|(n, ns)| (n.to_string(), json!(ns))).collect::<serde_json::Map<_, _>>(),
        "hops": {
            "redirect_ns": redirect_hop,
            "decap_ns": decap_hop,
            "encap_ns": encap_hop,
            "decap_ratio": decap_hop / redirect_hop,
            "encap_ratio": encap_hop / redirect_hop,
        },
    }))
}

/// An IPv6/UDP frame of 80 bytes from `src` to `dst`.
fn frame6(dst_mac: [u8; 6], src_mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(a(src), a(dst), 64).udp(4000, 5000).write(&mut v, &[0u8; 18]).unwrap();
    v
}

/// The same inner packet in GRE (key `MP_KEY`) over IPv6 from `nbma` to site a's `wan6`: 128
/// bytes.
fn gre6_frame(dst_mac: [u8; 6], src_mac: [u8; 6], nbma: &str) -> Vec<u8> {
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let mut inner = Vec::new();
    PacketBuilder::ipv6(a("2001:db8:5000::1"), a("2001:db8:6000::1"), 64).udp(4000, 5000).write(&mut inner, &[0u8; 18]).unwrap();
    let mut gre = vec![0x20, 0x00, 0x86, 0xdd];
    gre.extend_from_slice(&MP_KEY.to_be_bytes());
    gre.extend_from_slice(&inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac).ipv6(a(nbma), a("2001:db8:ff::1"), 64).write(&mut v, etherparse::IpNumber::GRE, &gre).unwrap();
    v
}

/// Offsets in the frames above of the low 32 bits of the inner destination, of the /96 route
/// index in it, and of the low 32 bits of the outer source.
const DST_LOW: u32 = 14 + 24 + 12;
const DST_ROUTE: u32 = 14 + 24 + 8;
const OUTER_SRC_LOW: u32 = 14 + 8 + 12;

fn v6(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Peer `i` (from 1): overlay 2001:db8:1000::i, NBMA 2001:db8:2000::i.
fn peer_addr(prefix: u16, i: u32) -> std::net::IpAddr {
    #[expect(clippy::cast_possible_truncation, reason = "the halves of a u32")]
    std::net::Ipv6Addr::new(0x2001, 0xdb8, prefix, 0, 0, 0, (i >> 16) as u16, i as u16).into()
}

/// Part 3: the multipoint tunnel's encapsulation and decapsulation hops with 1 … 1M peers (the
/// destination, or the sending NBMA address, drawn at random among them for each frame), and
/// the encapsulation hop with 1 … 100k overlay routes (the destination drawn among the routes).
pub fn run_scale(bench: &mut Bench, effort: &Effort, peer_counts: &[u32], route_counts: &[u32]) -> Result<Value> {
    let (_, gen_mac) = link(&bench.a, "gen0")?;
    let (_, lan_mac) = link(&bench.a, "lan0")?;
    let (_, wan6_mac) = link(&bench.a, "wan6")?;
    let (_, far_end_mac) = link(&bench.a, "wan6s")?;
    let dir = std::path::Path::new(gre_user::instance::PIN_ROOT).join(&bench.instances.0).join("maps");
    let mut maps = gre_user::maps::Maps::open_pinned(&dir)?;
    let mp = maps.tunnels()?.into_iter().find(|(_, t)| t.flags & gre_common::maps::tunnel_flags::MULTIPOINT != 0).context("the multipoint tunnel")?.0;
    maps.add_route("2001:db8:1000::/36".parse()?, mp, None)?;
    // The kernel routes the same destinations into the tunnel netdev, as `gre route add` has it
    // do (the fast path takes only what the kernel would route there); one covering route for
    // the many overlay routes below.
    for prefix in ["2001:db8:1000::/36", "2001:db8:3000::/48"] {
        sh(&["ip", "-n", &bench.a, "-6", "route", "replace", prefix, "dev", "gre1"])?;
    }
    let drop6 = frame6(lan_mac, gen_mac, "2001:db8:5000::1", "2001:db8:1000::1");
    let gre6 = gre6_frame(wan6_mac, far_end_mac, "2001:db8:2000::1");
    let peer = |i: u32| gre_common::maps::Peer {
        nbma: gre_user::maps::store_addr(peer_addr(0x2000, i)),
        kind: gre_common::maps::peer_kind::STATIC,
        ..gre_common::maps::Peer::default()
    };

    let mut rows = Vec::new();
    let mut filled = 0;
    println!("{:<28} {:>12} {:>10} {:>12} {:>10}", "multipoint, IPv6", "encap hop ns", "× 1 peer", "decap hop ns", "× 1 peer");
    let mut first: Option<(f64, f64)> = None;
    for &n in peer_counts {
        for i in filled + 1..=n {
            maps.set_peer(mp, peer_addr(0x1000, i), &peer(i)).with_context(|| format!("adding peer {i}"))?;
        }
        filled = filled.max(n);
        let mut cases = [
            Case::new("generator → sink", drop6.clone(), "x0"),
            Case::new(format!("encap, {n} peers"), drop6.clone(), "gen0"),
            Case::new(format!("decap, {n} peers"), gre6.clone(), "wan6s"),
        ];
        cases[1].spread = Spread { at: DST_LOW, base: 1, count: n };
        cases[2].spread = Spread { at: OUTER_SRC_LOW, base: 1, count: n };
        measure(bench, &mut cases, effort)?;
        let [floor, encap, decap] = &cases;
        encap.all_through(MP_ENCAPSULATED)?;
        decap.all_through(MP_DECAPSULATED)?;
        let (e, d) = (encap.median() - floor.median(), decap.median() - floor.median());
        let (e1, d1) = *first.get_or_insert((e, d));
        println!("{:<28} {e:>12.1} {:>10.2} {d:>12.1} {:>10.2}", format!("{n} peers"), e / e1, d / d1);
        rows.push(json!({ "peers": n, "encap_hop_ns": e, "encap_ratio": e / e1, "decap_hop_ns": d, "decap_ratio": d / d1, "pipelines": cases.iter().map(Case::json).collect::<Vec<_>>() }));
    }

    let mut route_rows = Vec::new();
    let mut first: Option<f64> = None;
    let mut added = 0;
    println!("{:<28} {:>12} {:>10}", "overlay routes, IPv6", "encap hop ns", "× 1 route");
    for &n in route_counts {
        for i in added..n {
            #[expect(clippy::cast_possible_truncation, reason = "the halves of a u32")]
            let prefix = ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x3000, 0, (i >> 16) as u16, i as u16, 0, 0), 96)?;
            maps.add_route(prefix.into(), mp, Some(v6("2001:db8:1000::1"))).with_context(|| format!("adding route {i}"))?;
        }
        added = added.max(n);
        let mut cases = [
            Case::new("generator → sink", drop6.clone(), "x0"),
            Case::new(format!("encap, {n} routes"), frame6(lan_mac, gen_mac, "2001:db8:5000::1", "2001:db8:3000::1"), "gen0"),
        ];
        cases[1].spread = Spread { at: DST_ROUTE, base: 0, count: n };
        measure(bench, &mut cases, effort)?;
        let [floor, encap] = &cases;
        encap.all_through(MP_ENCAPSULATED)?;
        let e = encap.median() - floor.median();
        let e1 = *first.get_or_insert(e);
        println!("{:<28} {e:>12.1} {:>10.2}", format!("{n} routes"), e / e1);
        route_rows.push(json!({ "routes": n, "encap_hop_ns": e, "encap_ratio": e / e1, "pipelines": cases.iter().map(Case::json).collect::<Vec<_>>() }));
    }
    println!("(hop = pipeline − generator → sink of the same round; destinations or sources drawn at random per frame)");
    Ok(json!({ "peers": rows, "routes": route_rows }))
}
