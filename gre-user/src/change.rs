//! Runtime changes to a running instance: static peers and overlay routes added and removed
//! without `gre down`. Each change is checked first and then made whole or not at all (a step
//! that fails undoes the ones before it); a full map is reported as such.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use gre_common::maps::{Peer, Tunnel, peer_flags, peer_kind, route_flags, tunnel_flags};
use ipnet::IpNet;
use log::info;

use crate::{
    config, instance,
    maps::{Maps, show_addr, store_addr},
    netdev,
    netdev::ifname,
};

/// The pinned maps of a running instance.
fn open(instance: &str) -> Result<Maps> {
    let dir = instance::running_dir(instance)?;
    Maps::open_pinned(&dir.join("maps"))
}

/// Tunnel `name` of the instance: its id and record.
fn tunnel(maps: &Maps, name: &str) -> Result<(u32, Tunnel)> {
    maps.tunnels()?.into_iter().find(|(_, t)| ifname(t.netdev_ifindex) == name).with_context(|| format!("no tunnel named {name:?}"))
}

/// `gre peer add`: a static peer of multipoint tunnel `name` (replacing a dynamic one).
///
/// # Errors
/// The tunnel is missing or not multipoint, an address is wrong, or a map is full.
pub async fn peer_add(instance: &str, name: &str, overlay: IpAddr, nbma: IpAddr, multicast: bool) -> Result<()> {
    let mut maps = open(instance)?;
    let (id, t) = tunnel(&maps, name)?;
    if t.flags & tunnel_flags::MULTIPOINT == 0 {
        bail!("tunnel {name} is point to point: peers are for multipoint tunnels");
    }
    if nbma.is_ipv4() != (t.flags & tunnel_flags::OUTER_V6 == 0) || !config::unicast(nbma) {
        bail!("NBMA address {nbma} must be unicast, of the tunnel's outer family");
    }
    if !config::unicast(overlay) {
        bail!("overlay address {overlay} must be unicast");
    }
    if maps.peer(id, overlay).is_some_and(|p| p.kind == peer_kind::STATIC) {
        bail!("tunnel {name} has a static peer {overlay} already; `gre peer del` it first");
    }
    if multicast {
        // Replicas go straight to the underlay next hop: have the kernel keep it resolved.
        let handle = netdev::connect()?;
        let (ifindex, hop) = netdev::next_hop(&handle, nbma).await.with_context(|| format!("multicast peer {overlay}"))?;
        if netdev::manage_neighbour(&handle, ifindex, hop).await? {
            maps.record_neighbour(ifindex, hop)?;
        }
    }
    let peer = Peer { nbma: store_addr(nbma), kind: peer_kind::STATIC, flags: if multicast { peer_flags::MULTICAST } else { 0 }, ..Peer::default() };
    maps.set_peer(id, overlay, &peer)?;
    info!("tunnel {name}: static peer {overlay} at {nbma}{}", if multicast { ", multicast" } else { "" });
    Ok(())
}

/// `gre peer del`: removes a peer (static or learned) of tunnel `name`.
///
/// # Errors
/// The tunnel or the peer does not exist.
pub fn peer_del(instance: &str, name: &str, overlay: IpAddr) -> Result<()> {
    let mut maps = open(instance)?;
    let (id, _) = tunnel(&maps, name)?;
    let Some(p) = maps.peer(id, overlay) else { bail!("tunnel {name} has no peer {overlay}") };
    maps.remove_peer(id, overlay);
    info!("tunnel {name}: peer {overlay} ({}) removed", show_addr(&p.nbma));
    Ok(())
}

/// `gre route add`: traffic to `prefix` into tunnel `name`, in the kernel and in the datapath.
///
/// # Errors
/// The tunnel is missing, the route exists, or the route table is full (nothing changes then).
pub async fn route_add(instance: &str, prefix: IpNet, name: &str, via: Option<IpAddr>) -> Result<()> {
    let mut maps = open(instance)?;
    let (id, t) = tunnel(&maps, name)?;
    let prefix = prefix.trunc();
    if via.is_some() && t.flags & tunnel_flags::MULTIPOINT == 0 {
        bail!("`via` is for multipoint tunnels");
    }
    if via.is_some_and(|v| v.is_ipv4() != prefix.addr().is_ipv4()) {
        bail!("`via` must be of the prefix's family");
    }
    // A mirrored kernel route of the same prefix gives way (and comes back with `route del`).
    if maps.route_at(prefix).is_some_and(|(_, flags, _)| flags & route_flags::KERNEL == 0) {
        bail!("route {prefix} exists already; `gre route del` it first");
    }
    let handle = netdev::connect()?;
    let kernel_added = netdev::add_route(&handle, prefix, t.netdev_ifindex).await?;
    if let Err(e) = maps.add_route(prefix, id, via) {
        if kernel_added {
            let _ = netdev::del_route(&handle, prefix, t.netdev_ifindex).await;
        }
        return Err(e);
    }
    info!("route {prefix} into {name}{}", via.map_or_else(String::new, |v| format!(" via {v}")));
    Ok(())
}

/// `gre route del`: removes a configured route (and its kernel route).
///
/// # Errors
/// There is no such route.
pub async fn route_del(instance: &str, prefix: IpNet) -> Result<()> {
    let mut maps = open(instance)?;
    let prefix = prefix.trunc();
    let Some((id, _, _)) = maps.route_at(prefix).filter(|(_, flags, _)| flags & route_flags::KERNEL == 0) else {
        bail!("no route {prefix} (a kernel route is removed in the kernel or by its routing daemon)")
    };
    let tunnels = maps.tunnels()?;
    maps.remove_route(prefix);
    if let Some((_, t)) = tunnels.iter().find(|(i, _)| *i == id) {
        let handle = netdev::connect()?;
        netdev::del_route(&handle, prefix, t.netdev_ifindex).await?;
    }
    info!("route {prefix} removed");
    Ok(())
}
