//! The kernel's routes through a multipoint tunnel's netdev steer the datapath. A routing
//! daemon (FRR, BIRD) or the operator installs `10.1.0.0/24 via 203.0.113.2 dev mgre0`; the
//! daemon mirrors it into the datapath's route table, so the peer that holds 203.0.113.2 gets
//! the traffic, on the kernel path and the LAN fast path alike. Read again when netlink
//! announces a route change.
//!
//! Of two entries for one prefix, a configured `[[route]]` wins (the operator said so) and so
//! does a phase 3 shortcut (it overrides the route through the hub, and when it goes, the
//! kernel's route comes back). The kernel's own choice among its routes is kept: the lowest
//! metric; of a multipath route, the first next hop (the datapath holds one per prefix).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use gre_common::maps::{Tunnel, route_flags, tunnel_flags};
use ipnet::IpNet;
use log::{info, warn};

use crate::{maps::Maps, netdev::KernelRoute};

/// The protocol number of the routes `gre daemon` puts into the kernel (NHRP's peers and
/// shortcuts), which it does not mirror back: 47, GRE's IP protocol number, which no routing
/// suite claims.
pub const RTPROT_GRE: u8 = 47;

/// The kernel table NHRP's routes go into (numbered as the protocol). Not the main table: a
/// host route for a peer there would hide the tunnel's connected subnet from routing daemons,
/// and zebra resolves an IGP's next hops only through connected routes (OSPF's routes via the
/// spokes went inactive); a shortcut there would replace the BGP route of its prefix in zebra's
/// RIB. A daemon takes them in when asked: FRR's `ip import-table 47`, BIRD's kernel protocol
/// on `kernel table 47`.
pub const NHRP_TABLE: u32 = 47;

/// The kernel's own routes (connected subnets).
const RTPROT_KERNEL: u8 = 2;

/// What the kernel routes into a multipoint tunnel: prefix → the route it uses.
pub type Wanted = HashMap<IpNet, Choice>;

/// The kernel's route for a prefix: into tunnel `id` toward `via`. Which route it was (its
/// protocol and metric) counts as a change too: when a static route of ours goes, the routing
/// daemon's route of the same prefix and next hop is written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub id: u32,
    pub via: Option<IpAddr>,
    pub protocol: u8,
    pub priority: u32,
}

/// The kernel's routes into multipoint tunnels, as last read.
#[derive(Debug, Default)]
pub struct Mirror {
    wanted: Wanted,
}

impl Mirror {
    /// Takes over what an earlier daemon mirrored (kept in the pinned route table).
    #[must_use]
    pub fn load(maps: &Maps) -> Self {
        Self { wanted: maps.kernel_routes().into_iter().map(|(net, id, via)| (net, Choice { id, via, protocol: 0, priority: 0 })).collect() }
    }

    /// Brings the datapath's table to what the kernel routes now: one lookup per prefix that
    /// changed, none for the rest.
    pub fn sync(&mut self, maps: &mut Maps, kernel: &[KernelRoute], tunnels: &[(u32, Tunnel)]) {
        let wanted = wanted(kernel, tunnels);
        for (prefix, old) in &self.wanted {
            if wanted.get(prefix) != Some(old) && ours(maps, *prefix) {
                maps.remove_route(*prefix);
                info!("tunnel {}: kernel route {prefix} gone", old.id);
            }
        }
        for (prefix, new) in &wanted {
            if self.wanted.get(prefix) != Some(new) {
                write(maps, *prefix, *new);
            }
        }
        self.wanted = wanted;
    }

    /// A configured route or a shortcut at `prefix` went: the kernel's route there, if any,
    /// takes its place.
    pub fn restore(&self, maps: &mut Maps, prefix: IpNet) {
        if let Some(w) = self.wanted.get(&prefix)
            && free(maps, prefix)
        {
            write(maps, prefix, *w);
        }
    }
}

/// Writes a kernel route into the datapath's table unless a configured route or a shortcut
/// holds the prefix.
fn write(maps: &mut Maps, prefix: IpNet, Choice { id, via, .. }: Choice) {
    match maps.route_at(prefix) {
        Some((_, flags, _)) if flags & route_flags::KERNEL == 0 => {}
        Some((rid, _, rvia)) if (rid, rvia) == (id, via) => {}
        _ => match maps.add_kernel_route(prefix, id, via) {
            Ok(()) => info!("tunnel {id}: kernel route {prefix}{}", via.map_or_else(String::new, |v| format!(" via {v}"))),
            Err(e) => warn!("tunnel {id}: {e:#}"),
        },
    }
}

/// Whether the entry at `prefix` is a mirrored kernel route.
fn ours(maps: &Maps, prefix: IpNet) -> bool {
    maps.route_at(prefix).is_some_and(|(_, flags, _)| flags & route_flags::KERNEL != 0)
}

/// Whether nothing is at `prefix` (a shortcut or configured route that held it went).
fn free(maps: &Maps, prefix: IpNet) -> bool {
    maps.route_at(prefix).is_none()
}

/// The kernel's unicast routes of the main table out of a multipoint tunnel's netdev, but
/// our own: the lowest metric per prefix. A gateway of the other family (an IPv4 route via an
/// IPv6 next hop) has no peer to match and is left out; so are link-local prefixes.
#[must_use]
pub fn wanted(kernel: &[KernelRoute], tunnels: &[(u32, Tunnel)]) -> Wanted {
    let netdevs: HashMap<u32, u32> = tunnels.iter().filter(|(_, t)| t.flags & tunnel_flags::MULTIPOINT != 0).map(|(id, t)| (t.netdev_ifindex, *id)).collect();
    let link_local: IpNet = IpNet::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10).unwrap_or_default();
    let mut best: HashMap<IpNet, Choice> = HashMap::new();
    for r in kernel {
        let Some(&id) = r.oif.and_then(|o| netdevs.get(&o)) else { continue };
        // The tunnel's own subnet (a connected route) says what the datapath does without a
        // route: the destination is the overlay next hop.
        let connected = r.protocol == RTPROT_KERNEL && r.gateway.is_none();
        if r.kind != crate::netdev::RTN_UNICAST
            || r.table != crate::netdev::MAIN_TABLE
            || r.protocol == RTPROT_GRE
            || connected
            || link_local.contains(&r.prefix)
            || r.gateway.is_some_and(|g| g.is_ipv4() != r.prefix.addr().is_ipv4())
        {
            continue;
        }
        let choice = Choice { id, via: r.gateway, protocol: r.protocol, priority: r.priority };
        let e = best.entry(r.prefix).or_insert(choice);
        if r.priority < e.priority {
            *e = choice;
        }
    }
    best
}

/// Whether the kernel routes `target` into netdev `ifindex` (its longest matching route of the
/// main table goes there), our own exported routes left out: a shortcut toward `target` is of
/// use only while it does.
#[must_use]
pub fn routed_into(kernel: &[KernelRoute], ifindex: u32, target: IpAddr) -> bool {
    kernel
        .iter()
        .filter(|r| r.kind == crate::netdev::RTN_UNICAST && r.table == crate::netdev::MAIN_TABLE && r.protocol != RTPROT_GRE && r.prefix.contains(&target))
        .max_by_key(|r| (r.prefix.prefix_len(), std::cmp::Reverse(r.priority)))
        .is_some_and(|r| r.oif == Some(ifindex))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, oif: u32, gw: Option<&str>, protocol: u8, priority: u32) -> KernelRoute {
        KernelRoute {
            prefix: prefix.parse().unwrap(),
            oif: Some(oif),
            gateway: gw.map(|g| g.parse().unwrap()),
            protocol,
            kind: crate::netdev::RTN_UNICAST,
            priority,
            table: crate::netdev::MAIN_TABLE,
        }
    }

    fn tunnels() -> Vec<(u32, Tunnel)> {
        let mp = Tunnel { flags: tunnel_flags::MULTIPOINT, netdev_ifindex: 7, ..Tunnel::default() };
        let p2p = Tunnel { netdev_ifindex: 8, ..Tunnel::default() };
        vec![(0, mp), (1, p2p)]
    }

    #[test]
    fn mirrors_the_lowest_metric_route_into_a_multipoint_netdev_only() {
        let kernel = [
            route("10.1.0.0/24", 7, Some("203.0.113.2"), 186, 20),
            route("10.1.0.0/24", 7, Some("203.0.113.254"), 186, 200),
            route("10.2.0.0/24", 8, Some("203.0.113.9"), 186, 20),
            route("10.3.0.0/24", 3, Some("198.51.100.1"), 186, 20),
            route("10.4.0.0/24", 7, Some("203.0.113.3"), RTPROT_GRE, 20),
            route("203.0.113.0/24", 7, None, 2, 0),
            route("fe80::/64", 7, None, 2, 256),
            route("10.5.0.0/24", 7, Some("2001:db8::1"), 186, 20),
        ];
        let w = wanted(&kernel, &tunnels());
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[&"10.1.0.0/24".parse().unwrap()], Choice { id: 0, via: Some("203.0.113.2".parse().unwrap()), protocol: 186, priority: 20 });
    }

    #[test]
    fn a_target_is_routed_into_the_netdev_by_its_longest_route() {
        let kernel =
            [route("0.0.0.0/0", 3, Some("198.51.100.1"), 3, 0), route("10.1.0.0/16", 7, Some("203.0.113.254"), 186, 20), route("10.1.5.0/24", 4, None, 2, 0)];
        assert!(routed_into(&kernel, 7, "10.1.0.9".parse().unwrap()));
        assert!(!routed_into(&kernel, 7, "10.1.5.9".parse().unwrap()));
        assert!(!routed_into(&kernel, 7, "10.9.0.1".parse().unwrap()));
    }
}
