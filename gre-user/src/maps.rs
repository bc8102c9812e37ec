//! Typed access to one instance's maps, whether just loaded or opened from their pins.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray, RingBuf, lpm_trie::Key};
use gre_common::{
    addr, drop,
    maps::{
        EndpointKey, EndpointUse, Event, MAX_MULTICAST_PEERS, MulticastPeers, NbmaKey, NeighbourKey, NhrpPunt, Peer, PeerKey, PeerStats, RX_KEY_PRESENT,
        RX_TEB, Route, RxKey, Sequence, Tunnel, TunnelState, TunnelStats, names, peer_flags, peer_kind, route_flags, route_prefix_len, tunnel_flags,
    },
};

/// The datapath's maps.
pub struct Maps {
    tunnels: Array<MapData, Tunnel>,
    rx_match: HashMap<MapData, RxKey, u32>,
    endpoints: HashMap<MapData, EndpointKey, EndpointUse>,
    tx_by_ifindex: HashMap<MapData, u32, u32>,
    inject_ports: DevMapHash<MapData>,
    tunnel_stats: PerCpuArray<MapData, TunnelStats>,
    drops: PerCpuArray<MapData, u64>,
    neighbours: HashMap<MapData, NeighbourKey, u32>,
    routes: LpmTrie<MapData, [u8; 16], Route>,
    peers: HashMap<MapData, PeerKey, Peer>,
    nbma_peers: HashMap<MapData, NbmaKey, u32>,
    peer_stats: PerCpuHashMap<MapData, NbmaKey, PeerStats>,
    sequences: Array<MapData, Sequence>,
    multicast: Array<MapData, MulticastPeers>,
    tail_calls: ProgramArray<MapData>,
    ports: DevMapHash<MapData>,
    port_macs: HashMap<MapData, u32, [u8; 6]>,
    fib_changed: Array<MapData, u64>,
    state: Array<MapData, TunnelState>,
    events: RingBuf<MapData>,
    nhrp_punt: RingBuf<MapData>,
}

impl Maps {
    /// Loads the multicast replication program and puts it where the encapsulation tail-calls
    /// it.
    ///
    /// # Errors
    /// The program does not load or the map refuses it.
    pub fn install_tail_calls(&mut self, ebpf: &mut aya::Ebpf) -> Result<()> {
        let prog: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(gre_common::maps::programs::REPLICATE)
            .context("the eBPF object has no replication program")?
            .try_into()
            .context("the replication program has an unexpected type")?;
        crate::instance::load(|| prog.load()).context("loading the replication program")?;
        let fd = prog.fd().context("replication program")?;
        self.tail_calls.set(gre_common::maps::TAIL_REPLICATE, fd, 0).context("installing the replication program")?;
        Ok(())
    }

    /// Takes the maps out of a loaded object, pinning each under `pin_dir` if given.
    ///
    /// # Errors
    /// A map is missing from the object, has the wrong type, or cannot be pinned.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf, pin_dir: Option<&Path>) -> Result<Self> {
        // The pinned maps this side does not hold (their state must survive a reload).
        if let Some(dir) = pin_dir {
            for name in names::PINNED {
                if let Some(map) = ebpf.map(name) {
                    let path = dir.join(name);
                    map.pin(&path).with_context(|| format!("pinning map {name} at {}", path.display()))?;
                }
            }
        }
        let mut take = |name: &str| -> Result<Map> { ebpf.take_map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}")) };
        Self::from_parts(&mut take)
    }

    /// Opens the pinned maps of a running instance.
    ///
    /// # Errors
    /// A pin is missing (the instance is not up, or was made by another version) or unreadable.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let mut open = |name: &str| -> Result<Map> {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
        };
        Self::from_parts(&mut open)
    }

    fn from_parts(get: &mut dyn FnMut(&str) -> Result<Map>) -> Result<Self> {
        fn typed<T: TryFrom<Map, Error = MapError>>(name: &str, map: Map) -> Result<T> {
            T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
        }
        Ok(Self {
            tunnels: typed(names::TUNNELS, get(names::TUNNELS)?)?,
            rx_match: typed(names::RX_MATCH, get(names::RX_MATCH)?)?,
            endpoints: typed(names::ENDPOINTS, get(names::ENDPOINTS)?)?,
            tx_by_ifindex: typed(names::TX_BY_IFINDEX, get(names::TX_BY_IFINDEX)?)?,
            inject_ports: typed(names::INJECT_PORTS, get(names::INJECT_PORTS)?)?,
            tunnel_stats: typed(names::TUNNEL_STATS, get(names::TUNNEL_STATS)?)?,
            drops: typed(names::DROPS, get(names::DROPS)?)?,
            neighbours: typed(names::NEIGHBOURS, get(names::NEIGHBOURS)?)?,
            routes: typed(names::ROUTES, get(names::ROUTES)?)?,
            peers: typed(names::PEERS, get(names::PEERS)?)?,
            nbma_peers: typed(names::NBMA_PEERS, get(names::NBMA_PEERS)?)?,
            peer_stats: typed(names::PEER_STATS, get(names::PEER_STATS)?)?,
            sequences: typed(names::SEQUENCES, get(names::SEQUENCES)?)?,
            multicast: typed(names::MULTICAST, get(names::MULTICAST)?)?,
            tail_calls: typed(names::TAIL_CALLS, get(names::TAIL_CALLS)?)?,
            ports: typed(names::PORTS, get(names::PORTS)?)?,
            port_macs: typed(names::PORT_MACS, get(names::PORT_MACS)?)?,
            fib_changed: typed(names::FIB_CHANGED, get(names::FIB_CHANGED)?)?,
            state: typed(names::TUNNEL_STATE, get(names::TUNNEL_STATE)?)?,
            events: typed(names::EVENTS, get(names::EVENTS)?)?,
            nhrp_punt: typed(names::NHRP_PUNT, get(names::NHRP_PUNT)?)?,
        })
    }

    /// The first free tunnel slot.
    ///
    /// # Errors
    /// Every slot is taken (TUNNELS is full).
    pub fn free_tunnel_id(&self) -> Result<u32> {
        (0..gre_common::maps::MAX_TUNNELS)
            .find(|id| self.tunnels.get(id, 0).is_ok_and(|t| t.in_use == 0))
            .with_context(|| format!("TUNNELS is full: an instance holds at most {} tunnels", gre_common::maps::MAX_TUNNELS))
    }

    /// Removes tunnel `id`: the lookups first (no packet finds it any more), then its record,
    /// counters and state, so that a tunnel that takes the slot later starts from zero.
    ///
    /// # Errors
    /// The slot holds no tunnel, or a map refuses the change.
    pub fn uninstall_tunnel(&mut self, id: u32) -> Result<()> {
        let t = self.tunnels.get(&id, 0).ok().filter(|t| t.in_use != 0).with_context(|| format!("tunnel slot {id} is empty"))?;
        let _ = self.tx_by_ifindex.remove(&t.netdev_ifindex);
        let _ = self.tx_by_ifindex.remove(&t.inject_ifindex);
        let _ = self.rx_match.remove(&rx_key(&t));
        let _ = self.inject_ports.remove(id);
        self.tunnels.set(id, Tunnel::default(), 0).with_context(|| format!("clearing tunnel {id}"))?;
        self.count_endpoints(&t)?;
        let zero = PerCpuValues::try_from(vec![TunnelStats::default(); aya::util::nr_cpus().map_err(|(_, e)| e)?])?;
        self.tunnel_stats.set(id, zero, 0).with_context(|| format!("clearing the counters of tunnel {id}"))?;
        self.state.set(id, TunnelState::default(), 0).with_context(|| format!("clearing the state of tunnel {id}"))?;
        let _ = self.multicast.set(id, MulticastPeers::default(), 0);
        self.sequences.set(id, Sequence::default(), 0).with_context(|| format!("clearing the sequence numbers of tunnel {id}"))?;
        Ok(())
    }

    /// Installs tunnel `id`: parameters first, then the lookups that make the datapath use it, so
    /// no packet ever finds a half-written tunnel.
    ///
    /// # Errors
    /// A map is full or rejects the entry; the message says which.
    pub fn install_tunnel(&mut self, id: u32, t: &Tunnel) -> Result<()> {
        if self.tunnels.get(&id, 0).is_ok_and(|old| old.in_use != 0) {
            bail!("tunnel slot {id} is in use");
        }
        let t = Tunnel { in_use: 1, ..*t };
        self.tunnels.set(id, t, 0).with_context(|| format!("writing tunnel {id} (TUNNELS is full?)"))?;
        self.inject_ports.insert(id, t.inject_ifindex, None, 0).with_context(|| format!("adding injection port {} for tunnel {id}", t.inject_ifindex))?;
        let rx = rx_key(&t);
        self.rx_match.insert(rx, id, 0).with_context(|| full("RX_MATCH", id))?;
        self.count_endpoints(&t).with_context(|| full("ENDPOINTS", id))?;
        self.tx_by_ifindex.insert(t.netdev_ifindex, id, 0).with_context(|| full("TX_BY_IFINDEX", id))?;
        if segments(&t) {
            self.tx_by_ifindex.insert(t.inject_ifindex, id, 0).with_context(|| full("TX_BY_IFINDEX", id))?;
        }
        Ok(())
    }

    /// Recounts the users of `t`'s endpoint pair and of its local endpoint (`remote` any) from
    /// the tunnels in use: entries without users go, and a pair used by one tunnel names it.
    fn count_endpoints(&mut self, t: &Tunnel) -> Result<()> {
        let tunnels = self.tunnels()?;
        for remote in [t.remote, [0; 16]] {
            let key = EndpointKey { local: t.local, remote };
            let users: Vec<u32> = tunnels.iter().filter(|(_, u)| u.local == t.local && (remote == [0; 16] || u.remote == remote)).map(|(id, _)| *id).collect();
            match users.as_slice() {
                [] => {
                    let _ = self.endpoints.remove(&key);
                }
                [one] => self.endpoints.insert(key, EndpointUse { users: 1, tunnel: *one }, 0)?,
                more => self.endpoints.insert(key, EndpointUse { users: u32::try_from(more.len())?, tunnel: u32::MAX }, 0)?,
            }
        }
        Ok(())
    }

    /// Every tunnel in use, by id.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn tunnels(&self) -> Result<Vec<(u32, Tunnel)>> {
        let mut out = Vec::new();
        for (id, t) in (0..self.tunnels.len()).zip(self.tunnels.iter()) {
            let t = t.context("reading TUNNELS")?;
            if t.in_use != 0 {
                out.push((id, t));
            }
        }
        Ok(out)
    }

    /// A tunnel's counters, summed over CPUs.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn tunnel_stats(&self, id: u32) -> Result<TunnelStats> {
        let mut sum = TunnelStats::default();
        for s in self.tunnel_stats.get(&id, 0).context("reading TUNNEL_STATS")?.iter() {
            sum.add(s);
        }
        Ok(sum)
    }

    /// Drops by reason name, summed over CPUs, in reason order.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn drops(&self) -> Result<Vec<(&'static str, u64)>> {
        (0..drop::COUNT)
            .map(|r| {
                let per_cpu = self.drops.get(&r, 0).context("reading DROPS")?;
                Ok((drop::NAMES[r as usize], per_cpu.iter().sum()))
            })
            .collect()
    }
}

impl Maps {
    /// The next event from the datapath, if any is waiting.
    pub fn next_event(&mut self) -> Option<Event> {
        let item = self.events.next()?;
        let bytes: &[u8] = &item;
        (bytes.len() >= std::mem::size_of::<Event>())
            // SAFETY: the datapath writes whole Event records; read_unaligned copies one out.
            .then(|| unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() })
    }

    /// The next NHRP packet the datapath handed over: (tunnel id, outer local, outer remote,
    /// key, NHRP bytes).
    pub fn next_nhrp(&mut self) -> Option<(u32, std::net::IpAddr, std::net::IpAddr, Option<u32>, Vec<u8>)> {
        let item = self.nhrp_punt.next()?;
        let bytes: &[u8] = &item;
        if bytes.len() < std::mem::size_of::<NhrpPunt>() {
            return None;
        }
        // SAFETY: the datapath writes whole NhrpPunt records; read_unaligned copies one out.
        let p = unsafe { bytes.as_ptr().cast::<NhrpPunt>().read_unaligned() };
        let len = (p.len as usize).min(p.data.len());
        Some((p.tunnel, show_addr(&p.local), show_addr(&p.remote), (p.keyed != 0).then_some(p.key), p.data[..len].to_vec()))
    }

    /// The ring buffers' descriptors, to wait on.
    #[must_use]
    pub fn ring_fds(&self) -> [std::os::fd::RawFd; 2] {
        use std::os::fd::AsRawFd as _;
        [self.events.as_raw_fd(), self.nhrp_punt.as_raw_fd()]
    }

    /// What the daemon knows of tunnel `id`.
    ///
    /// # Errors
    /// The map cannot be read.
    pub fn state(&self, id: u32) -> Result<TunnelState> {
        self.state.get(&id, 0).context("reading TUNNEL_STATE")
    }

    /// Records what the daemon knows of tunnel `id`.
    ///
    /// # Errors
    /// The map cannot be written.
    pub fn set_state(&mut self, id: u32, s: &TunnelState) -> Result<()> {
        self.state.set(id, s, 0).context("writing TUNNEL_STATE")
    }

    /// The tunnel a received packet belongs to, as the datapath would match it.
    #[must_use]
    pub fn match_rx(&self, key: &RxKey) -> Option<(u32, Tunnel)> {
        let id = self.rx_match.get(key, 0).ok()?;
        let t = self.tunnels.get(&id, 0).ok()?;
        (t.in_use != 0).then_some((id, t))
    }

    /// The tunnel between `local` and `remote` when exactly one tunnel has those endpoints.
    #[must_use]
    pub fn sole_tunnel(&self, local: &gre_common::addr::Addr, remote: &gre_common::addr::Addr) -> Option<u32> {
        self.endpoints.get(&EndpointKey { local: *local, remote: *remote }, 0).ok().filter(|u| u.users == 1).map(|u| u.tunnel)
    }

    /// Whether `nbma` is the address of one of multipoint tunnel `id`'s peers.
    #[must_use]
    pub fn is_peer(&self, id: u32, nbma: &gre_common::addr::Addr) -> bool {
        self.nbma_peers.get(&NbmaKey { tunnel: id, pad0: 0, nbma: *nbma }, 0).is_ok()
    }

    /// `iseq` for a packet the daemon decapsulates: whether sequence number `n` is not older
    /// than the last the datapath accepted. Only read: writing the record back could undo the
    /// datapath's atomic transmit count, which shares it.
    #[must_use]
    pub fn sequence_acceptable(&self, id: u32, n: u32) -> bool {
        let Ok(s) = self.sequences.get(&id, 0) else { return false };
        #[expect(clippy::cast_possible_wrap, reason = "serial-number arithmetic (RFC 1982)")]
        let older = s.rx_next != 0 && (n.wrapping_sub(s.rx_next) as i32) < 0;
        !older
    }

    /// Adds an overlay route: `prefix` goes into tunnel `id`, toward the overlay next hop `via`
    /// (multipoint; by default the destination itself).
    ///
    /// # Errors
    /// The route table is full.
    pub fn add_route(&mut self, prefix: ipnet::IpNet, id: u32, via: Option<std::net::IpAddr>) -> Result<()> {
        self.add_route_flagged(prefix, id, via, 0)
    }

    /// Adds (or replaces) a phase 3 shortcut: a route that `gre daemon` installed.
    ///
    /// # Errors
    /// The route table is full.
    pub fn add_shortcut(&mut self, prefix: ipnet::IpNet, id: u32, via: std::net::IpAddr) -> Result<()> {
        self.add_route_flagged(prefix, id, Some(via), route_flags::SHORTCUT)
    }

    /// Adds (or replaces) a mirrored kernel route.
    ///
    /// # Errors
    /// The route table is full.
    pub fn add_kernel_route(&mut self, prefix: ipnet::IpNet, id: u32, via: Option<std::net::IpAddr>) -> Result<()> {
        self.add_route_flagged(prefix, id, via, route_flags::KERNEL)
    }

    fn add_route_flagged(&mut self, prefix: ipnet::IpNet, id: u32, via: Option<std::net::IpAddr>, flags: u32) -> Result<()> {
        let len = route_prefix_len(prefix.addr().is_ipv4(), prefix.prefix_len());
        let key = Key::new(len, store_addr(prefix.network()));
        let route = Route { tunnel: id, flags: flags | len << route_flags::LEN_SHIFT, nexthop: via.map_or([0; 16], store_addr) };
        self.routes.insert(&key, route, 0).with_context(|| format!("adding route {prefix} (ROUTES is full?)"))
    }

    /// The entry of exactly `prefix`, if there is one: (tunnel id, flags, next hop).
    #[must_use]
    pub fn route_at(&self, prefix: ipnet::IpNet) -> Option<(u32, u32, Option<std::net::IpAddr>)> {
        let len = route_prefix_len(prefix.addr().is_ipv4(), prefix.prefix_len());
        let r = self.routes.get(&Key::new(len, store_addr(prefix.network())), 0).ok()?;
        (route_flags::len(r.flags) == len).then(|| (r.tunnel, r.flags, (r.nexthop != [0; 16]).then(|| show_addr(&r.nexthop))))
    }

    /// The longest route toward `target`: (tunnel id, its prefix length, next hop). One
    /// lookup, as the datapath's.
    #[must_use]
    pub fn route_for(&self, target: std::net::IpAddr) -> Option<(u32, u8, Option<std::net::IpAddr>)> {
        let r = self.routes.get(&Key::new(128, store_addr(target)), 0).ok()?;
        let len = route_flags::len(r.flags);
        let len = if target.is_ipv4() { len.checked_sub(96)? } else { len };
        Some((r.tunnel, u8::try_from(len).ok()?, (r.nexthop != [0; 16]).then(|| show_addr(&r.nexthop))))
    }

    /// Removes an overlay route; false if there was none.
    pub fn remove_route(&mut self, prefix: ipnet::IpNet) -> bool {
        let key = Key::new(route_prefix_len(prefix.addr().is_ipv4(), prefix.prefix_len()), store_addr(prefix.network()));
        self.routes.remove(&key).is_ok()
    }

    /// The overlay routes: (prefix, tunnel id, next hop), shortcuts included.
    #[must_use]
    pub fn routes(&self) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
        self.routes_where(|_| true)
    }

    /// The overlay routes with their flags: (prefix, tunnel id, next hop, [`route_flags`]).
    #[must_use]
    pub fn routes_flagged(&self) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>, u32)> {
        self.routes
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, r)| {
                let (net, id, via) = route_of(&k, &r)?;
                Some((net, id, via, r.flags))
            })
            .collect()
    }

    /// The configured overlay routes (no shortcuts, no kernel routes).
    #[must_use]
    pub fn configured_routes(&self) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
        self.routes_where(|r| r.flags & (route_flags::SHORTCUT | route_flags::KERNEL) == 0)
    }

    /// The kernel's routes mirrored into the datapath.
    #[must_use]
    pub fn kernel_routes(&self) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
        self.routes_where(|r| r.flags & route_flags::KERNEL != 0)
    }

    /// The routes NHRP installed (phase 3 shortcuts).
    pub fn shortcut_routes(&self) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
        self.routes_where(|r| r.flags & route_flags::SHORTCUT != 0)
    }

    fn routes_where(&self, keep: impl Fn(&Route) -> bool) -> Vec<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
        self.routes.iter().filter_map(Result::ok).filter(|(_, r)| keep(r)).filter_map(|(k, r)| route_of(&k, &r)).collect()
    }

    /// Adds or replaces a peer of multipoint tunnel `id`, keeping the NBMA index right.
    ///
    /// # Errors
    /// The peer table is full.
    pub fn set_peer(&mut self, id: u32, overlay: std::net::IpAddr, peer: &Peer) -> Result<()> {
        let key = PeerKey { tunnel: id, pad0: 0, overlay: store_addr(overlay) };
        let mut peer = *peer;
        let old = self.peers.get(&key, 0).ok();
        if let Some(old) = old {
            // A refreshed registration keeps the datapath's record of use.
            peer.used_ns = peer.used_ns.max(old.used_ns);
        }
        self.peers.insert(key, peer, 0).with_context(|| format!("adding peer {overlay} (PEERS is full?)"))?;
        // The same NBMA address again (a refreshed registration) keeps its counters and stays
        // known to the datapath throughout; a moved peer releases the old one.
        match old {
            Some(o) if o.nbma == peer.nbma => return self.refresh_multicast_if(old, &peer, id),
            Some(o) => self.release_nbma(id, &o.nbma),
            None => {}
        }
        let nbma = NbmaKey { tunnel: id, pad0: 0, nbma: peer.nbma };
        let users = self.nbma_peers.get(&nbma, 0).unwrap_or(0);
        self.nbma_peers.insert(nbma, users + 1, 0).context("indexing the peer's NBMA address (NBMA_PEERS is full?)")?;
        if users == 0 && self.peer_stats.get(&nbma, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            // Per-CPU values come from a cache the kernel refills in the background: a burst of
            // new peers can find it empty for a moment (ENOMEM). Give it that moment.
            let mut tries = 0;
            loop {
                match self.peer_stats.insert(nbma, PerCpuValues::try_from(vec![PeerStats::default(); cpus])?, 0) {
                    Ok(()) => break,
                    Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOMEM) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => return Err(e).context("adding the peer's counters (PEER_STATS is full?)"),
                }
            }
        }
        self.refresh_multicast_if(old, &peer, id)
    }

    /// Registrations are refreshed every holdtime/3: rebuild the multicast list only when it can
    /// change. (A new peer outside the multicast list changes nothing: no walk of the whole
    /// table, which made adding N peers take N² steps.)
    fn refresh_multicast_if(&mut self, old: Option<Peer>, peer: &Peer, id: u32) -> Result<()> {
        let changed = match old {
            None => in_multicast(peer),
            Some(o) => in_multicast(&o) != in_multicast(peer) || o.nbma != peer.nbma && in_multicast(peer),
        };
        if changed {
            self.refresh_multicast(id)?;
        }
        Ok(())
    }

    /// Rebuilds tunnel `id`'s multicast list from its peers flagged multicast (distinct NBMA
    /// addresses, at most MAX_MULTICAST_PEERS; more are reported).
    fn refresh_multicast(&mut self, id: u32) -> Result<()> {
        let mut list = MulticastPeers::default();
        let mut n = 0;
        for (_, _, p) in self.peers().into_iter().filter(|(t, _, p)| *t == id && in_multicast(p)) {
            if list.nbma[..n].contains(&p.nbma) {
                continue;
            }
            if n == MAX_MULTICAST_PEERS {
                log::warn!("tunnel {id}: more than {MAX_MULTICAST_PEERS} multicast peers; the others get no multicast");
                break;
            }
            list.nbma[n] = p.nbma;
            n += 1;
        }
        list.count = u32::try_from(n).unwrap_or(0);
        self.multicast.set(id, list, 0).context("writing MULTICAST")
    }

    /// Removes a peer of multipoint tunnel `id`; false if there was none.
    pub fn remove_peer(&mut self, id: u32, overlay: std::net::IpAddr) -> bool {
        let key = PeerKey { tunnel: id, pad0: 0, overlay: store_addr(overlay) };
        let Ok(old) = self.peers.get(&key, 0) else { return false };
        self.release_nbma(id, &old.nbma);
        let removed = self.peers.remove(&key).is_ok();
        if in_multicast(&old)
            && let Err(e) = self.refresh_multicast(id)
        {
            log::warn!("{e:#}");
        }
        removed
    }

    fn release_nbma(&mut self, id: u32, nbma: &gre_common::addr::Addr) {
        let key = NbmaKey { tunnel: id, pad0: 0, nbma: *nbma };
        match self.nbma_peers.get(&key, 0) {
            Ok(n) if n > 1 => {
                let _ = self.nbma_peers.insert(key, n - 1, 0);
            }
            _ => {
                let _ = self.nbma_peers.remove(&key);
                let _ = self.peer_stats.remove(&key);
            }
        }
    }

    /// The counters of the peer at `nbma` of tunnel `id`, summed over CPUs (zero if none).
    #[must_use]
    pub fn peer_stats(&self, id: u32, nbma: &gre_common::addr::Addr) -> PeerStats {
        let key = NbmaKey { tunnel: id, pad0: 0, nbma: *nbma };
        self.peer_stats.get(&key, 0).map_or_else(
            |_| PeerStats::default(),
            |v| {
                v.iter().fold(PeerStats::default(), |a, s| PeerStats {
                    rx_packets: a.rx_packets + s.rx_packets,
                    rx_bytes: a.rx_bytes + s.rx_bytes,
                    tx_packets: a.tx_packets + s.tx_packets,
                    tx_bytes: a.tx_bytes + s.tx_bytes,
                })
            },
        )
    }

    /// Tunnel `id`, if the slot holds one.
    #[must_use]
    pub fn tunnel(&self, id: u32) -> Option<Tunnel> {
        self.tunnels.get(&id, 0).ok().filter(|t| t.in_use != 0)
    }

    /// Sets the MTU the datapath holds for tunnel `id` (what the fast paths may carry, what the
    /// tunnel netdev takes). Only that field changes, so a reader never sees another one move.
    ///
    /// # Errors
    /// The slot holds no tunnel or the map refuses the write.
    pub fn set_tunnel_mtu(&mut self, id: u32, mtu: u32) -> Result<()> {
        let t = self.tunnel(id).with_context(|| format!("tunnel slot {id} is empty"))?;
        self.tunnels.set(id, Tunnel { mtu, ..t }, 0).with_context(|| format!("writing tunnel {id}"))
    }

    /// Sets the NHS the datapath sends unresolved traffic to in tunnel `id` (only that field).
    ///
    /// # Errors
    /// The slot holds no tunnel or the map refuses the write.
    pub fn set_tunnel_nhs(&mut self, id: u32, nhs: std::net::IpAddr) -> Result<()> {
        let t = self.tunnel(id).with_context(|| format!("tunnel slot {id} is empty"))?;
        self.tunnels.set(id, Tunnel { nhs: store_addr(nhs), ..t }, 0).with_context(|| format!("writing tunnel {id}"))
    }

    /// The peer `overlay` of tunnel `id` (one lookup, not a walk of the table).
    #[must_use]
    pub fn peer(&self, id: u32, overlay: std::net::IpAddr) -> Option<Peer> {
        self.peers.get(&PeerKey { tunnel: id, pad0: 0, overlay: store_addr(overlay) }, 0).ok()
    }

    /// The overlay next hop the datapath would use toward `target` in tunnel `id`: the `via` of
    /// the longest matching route, if that route is the tunnel's and has one (as `next_hop` in
    /// the datapath).
    #[must_use]
    pub fn route_via(&self, id: u32, target: std::net::IpAddr) -> Option<std::net::IpAddr> {
        let r = self.routes.get(&Key::new(128, store_addr(target)), 0).ok()?;
        (r.tunnel == id && r.nexthop != [0; 16]).then(|| show_addr(&r.nexthop))
    }

    /// Every peer: (tunnel id, overlay address, entry).
    #[must_use]
    pub fn peers(&self) -> Vec<(u32, std::net::IpAddr, Peer)> {
        self.peers.iter().filter_map(Result::ok).map(|(k, p)| (k.tunnel, show_addr(&k.overlay), p)).collect()
    }

    /// Removes tunnel `id`'s injection port: its decapsulated packets are then dropped
    /// (`no_inject_port`).
    ///
    /// # Errors
    /// There is no such entry.
    pub fn remove_inject_port(&mut self, id: u32) -> Result<()> {
        self.inject_ports.remove(id).with_context(|| format!("removing the injection port of tunnel {id}"))
    }

    /// Marks every FIB answer the datapath holds as stale: the kernel's routes, neighbours,
    /// addresses or links changed (the datapath stamps its answers on the same clock).
    ///
    /// # Errors
    /// The map refuses the write.
    pub fn mark_fib_changed(&mut self) -> Result<()> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).context("reading the monotonic clock")?;
        let ns = u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec()).unwrap_or(0);
        self.fib_changed.set(0, ns, 0).context("writing FIB_CHANGED")
    }

    /// Lets the fast paths redirect to interface `ifindex`.
    ///
    /// # Errors
    /// The port map is full or the kernel refuses the interface.
    pub fn add_port(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        self.port_macs.insert(ifindex, mac, 0).with_context(|| format!("adding the MAC of port {ifindex} to PORT_MACS"))?;
        self.ports.insert(ifindex, ifindex, None, 0).with_context(|| format!("adding port {ifindex} to PORTS"))
    }

    /// The ports the fast paths may redirect to (underlay and LAN interfaces).
    #[must_use]
    pub fn ports(&self) -> Vec<u32> {
        self.ports.keys().filter_map(Result::ok).collect()
    }

    /// Records a managed neighbour made by `gre up`.
    ///
    /// # Errors
    /// The map is full.
    pub fn record_neighbour(&mut self, ifindex: u32, addr: std::net::IpAddr) -> Result<()> {
        let key = NeighbourKey { ifindex, pad0: 0, addr: store_addr(addr) };
        self.neighbours.insert(key, 1, 0).context("recording a managed neighbour (NEIGHBOURS is full?)")
    }

    /// The managed neighbours `gre up` made: (ifindex, address).
    #[must_use]
    pub fn neighbours(&self) -> Vec<(u32, std::net::IpAddr)> {
        self.neighbours.keys().filter_map(Result::ok).map(|k| (k.ifindex, show_addr(&k.addr))).collect()
    }
}

fn full(map: &str, id: u32) -> String {
    format!("adding tunnel {id} to {map} (is the map full?)")
}

/// The receive match of a tunnel: packets arrive from its remote to its local address.
#[must_use]
pub fn rx_key(t: &Tunnel) -> RxKey {
    let keyed = t.flags & tunnel_flags::IKEY != 0;
    let teb = if t.flags & tunnel_flags::TEB != 0 { RX_TEB } else { 0 };
    RxKey { local: t.local, remote: t.remote, key: if keyed { t.ikey } else { 0 }, flags: if keyed { RX_KEY_PRESENT | teb } else { teb } }
}

/// Display form of a stored address.
#[must_use]
pub fn show_addr(a: &addr::Addr) -> std::net::IpAddr {
    addr::to_v4(a).map_or_else(|| std::net::Ipv6Addr::from(*a).into(), |v4| std::net::Ipv4Addr::from(v4).into())
}

/// Stored form of an address.
#[must_use]
pub fn store_addr(ip: std::net::IpAddr) -> addr::Addr {
    match ip {
        std::net::IpAddr::V4(v4) => addr::from_v4(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Whether a peer belongs in its tunnel's multicast list.
fn in_multicast(p: &Peer) -> bool {
    p.flags & peer_flags::MULTICAST != 0 && p.kind != peer_kind::INCOMPLETE
}

/// Whether tunnel `t` encapsulates GSO packets segment by segment (each needs its own checksum
/// or sequence number): the kernel segments them on the tunnel netdev, and the encapsulation
/// runs again at the ingress of its datapath end.
#[must_use]
pub const fn segments(t: &Tunnel) -> bool {
    t.flags & (gre_common::maps::tunnel_flags::OCSUM | gre_common::maps::tunnel_flags::OSEQ) != 0
}

/// A route table entry as (prefix, tunnel id, next hop).
fn route_of(k: &Key<[u8; 16]>, r: &Route) -> Option<(ipnet::IpNet, u32, Option<std::net::IpAddr>)> {
    let addr = show_addr(&k.data());
    let len = if addr.is_ipv4() { k.prefix_len().checked_sub(96)? } else { k.prefix_len() };
    let via = (r.nexthop != [0; 16]).then(|| show_addr(&r.nexthop));
    Some((ipnet::IpNet::new(addr, u8::try_from(len).ok()?).ok()?, r.tunnel, via))
}
