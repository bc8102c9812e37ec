//! What the daemon's NHRP answers on the control socket: the DMVPN table (Cisco's `show dmvpn`,
//! FRR's `show ip nhrp cache`), one peer in full, the NHSs' registrations, and the operator's
//! clearing of dynamic state.

use std::net::IpAddr;

use gre_common::maps::{peer_flags, peer_kind, tunnel_flags};
use log::info;
use serde::Serialize;
use serde_json::{Value, json};
use socket2::Socket;

use super::agent::Agent;
use crate::{
    control::{Clear, Request},
    maps::{Maps, show_addr},
};

/// One row of `gre show dmvpn`.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(skip)]
    id: u32,
    tunnel: String,
    overlay: IpAddr,
    /// Where it is reached (after NAT).
    nbma: IpAddr,
    /// Where it says it is, when NAT makes that differ.
    claimed_nbma: Option<IpAddr>,
    /// "up", or "incomplete" while being resolved.
    state: &'static str,
    /// Seconds since it was registered or learned (not known for static entries).
    up_for: Option<u64>,
    expires_in: Option<u64>,
    /// static or dynamic; registered, unique, nated, shortcut (a route via it), multicast.
    attributes: Vec<&'static str>,
}

/// The name of tunnel `id`'s netdev.
fn tunnel_name(maps: &Maps, id: u32) -> String {
    maps.tunnel(id).map_or_else(|| format!("#{id}"), |t| crate::netdev::ifname(t.netdev_ifindex))
}

impl Agent {
    /// Answers a request of the control socket (the log level and IPsec are the daemon's).
    pub fn answer(&mut self, maps: &mut Maps, sender: &Socket, request: &Request, now: u64) -> Value {
        match request {
            Request::Dmvpn => json!({ "peers": self.rows(maps, now, |_, _| true), "nhs": self.nhs_detail(maps, now) }),
            Request::Peer { address } => self.peer_detail(maps, *address, now),
            Request::Clear { what } => json!({ "cleared": self.clear(maps, sender, what, now) }),
            Request::LogLevel { .. } | Request::Ipsec => json!({ "error": "the daemon answers this itself" }),
        }
    }

    fn rows(&self, maps: &Maps, now: u64, keep: impl Fn(&IpAddr, &IpAddr) -> bool) -> Vec<Row> {
        let shortcut_vias: Vec<(u32, IpAddr)> = maps.shortcut_routes().into_iter().filter_map(|(_, id, via)| Some((id, via?))).collect();
        let ipsec = self.ipsec_status();
        let mut rows: Vec<Row> = maps
            .peers()
            .into_iter()
            .filter(|(id, o, _)| self.engines.contains_key(&(*id, o.is_ipv6())))
            .filter(|(_, o, p)| keep(o, &show_addr(&p.nbma)))
            .map(|(id, overlay, p)| {
                let registration = self.engines.get(&(id, overlay.is_ipv6())).and_then(|e| e.registrations().get(&overlay).copied());
                let claimed = (p.claimed != [0; 16]).then(|| show_addr(&p.claimed));
                let mut attributes = vec![if p.kind == peer_kind::STATIC { "static" } else { "dynamic" }];
                let flags = [
                    (p.flags & peer_flags::REGISTERED != 0, "registered"),
                    (p.flags & peer_flags::UNIQUE != 0, "unique"),
                    (claimed.is_some(), "nated"),
                    (shortcut_vias.contains(&(id, overlay)), "shortcut"),
                    (p.flags & peer_flags::MULTICAST != 0, "multicast"),
                ];
                attributes.extend(flags.iter().filter(|(on, _)| *on).map(|(_, a)| *a));
                // A protected tunnel's peer: whether charon has its SA up.
                if let Some(status) = ipsec.as_ref().filter(|_| maps.tunnel(id).is_some_and(|t| t.flags & tunnel_flags::PROTECTED != 0)) {
                    attributes.push(if status.secured(&tunnel_name(maps, id), show_addr(&p.nbma)) { "ipsec" } else { "no-sa" });
                }
                let since = registration.map(|b| b.since).or_else(|| self.learned.get(&(id, overlay)).copied());
                Row {
                    id,
                    tunnel: tunnel_name(maps, id),
                    overlay,
                    nbma: show_addr(&p.nbma),
                    claimed_nbma: claimed,
                    state: if p.kind == peer_kind::INCOMPLETE { "incomplete" } else { "up" },
                    up_for: since.map(|s| now.saturating_sub(s)),
                    expires_in: (p.expires != 0).then(|| p.expires.saturating_sub(now)),
                    attributes,
                }
            })
            .collect();
        rows.sort_by(|a, b| (&a.tunnel, a.overlay).cmp(&(&b.tunnel, b.overlay)));
        rows
    }

    fn nhs_detail(&self, maps: &Maps, now: u64) -> Vec<Value> {
        let mut out = Vec::new();
        for ((id, _), e) in &self.engines {
            for l in e.nhs_links() {
                out.push(json!({
                    "tunnel": tunnel_name(maps, *id),
                    "overlay": l.nhs.overlay,
                    "nbma": l.nhs.nbma,
                    "priority": l.nhs.priority,
                    "state": if l.up { "up" } else { "down" },
                    "for": now.saturating_sub(l.since),
                    "last_request_ago": l.last_request.map(|t| now.saturating_sub(t)),
                    "last_reply_ago": l.last_reply.map(|t| now.saturating_sub(t)),
                    "registration_pending": l.pending.is_some(),
                    "unanswered": l.timeouts,
                    "nat_nbma": e.nat_nbma(),
                }));
            }
        }
        out
    }

    fn peer_detail(&self, maps: &Maps, address: IpAddr, now: u64) -> Value {
        let rows = self.rows(maps, now, |o, n| *o == address || *n == address);
        if rows.is_empty() {
            return json!({ "error": format!("no peer {address}") });
        }
        let detail: Vec<Value> = rows
            .iter()
            .map(|r| {
                let id = r.id;
                let stats = maps.peer_stats(id, &crate::maps::store_addr(r.nbma));
                let engine = self.engines.get(&(id, r.overlay.is_ipv6()));
                let registration = engine.and_then(|e| e.registrations().get(&r.overlay).copied());
                let told: Vec<Value> =
                    engine.map(|e| e.told_of(r.overlay)).unwrap_or_default().iter().map(|(o, n)| json!({ "overlay": o, "nbma": n })).collect();
                let shortcuts: Vec<String> = maps
                    .shortcut_routes()
                    .into_iter()
                    .filter(|(_, rid, via)| *rid == id && *via == Some(r.overlay))
                    .map(|(net, _, _)| net.to_string())
                    .collect();
                let p = maps.peer(id, r.overlay);
                json!({
                    "peer": r,
                    "registration": registration.map(|b| json!({ "unique": b.unique, "claimed_nbma": b.claimed, "expires_in": b.expires.saturating_sub(now) })),
                    "told": told,
                    "shortcuts": shortcuts,
                    "used_ago": p.filter(|p| p.used_ns != 0).map(|p| crate::clock::monotonic_ns().saturating_sub(p.used_ns) / 1_000_000_000),
                    "rx_packets": stats.rx_packets, "rx_bytes": stats.rx_bytes, "tx_packets": stats.tx_packets, "tx_bytes": stats.tx_bytes,
                })
            })
            .collect();
        json!({ "peers": detail })
    }

    /// Forgets dynamic state, as the operator asks: peers and shortcuts go from the tables,
    /// registrations from the engine (their holders purged); static entries stay.
    fn clear(&mut self, maps: &mut Maps, sender: &Socket, what: &Clear, now: u64) -> usize {
        let mut cleared = 0;
        let shortcuts = maps.shortcut_routes();
        let keys: Vec<(u32, bool)> = self.engines.keys().copied().collect();
        for key in keys {
            let (id, v6) = key;
            let mut actions = Vec::new();
            let dynamic: Vec<IpAddr> =
                maps.peers().into_iter().filter(|(pid, o, p)| *pid == id && o.is_ipv6() == v6 && p.kind != peer_kind::STATIC).map(|(_, o, _)| o).collect();
            let (peers, routes): (Vec<IpAddr>, Vec<ipnet::IpNet>) = match what {
                Clear::Cache => (dynamic, shortcuts.iter().filter(|(_, rid, _)| *rid == id).map(|(n, _, _)| *n).collect()),
                Clear::Shortcuts => (vec![], shortcuts.iter().filter(|(_, rid, _)| *rid == id).map(|(n, _, _)| *n).collect()),
                Clear::Address(a) => (
                    dynamic.into_iter().filter(|o| o == a).collect(),
                    shortcuts
                        .iter()
                        .filter(|(n, rid, via)| *rid == id && (*via == Some(*a) || n.contains(a) && n.prefix_len() == if a.is_ipv4() { 32 } else { 128 }))
                        .map(|(n, _, _)| *n)
                        .collect(),
                ),
            };
            if let Some(e) = self.engines.get_mut(&key) {
                match what {
                    Clear::Cache => actions.extend(e.clear_all(now)),
                    Clear::Address(a) => actions.extend(e.clear(*a, now)),
                    Clear::Shortcuts => {}
                }
            }
            for net in routes {
                if maps.remove_route(net) {
                    self.mirror.restore(maps, net);
                    info!("tunnel {id}: shortcut {net} cleared");
                    cleared += 1;
                }
            }
            for o in peers {
                if maps.remove_peer(id, o) {
                    info!("tunnel {id}: peer {o} cleared");
                    self.schedule((id, o), None);
                    self.learned.remove(&(id, o));
                    cleared += 1;
                }
            }
            self.carry_out(maps, sender, key, actions, now);
        }
        let left = maps.shortcut_routes();
        self.shortcuts.retain(|(sid, net, _)| left.iter().any(|(n, rid, _)| n == net && rid == sid));
        cleared
    }
}
