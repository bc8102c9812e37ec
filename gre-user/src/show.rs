//! `gre show`: the live state of an instance, read from its pinned maps, as a table for people or
//! JSON for scripts. Field names of the JSON are stable (documented in the README).

use std::fmt::Write as _;

use anyhow::Result;
use gre_common::{
    drop,
    maps::{NHRP_TYPES, Tunnel, nhrp_role, route_flags, tunnel_flags, tunnel_state},
};
use serde::Serialize;

use crate::{
    config::Setting,
    instance,
    maps::{Maps, show_addr},
    nhrp::wire::kind,
};

/// What `gre show PART` shows alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Every tunnel with its settings, state and main counters.
    Tunnels,
    /// The peers of multipoint tunnels (the NHRP cache).
    Peers,
    /// Overlay routes.
    Routes,
    /// Next-hop servers and their state.
    Nhs,
    /// Every counter of every tunnel, NHRP messages by type included.
    Stats,
    /// Drops by reason, in all and per tunnel.
    Drops,
    /// The NHRP peers as DMVPN operators read them (peer and claimed NBMA, tunnel address,
    /// state, up time, attributes) and each NHS's registration, from the running daemon.
    Dmvpn,
    /// Everything about one peer (`gre show peer ADDRESS`), from the running daemon.
    Peer,
    /// The protected tunnels' IPsec SAs (from the running daemon, which asks charon).
    Ipsec,
}

/// Counters of one tunnel (`gre show stats`).
#[derive(Debug, Serialize)]
pub struct StatsReport<'a> {
    pub tunnel: &'a str,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub fast_rx: u64,
    pub fast_tx: u64,
    pub reassembled: u64,
    pub keepalives_sent: u64,
    pub keepalives_answered: u64,
    pub keepalives_returned: u64,
    pub nhrp_punted: u64,
    pub nhrp_received: &'a serde_json::Map<String, serde_json::Value>,
    pub nhrp_sent: &'a serde_json::Map<String, serde_json::Value>,
    pub nhrp_errors: u64,
    pub drops: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> From<&'a TunnelReport> for StatsReport<'a> {
    fn from(t: &'a TunnelReport) -> Self {
        Self {
            tunnel: &t.name,
            rx_packets: t.rx_packets,
            rx_bytes: t.rx_bytes,
            tx_packets: t.tx_packets,
            tx_bytes: t.tx_bytes,
            fast_rx: t.fast_rx,
            fast_tx: t.fast_tx,
            reassembled: t.reassembled,
            keepalives_sent: t.keepalives_sent,
            keepalives_answered: t.keepalives_answered,
            keepalives_returned: t.keepalives_returned,
            nhrp_punted: t.nhrp_punted,
            nhrp_received: &t.nhrp_received,
            nhrp_sent: &t.nhrp_sent,
            nhrp_errors: t.nhrp_errors,
            drops: &t.drops,
        }
    }
}

/// A part of the report, or all of it, as JSON.
///
/// # Errors
/// Never in practice (serialisation of plain data).
pub fn json(r: &Report, part: Option<Part>) -> serde_json::Result<serde_json::Value> {
    match part {
        None => serde_json::to_value(r),
        Some(Part::Tunnels) => serde_json::to_value(&r.tunnels),
        Some(Part::Peers) => serde_json::to_value(&r.peers),
        Some(Part::Routes) => serde_json::to_value(&r.routes),
        Some(Part::Nhs) => serde_json::to_value(&r.nhs),
        Some(Part::Stats) => serde_json::to_value(r.tunnels.iter().map(StatsReport::from).collect::<Vec<_>>()),
        Some(Part::Drops) => {
            let by_tunnel: serde_json::Map<String, serde_json::Value> =
                r.tunnels.iter().map(|t| (t.name.clone(), serde_json::Value::Object(t.drops.clone()))).collect();
            Ok(serde_json::json!({ "all": r.drops, "by_tunnel": by_tunnel }))
        }
        // The daemon answers these (`control::ask`), not the maps.
        Some(Part::Dmvpn | Part::Peer | Part::Ipsec) => Ok(serde_json::Value::Null),
    }
}

/// A part of the report, or all of it, as tables for people.
#[must_use]
pub fn text(r: &Report, part: Option<Part>) -> String {
    match part {
        None => table(r),
        Some(Part::Tunnels) => tunnels_table(r),
        Some(Part::Peers) => peers_table(&r.peers),
        Some(Part::Routes) => routes_table(&r.routes),
        Some(Part::Nhs) => nhs_table(&r.nhs),
        Some(Part::Stats) => stats_table(r),
        Some(Part::Drops) => drops_table(r),
        Some(Part::Dmvpn | Part::Peer | Part::Ipsec) => String::new(),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub instance: String,
    pub tunnels: Vec<TunnelReport>,
    /// Overlay routes.
    pub routes: Vec<RouteReport>,
    /// Peers of multipoint tunnels (the NHRP cache).
    pub peers: Vec<PeerReport>,
    /// Next-hop servers of multipoint tunnels that have one, with their registration state.
    pub nhs: Vec<NhsReport>,
    /// Drops by reason name (every reason, zeros included).
    pub drops: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct NhsReport {
    pub tunnel: String,
    pub overlay: String,
    /// From the NHS's peer entry; `null` if it has none (nothing can reach it).
    pub nbma: Option<String>,
    /// Lower is preferred.
    pub priority: u8,
    /// The one unresolved traffic goes to now.
    pub current: bool,
    /// "up" once it accepted our registration, "down" when it stopped answering, "unknown"
    /// while `gre daemon` is not running or has not heard back yet.
    pub state: &'static str,
}

#[derive(Debug, Serialize)]
pub struct RouteReport {
    pub prefix: String,
    pub tunnel: String,
    /// Multipoint: the overlay next hop; `null` for the destination itself.
    pub via: Option<String>,
    /// What put it there: `configured`, `shortcut` (NHRP's phase 3) or `kernel` (a route of
    /// the kernel's into a multipoint tunnel, from a routing daemon or the operator).
    pub source: &'static str,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub tunnel: String,
    pub overlay: String,
    pub nbma: String,
    /// "static", "dynamic" or "incomplete".
    pub kind: &'static str,
    pub multicast: bool,
    /// Seconds until it expires; `null` for never.
    pub expires_in: Option<u64>,
    /// Seconds since the datapath last sent to it (updated at most once a second); `null` if it
    /// never did.
    pub used_ago: Option<u64>,
    /// Packets and bytes (after the GRE header) from and to this peer's NBMA address — shared by
    /// the overlay addresses behind one NBMA address. Received ones count what arrived for the
    /// tunnel, NHRP included, before checks that may drop it (`drops` says why).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct NhrpReport {
    /// "nhs" (hub) or "nhc" (spoke).
    pub role: &'static str,
    pub network_id: u32,
    pub holdtime: u16,
}

#[derive(Debug, Serialize)]
#[expect(clippy::struct_excessive_bools, reason = "the tunnel's on/off options, as JSON fields")]
pub struct TunnelReport {
    pub id: u32,
    pub name: String,
    /// "gre" or "gretap".
    pub mode: &'static str,
    /// "up" or "down" while `gre daemon` sends keepalives; "unknown" otherwise.
    pub state: &'static str,
    /// Keepalive period in seconds and retries; `null` when none.
    pub keepalive: Option<[u16; 2]>,
    pub keepalives_sent: u64,
    /// Packets that arrived in fragments and were decapsulated by `gre daemon`.
    pub reassembled: u64,
    pub interface: String,
    pub local: String,
    pub remote: String,
    pub ikey: Option<u32>,
    pub okey: Option<u32>,
    pub icsum: bool,
    pub ocsum: bool,
    pub iseq: bool,
    pub oseq: bool,
    /// A number, or "inherit".
    pub ttl: Setting<u8>,
    /// A number, or "inherit".
    pub tos: Setting<u8>,
    /// IPv6 outer only: a number, or "inherit".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flowlabel: Option<Setting<u32>>,
    pub pmtudisc: bool,
    pub ignore_df: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub keepalives_answered: u64,
    pub keepalives_returned: u64,
    /// NHRP packets handed to `gre daemon`.
    pub nhrp_punted: u64,
    /// NHRP settings of a multipoint tunnel; `null` without NHRP.
    pub nhrp: Option<NhrpReport>,
    /// NHRP messages `gre daemon` received and sent, by type (`resolution_request`, …,
    /// `traffic_indication`), and those it could not decode or send.
    pub nhrp_received: serde_json::Map<String, serde_json::Value>,
    pub nhrp_sent: serde_json::Map<String, serde_json::Value>,
    pub nhrp_errors: u64,
    /// Of rx_packets: decapsulated straight to a LAN port.
    pub fast_rx: u64,
    /// Of tx_packets: encapsulated straight from a LAN port.
    pub fast_tx: u64,
    /// This tunnel's drops by reason (every reason, zeros included).
    pub drops: serde_json::Map<String, serde_json::Value>,
}

/// Reads an instance's maps into a report.
///
/// # Errors
/// The instance is not up or its maps cannot be read.
pub fn report(instance: &str) -> Result<Report> {
    report_of(instance, None)
}

/// Reads what `part` shows (everything for `None`) into a report; the rest is left empty, so
/// that the tunnels of a hub with a million peers are shown without reading the peers.
///
/// # Errors
/// The instance is not up or its maps cannot be read.
#[expect(clippy::too_many_lines, reason = "one field of the report after the other")]
pub fn report_of(instance: &str, part: Option<Part>) -> Result<Report> {
    let wants = |p: Part| part.is_none_or(|q| q == p);
    let dir = instance::running_dir(instance)?;
    let maps = Maps::open_pinned(&dir.join("maps"))?;
    let mut tunnels = Vec::new();
    // Drops of reassembled packets, which the daemon counts per tunnel.
    let mut slow_drops = [0u64; drop::COUNT as usize];
    for (id, t) in maps.tunnels()? {
        let s = maps.tunnel_stats(id)?;
        let st = maps.state(id)?;
        tunnels.push(TunnelReport {
            id,
            name: ifname(t.netdev_ifindex),
            mode: if t.flags & tunnel_flags::TEB != 0 { "gretap" } else { "gre" },
            state: tunnel_state::NAMES.get(st.state as usize).copied().unwrap_or("unknown"),
            keepalive: (t.keepalive_period != 0).then_some([t.keepalive_period, u16::from(t.keepalive_retries)]),
            keepalives_sent: st.keepalives_sent,
            reassembled: st.reassembled,
            interface: ifname(t.underlay_ifindex),
            local: show_addr(&t.local).to_string(),
            remote: if t.flags & tunnel_flags::MULTIPOINT != 0 { "multipoint".to_string() } else { show_addr(&t.remote).to_string() },
            ikey: key(&t, tunnel_flags::IKEY, t.ikey),
            okey: key(&t, tunnel_flags::OKEY, t.okey),
            icsum: t.flags & tunnel_flags::ICSUM != 0,
            ocsum: t.flags & tunnel_flags::OCSUM != 0,
            iseq: t.flags & tunnel_flags::ISEQ != 0,
            oseq: t.flags & tunnel_flags::OSEQ != 0,
            ttl: if t.ttl == 0 { Setting::Inherit } else { Setting::Fixed(t.ttl) },
            tos: if t.flags & tunnel_flags::TOS_INHERIT != 0 { Setting::Inherit } else { Setting::Fixed(t.tos) },
            flowlabel: (t.flags & tunnel_flags::OUTER_V6 != 0).then_some(if t.flags & tunnel_flags::FLOWLABEL_INHERIT != 0 {
                Setting::Inherit
            } else {
                Setting::Fixed(t.flowlabel)
            }),
            pmtudisc: t.flags & tunnel_flags::NOPMTUDISC == 0,
            ignore_df: t.flags & tunnel_flags::IGNORE_DF != 0,
            // What arrived in fragments, the daemon decapsulated: received all the same.
            rx_packets: s.rx_packets + st.reassembled,
            rx_bytes: s.rx_bytes + st.reassembled_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            keepalives_answered: s.keepalives_answered,
            keepalives_returned: s.keepalives_returned,
            nhrp_punted: s.nhrp_punted,
            nhrp: (t.nhrp_role != nhrp_role::NONE).then(|| NhrpReport {
                role: if t.nhrp_role == nhrp_role::NHS { "nhs" } else { "nhc" },
                network_id: t.nhrp_network_id,
                holdtime: t.nhrp_holdtime,
            }),
            nhrp_received: by_nhrp_type(&st.nhrp_rx),
            nhrp_sent: by_nhrp_type(&st.nhrp_tx),
            nhrp_errors: st.nhrp_errors,
            fast_rx: s.fast_rx,
            fast_tx: s.fast_tx,
            drops: drop::NAMES.iter().zip(s.drops).zip(st.reassembled_drops).map(|((n, v), r)| ((*n).to_string(), (v + r).into())).collect(),
        });
        for (all, r) in slow_drops.iter_mut().zip(st.reassembled_drops) {
            *all += r;
        }
    }
    let drops = maps.drops()?.into_iter().zip(slow_drops).map(|((n, v), r)| (n.to_string(), (v + r).into())).collect();
    let routes = if wants(Part::Routes) { maps.routes_flagged() } else { Vec::new() }
        .into_iter()
        .map(|(prefix, id, via, flags)| RouteReport {
            prefix: prefix.to_string(),
            via: via.map(|v| v.to_string()),
            source: if flags & route_flags::SHORTCUT != 0 {
                "shortcut"
            } else if flags & route_flags::KERNEL != 0 {
                "kernel"
            } else {
                "configured"
            },
            tunnel: tunnels.iter().find(|t| t.id == id).map_or_else(|| format!("#{id}"), |t| t.name.clone()),
        })
        .collect();
    // The datapath's clock (bpf_ktime_get_ns), which peer expiry counts in too.
    let monotonic_ns = crate::clock::monotonic_ns();
    let now = monotonic_ns / 1_000_000_000;
    let mut peers: Vec<PeerReport> = if wants(Part::Peers) { maps.peers() } else { Vec::new() }
        .into_iter()
        .map(|(id, overlay, p)| (maps.peer_stats(id, &p.nbma), id, overlay, p))
        .map(|(c, id, overlay, p)| PeerReport {
            tunnel: tunnels.iter().find(|t| t.id == id).map_or_else(|| format!("#{id}"), |t| t.name.clone()),
            overlay: overlay.to_string(),
            nbma: show_addr(&p.nbma).to_string(),
            kind: gre_common::maps::peer_kind::NAMES.get(usize::from(p.kind)).copied().unwrap_or("unknown"),
            multicast: p.flags & gre_common::maps::peer_flags::MULTICAST != 0,
            expires_in: (p.expires != 0).then(|| p.expires.saturating_sub(now)),
            used_ago: (p.used_ns != 0).then(|| monotonic_ns.saturating_sub(p.used_ns) / 1_000_000_000),
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
        })
        .collect();
    let addr = |s: &str| s.parse::<std::net::IpAddr>().ok();
    peers.sort_by(|a, b| (&a.tunnel, addr(&a.overlay)).cmp(&(&b.tunnel, addr(&b.overlay))));
    let mut nhs = Vec::new();
    for (id, t) in maps.tunnels()? {
        if t.flags & tunnel_flags::MULTIPOINT == 0 {
            continue;
        }
        let report = tunnels.iter().find(|r| r.id == id);
        let name = report.map_or_else(|| format!("#{id}"), |r| r.name.clone());
        let nhs_up = maps.state(id).map_or(0, |s| s.nhs_up);
        for (i, (a, priority)) in t.nhs_list.iter().zip(t.nhs_priority).enumerate().filter(|(_, (a, _))| **a != [0; 16]) {
            let overlay = show_addr(a);
            // The tunnel's state says whether the daemon has heard; each NHS's bit, which answer.
            let state = match report.map_or("unknown", |r| r.state) {
                "unknown" => "unknown",
                _ if nhs_up & (1 << i) != 0 => "up",
                _ => "down",
            };
            nhs.push(NhsReport {
                tunnel: name.clone(),
                overlay: overlay.to_string(),
                nbma: maps.peer(id, overlay).map(|p| show_addr(&p.nbma).to_string()),
                priority,
                current: t.nhs == *a,
                state,
            });
        }
    }
    Ok(Report { instance: instance.to_string(), tunnels, routes, peers, nhs, drops })
}

/// NHRP counters keyed by the type's name in snake case.
fn by_nhrp_type(counts: &[u64; NHRP_TYPES]) -> serde_json::Map<String, serde_json::Value> {
    (1u8..).zip(counts).map(|(k, v)| (kind::name(k).to_lowercase().replace(' ', "_"), (*v).into())).collect()
}

fn key(t: &Tunnel, flag: u32, value: u32) -> Option<u32> {
    (t.flags & flag != 0).then_some(value)
}

pub use crate::netdev::ifname;

/// The table `gre show` prints.
#[must_use]
pub fn table(r: &Report) -> String {
    let mut out = format!("instance {}\n", r.instance);
    out += &tunnels_table(r);
    if !r.routes.is_empty() {
        out.push('\n');
        out += &routes_table(&r.routes);
    }
    if !r.peers.is_empty() {
        out.push('\n');
        out += &peers_table(&r.peers);
    }
    let nhrp = nhrp_table(r);
    if !nhrp.is_empty() {
        out.push('\n');
        out += &nhrp;
    }
    out.push('\n');
    out += &drops_table(r);
    out
}

/// `gre show tunnels`.
#[must_use]
pub fn tunnels_table(r: &Report) -> String {
    let mut rows = vec![
        [
            "tunnel",
            "mode",
            "state",
            "interface",
            "local",
            "remote",
            "ikey",
            "okey",
            "ttl",
            "options",
            "rx packets",
            "rx bytes",
            "tx packets",
            "tx bytes",
            "drops",
        ]
        .map(String::from),
    ];
    let opt = |k: Option<u32>| k.map_or_else(|| "-".to_string(), |k| k.to_string());
    for t in &r.tunnels {
        rows.push([
            t.name.clone(),
            t.mode.to_string(),
            if t.keepalive.is_some() || t.state != "unknown" { t.state.to_string() } else { "-".to_string() },
            t.interface.clone(),
            t.local.clone(),
            t.remote.clone(),
            opt(t.ikey),
            opt(t.okey),
            t.ttl.to_string(),
            options(t),
            t.rx_packets.to_string(),
            t.rx_bytes.to_string(),
            t.tx_packets.to_string(),
            t.tx_bytes.to_string(),
            total_drops(t).to_string(),
        ]);
    }
    columns(&rows)
}

fn total_drops(t: &TunnelReport) -> u64 {
    t.drops.values().filter_map(serde_json::Value::as_u64).sum()
}

/// `gre show routes`.
#[must_use]
pub fn routes_table(routes: &[RouteReport]) -> String {
    let mut rows = vec![["route".to_string(), "tunnel".to_string(), "source".to_string()]];
    rows.extend(
        routes
            .iter()
            .map(|rt| [rt.prefix.clone(), rt.via.as_ref().map_or_else(|| rt.tunnel.clone(), |v| format!("{} via {v}", rt.tunnel)), rt.source.to_string()]),
    );
    columns(&rows)
}

/// NHRP messages of the tunnels that had any, one row per type seen; empty if none.
fn nhrp_table(r: &Report) -> String {
    let mut nhrp = vec![["nhrp message", "tunnel", "received", "sent"].map(String::from)];
    for t in &r.tunnels {
        for (name, rx) in &t.nhrp_received {
            let tx = t.nhrp_sent.get(name).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let rx = rx.as_u64().unwrap_or(0);
            if rx + tx > 0 {
                nhrp.push([name.clone(), t.name.clone(), rx.to_string(), tx.to_string()]);
            }
        }
        if t.nhrp_errors > 0 {
            nhrp.push(["errors".to_string(), t.name.clone(), t.nhrp_errors.to_string(), "-".to_string()]);
        }
    }
    if nhrp.len() > 1 { columns(&nhrp) } else { String::new() }
}

/// `gre show stats`: every counter of every tunnel.
#[must_use]
pub fn stats_table(r: &Report) -> String {
    let mut rows = vec![
        ["tunnel", "rx packets", "rx bytes", "tx packets", "tx bytes", "fast rx", "fast tx", "reassembled", "keepalives", "nhrp", "drops"].map(String::from),
    ];
    for t in &r.tunnels {
        rows.push([
            t.name.clone(),
            t.rx_packets.to_string(),
            t.rx_bytes.to_string(),
            t.tx_packets.to_string(),
            t.tx_bytes.to_string(),
            t.fast_rx.to_string(),
            t.fast_tx.to_string(),
            t.reassembled.to_string(),
            format!("{}/{}/{}", t.keepalives_sent, t.keepalives_answered, t.keepalives_returned),
            t.nhrp_punted.to_string(),
            total_drops(t).to_string(),
        ]);
    }
    let mut out = columns(&rows);
    out += "(keepalives: sent/answered/returned; nhrp: packets handed to gre daemon)\n";
    if !r.peers.is_empty() {
        let mut peers = vec![["peer", "tunnel", "nbma", "rx packets", "rx bytes", "tx packets", "tx bytes"].map(String::from)];
        peers.extend(r.peers.iter().map(|p| {
            [
                p.overlay.clone(),
                p.tunnel.clone(),
                p.nbma.clone(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
            ]
        }));
        out.push('\n');
        out += &columns(&peers);
    }
    let nhrp = nhrp_table(r);
    if !nhrp.is_empty() {
        out.push('\n');
        out += &nhrp;
    }
    out
}

/// `gre show drops`: the reasons that happened (`-j` lists them all), and on which tunnels.
#[must_use]
pub fn drops_table(r: &Report) -> String {
    let mut rows = vec![["drop reason", "packets", "tunnels"].map(String::from)];
    for (reason, n) in r.drops.iter().filter(|(_, v)| v.as_u64() != Some(0)) {
        let on: Vec<String> = r
            .tunnels
            .iter()
            .filter_map(|t| t.drops.get(reason).and_then(serde_json::Value::as_u64).filter(|n| *n > 0).map(|n| format!("{} {n}", t.name)))
            .collect();
        rows.push([reason.clone(), n.to_string(), if on.is_empty() { "-".to_string() } else { on.join(", ") }]);
    }
    if rows.len() == 1 { "no drops\n".to_string() } else { columns(&rows) }
}

/// `gre show peers`: the NHRP cache.
#[must_use]
pub fn peers_table(peers: &[PeerReport]) -> String {
    let mut rows = vec![["peer", "tunnel", "nbma", "kind", "multicast", "expires in", "used"].map(String::from)];
    rows.extend(peers.iter().map(|p| {
        [
            p.overlay.clone(),
            p.tunnel.clone(),
            p.nbma.clone(),
            p.kind.to_string(),
            if p.multicast { "yes" } else { "no" }.to_string(),
            p.expires_in.map_or_else(|| "never".to_string(), |s| format!("{s}s")),
            p.used_ago.map_or_else(|| "never".to_string(), |s| format!("{s}s ago")),
        ]
    }));
    columns(&rows)
}

/// `gre show nhs`: each tunnel's next-hop server and whether it has our registration.
#[must_use]
pub fn nhs_table(nhs: &[NhsReport]) -> String {
    let mut rows = vec![["tunnel", "nhs", "nbma", "priority", "state", "current"].map(String::from)];
    rows.extend(nhs.iter().map(|n| {
        [
            n.tunnel.clone(),
            n.overlay.clone(),
            n.nbma.clone().unwrap_or_else(|| "-".to_string()),
            n.priority.to_string(),
            n.state.to_string(),
            if n.current { "yes" } else { "-" }.to_string(),
        ]
    }));
    columns(&rows)
}

/// The tunnel's non-default options, in ip(8) words.
fn options(t: &TunnelReport) -> String {
    let mut o: Vec<String> =
        [(t.icsum, "icsum"), (t.ocsum, "ocsum"), (t.iseq, "iseq"), (t.oseq, "oseq"), (!t.pmtudisc, "nopmtudisc"), (t.ignore_df, "ignore-df")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, word)| word.to_string())
            .collect();
    if t.tos != Setting::Fixed(0) {
        o.push(format!("tos={}", t.tos));
    }
    if let Some(f) = t.flowlabel.filter(|f| *f != Setting::Fixed(0)) {
        o.push(format!("flowlabel={f}"));
    }
    if o.is_empty() { "-".to_string() } else { o.join(",") }
}

/// Left-aligned text columns, numbers right-aligned.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(width).enumerate() {
            let numeric = !cell.is_empty() && cell.bytes().all(|b| b.is_ascii_digit());
            let sep = if i == 0 { "" } else { "  " };
            if numeric {
                let _ = write!(line, "{sep}{cell:>w$}");
            } else {
                let _ = write!(line, "{sep}{cell:<w$}");
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// `gre show dmvpn` as a table: one line per peer, then the NHSs.
#[must_use]
pub fn dmvpn_table(v: &serde_json::Value) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let ago = |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_string(), |s| format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60));
    let mut rows = vec![["tunnel", "peer nbma", "claimed nbma", "overlay", "state", "up", "expires", "attributes"].map(String::from)];
    for p in v["peers"].as_array().into_iter().flatten() {
        let attrs: Vec<String> = p["attributes"].as_array().into_iter().flatten().map(text).collect();
        rows.push([
            text(&p["tunnel"]),
            text(&p["nbma"]),
            text(&p["claimed_nbma"]),
            text(&p["overlay"]),
            text(&p["state"]),
            ago(&p["up_for"]),
            p["expires_in"].as_u64().map_or_else(|| "never".to_string(), |s| format!("{s}s")),
            attrs.join(","),
        ]);
    }
    let mut out = columns(&rows);
    let nhs: Vec<&serde_json::Value> = v["nhs"].as_array().into_iter().flatten().collect();
    if !nhs.is_empty() {
        let mut rows = vec![["tunnel", "nhs", "nbma", "priority", "state", "for", "last reply", "pending", "unanswered", "nat nbma"].map(String::from)];
        for n in nhs {
            rows.push([
                text(&n["tunnel"]),
                text(&n["overlay"]),
                text(&n["nbma"]),
                text(&n["priority"]),
                text(&n["state"]),
                ago(&n["for"]),
                n["last_reply_ago"].as_u64().map_or_else(|| "never".to_string(), |s| format!("{s}s ago")),
                if n["registration_pending"] == true { "yes" } else { "-" }.to_string(),
                text(&n["unanswered"]),
                text(&n["nat_nbma"]),
            ]);
        }
        out.push('\n');
        out += &columns(&rows);
    }
    out
}

/// `gre show ipsec`: one row per child SA of a protected tunnel, and whether charon answers.
#[must_use]
pub fn ipsec_table(v: &serde_json::Value) -> String {
    let mut out = String::new();
    match (v["charon"].as_str(), v["unreachable"].as_str()) {
        (Some(version), _) => out.push_str(&format!("charon {version}\n")),
        (None, Some(e)) => out.push_str(&format!("charon not reached: {e}\n")),
        (None, None) => out.push_str("no protected tunnel\n"),
    }
    let rows: Vec<Vec<String>> = v["children"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    ["tunnel", "local", "remote", "state", "spi_in", "spi_out", "bytes_in", "bytes_out"]
                        .iter()
                        .map(|k| c[*k].as_str().map_or_else(|| c[*k].to_string(), str::to_string))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        out.push_str("no SA up\n");
        return out;
    }
    let header = ["tunnel", "local", "remote", "state", "spi in", "spi out", "bytes in", "bytes out"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(header.iter().map(|s| (*s).to_string()).collect::<Vec<_>>()).chain(rows) {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
