//! Part 1 — program cost: nanoseconds per packet of each datapath program on
//! its success path, from BPF_PROG_TEST_RUN, against the empty XDP program measured in the same
//! run. Each run gets a fresh copy of the input (one packet per call: `repeat` would run the
//! program again on what it had already decapsulated, timing its pass-through path instead), and
//! the kernel times the program alone; the counters of the real path must advance by exactly the
//! number of runs, which shows that the success path is what was measured.

use std::{fmt::Write as _, time::Duration};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use etherparse::EtherType;
use gre_common::maps::{Peer, Tunnel, peer_kind, programs, tunnel_flags};
use gre_tests::fixture::{
    Fixture, KEY, KEYED_REMOTE, LOCAL, PLAIN_REMOTE, TC_ACT_REDIRECT, XDP_PASS, XDP_REDIRECT, cat, eth, gre_keyed, gre_plain, inner_v4, outer,
};

/// TC_ACT_OK.
const TC_ACT_OK: u32 = 0;
use gre_user::maps::store_addr;
use serde_json::json;

/// The index of the TC floor among the cases (XDP cases come before it).
const TC_FLOOR: usize = 6;

const V6_LOCAL: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_REMOTE: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const FULL_REMOTE: [u8; 4] = [198, 51, 100, 4];

/// Ethernet + outer IPv6 (from `V6_REMOTE` to `V6_LOCAL`) around `gre`.
fn outer6(gre: &[u8]) -> Vec<u8> {
    let ip = etherparse::Ipv6Header {
        payload_length: u16::try_from(gre.len()).unwrap(),
        next_header: etherparse::IpNumber::GRE,
        hop_limit: 64,
        source: V6_REMOTE,
        destination: V6_LOCAL,
        ..Default::default()
    };
    cat(&[&eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], EtherType::IPV6), &ip.to_bytes(), gre])
}

/// GRE with checksum, key and sequence number (RFC 2890 order) around an IPv4 packet.
fn gre_csum_key_seq(key: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut g = cat(&[&[0xb0, 0x00, 0x08, 0x00, 0, 0, 0, 0], &key.to_be_bytes(), &seq.to_be_bytes(), payload]);
    // RFC 1071 over the GRE header and payload, checksum field zero.
    let mut sum: u32 = g.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    g[4..6].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    g
}

/// Runs per trial, and trials.
const RUNS: usize = 20_000;
const TRIALS: usize = 7;

/// One measured case.
struct Case {
    name: &'static str,
    /// Median over trials of each trial's median, and the smallest and largest trial medians.
    median: f64,
    low: f64,
    high: f64,
}

fn median(v: &mut [u32]) -> f64 {
    v.sort_unstable();
    f64::from(v[v.len() / 2])
}

/// Times `program` on `input` (with `ctx` for TC) `TRIALS` × `RUNS` times; every run must return
/// `expect`.
fn measure(name: &'static str, mut one: impl FnMut() -> (u32, Duration), expect: u32) -> Case {
    for _ in 0..1000 {
        one();
    }
    let mut medians = Vec::with_capacity(TRIALS);
    let mut times = vec![0u32; RUNS];
    for _ in 0..TRIALS {
        for t in &mut times {
            let (ret, d) = one();
            assert_eq!(ret, expect, "{name}: the program left its success path");
            *t = u32::try_from(d.as_nanos()).unwrap_or(u32::MAX);
        }
        medians.push(median(&mut times));
    }
    medians.sort_by(f64::total_cmp);
    Case { name, median: medians[TRIALS / 2], low: medians[0], high: medians[TRIALS - 1] }
}

fn xdp_run(f: &mut Fixture, prog: &str, input: &[u8]) -> (u32, Duration) {
    let p: &mut Xdp = f.ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; 2048];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration)
}

fn tc_run(f: &mut Fixture, prog: &str, input: &[u8], ifindex: u32) -> (u32, Duration) {
    let mut ctx = [0u8; 180];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let p: &mut SchedClassifier = f.ebpf.program_mut(prog).unwrap().try_into().unwrap();
    let mut out = vec![0u8; 2048];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration)
}

/// Measures every case, prints the table and returns the figures.
pub fn run() -> serde_json::Value {
    let mut f = Fixture::new();
    let floor: &mut Xdp = f.ebpf.program_mut(programs::NAPI_PASS).unwrap().try_into().unwrap();
    gre_user::instance::load(|| floor.load()).expect("loading the empty XDP program");
    let parse: &mut Xdp = f.ebpf.program_mut(programs::BENCH_PARSE).unwrap().try_into().unwrap();
    gre_user::instance::load(|| parse.load()).expect("loading the parse-only program");
    let floor: &mut SchedClassifier = f.ebpf.program_mut(programs::TC_PASS).unwrap().try_into().unwrap();
    gre_user::instance::load(|| floor.load()).expect("loading the empty TC program");
    let inner = inner_v4(64);
    let keyed = outer(KEYED_REMOTE, LOCAL, &cat(&[&gre_keyed(0x0800, KEY), &inner]));
    let plain = outer(PLAIN_REMOTE, LOCAL, &cat(&[&gre_plain(0x0800), &inner]));
    let frame = cat(&[&eth([2, 0, 0, 0, 0, 9], [2, 0xaa, 0, 0, 0, 1], EtherType::IPV4), &inner]);
    // A multipoint tunnel with one peer: the encapsulation looks the peer up.
    let (mp, mp_dev) = f.add(Tunnel {
        local: store_addr("198.51.100.1".parse().unwrap()),
        ikey: 100,
        okey: 100,
        ttl: 64,
        flags: tunnel_flags::MULTIPOINT | tunnel_flags::IKEY | tunnel_flags::OKEY,
        ..Tunnel::default()
    });
    let peer = Peer { nbma: store_addr("198.51.100.21".parse().unwrap()), kind: peer_kind::STATIC, ..Peer::default() };
    f.maps.set_peer(mp, "203.0.113.1".parse().unwrap(), &peer).expect("peer");
    let (keyed_dev, plain_dev) = (f.keyed.index, f.plain.index);
    // Keyed point-to-point tunnels with more to check.
    let keyed_tunnel = |local: std::net::IpAddr, remote: std::net::IpAddr, flags: u32| Tunnel {
        local: store_addr(local),
        remote: store_addr(remote),
        ikey: KEY,
        okey: KEY,
        ttl: 64,
        flags: flags | tunnel_flags::IKEY | tunnel_flags::OKEY,
        ..Tunnel::default()
    };
    // IPv6 outer.
    let (v6, _) = f.add(keyed_tunnel(V6_LOCAL.into(), V6_REMOTE.into(), tunnel_flags::OUTER_V6));
    let keyed6 = outer6(&cat(&[&gre_keyed(0x0800, KEY), &inner]));
    // Checksum and sequence number required: each run carries the next number.
    let (full, _) = f.add(keyed_tunnel(LOCAL.into(), FULL_REMOTE.into(), tunnel_flags::ICSUM | tunnel_flags::ISEQ));
    let mut seq = 0u32;
    let mut next_full = || {
        seq += 1;
        outer(FULL_REMOTE, LOCAL, &gre_csum_key_seq(KEY, seq, &inner))
    };

    let runs = (RUNS * TRIALS + 1000) as u64;
    let before: Vec<_> = [0, 1, mp, v6, full].iter().map(|id| f.stats(*id)).collect();
    let cases = vec![
        measure("xdp empty program (floor)", || xdp_run(&mut f, programs::NAPI_PASS, &keyed), XDP_PASS),
        measure("xdp parse-only (eth, IPv4, GRE)", || xdp_run(&mut f, programs::BENCH_PARSE, &keyed), XDP_PASS),
        measure("decap GRE/IPv4 with key", || xdp_run(&mut f, programs::DECAP, &keyed), XDP_REDIRECT),
        measure("decap GRE/IPv4 without key", || xdp_run(&mut f, programs::DECAP, &plain), XDP_REDIRECT),
        measure("decap GRE/IPv6 with key", || xdp_run(&mut f, programs::DECAP, &keyed6), XDP_REDIRECT),
        measure("decap IPv4, key+csum+seq", || xdp_run(&mut f, programs::DECAP, &next_full()), XDP_REDIRECT),
        measure("tc empty program (floor)", || tc_run(&mut f, programs::TC_PASS, &frame, keyed_dev), TC_ACT_OK),
        measure("encap point-to-point, key", || tc_run(&mut f, programs::ENCAP, &frame, keyed_dev), TC_ACT_REDIRECT),
        measure("encap point-to-point, no key", || tc_run(&mut f, programs::ENCAP, &frame, plain_dev), TC_ACT_REDIRECT),
        measure("encap multipoint, peer lookup", || tc_run(&mut f, programs::ENCAP, &frame, mp_dev.index), TC_ACT_REDIRECT),
    ];
    // The success path, every time: the tunnels' counters moved by exactly the runs made.
    let after: Vec<_> = [0, 1, mp, v6, full].iter().map(|id| f.stats(*id)).collect();
    assert_eq!(after[3].rx_packets - before[3].rx_packets, runs, "IPv6 decap counted every run");
    assert_eq!(after[4].rx_packets - before[4].rx_packets, runs, "checksum and sequence decap counted every run");
    assert_eq!(after[0].rx_packets - before[0].rx_packets, runs, "keyed decap counted every run");
    assert_eq!(after[1].rx_packets - before[1].rx_packets, runs, "plain decap counted every run");
    assert_eq!(after[0].tx_packets - before[0].tx_packets, runs, "keyed encap counted every run");
    assert_eq!(after[1].tx_packets - before[1].tx_packets, runs, "plain encap counted every run");
    assert_eq!(after[2].tx_packets - before[2].tx_packets, runs, "multipoint encap counted every run");

    // XDP programs against the empty XDP program, TC ones against the empty TC program.
    let (xdp_floor, tc_floor) = (cases[0].median, cases[TC_FLOOR].median);
    let floor_of = |i: usize| if i < TC_FLOOR { xdp_floor } else { tc_floor };
    let mut table = format!("{:<32} {:>10} {:>16} {:>12}\n", "program (success path)", "ns/packet", "trial spread", "over floor");
    for (i, c) in cases.iter().enumerate() {
        let _ = writeln!(table, "{:<32} {:>10.0} {:>7.0} .. {:<6.0} {:>12.0}", c.name, c.median, c.low, c.high, c.median - floor_of(i));
    }
    print!("{table}");
    println!(
        "({TRIALS} trials × {RUNS} runs each, one fresh packet per run, CPU 0; medians; each floor is the kernel's timing of an empty program of that hook)"
    );
    json!({
        "runs_per_trial": RUNS,
        "trials": TRIALS,
        "xdp_floor_ns": xdp_floor,
        "tc_floor_ns": tc_floor,
        "cases": cases.iter().enumerate().map(|(i, c)| json!({ "name": c.name, "ns": c.median, "low": c.low, "high": c.high, "over_floor_ns": c.median - floor_of(i) })).collect::<Vec<_>>(),
    })
}
