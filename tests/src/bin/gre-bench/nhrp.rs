//! Part 5: the NHRP daemon of a hub. Its idle CPU with 10 000 registered spokes (taken up from
//! the peer table, as after a restart) against the same hub with none; and, under a flood of
//! Registration Requests from random sources that do not know the password, how many of the
//! legitimate spokes' registrations are answered — renewals of registered spokes, and spokes
//! joining — at each flood rate, and what the flood costs the daemon.
//!
//! The hub runs IPv6 NBMA and an IPv6 overlay (the documentation prefix has room for 10 000
//! spokes); frames come from the router's side of the hub's link through a packet socket, and
//! the hub's answers are read there too.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use gre_common::maps::{Peer, peer_flags, peer_kind};
use gre_tests::{
    gre,
    topology::{HUB_NBMA6, HubAndSpokes},
};
use gre_user::nhrp::{
    engine::{Action, Engine, Nhs, Settings},
    wire::{Packet, kind},
};
use serde_json::{Value, json};

const KEY: u32 = 100;
const PASSWORD: &[u8] = b"bench";
const HUB_OVERLAY: &str = "2001:db8:100::fe";

fn v6(s: &str) -> IpAddr {
    s.parse().expect("an IPv6 address")
}

/// Address `i` of the /96 `prefix` (`2001:db8:P::` + i).
fn addr(prefix: u16, i: u32) -> IpAddr {
    #[expect(clippy::cast_possible_truncation, reason = "the halves of a u32")]
    Ipv6Addr::new(0x2001, 0xdb8, prefix, 0, 0, 0, (i >> 16) as u16, i as u16).into()
}

/// Joining spoke `i`: a site of its own (its own /64).
fn joiner(i: u32) -> IpAddr {
    Ipv6Addr::new(0x2001, 0xdb8, 5, u16::try_from(i).unwrap_or(u16::MAX), 0, 0, 0, 1).into()
}

/// A spoke's Registration Request as our client sends it (with `password`, or none).
fn registration(nbma: IpAddr, overlay: IpAddr, password: Option<&[u8]>) -> Vec<u8> {
    let mut e = Engine::new(Settings {
        nhs: vec![Nhs { overlay: v6(HUB_OVERLAY), nbma: v6(HUB_NBMA6), priority: 0 }],
        auth: password.map(<[u8]>::to_vec),
        holdtime: 3600,
        ..Settings::new(false, overlay, "2001:db8:100::/64".parse().expect("prefix"), nbma)
    });
    e.tick(0)
        .into_iter()
        .find_map(|a| match a {
            Action::Send { packet, .. } => Some(packet),
            _ => None,
        })
        .expect("a registration")
}

/// The Ethernet frame carrying `nhrp` from `src` to the hub, over GRE (key) in IPv6.
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: IpAddr, nhrp: &[u8]) -> Vec<u8> {
    gre_tests::traffic::gre_frame((dst_mac, src_mac), (src, v6(HUB_NBMA6)), KEY, 0x2001, nhrp)
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: sending our buffer on our socket; a full queue just loses the frame.
    unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
}

/// The hub's Registration Replies seen on the link: (to, first CIE's code).
fn replies(fd: &OwnedFd, stop: &AtomicBool, out: &mut Vec<(IpAddr, u8)>) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        let f = &buf[..n];
        if n < 14 + 40 + 8 || f[12..14] != [0x86, 0xdd] || f[20] != 47 || f[14 + 40 + 2..14 + 40 + 4] != [0x20, 0x01] {
            continue;
        }
        let Ok(p) = Packet::decode(&f[14 + 40 + 8..]) else { continue };
        let Ok(dst) = <[u8; 16]>::try_from(&f[38..54]) else { continue };
        if p.kind == kind::REGISTRATION_REPLY
            && let Some(c) = p.cies().first()
        {
            out.push((IpAddr::from(dst), c.code));
        }
    }
}

/// CPU time of all of a process's threads, in nanoseconds (schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// The daemon's CPU share (percent of one CPU) over `windows` windows of `each`: (median, min, max).
fn cpu_share(pid: u32, windows: u32, each: Duration) -> (f64, f64, f64) {
    let mut shares: Vec<f64> = (0..windows)
        .map(|_| {
            let (c0, t0) = (cpu_ns(pid), Instant::now());
            std::thread::sleep(each);
            #[expect(clippy::cast_precision_loss, reason = "a share")]
            let share = (cpu_ns(pid) - c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
            share
        })
        .collect();
    shares.sort_by(f64::total_cmp);
    (shares[shares.len() / 2], shares[0], shares[shares.len() - 1])
}

struct Hub {
    net: HubAndSpokes,
    ns: String,
    instance: String,
    hub_mac: [u8; 6],
    wan_mac: [u8; 6],
    tx: OwnedFd,
}

impl Hub {
    fn new() -> Result<Self> {
        let mut net = HubAndSpokes::new("gre-bench", 0)?;
        net.add_ipv6()?;
        let ns = net.hub.clone();
        let config = format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{HUB_NBMA6}\"\nkey = {KEY}\n\
             nhrp = {{ role = \"nhs\", holdtime = 3600, auth = \"bench\" }}\naddress = [\"{HUB_OVERLAY}/64\"]\n"
        );
        let instance = net.lab.gre_up(&ns, "hub", &config)?;
        let (_, hub_mac) = super::pipeline::link(&ns, "eth0")?;
        let (_, wan_mac) = super::pipeline::link(&net.wan, "h0")?;
        let tx = gre_tests::traffic::packet_socket(&net.wan, "h0")?;
        Ok(Self { net, ns, instance, hub_mac, wan_mac, tx })
    }

    /// `n` spokes registered, as a previous daemon left them in the peer table.
    fn seed(&self, prefix: u16, n: u32) -> Result<()> {
        let dir = gre_user::instance::running_dir(&self.instance)?;
        let mut maps = gre_user::maps::Maps::open_pinned(&dir.join("maps"))?;
        let (id, _) = maps.tunnels()?.into_iter().next().context("the hub's tunnel")?;
        let expires = gre_user::clock::monotonic_secs() + 3600;
        for i in 1..=n {
            let peer = Peer {
                nbma: gre_user::maps::store_addr(addr(prefix, i)),
                kind: peer_kind::DYNAMIC,
                flags: peer_flags::MULTICAST | peer_flags::REGISTERED | peer_flags::UNIQUE,
                expires,
                ..Peer::default()
            };
            maps.set_peer(id, addr(0x100, u32::from(prefix) << 16 | i), &peer)?;
        }
        Ok(())
    }

    fn daemon(&self) -> gre::Daemon {
        gre::Daemon::start(&self.ns, &self.instance)
    }
}

/// Idle CPU with 0 and with 10 000 registered spokes.
fn idle(quick: bool) -> Result<Value> {
    let (windows, each) = if quick { (3, Duration::from_secs(1)) } else { (7, Duration::from_secs(3)) };
    let mut out = serde_json::Map::new();
    for spokes in [0u32, 10_000] {
        let hub = Hub::new()?;
        hub.seed(0x10, spokes)?;
        let d = hub.daemon();
        let pid = d.pid().context("the daemon's pid")?;
        // Started, and its table taken up.
        std::thread::sleep(Duration::from_secs(2));
        let (median, min, max) = cpu_share(pid, windows, each);
        let registered = gre::show(&hub.ns, &hub.instance)?["peers"].as_array().map_or(0, Vec::len);
        if registered != spokes as usize {
            bail!("{registered} peers on the hub, {spokes} seeded");
        }
        println!("idle hub, {spokes:>6} registered spokes: daemon CPU {median:.3} % of one CPU (min {min:.3}, max {max:.3})");
        out.insert(format!("spokes_{spokes}"), json!({ "cpu_percent_median": median, "min": min, "max": max, "windows": windows, "window_s": each.as_secs() }));
        drop(d);
        drop(hub);
    }
    Ok(Value::Object(out))
}

/// Where a flood comes from: random addresses of one IPv6 /64 (one sender), or of ever other
/// /64s of the documentation /32 (many senders, or spoofed ones).
#[derive(Clone, Copy)]
enum Shape {
    OnePrefix,
    Spread,
}

fn flood_source(shape: Shape, i: u32) -> IpAddr {
    let r = i.wrapping_mul(2_654_435_761);
    #[expect(clippy::cast_possible_truncation, reason = "the halves of a u32")]
    match shape {
        Shape::OnePrefix => Ipv6Addr::new(0x2001, 0xdb8, 3, 0, (r >> 16) as u16, r as u16, 0, 1).into(),
        Shape::Spread => Ipv6Addr::new(0x2001, 0xdb8, (r >> 16) as u16 | 0x8000, r as u16, 0, 0, 0, 1).into(),
    }
}

/// Legitimate registrations under floods of `rates` packets per second, of each shape.
fn flood(quick: bool, rates: &[u32]) -> Result<Value> {
    let mut all = Vec::new();
    for (shape, name) in [(Shape::OnePrefix, "one /64"), (Shape::Spread, "spread over a /32")] {
        all.extend(flood_shape(quick, rates, shape, name)?);
    }
    Ok(Value::Array(all))
}

fn flood_shape(quick: bool, rates: &[u32], shape: Shape, shape_name: &str) -> Result<Vec<Value>> {
    const KNOWN: u32 = 20;
    const JOINING: u32 = 20;
    let seconds = if quick { 2 } else { 5 };
    let mut results = Vec::new();
    for &rate in rates {
        let hub = Hub::new()?;
        hub.seed(0x4, KNOWN)?;
        let d = hub.daemon();
        let pid = d.pid().context("the daemon's pid")?;
        std::thread::sleep(Duration::from_secs(2));
        let frame_of = |src: IpAddr, overlay: IpAddr, password: Option<&[u8]>| frame(hub.hub_mac, hub.wan_mac, src, &registration(src, overlay, password));
        let known: Vec<Vec<u8>> = (1..=KNOWN).map(|i| frame_of(addr(0x4, i), addr(0x100, 0x4 << 16 | i), Some(PASSWORD))).collect();
        let joining: Vec<Vec<u8>> = (1..=JOINING).map(|i| frame_of(joiner(i), addr(0x100, 0x5 << 16 | i), Some(PASSWORD))).collect();
        // The flood: outsiders (no password) from ever new addresses; frames made beforehand.
        let pool: Vec<Vec<u8>> = (0..4096u32).map(|i| frame_of(flood_source(shape, i), addr(0x100, 0x3 << 16 | i), None)).collect();
        let rx = gre_tests::traffic::packet_socket(&hub.net.wan, "h0")?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                replies(&rx, &stop, &mut seen);
                seen
            })
        };
        let c0 = cpu_ns(pid);
        let start = Instant::now();
        let mut sent_flood = 0u64;
        // Each legitimate spoke sends once a second (a renewal, or a join being retried), each
        // at its own moment of the second, as independent spokes do (no phase the datapath's
        // one-second windows could lock onto).
        let spokes: Vec<&Vec<u8>> = known.iter().chain(&joining).collect();
        let count = u32::try_from(spokes.len())?;
        let mut next: Vec<Duration> = (0..count).map(|i| Duration::from_micros(u64::from((i * 7919 + 3301) % 1000) * 1000 + 137)).collect();
        let mut legit_sent = vec![0u32; spokes.len()];
        while start.elapsed() < Duration::from_secs(seconds) {
            let t = start.elapsed();
            for (i, f) in spokes.iter().enumerate() {
                if t >= next[i] {
                    send(&hub.tx, f);
                    legit_sent[i] += 1;
                    next[i] += Duration::from_secs(1);
                }
            }
            let due = u64::from(rate) * u64::try_from(t.as_micros()).unwrap_or(u64::MAX) / 1_000_000;
            while sent_flood < due {
                send(&hub.tx, &pool[usize::try_from(sent_flood % 4096).unwrap_or(0)]);
                sent_flood += 1;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        // The last answers, then the reader stops.
        std::thread::sleep(Duration::from_millis(500));
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        let cpu = (cpu_ns(pid) - c0) as f64 / start.elapsed().as_nanos() as f64 * 100.0;
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        let renewals = seen.iter().filter(|(to, code)| *code == 0 && (1..=KNOWN).any(|i| *to == addr(0x4, i))).count();
        let joins = seen.iter().filter(|(to, code)| *code == 0 && (1..=JOINING).any(|i| *to == joiner(i))).count();
        let joined: HashSet<IpAddr> = seen.iter().filter(|(to, code)| *code == 0 && (1..=JOINING).any(|i| *to == joiner(i))).map(|(to, _)| *to).collect();
        let sent_known: u32 = legit_sent[..KNOWN as usize].iter().sum();
        let sent_joining: u32 = legit_sent[KNOWN as usize..].iter().sum();
        #[expect(clippy::cast_precision_loss, reason = "counts")]
        let (renewed, joins) = (renewals as f64 / f64::from(sent_known) * 100.0, joins as f64 / f64::from(sent_joining) * 100.0);
        let refused = gre::show(&hub.ns, &hub.instance)?["tunnels"][0]["drops"]["nhrp_rate"].as_u64().unwrap_or(0);
        println!(
            "flood {rate:>6} pps from {shape_name:<17}: renewals answered {renewed:5.1} %, joins answered {joins:5.1} % ({} of {JOINING} spokes joined), \
             {refused} NHRP packets refused by rate, daemon CPU {cpu:.2} %",
            joined.len()
        );
        results.push(json!({
            "flood_pps": rate, "from": shape_name, "seconds": seconds, "flood_sent": sent_flood,
            "renewals_answered_percent": renewed, "joins_answered_percent": joins, "spokes_joined": joined.len(), "spokes_joining": JOINING,
            "refused_by_rate": refused, "daemon_cpu_percent": cpu,
        }));
        drop(d);
        drop(hub);
    }
    Ok(results)
}

pub fn run(quick: bool) -> Result<Value> {
    let idle = idle(quick)?;
    let rates: &[u32] = if quick { &[0, 10_000] } else { &[0, 1_000, 10_000, 50_000] };
    Ok(json!({ "idle": idle, "flood": flood(quick, rates)? }))
}
