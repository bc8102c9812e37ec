//! The NHRP side of `gre daemon`: one [`Engine`] per multipoint tunnel with an NHRP role, fed with
//! what the datapath hands over (NHRP packets, resolution requests) and a clock, and whose actions
//! become GRE packets on the wire and entries in the peer table.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use gre_common::{
    addr, gre,
    maps::{Event, NHRP_TYPES, Peer, Tunnel, TunnelState, event_kind, nhrp_role, peer_flags, peer_kind, route_flags, tunnel_flags, tunnel_state},
};
use log::{debug, info, warn};
use socket2::{Domain, Protocol, Socket, Type};

use super::{
    engine::{Action, Binding, Engine, Limits, Nhs, Settings, Tables},
    wire::Packet,
};
use crate::{
    maps::{Maps, show_addr, store_addr},
    netdev,
};

pub struct Agent {
    /// One engine per tunnel and overlay family (IPv4 NHRP and IPv6 NHRP run side by side, as
    /// FRR's `ip nhrp` and `ipv6 nhrp`): keyed by (tunnel, IPv6 overlay).
    pub(super) engines: HashMap<(u32, bool), Engine>,
    /// Phase 3 shortcuts installed: (tunnel, prefix, peer). They go with their peer.
    pub(super) shortcuts: Vec<(u32, ipnet::IpNet, IpAddr)>,
    /// When each dynamic peer was learned (monotonic seconds), for its up time.
    pub(super) learned: HashMap<(u32, IpAddr), u64>,
    /// The dynamic peers by when they expire (monotonic seconds), and the other way round:
    /// the clock's work each second is what is due, not a walk of the peer table.
    expiry: std::collections::BTreeSet<(u64, u32, IpAddr)>,
    expires: HashMap<(u32, IpAddr), u64>,
    /// The kernel's routes, read again when netlink says they changed: what we are the exit
    /// for, and what steers the multipoint tunnels.
    kernel_routes: Vec<netdev::KernelRoute>,
    pub(super) mirror: crate::kernel_routes::Mirror,
    /// NHRP's routes in the kernel, for routing daemons to redistribute: (netdev, prefix, via).
    exported: HashSet<(u32, ipnet::IpNet, Option<IpAddr>)>,
    /// Whether the peers changed, or an export was left over, since the last comparison; and
    /// the shortcuts it was made with.
    export_stale: bool,
    exported_shortcuts: Vec<(u32, ipnet::IpNet, IpAddr)>,
    /// NBMA addresses of new multicast peers whose underlay next hop is to be kept resolved.
    wanted_hops: Vec<IpAddr>,
    /// Underlay neighbours kept resolved (ours, or there before us): (ifindex, address).
    kept: HashSet<(u32, IpAddr)>,
    handle: rtnetlink::Handle,
    /// Where who-was-told is kept across a restart.
    state_file: std::path::PathBuf,
    /// Protected tunnels' SAs: a peer learned by resolution is used once its SA is up.
    ipsec: Option<crate::ipsec::Link>,
    /// The (tunnel, peer) pairs with an SA at the last look, and peers installed on an SA
    /// since: an SA that goes takes its peers with it.
    secured: HashSet<(String, IpAddr)>,
}

/// A tunnel's registrations with its NHSs, over its engines.
#[derive(Default)]
struct ClientState {
    up: bool,
    answering: u32,
    preferred: Option<IpAddr>,
}

/// One station told of a registration, as saved across a restart.
#[derive(serde::Serialize, serde::Deserialize)]
struct Told {
    tunnel: u32,
    target: IpAddr,
    requester: IpAddr,
    nbma: IpAddr,
}

/// What carrying out actions left to do later.
#[derive(Default)]
struct Applied {
    shortcuts: Vec<(u32, ipnet::IpNet, IpAddr)>,
    multicast_nbmas: Vec<IpAddr>,
    /// Peers new in the table.
    new_peers: Vec<(u32, IpAddr)>,
    /// Dynamic peers set (with when they expire) or removed.
    expiry: Vec<((u32, IpAddr), Option<u64>)>,
    /// Shortcuts the NHS purged: a kernel route may take their place.
    purged: Vec<ipnet::IpNet>,
}

/// NHRP routes added to or deleted from the kernel per tick, at most.
const EXPORTS_PER_TICK: usize = 2048;

impl Agent {
    /// An engine for every tunnel with an NHRP role. A spoke's NHS NBMA address comes from the
    /// static peer of its `nhs`; our overlay address from the tunnel netdev.
    ///
    /// # Errors
    /// The maps or netlink cannot be read.
    pub async fn new(maps: &mut Maps, state_file: std::path::PathBuf) -> Result<Self> {
        let handle = netdev::connect()?;
        let peers = maps.peers();
        let mut engines = HashMap::new();
        for (id, t) in maps.tunnels()? {
            if t.nhrp_role == nhrp_role::NONE {
                continue;
            }
            let addresses = netdev::addresses(&handle, t.netdev_ifindex).await?;
            // The first address of each family on the tunnel netdev (IPv6: not link-local).
            let subnets: Vec<ipnet::IpNet> =
                [false, true].into_iter().filter_map(|v6| addresses.iter().find(|n| n.addr().is_ipv6() == v6 && !is_link_local(n.addr())).copied()).collect();
            if subnets.is_empty() {
                warn!("tunnel {id}: no address on the tunnel netdev; NHRP not started");
            }
            for subnet in subnets {
                let engine = engine_for(id, &t, subnet, &peers);
                engines.insert((id, subnet.addr().is_ipv6()), engine);
            }
        }
        // Who was told of them, as the previous daemon saved it.
        if let Ok(saved) = std::fs::read(&state_file) {
            let told: Vec<Told> = serde_json::from_slice(&saved).unwrap_or_default();
            for t in told {
                if let Some(e) = engines.get_mut(&(t.tunnel, t.target.is_ipv6())) {
                    e.restore_told(t.target, t.requester, t.nbma);
                }
            }
            let _ = std::fs::remove_file(&state_file);
        }
        // Shortcuts stay with their peers; those whose peer has gone are stale.
        let mut shortcuts = Vec::new();
        for (net, id, via) in maps.shortcut_routes() {
            match via {
                Some(v) if maps.peer(id, v).is_some() => shortcuts.push((id, net, v)),
                _ => {
                    info!("tunnel {id}: stale shortcut {net} removed");
                    maps.remove_route(net);
                }
            }
        }
        let kept = maps.neighbours().into_iter().collect();
        let kernel_routes = netdev::kernel_routes(&handle, crate::kernel_routes::NHRP_TABLE).await?;
        let mut mirror = crate::kernel_routes::Mirror::load(maps);
        // What an earlier daemon exported: compared with what NHRP holds at the first tick.
        let exported = kernel_routes
            .iter()
            .filter(|r| r.table == crate::kernel_routes::NHRP_TABLE && r.protocol == crate::kernel_routes::RTPROT_GRE)
            .filter_map(|r| Some((r.oif?, r.prefix, r.gateway)))
            .collect();
        mirror.sync(maps, &kernel_routes, &maps.tunnels()?);
        let mut agent = Self {
            engines,
            shortcuts,
            learned: HashMap::new(),
            expiry: std::collections::BTreeSet::new(),
            expires: HashMap::new(),
            kernel_routes,
            mirror,
            exported,
            export_stale: true,
            exported_shortcuts: Vec::new(),
            wanted_hops: Vec::new(),
            kept,
            handle,
            state_file,
            ipsec: None,
            secured: HashSet::new(),
        };
        for (id, overlay, p) in maps.peers() {
            if p.kind != peer_kind::STATIC && p.expires != 0 {
                agent.schedule((id, overlay), Some(p.expires));
            }
        }
        Ok(agent)
    }

    /// Every second: registrations, expiries, the state of each spoke's NHS.
    ///
    /// # Errors
    /// The maps cannot be read or written.
    pub fn tick(&mut self, maps: &mut Maps, sender: &Socket, now: u64) -> Result<()> {
        self.drop_unsecured(maps);
        // Dynamic entries past their holding time go (what is due, not a walk of the table).
        while let Some(&(at, id, overlay)) = self.expiry.first()
            && at <= now
        {
            self.expiry.pop_first();
            self.expires.remove(&(id, overlay));
            self.export_stale = true;
            if let Some(p) = maps.peer(id, overlay).filter(|p| p.kind != peer_kind::STATIC && p.expires != 0 && p.expires <= now) {
                info!("tunnel {id}: peer {overlay} ({}) expired", show_addr(&p.nbma));
                maps.remove_peer(id, overlay);
                self.learned.remove(&(id, overlay));
            }
        }
        // A shortcut whose peer is gone goes too: traffic returns to the NHS.
        let mirror = &self.mirror;
        self.shortcuts.retain(|(id, prefix, via)| {
            let alive = maps.peer(*id, *via).is_some();
            if !alive {
                info!("tunnel {id}: shortcut {prefix} via {via} removed with its peer");
                maps.remove_route(*prefix);
                mirror.restore(maps, *prefix);
            }
            alive
        });
        let tunnels: HashMap<u32, Tunnel> = maps.tunnels()?.into_iter().collect();
        let mut applied = Applied::default();
        let used_since = crate::clock::monotonic_ns();
        let mut clients: HashMap<u32, ClientState> = HashMap::new();
        for ((id, _), engine) in &mut self.engines {
            let Some(t) = tunnels.get(id) else { continue };
            let mut actions = engine.tick(now);
            // A binding still in use is resolved again in the last third of its holding time
            // (as FRR renews used shortcuts), so that a shortcut does not lapse back to the hub.
            if !engine.settings.server {
                let hold = u64::from(engine.settings.holdtime);
                let until = now + (hold / 3).max(2);
                let due = self.expiry.range((now, *id, IpAddr::from([0u8; 4]))..=(until, *id, IpAddr::from([0xffu8; 16])));
                for (_, pid, overlay) in due {
                    let used = maps
                        .peer(*pid, *overlay)
                        .is_some_and(|p| p.kind == peer_kind::DYNAMIC && p.used_ns != 0 && used_since.saturating_sub(p.used_ns) < hold * 1_000_000_000);
                    if pid == id && overlay.is_ipv6() == engine.settings.overlay.is_ipv6() && used {
                        actions.extend(engine.resolve(*overlay, now));
                    }
                }
            }
            apply(maps, sender, *id, t, actions, now, &mut applied, engine.registrations());
            if !engine.settings.nhs.is_empty() {
                let c = clients.entry(*id).or_default();
                c.up |= engine.nhs_up();
                // Which NHSs answer, by their slot in the tunnel's list.
                c.answering |= engine
                    .nhs_links()
                    .iter()
                    .filter(|l| l.up)
                    .filter_map(|l| t.nhs_list.iter().position(|a| show_addr(a) == l.nhs.overlay))
                    .fold(0u32, |m, i| m | 1 << i);
                // The IPv4 engine's choice first: one NHS takes the unresolved traffic of both.
                if c.preferred.is_none() || !engine.settings.overlay.is_ipv6() {
                    c.preferred = engine.preferred_nhs().map(|n| n.overlay);
                }
            }
        }
        for (id, c) in clients {
            let Some(t) = tunnels.get(&id) else { continue };
            let mut s = maps.state(id)?;
            let wanted = if c.up { tunnel_state::UP } else { tunnel_state::DOWN };
            if s.state != wanted || s.nhs_up != c.answering {
                if s.state != wanted {
                    info!("tunnel {id}: NHS {}", tunnel_state::NAMES[wanted as usize]);
                    s.transitions += 1;
                    s.since = crate::clock::unix_secs();
                }
                s.state = wanted;
                s.nhs_up = c.answering;
                maps.set_state(id, &s)?;
            }
            // Unresolved traffic goes to the preferred NHS that answers.
            if let Some(best) = c.preferred
                && show_addr(&t.nhs) != best
            {
                info!("tunnel {id}: traffic to unresolved destinations goes to NHS {best} now");
                maps.set_tunnel_nhs(id, best)?;
            }
        }
        self.merge(maps, applied, now);
        Ok(())
    }

    /// Rereads the kernel's routes (after netlink announced a change, at most once a second):
    /// which destinations this node is the exit for; the routes into multipoint tunnels,
    /// mirrored into the datapath; and the shortcuts still of use (a shortcut goes when the
    /// kernel no longer routes its prefix into the tunnel: a routing daemon withdrew it).
    pub async fn refresh_kernel_routes(&mut self, maps: &mut Maps) {
        match netdev::kernel_routes(&self.handle, crate::kernel_routes::NHRP_TABLE).await {
            Ok(r) => self.kernel_routes = r,
            Err(e) => {
                warn!("{e:#}");
                return;
            }
        }
        let Ok(tunnels) = maps.tunnels() else { return };
        self.mirror.sync(maps, &self.kernel_routes, &tunnels);
        let netdev_of: HashMap<u32, u32> = tunnels.iter().map(|(id, t)| (*id, t.netdev_ifindex)).collect();
        let (kernel, mirror) = (&self.kernel_routes, &self.mirror);
        self.shortcuts.retain(|(id, prefix, via)| {
            let used = netdev_of.get(id).is_some_and(|&ifindex| crate::kernel_routes::routed_into(kernel, ifindex, prefix.addr()));
            if !used {
                info!("tunnel {id}: shortcut {prefix} via {via} removed: the kernel no longer routes it into the tunnel");
                maps.remove_route(*prefix);
                mirror.restore(maps, *prefix);
            }
            used
        });
    }

    /// NHRP's routes into the kernel (protocol 47, table 47), where FRR or BIRD can take them
    /// in and redistribute them, as FRR's nhrpd puts its own into zebra: a host route for each
    /// dynamic peer (a registered or resolved one) and each shortcut. Removed with them; at the
    /// first tick, what an earlier daemon left is brought in line.
    pub async fn export_routes(&mut self, maps: &Maps) {
        // Nothing to compare at most ticks: a hub with 10 000 spokes builds no set of them.
        if !self.export_stale && self.shortcuts == self.exported_shortcuts {
            return;
        }
        self.export_stale = false;
        self.exported_shortcuts.clone_from(&self.shortcuts);
        let Ok(tunnels) = maps.tunnels() else { return };
        let netdev_of: HashMap<u32, u32> =
            tunnels.iter().filter(|(_, t)| t.flags & tunnel_flags::MULTIPOINT != 0).map(|(id, t)| (*id, t.netdev_ifindex)).collect();
        let mut want: HashSet<(u32, ipnet::IpNet, Option<IpAddr>)> =
            self.expires.keys().filter_map(|(id, overlay)| Some((*netdev_of.get(id)?, ipnet::IpNet::from(*overlay), None))).collect();
        want.extend(self.shortcuts.iter().filter_map(|(id, p, via)| Some((*netdev_of.get(id)?, *p, Some(*via)))));
        // At most EXPORTS_PER_TICK changes a tick, 64 requests in flight: a hub that takes up
        // 10 000 registrations exports them over a few seconds without holding up its loop.
        let gone = self.exported.difference(&want).map(|e| (false, *e));
        let new = want.difference(&self.exported).map(|e| (true, *e));
        let mut batch: Vec<(bool, (u32, ipnet::IpNet, Option<IpAddr>))> = gone.chain(new).take(EXPORTS_PER_TICK + 1).collect();
        if batch.len() > EXPORTS_PER_TICK {
            batch.truncate(EXPORTS_PER_TICK);
            self.export_stale = true;
        }
        let handle = &self.handle;
        let done: Vec<_> = futures::stream::iter(batch)
            .map(|(add, (ifindex, prefix, via))| async move {
                (
                    add,
                    (ifindex, prefix, via),
                    netdev::nhrp_route(handle, add, prefix, ifindex, via, crate::kernel_routes::RTPROT_GRE, crate::kernel_routes::NHRP_TABLE).await,
                )
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (add, e, r) in done {
            match r {
                Ok(()) if add => {
                    self.exported.insert(e);
                }
                Ok(()) => {
                    self.exported.remove(&e);
                }
                Err(err) => {
                    warn!("{err:#}");
                    self.export_stale = true;
                }
            }
        }
    }

    /// Multicast replicas are cloned straight to the underlay next hop (replicate.rs), so the
    /// next hop of each new multicast peer is kept resolved by the kernel (a managed neighbour,
    /// recorded for `gre down` to remove), as `gre up` does for static ones.
    pub async fn keep_neighbours(&mut self, maps: &mut Maps) {
        for nbma in std::mem::take(&mut self.wanted_hops) {
            let (ifindex, hop) = match netdev::next_hop(&self.handle, nbma).await {
                Ok(h) => h,
                Err(e) => {
                    warn!("multicast peer at {nbma}: {e:#}");
                    continue;
                }
            };
            if !self.kept.insert((ifindex, hop)) {
                continue;
            }
            match netdev::manage_neighbour(&self.handle, ifindex, hop).await {
                Ok(true) => {
                    if let Err(e) = maps.record_neighbour(ifindex, hop) {
                        warn!("{e:#}");
                    }
                    debug!("keeping {hop} resolved for multicast to {nbma}");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!("multicast peer at {nbma}: {e:#}");
                    self.kept.remove(&(ifindex, hop));
                }
            }
        }
    }

    /// Takes what the datapath handed over since the last call.
    pub fn drain(&mut self, maps: &mut Maps, sender: &Socket, now: u64) {
        while let Some((id, _local, remote, _key, bytes)) = maps.next_nhrp() {
            self.receive(maps, sender, id, remote, &bytes, now);
        }
        while let Some(event) = maps.next_event() {
            self.event(maps, sender, &event, now);
        }
    }

    /// NHRP that reached the daemon's raw GRE socket: a protected tunnel's (decrypted by the
    /// kernel), or NHRP that arrived in fragments.
    pub fn receive_all(&mut self, maps: &mut Maps, sender: &Socket, packets: Vec<crate::reassembled::Nhrp>, now: u64) {
        for p in packets {
            self.receive(maps, sender, p.tunnel, p.remote, &p.bytes, now);
        }
    }

    fn receive(&mut self, maps: &mut Maps, sender: &Socket, id: u32, remote: IpAddr, bytes: &[u8], now: u64) {
        {
            let packet = match Packet::decode(bytes) {
                Ok(p) => p,
                Err(e) => {
                    debug!("tunnel {id}: NHRP from {remote}: {e}");
                    count(maps, id, |s| s.nhrp_errors += 1);
                    return;
                }
            };
            count(maps, id, |s| match type_index(packet.kind) {
                Some(i) => s.nhrp_rx[i] += 1,
                None => s.nhrp_errors += 1,
            });
            // IPv4 or IPv6 NHRP: the engine of the packet's protocol type.
            let v6 = packet.protocol_type == 0x86dd;
            let (Some(engine), Some(t)) = (self.engines.get_mut(&(id, v6)), maps.tunnel(id)) else { return };
            if !Packet::checksum_ok(bytes) {
                debug!("tunnel {id}: NHRP from {remote}: bad checksum");
                count(maps, id, |s| s.nhrp_errors += 1);
                return;
            }
            let peer = |overlay: IpAddr| maps.peer(id, overlay).filter(|p| p.kind != peer_kind::INCOMPLETE).map(|p| show_addr(&p.nbma));
            let route = |target: IpAddr| maps.route_via(id, target);
            let route_len = |target: IpAddr| maps.route_for(target).filter(|(rid, _, _)| *rid == id).map(|(_, len, _)| len);
            let local = |target: IpAddr| exit_for(&self.kernel_routes, t.netdev_ifindex, target);
            let actions = engine.receive(remote, &packet, now, &Tables { peer: &peer, route: &route, route_len: &route_len, local: &local });
            self.apply(maps, sender, (id, v6), &t, actions, now);
        }
    }

    fn event(&mut self, maps: &mut Maps, sender: &Socket, e: &Event, now: u64) {
        let (target, source) = (show_addr(&e.target), show_addr(&e.source));
        if target.is_ipv6() != source.is_ipv6() {
            return;
        }
        let key = (e.tunnel, target.is_ipv6());
        let Some(engine) = self.engines.get_mut(&key) else { return };
        let actions = match (e.kind, engine.settings.server) {
            (event_kind::RESOLUTION_WANTED, false) => {
                debug!("tunnel {}: resolving {target}", e.tunnel);
                engine.resolve(target, now)
            }
            (event_kind::TRAFFIC_INDICATION, true) => {
                // The source is a peer, or a host behind one (a route's `via`).
                let via = maps.route_via(e.tunnel, source);
                let nbma = [Some(source), via].into_iter().flatten().find_map(|hop| maps.peer(e.tunnel, hop).map(|p| show_addr(&p.nbma)));
                let Some(nbma) = nbma else { return };
                debug!("tunnel {}: relayed {source} -> {target}: Traffic Indication to {nbma}", e.tunnel);
                engine.indicate(source, nbma, target)
            }
            _ => return,
        };
        if let Some(t) = maps.tunnel(e.tunnel) {
            self.apply(maps, sender, key, &t, actions, now);
        }
    }
}

impl Agent {
    /// The daemon stops. For a restart nothing is withdrawn: registrations, bindings and
    /// shortcuts stay in the pinned maps for the next daemon, and who was told of which
    /// registration is saved beside them. With `purge` (the node leaves for good), clients
    /// withdraw their registrations.
    pub fn shutdown(&mut self, maps: &mut Maps, sender: &Socket, now: u64, purge: bool) {
        let Ok(tunnels) = maps.tunnels() else { return };
        for (id, t) in tunnels {
            for v6 in [false, true] {
                if purge && let Some(engine) = self.engines.get_mut(&(id, v6)) {
                    let actions = engine.withdraw();
                    self.apply(maps, sender, (id, v6), &t, actions, now);
                }
            }
        }
        let told: Vec<Told> = self
            .engines
            .iter()
            .flat_map(|((id, _), e)| e.told().into_iter().map(|(target, requester, nbma)| Told { tunnel: *id, target, requester, nbma }))
            .collect();
        if let Err(e) = std::fs::write(&self.state_file, serde_json::to_vec(&told).unwrap_or_default()) {
            warn!("saving NHRP state to {}: {e}", self.state_file.display());
        }
    }

    fn apply(&mut self, maps: &mut Maps, sender: &Socket, key: (u32, bool), t: &Tunnel, actions: Vec<Action>, now: u64) {
        let mut applied = Applied::default();
        let none = HashMap::new();
        let regs = self.engines.get(&key).map_or(&none, Engine::registrations);
        let actions = match &self.ipsec {
            Some(link) if t.flags & tunnel_flags::PROTECTED != 0 => {
                let actions = gate(link, maps, key.0, t, actions, regs);
                let name = netdev::ifname(t.netdev_ifindex);
                self.secured.extend(actions.iter().filter_map(|a| match a {
                    Action::Peer { nbma, .. } => Some((name.clone(), *nbma)),
                    _ => None,
                }));
                actions
            }
            _ => actions,
        };
        apply(maps, sender, key.0, t, actions, now, &mut applied, regs);
        self.merge(maps, applied, now);
    }

    /// Protected tunnels' SAs: the daemon's link to the task that drives charon.
    pub fn set_ipsec(&mut self, link: crate::ipsec::Link) {
        self.ipsec = Some(link);
    }

    /// What charon last reported of the SAs.
    pub(super) fn ipsec_status(&self) -> Option<crate::ipsec::Status> {
        self.ipsec.as_ref().map(|l| l.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// charon's SAs changed: peers that lost theirs go.
    pub fn sa_changed(&mut self, maps: &mut Maps) {
        self.drop_unsecured(maps);
    }

    /// A protected tunnel's dynamic peers whose SA went down go, with their shortcuts: their
    /// traffic goes through the NHS again (registrations stay: the spoke brings its SA back).
    /// The peer table is walked only when an SA went.
    fn drop_unsecured(&mut self, maps: &mut Maps) {
        let Some(link) = &self.ipsec else { return };
        let now = {
            let status = link.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Until charon answered, the list says nothing.
            if status.charon.is_none() {
                return;
            }
            status.secured_pairs()
        };
        let lost: HashSet<(String, IpAddr)> = self.secured.difference(&now).cloned().collect();
        self.secured = now;
        if lost.is_empty() {
            return;
        }
        let Ok(tunnels) = maps.tunnels() else { return };
        let names: HashMap<u32, String> = tunnels
            .into_iter()
            .filter(|(_, t)| t.flags & tunnel_flags::PROTECTED != 0 && t.flags & tunnel_flags::MULTIPOINT != 0)
            .map(|(id, t)| (id, netdev::ifname(t.netdev_ifindex)))
            .collect();
        for (id, overlay, p) in maps.peers() {
            let nbma = show_addr(&p.nbma);
            let Some(name) = names.get(&id) else { continue };
            if p.kind != peer_kind::DYNAMIC || p.flags & peer_flags::REGISTERED != 0 || !lost.contains(&(name.clone(), nbma)) {
                continue;
            }
            info!("tunnel {id}: peer {overlay} ({nbma}) has no SA any more: through the NHS again");
            maps.remove_peer(id, overlay);
            self.schedule((id, overlay), None);
            self.learned.remove(&(id, overlay));
            for (net, rid, via) in maps.shortcut_routes() {
                if rid == id && via == Some(overlay) {
                    maps.remove_route(net);
                    self.mirror.restore(maps, net);
                }
            }
            self.shortcuts.retain(|(sid, _, via)| !(*sid == id && *via == overlay));
        }
    }

    /// Takes in what carrying out actions left to do.
    fn merge(&mut self, maps: &mut Maps, applied: Applied, now: u64) {
        for net in applied.purged {
            self.mirror.restore(maps, net);
        }
        for sc in applied.shortcuts {
            if !self.shortcuts.contains(&sc) {
                self.shortcuts.push(sc);
            }
        }
        self.wanted_hops.extend(applied.multicast_nbmas);
        for p in applied.new_peers {
            self.learned.insert(p, now);
        }
        for (key, at) in applied.expiry {
            self.schedule(key, at);
            if at.is_none() {
                self.learned.remove(&key);
            }
        }
    }

    /// Notes when a dynamic peer expires (None: it is gone).
    pub(super) fn schedule(&mut self, key: (u32, IpAddr), at: Option<u64>) {
        let had = self.expires.remove(&key);
        if let Some(old) = had {
            self.expiry.remove(&(old, key.0, key.1));
        }
        // A peer came or went (not a refreshed expiry): NHRP's routes are compared again.
        self.export_stale |= had.is_some() != at.is_some();
        if let Some(at) = at {
            self.expires.insert(key, at);
            self.expiry.insert((at, key.0, key.1));
        }
    }

    /// Carries out actions of tunnel `id`'s engine (for the control socket's changes).
    pub(super) fn carry_out(&mut self, maps: &mut Maps, sender: &Socket, key: (u32, bool), actions: Vec<Action>, now: u64) {
        if let Some(t) = maps.tunnel(key.0) {
            self.apply(maps, sender, key, &t, actions, now);
        }
    }
}

/// The engine of tunnel `id` for the family of `subnet` (the tunnel netdev's address), with the
/// NHSs of that family, and the registrations a previous daemon held taken up from the peer
/// table (a restart is not an outage).
fn engine_for(id: u32, t: &Tunnel, subnet: ipnet::IpNet, peers: &[(u32, IpAddr, Peer)]) -> Engine {
    let overlay = subnet.addr();
    let nbma = show_addr(&t.local);
    let nhs: Vec<Nhs> = t
        .nhs_list
        .iter()
        .zip(t.nhs_priority)
        .filter(|(a, _)| **a != [0; 16] && show_addr(a).is_ipv6() == overlay.is_ipv6())
        .filter_map(|(a, priority)| {
            let overlay = show_addr(a);
            let at = peers.iter().find(|(pid, o, _)| *pid == id && *o == overlay).map(|(_, _, p)| show_addr(&p.nbma));
            match at {
                Some(n) if n.is_ipv4() == nbma.is_ipv4() => Some(Nhs { overlay, nbma: n, priority }),
                _ => {
                    warn!("tunnel {id}: NHS {overlay} has no static peer entry with an NBMA address of the tunnel's family");
                    None
                }
            }
        })
        .collect();
    let auth = t.nhrp_auth.iter().position(|b| *b == 0).map_or(t.nhrp_auth.to_vec(), |n| t.nhrp_auth[..n].to_vec());
    let settings = Settings {
        server: t.nhrp_role == nhrp_role::NHS,
        overlay,
        subnet: subnet.trunc(),
        nbma,
        nhs,
        holdtime: t.nhrp_holdtime,
        auth: (!auth.is_empty()).then_some(auth),
        mtu: u16::try_from(t.mtu).unwrap_or(u16::MAX),
        limits: Limits::default(),
        first_id: random_id(),
    };
    let role = match (settings.server, settings.nhs.first()) {
        (true, Some(n)) => format!("server, registered with {}", n.overlay),
        (true, None) => "server".to_string(),
        (false, _) => "client".to_string(),
    };
    info!("tunnel {id}: NHRP network {} {role} as {overlay} ({nbma})", t.nhrp_network_id);
    let mut engine = Engine::new(settings);
    let now = crate::clock::monotonic_secs();
    let mut restored = 0;
    let registered = peers
        .iter()
        .filter(|(pid, o, p)| *pid == id && o.is_ipv6() == overlay.is_ipv6() && p.kind == peer_kind::DYNAMIC && p.flags & peer_flags::REGISTERED != 0);
    for (_, o, p) in registered {
        let nbma = show_addr(&p.nbma);
        let claimed = if p.claimed == [0; 16] { nbma } else { show_addr(&p.claimed) };
        engine.restore_registration(*o, Binding { nbma, claimed, unique: p.flags & peer_flags::UNIQUE != 0, expires: p.expires, since: now, mtu: 0 });
        restored += 1;
    }
    if restored > 0 {
        info!("tunnel {id}: {restored} registrations taken up from the peer table");
    }
    engine
}

fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The prefix length of the kernel route by which this node reaches `target` when that route
/// does not go into the tunnel netdev (the node is the exit: a LAN behind it). The default route
/// does not count: it would make every address ours.
fn exit_for(routes: &[netdev::KernelRoute], tunnel_ifindex: u32, target: IpAddr) -> Option<u8> {
    let r = routes.iter().filter(|r| r.table == netdev::MAIN_TABLE && r.oif.is_some() && r.prefix.contains(&target)).max_by_key(|r| r.prefix.prefix_len())?;
    (r.oif != Some(tunnel_ifindex) && r.prefix.prefix_len() > 0).then_some(r.prefix.prefix_len())
}

/// Carries out an engine's actions, noting what is left for later in `applied`; a peer that is
/// a registration (in `regs`) is marked so, with its uniqueness and claimed NBMA address.
#[allow(clippy::too_many_arguments)]
fn apply(maps: &mut Maps, sender: &Socket, id: u32, t: &Tunnel, actions: Vec<Action>, now: u64, applied: &mut Applied, regs: &HashMap<IpAddr, Binding>) {
    for a in actions {
        match a {
            Action::Send { to, kind, packet } => match send(sender, t, to, &packet) {
                Ok(()) => {
                    count(maps, id, |s| {
                        if let Some(i) = type_index(kind) {
                            s.nhrp_tx[i] += 1;
                        }
                    });
                }
                Err(e) => {
                    warn!("tunnel {id}: sending NHRP to {to}: {e:#}");
                    count(maps, id, |s| s.nhrp_errors += 1);
                }
            },
            Action::Peer { overlay, nbma, holdtime, multicast } => {
                let reg = regs.get(&overlay).filter(|b| b.nbma == nbma);
                let mut flags = if multicast { peer_flags::MULTICAST } else { 0 };
                if let Some(b) = reg {
                    flags |= peer_flags::REGISTERED | if b.unique { peer_flags::UNIQUE } else { 0 };
                }
                let peer = Peer {
                    nbma: store_addr(nbma),
                    kind: peer_kind::DYNAMIC,
                    flags,
                    expires: now + u64::from(holdtime),
                    claimed: reg.filter(|b| b.claimed != b.nbma).map_or([0; 16], |b| store_addr(b.claimed)),
                    ..Peer::default()
                };
                let existing = maps.peer(id, overlay);
                if existing.is_some_and(|p| p.kind == peer_kind::STATIC) {
                    continue;
                }
                if existing.is_none_or(|p| show_addr(&p.nbma) != nbma) {
                    info!("tunnel {id}: peer {overlay} is at {nbma} for {holdtime}s");
                    applied.new_peers.push((id, overlay));
                }
                if multicast && existing.is_none_or(|p| show_addr(&p.nbma) != nbma) {
                    applied.multicast_nbmas.push(nbma);
                }
                match maps.set_peer(id, overlay, &peer) {
                    Ok(()) => applied.expiry.push(((id, overlay), Some(peer.expires))),
                    Err(e) => warn!("tunnel {id}: {e:#}"),
                }
            }
            Action::Forget { overlay } => {
                if maps.peer(id, overlay).is_some_and(|p| p.kind != peer_kind::STATIC) {
                    info!("tunnel {id}: peer {overlay} purged");
                    maps.remove_peer(id, overlay);
                    applied.expiry.push(((id, overlay), None));
                }
            }
            Action::Withdraw { prefix } => {
                for (pid, overlay, p) in maps.peers() {
                    if pid == id && p.kind != peer_kind::STATIC && prefix.contains(&overlay) {
                        info!("tunnel {id}: peer {overlay} purged by the NHS ({prefix})");
                        maps.remove_peer(id, overlay);
                        applied.expiry.push(((id, overlay), None));
                    }
                }
                for (net, rid, _) in maps.shortcut_routes() {
                    if rid == id && prefix.contains(&net.addr()) && net.prefix_len() >= prefix.prefix_len() {
                        info!("tunnel {id}: shortcut {net} purged by the NHS");
                        maps.remove_route(net);
                        applied.purged.push(net);
                    }
                }
            }
            Action::Warn(what) => warn!("tunnel {id}: {what}"),
            Action::Shortcut { target, prefix, via } => {
                // A configured route of the same prefix stays; the shortcut narrows to the host.
                // A kernel route's is overridden (it comes back when the shortcut goes).
                let taken = |p: ipnet::IpNet| maps.route_at(p).is_some_and(|(_, flags, v)| flags & route_flags::KERNEL == 0 && v != Some(via));
                let prefix = if taken(prefix) { ipnet::IpNet::from(target) } else { prefix };
                if taken(prefix) {
                    continue;
                }
                match maps.add_shortcut(prefix, id, via) {
                    Ok(()) => {
                        info!("tunnel {id}: shortcut {prefix} via {via}");
                        applied.shortcuts.push((id, prefix, via));
                    }
                    Err(e) => warn!("tunnel {id}: {e:#}"),
                }
            }
        }
    }
}

/// A protected tunnel's actions, as far as their SAs allow: a peer learned by resolution is
/// installed once its SA is up (charon is asked for it meanwhile, and traffic keeps going
/// through the NHS: a later resolution finds the SA); a registration came through its SA, and a
/// shortcut needs its peer installed.
fn gate(link: &crate::ipsec::Link, maps: &Maps, id: u32, t: &Tunnel, actions: Vec<Action>, regs: &HashMap<IpAddr, Binding>) -> Vec<Action> {
    let name = netdev::ifname(t.netdev_ifindex);
    let status = link.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    actions
        .into_iter()
        .filter(|a| match a {
            Action::Peer { overlay, nbma, .. } => {
                if regs.get(overlay).is_some_and(|b| b.nbma == *nbma) || status.secured(&name, *nbma) {
                    return true;
                }
                if link.want.try_send(crate::ipsec::Want { tunnel: name.clone(), nbma: *nbma }).is_err() {
                    warn!("tunnel {id}: the IPsec task is busy; peer {overlay} waits for its SA");
                } else {
                    debug!("tunnel {id}: peer {overlay} at {nbma} waits for its SA");
                }
                false
            }
            Action::Shortcut { via, .. } => maps.peer(id, *via).is_some(),
            _ => true,
        })
        .collect()
}

/// NHRP over the tunnel's GRE: outer IP from our NBMA address, GRE with the tunnel's output
/// key and checksum and protocol type 0x2001, sent through a raw socket (the kernel routes it
/// to the underlay).
fn send(sender: &Socket, t: &Tunnel, to: IpAddr, nhrp: &[u8]) -> Result<()> {
    let gre = gre_payload(t, nhrp)?;
    let dst = match to {
        IpAddr::V4(dst) => dst,
        IpAddr::V6(dst) => return send6(t, dst, &gre),
    };
    let src = addr::to_v4(&t.local).context("an IPv6 tunnel sends to IPv6 NBMA addresses only")?;
    if t.flags & tunnel_flags::PROTECTED != 0 {
        return send_through_xfrm(src, dst, &gre);
    }
    let total = gre::IPV4_HLEN + gre.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p[6] = 0x40;
    p[8] = if t.ttl == 0 { 255 } else { t.ttl };
    p[9] = gre::IPPROTO_GRE;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst.octets());
    let c = gre::internet_checksum(&p[..gre::IPV4_HLEN]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[gre::IPV4_HLEN..].copy_from_slice(&gre);
    sender.send_to(&p, &SocketAddr::new(to, 0).into()).context("sendto")?;
    Ok(())
}

/// A protected tunnel's NHRP: through a raw GRE socket, so that xfrm's lookup sees protocol GRE
/// (a header-including raw socket's packets are looked up as protocol 255, which no GRE policy
/// selects: they would leave in clear text) and applies the tunnel's ESP policy or our block.
fn send_through_xfrm(src: [u8; 4], dst: std::net::Ipv4Addr, gre: &[u8]) -> Result<()> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(gre::IPPROTO_GRE)))).context("opening a raw GRE socket")?;
    s.bind(&SocketAddr::new(std::net::Ipv4Addr::from(src).into(), 0).into()).context("binding to the tunnel's local address")?;
    s.send_to(gre, &SocketAddr::new(dst.into(), 0).into()).context("sendto")?;
    Ok(())
}

/// The GRE header and NHRP: the output key, and the checksum over both when the tunnel sends
/// checksums (as its data does: a peer with `icsum` refuses GRE without one). The tunnel's
/// output sequence numbers belong to the datapath, so NHRP does not run with `oseq`.
fn gre_payload(t: &Tunnel, nhrp: &[u8]) -> Result<Vec<u8>> {
    let csum = t.flags & tunnel_flags::OCSUM != 0;
    let g = gre::Header {
        protocol: super::wire::GRE_PROTOCOL,
        key: (t.flags & tunnel_flags::OKEY != 0).then_some(t.okey),
        checksum: csum.then_some(0),
        ..gre::Header::default()
    };
    let mut p = vec![0u8; g.len() + nhrp.len()];
    let at = g.encode(&mut p).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    p[at..].copy_from_slice(nhrp);
    if csum {
        let c = gre::internet_checksum(&p);
        p[gre::BASE_LEN..gre::BASE_LEN + 2].copy_from_slice(&c.to_be_bytes());
    }
    Ok(p)
}

/// Over IPv6 the kernel writes the outer header (raw IPv6 sockets take no header): a socket of
/// protocol GRE bound to our NBMA address, with the tunnel's hop limit, per packet — NHRP is a
/// few packets a second at most.
fn send6(t: &Tunnel, dst: Ipv6Addr, gre: &[u8]) -> Result<()> {
    let IpAddr::V6(src) = show_addr(&t.local) else { anyhow::bail!("an IPv4 tunnel sends to IPv4 NBMA addresses only") };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(i32::from(gre::IPPROTO_GRE)))).context("opening a raw GRE/IPv6 socket")?;
    s.bind(&SocketAddr::new(src.into(), 0).into()).with_context(|| format!("binding to {src}"))?;
    s.set_unicast_hops_v6(if t.ttl == 0 { 255 } else { u32::from(t.ttl) })?;
    s.send_to(gre, &SocketAddr::new(dst.into(), 0).into()).context("sendto")?;
    Ok(())
}

/// A random first request ID, so that an off-path sender cannot guess the IDs in flight.
fn random_id() -> u32 {
    let mut b = [0u8; 4];
    if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)) {
        warn!("no random request IDs: {e}");
    }
    u32::from_ne_bytes(b)
}

/// The counter slot of NHRP packet type `kind`, if it is one we count.
fn type_index(kind: u8) -> Option<usize> {
    usize::from(kind).checked_sub(1).filter(|i| *i < NHRP_TYPES)
}

/// Updates tunnel `id`'s NHRP counters (the daemon is their only writer).
fn count(maps: &mut Maps, id: u32, f: impl FnOnce(&mut TunnelState)) {
    let r = maps.state(id).and_then(|mut s| {
        f(&mut s);
        maps.set_state(id, &s)
    });
    if let Err(e) = r {
        warn!("tunnel {id}: NHRP counters: {e:#}");
    }
}
