//! `gre stats`: rates over an interval — packets and bits per second in and out of each tunnel,
//! drops per second by reason — from two readings of the pinned counters.

use std::{fmt::Write as _, time::Duration};

use anyhow::Result;
use serde::Serialize;

use crate::show::{self, Report};

/// What happened in one interval.
#[derive(Debug, Serialize)]
pub struct Sample {
    /// Seconds the interval lasted (measured, not asked).
    pub interval: f64,
    pub tunnels: Vec<TunnelRates>,
    /// Peers of multipoint tunnels, by NBMA address (the overlay addresses behind it listed).
    pub peers: Vec<PeerRates>,
    /// Drops in the interval by reason (every reason, zeros included).
    pub drops: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct TunnelRates {
    pub tunnel: String,
    /// Packets and inner bytes in the interval.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub tx_bps: f64,
}

#[derive(Debug, Serialize)]
pub struct PeerRates {
    pub tunnel: String,
    pub nbma: String,
    pub overlays: Vec<String>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_pps: f64,
    pub rx_bps: f64,
    pub tx_pps: f64,
    pub tx_bps: f64,
}

/// Reads the counters every `interval` and hands each interval's sample to `each`, `count` times
/// (forever if `None`). Each reading ends one interval and starts the next: nothing is missed.
///
/// # Errors
/// The instance is not up, its maps cannot be read, or `each` fails.
pub fn watch(instance: &str, interval: Duration, count: Option<u64>, mut each: impl FnMut(&Sample) -> Result<()>) -> Result<()> {
    let (mut before, mut start) = (show::report(instance)?, std::time::Instant::now());
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(interval.saturating_sub(start.elapsed()));
        let (after, now) = (show::report(instance)?, std::time::Instant::now());
        each(&between(&before, &after, now.duration_since(start).as_secs_f64()))?;
        (before, start) = (after, now);
        n += 1;
    }
    Ok(())
}

/// The rates between two reports `secs` apart. A tunnel that appeared meanwhile counts from 0;
/// a counter that went back (the instance was brought up again) counts from 0 too.
#[must_use]
pub fn between(before: &Report, after: &Report, secs: f64) -> Sample {
    let secs = secs.max(1e-9);
    let d = |a: u64, b: u64| if a >= b { a - b } else { a };
    #[expect(clippy::cast_precision_loss, reason = "rates for display")]
    let rate = |n: u64| n as f64 / secs;
    let tunnels = after
        .tunnels
        .iter()
        .map(|t| {
            let old = before.tunnels.iter().find(|o| o.id == t.id && o.name == t.name);
            let o = |f: fn(&show::TunnelReport) -> u64| old.map_or(0, f);
            let drops = |t: &show::TunnelReport| t.drops.values().filter_map(serde_json::Value::as_u64).sum::<u64>();
            let (rxp, rxb) = (d(t.rx_packets, o(|t| t.rx_packets)), d(t.rx_bytes, o(|t| t.rx_bytes)));
            let (txp, txb) = (d(t.tx_packets, o(|t| t.tx_packets)), d(t.tx_bytes, o(|t| t.tx_bytes)));
            TunnelRates {
                tunnel: t.name.clone(),
                rx_packets: rxp,
                rx_bytes: rxb,
                tx_packets: txp,
                tx_bytes: txb,
                drops: d(drops(t), old.map_or(0, drops)),
                rx_pps: rate(rxp),
                rx_bps: rate(rxb) * 8.0,
                tx_pps: rate(txp),
                tx_bps: rate(txb) * 8.0,
            }
        })
        .collect();
    let mut peers: Vec<PeerRates> = Vec::new();
    for p in &after.peers {
        if let Some(e) = peers.iter_mut().find(|e| e.tunnel == p.tunnel && e.nbma == p.nbma) {
            e.overlays.push(p.overlay.clone());
            continue;
        }
        let old = before.peers.iter().find(|o| o.tunnel == p.tunnel && o.nbma == p.nbma);
        let o = |f: fn(&show::PeerReport) -> u64| old.map_or(0, f);
        let (rxp, rxb) = (d(p.rx_packets, o(|p| p.rx_packets)), d(p.rx_bytes, o(|p| p.rx_bytes)));
        let (txp, txb) = (d(p.tx_packets, o(|p| p.tx_packets)), d(p.tx_bytes, o(|p| p.tx_bytes)));
        peers.push(PeerRates {
            tunnel: p.tunnel.clone(),
            nbma: p.nbma.clone(),
            overlays: vec![p.overlay.clone()],
            rx_packets: rxp,
            rx_bytes: rxb,
            tx_packets: txp,
            tx_bytes: txb,
            rx_pps: rate(rxp),
            rx_bps: rate(rxb) * 8.0,
            tx_pps: rate(txp),
            tx_bps: rate(txb) * 8.0,
        });
    }
    let drops = after
        .drops
        .iter()
        .map(|(k, v)| {
            let (now, then) = (v.as_u64().unwrap_or(0), before.drops.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0));
            (k.clone(), serde_json::Value::from(d(now, then)))
        })
        .collect();
    Sample { interval: secs, tunnels, peers, drops }
}

/// A rate with an SI prefix, as `ip -h` prints them.
fn human(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.2}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// The sample as a table: rates per tunnel, then the drop reasons that moved.
#[must_use]
pub fn table(s: &Sample) -> String {
    let mut out = format!("{:<12}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}\n", "tunnel", "rx pps", "rx bps", "tx pps", "tx bps", "drops/s");
    for t in &s.tunnels {
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let drops = t.drops as f64 / s.interval;
        let _ = writeln!(
            out,
            "{:<12}  {:>9}  {:>9}  {:>9}  {:>9}  {:>7}",
            t.tunnel,
            human(t.rx_pps),
            human(t.rx_bps),
            human(t.tx_pps),
            human(t.tx_bps),
            human(drops)
        );
    }
    for p in &s.peers {
        let name = format!("  {} ({})", p.nbma, p.overlays.join(","));
        let _ = writeln!(out, "{name:<12}  {:>9}  {:>9}  {:>9}  {:>9}", human(p.rx_pps), human(p.rx_bps), human(p.tx_pps), human(p.tx_bps));
    }
    for (reason, n) in s.drops.iter().filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0)) {
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let per_s = n.as_u64().unwrap_or(0) as f64 / s.interval;
        let _ = writeln!(out, "  drop {reason}: {}/s", human(per_s));
    }
    out
}
