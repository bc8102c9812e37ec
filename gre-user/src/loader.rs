//! `gre up` and `gre down`: tunnel netdevs, programs, links and maps of one instance, pinned under
//! its folder (see `instance`) so the datapath outlives this process and `gre show` can read it;
//! and the building blocks of a tunnel that `gre tunnel add` shares.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink};
use gre_common::maps::{MAX_MULTICAST_GROUPS, Peer, Tunnel, nhrp_role, peer_flags, peer_kind, programs};
use log::{info, warn};
use rtnetlink::Handle;

use crate::{
    EBPF_OBJECT,
    config::{self, Config},
    instance::{ensure_bpffs, instance_dir, load, object_loader, program, remove_pins, running_dir},
    maps::{Maps, store_addr},
    netdev,
};

/// Brings an instance up: everything is created or nothing is (a failure undoes what was done).
///
/// # Errors
/// The instance is up already, an interface is missing or taken, or the kernel refuses a step.
pub async fn up(cfg: &Config, instance: &str) -> Result<()> {
    let dir = instance_dir(instance)?;
    ensure_bpffs()?;
    if dir.exists() {
        bail!("instance {instance} is up already ({} exists); run `gre -I {instance} down` first", dir.display());
    }
    let handle = netdev::connect()?;
    // Check every interface before changing anything.
    for i in &cfg.interfaces {
        netdev::get(&handle, i.name.get_ref()).await?;
    }
    for t in &cfg.tunnels {
        for name in [t.name.clone(), t.inject_name()] {
            if netdev::find(&handle, &name).await?.is_some() {
                bail!("tunnel {}: interface {name} exists already", t.name);
            }
        }
    }
    crate::xfrm::refuse_bypassed(&cfg.tunnels)?;
    let mut undo = Undo { handle: handle.clone(), links: Vec::new(), neighbours: Vec::new(), protected: Vec::new(), dir: None };
    let built = match build(cfg, &dir, &handle, &mut undo).await {
        // The daemon keys the protected tunnels' SAs with what the configuration says of them.
        Ok(()) => crate::ipsec::save(instance, &crate::ipsec::of(cfg)),
        Err(e) => Err(e),
    };
    match built {
        Ok(()) => {
            undo.links.clear();
            undo.protected.clear();
            undo.neighbours.clear();
            undo.dir = None;
            Ok(())
        }
        Err(e) => {
            undo.run().await;
            Err(e)
        }
    }
}

/// What to remove if `up` fails half way.
pub(crate) struct Undo {
    pub(crate) handle: Handle,
    pub(crate) links: Vec<u32>,
    pub(crate) neighbours: Vec<(u32, std::net::IpAddr)>,
    /// Protected tunnels' (local, remote), whose block policies go.
    pub(crate) protected: Vec<(std::net::IpAddr, std::net::IpAddr)>,
    pub(crate) dir: Option<PathBuf>,
}

impl Undo {
    pub(crate) async fn run(self) {
        for (ifindex, addr) in self.neighbours {
            if let Err(e) = netdev::delete_neighbour(&self.handle, ifindex, addr).await {
                warn!("cleaning up: {e:#}");
            }
        }
        for index in self.links {
            if let Err(e) = netdev::delete(&self.handle, index).await {
                warn!("cleaning up: {e:#}");
            }
        }
        for (local, remote) in self.protected {
            if let Err(e) = crate::protection::release(local, remote) {
                warn!("cleaning up: {e:#}");
            }
        }
        if let Some(Err(e)) = self.dir.as_deref().map(remove_pins) {
            warn!("cleaning up: {e:#}");
        }
    }
}

async fn build(cfg: &Config, dir: &Path, handle: &Handle, undo: &mut Undo) -> Result<()> {
    for sub in ["maps", "progs", "links"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        undo.dir = Some(dir.to_path_buf());
    }
    let mut ebpf = object_loader(&cfg.limits).load(EBPF_OBJECT).context("loading the eBPF object")?;
    let mut maps = Maps::from_ebpf(&mut ebpf, Some(&dir.join("maps")))?;
    maps.install_tail_calls(&mut ebpf)?;

    // Tunnel netdevs and their map entries first: the datapath must find a tunnel whole.
    let mut netdevs = Vec::new();
    for (id, t) in (0u32..).zip(&cfg.tunnels) {
        let (kernel, inject) = create_tunnel(handle, undo, &mut maps, id, t).await?;
        netdevs.push((t, kernel, inject));
    }
    let links = dir.join("links");
    let progs = dir.join("progs");
    {
        let napi: &mut Xdp = program(&mut ebpf, programs::NAPI_PASS)?;
        load(|| napi.load()).context("loading the NAPI program")?;
        for (t, index, _) in &netdevs {
            let id = napi.attach_to_if_index(*index, XdpMode::Driver).with_context(|| format!("attaching XDP to {}", t.name))?;
            pin_link(FdLink::try_from(napi.take_link(id)?)?, &links.join(format!("napi@{}", t.name)))?;
        }
        napi.pin(progs.join(programs::NAPI_PASS)).context("pinning the NAPI program")?;
    }
    {
        let encap: &mut SchedClassifier = program(&mut ebpf, programs::ENCAP)?;
        load(|| encap.load()).context("loading the encapsulation program")?;
        for (t, _, _) in &netdevs {
            let id = encap.attach(&t.name, TcAttachType::Egress).with_context(|| format!("attaching TC egress to {}", t.name))?;
            pin_link(FdLink::try_from(encap.take_link(id)?)?, &links.join(format!("encap@{}", t.name)))?;
            if t.ocsum || t.oseq {
                let id = encap.attach(&t.inject_name(), TcAttachType::Ingress).with_context(|| format!("attaching TC ingress to {}", t.inject_name()))?;
                pin_link(FdLink::try_from(encap.take_link(id)?)?, &links.join(format!("segments@{}", t.name)))?;
            }
        }
        encap.pin(progs.join(programs::ENCAP)).context("pinning the encapsulation program")?;
        let replicate: &mut SchedClassifier = program(&mut ebpf, programs::REPLICATE)?;
        replicate.pin(progs.join(programs::REPLICATE)).context("pinning the replication program")?;
    }
    {
        // Every port may be a fast-path target; underlay ports decapsulate, LAN ports take the
        // encapsulation fast path.
        for i in &cfg.interfaces {
            let link = netdev::get(handle, i.name.get_ref()).await?;
            maps.add_port(link.index, link.mac)?;
        }
        for (role, prog_name, tag) in [(config::Role::Underlay, programs::DECAP, "decap"), (config::Role::Lan, programs::LAN, "lan")] {
            let prog: &mut Xdp = program(&mut ebpf, prog_name)?;
            load(|| prog.load()).with_context(|| format!("loading {prog_name}"))?;
            for i in cfg.interfaces.iter().filter(|i| i.role == role) {
                let name = i.name.get_ref();
                let id = attach_xdp(prog, name, i.xdp_mode)?;
                pin_link(FdLink::try_from(prog.take_link(id)?)?, &links.join(format!("{tag}@{name}")))?;
            }
            prog.pin(progs.join(prog_name)).with_context(|| format!("pinning {prog_name}"))?;
        }
    }
    for (_, kernel, inject) in &netdevs {
        netdev::up(handle, *inject).await?;
        netdev::up(handle, *kernel).await?;
    }
    // Overlay routes: in the kernel (the slow path) and in the fast path's table.
    for r in &cfg.routes {
        let (t, kernel, _) = &netdevs[r.tunnel];
        netdev::add_route(handle, r.prefix, *kernel).await.with_context(|| format!("route {} via tunnel {}", r.prefix, t.name))?;
        maps.add_route(r.prefix, u32::try_from(r.tunnel).unwrap_or(u32::MAX), r.via)?;
    }
    // Static peers of multipoint tunnels (the NHRP cache entries that never expire).
    for p in &cfg.peers {
        let flags = if p.multicast { peer_flags::MULTICAST } else { 0 };
        let entry = Peer { nbma: store_addr(p.nbma), kind: peer_kind::STATIC, flags, ..Peer::default() };
        maps.set_peer(u32::try_from(p.tunnel).unwrap_or(u32::MAX), p.overlay, &entry)?;
        if p.multicast {
            // Multicast replicas are cloned straight to the underlay next hop (replicate.rs).
            let (ifindex, hop) = netdev::next_hop(handle, p.nbma).await.with_context(|| format!("multicast peer {}", p.overlay))?;
            keep_resolved(handle, undo, &mut maps, ifindex, hop).await?;
        }
    }
    Ok(())
}

/// Creates tunnel `t`'s netdev pair and installs it in the maps as tunnel `id` (the netdevs are
/// recorded in `undo`); returns the ifindexes of the kernel-facing netdev and its datapath end.
pub(crate) async fn create_tunnel(handle: &Handle, undo: &mut Undo, maps: &mut Maps, id: u32, t: &config::Tunnel) -> Result<(u32, u32)> {
    let underlay = netdev::get(handle, &t.interface).await?;
    let overhead = u32::try_from(t.overhead()).unwrap_or(u32::MAX);
    // IPv6 needs 1280 on the tunnel netdev; IPv4 68.
    let min = if t.addresses.iter().any(|a| a.addr().is_ipv6()) { 1280 } else { 68 };
    let mtu = underlay.mtu.checked_sub(overhead).filter(|m| *m >= min).ok_or_else(|| {
        anyhow!("tunnel {}: underlay {} MTU {} leaves less than {min} after {overhead} bytes of outer headers", t.name, t.interface, underlay.mtu)
    })?;
    // A protected tunnel's encapsulated GRE passes through the datapath end (protection.rs).
    let dp_mtu = if t.protection.is_some() { underlay.mtu } else { mtu };
    let spec = netdev::NetdevSpec { mtu, dp_mtu, ethernet: t.mode == config::Mode::Gretap, no_gso: t.ocsum || t.oseq, addresses: &t.addresses };
    let (kernel, inject) = netdev::create_tunnel_netdev(handle, &t.name, &t.inject_name(), spec).await?;
    undo.links.push(kernel.index);
    if t.protection.is_some() {
        undo.protected.push((t.local, t.remote));
        crate::protection::prepare(t, &t.inject_name())?;
    }
    if t.mode == config::Mode::Gretap {
        // Non-IP frames (ARP first of all) are sent straight to the underlay next hop, which
        // the kernel must therefore keep resolved.
        let (ifindex, hop) = netdev::next_hop(handle, t.remote).await?;
        // The kernel's FIB helper, which finds the next hop's MAC, answers only for an
        // interface that forwards.
        let family = if t.outer_v6() { "ipv6" } else { "ipv4" };
        let sysctl = format!("/proc/sys/net/{family}/conf/{}/forwarding", t.interface);
        if fs::read_to_string(&sysctl).is_ok_and(|v| v.trim() == "0") {
            warn!("tunnel {}: {sysctl} is 0: ARP and other non-IP frames of this gretap will be dropped (no_neighbour) until forwarding is on", t.name);
        }
        keep_resolved(handle, undo, maps, ifindex, hop).await?;
    }
    let entry = Tunnel { mtu, ..datapath_entry(t, &kernel, &inject, &underlay) };
    maps.install_tunnel(id, &entry).with_context(|| format!("tunnel {}", t.name))?;
    let remote = if t.multipoint { "multipoint".to_string() } else { t.remote.to_string() };
    info!("tunnel {}: {} -> {remote} via {}, mtu {mtu}", t.name, t.local, t.interface);
    Ok((kernel.index, inject.index))
}

/// Has the kernel keep underlay neighbour `hop` resolved for the datapath, undone on failure and
/// at `gre down`.
pub(crate) async fn keep_resolved(handle: &Handle, undo: &mut Undo, maps: &mut Maps, ifindex: u32, hop: std::net::IpAddr) -> Result<()> {
    if !undo.neighbours.contains(&(ifindex, hop)) && netdev::manage_neighbour(handle, ifindex, hop).await? {
        undo.neighbours.push((ifindex, hop));
        maps.record_neighbour(ifindex, hop)?;
    }
    Ok(())
}

/// The datapath's record of a tunnel.
pub(crate) fn datapath_entry(t: &config::Tunnel, kernel: &netdev::Link, inject: &netdev::Link, underlay: &netdev::Link) -> Tunnel {
    let fixed = |s: config::Setting<u8>| match s {
        config::Setting::Fixed(v) => v,
        config::Setting::Inherit => 0,
    };
    Tunnel {
        local: store_addr(t.local),
        remote: if t.multipoint { [0; 16] } else { store_addr(t.remote) },
        // The preferred NHS until `gre daemon` hears which answer.
        nhs: t.nhs.iter().min_by_key(|(_, p)| *p).map_or([0; 16], |(a, _)| store_addr(*a)),
        nhs_list: std::array::from_fn(|i| t.nhs.get(i).map_or([0; 16], |(a, _)| store_addr(*a))),
        nhs_priority: std::array::from_fn(|i| t.nhs.get(i).map_or(0, |(_, p)| *p)),
        ikey: t.ikey.unwrap_or(0),
        okey: t.okey.unwrap_or(0),
        flags: t.datapath_flags(),
        flowlabel: match t.flowlabel {
            config::Setting::Fixed(v) => v,
            config::Setting::Inherit => 0,
        },
        ttl: fixed(t.ttl),
        tos: fixed(t.tos),
        nhrp_role: match t.nhrp.as_ref().map(|n| n.role) {
            None => nhrp_role::NONE,
            Some(config::NhrpRole::Nhs) => nhrp_role::NHS,
            Some(config::NhrpRole::Nhc) => nhrp_role::NHC,
        },
        nhrp_holdtime: t.nhrp.as_ref().map_or(0, |n| n.holdtime),
        nhrp_network_id: t.nhrp.as_ref().map_or(0, |n| n.network_id),
        nhrp_auth: t.nhrp.as_ref().and_then(|n| n.auth.as_ref()).map_or([0; 8], |a| {
            let mut b = [0u8; 8];
            b[..a.len().min(8)].copy_from_slice(&a.as_bytes()[..a.len().min(8)]);
            b
        }),
        keepalive_period: t.keepalive.map_or(0, |k| k.period),
        keepalive_retries: t.keepalive.map_or(0, |k| k.retries),
        netdev_ifindex: kernel.index,
        inject_ifindex: inject.index,
        underlay_ifindex: underlay.index,
        netdev_mac: kernel.mac,
        inject_mac: inject.mac,
        underlay_mac: underlay.mac,
        multicast_rate: t.multicast.rate,
        multicast_groups: multicast_groups(&t.multicast).0,
        multicast_group_lens: multicast_groups(&t.multicast).1,
        ..Tunnel::default()
    }
}

/// A tunnel's multicast groups in the datapath's form: prefixes of the 16-byte address, IPv4
/// lengths counted from the mapped form.
fn multicast_groups(m: &config::Multicast) -> ([gre_common::addr::Addr; MAX_MULTICAST_GROUPS], [u8; MAX_MULTICAST_GROUPS]) {
    let mut groups = ([[0; 16]; MAX_MULTICAST_GROUPS], [0; MAX_MULTICAST_GROUPS]);
    for (i, g) in m.groups.iter().take(MAX_MULTICAST_GROUPS).enumerate() {
        groups.0[i] = store_addr(g.network());
        groups.1[i] = match g {
            ipnet::IpNet::V4(n) => n.prefix_len() + 96,
            ipnet::IpNet::V6(n) => n.prefix_len(),
        };
    }
    groups
}

pub(crate) fn attach_xdp(prog: &mut Xdp, iface: &str, mode: config::XdpMode) -> Result<aya::programs::xdp::XdpLinkId> {
    let try_mode = |prog: &mut Xdp, m| prog.attach(iface, m);
    match mode {
        config::XdpMode::Native => try_mode(prog, XdpMode::Driver).with_context(|| format!("attaching XDP to {iface} in native mode (try xdp_mode = \"skb\")")),
        config::XdpMode::Skb => try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching XDP to {iface} in skb mode")),
        config::XdpMode::Auto => try_mode(prog, XdpMode::Driver).or_else(|e| {
            warn!("{iface}: native XDP refused ({e}); falling back to generic (skb) mode, which is slower");
            try_mode(prog, XdpMode::Skb).with_context(|| format!("attaching XDP to {iface}"))
        }),
    }
}

pub(crate) fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    link.pin(path).with_context(|| format!("pinning link {}", path.display()))?;
    Ok(())
}

/// Takes an instance down: deletes its tunnel netdevs, then its pins, which detaches the programs
/// and frees the maps. Nothing else in bpffs is touched.
///
/// # Errors
/// The instance is not up, or a step fails (the rest is still attempted).
pub async fn down(instance: &str) -> Result<()> {
    let dir = running_dir(instance)?;
    let handle = netdev::connect()?;
    let mut first_error = None;
    match Maps::open_pinned(&dir.join("maps")).and_then(|m| Ok((m.tunnels()?, m.neighbours()))) {
        Ok((tunnels, neighbours)) => {
            for (ifindex, addr) in neighbours {
                if let Err(e) = netdev::delete_neighbour(&handle, ifindex, addr).await {
                    first_error.get_or_insert(e);
                }
            }
            for (_, t) in tunnels {
                if let Err(e) = netdev::delete(&handle, t.netdev_ifindex).await {
                    first_error.get_or_insert(e);
                }
                if t.flags & gre_common::maps::tunnel_flags::PROTECTED != 0
                    && let Err(e) = crate::protection::release(crate::maps::show_addr(&t.local), crate::maps::show_addr(&t.remote))
                {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(e) => {
            first_error.get_or_insert(e.context("reading the tunnel list; tunnel netdevs may remain"));
        }
    }
    if let Err(e) = remove_pins(&dir) {
        first_error.get_or_insert(e);
    }
    // What a daemon left behind: sockets if it was killed, its lock and saved NHRP state.
    crate::runtime::remove(instance);
    first_error.map_or(Ok(()), Err)
}
