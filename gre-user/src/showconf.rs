//! `gre showconf`: the running configuration of an instance as TOML that `gre up -c` takes
//! again, rebuilt from what is running — the pinned maps and the tunnel netdevs — rather than
//! from a copy of a file, so runtime changes show and nothing stale does. Defaults are left out.
//! What only `gre daemon` holds (`[metrics]`) is not part of it.

use std::collections::BTreeSet;

use anyhow::Result;
use gre_common::maps::{Tunnel, nhrp_role, peer_flags, peer_kind, tunnel_flags};
use toml::{Table, Value};

use crate::{
    instance,
    maps::{Maps, show_addr},
    netdev,
    netdev::ifname,
};

/// The running configuration of `instance`, as TOML.
///
/// # Errors
/// The instance is not up, or its maps or links cannot be read.
pub async fn showconf(instance: &str) -> Result<String> {
    let dir = instance::running_dir(instance)?;
    let maps = Maps::open_pinned(&dir.join("maps"))?;
    let handle = netdev::connect()?;
    let tunnels = maps.tunnels()?;
    let name_of = |id: u32| tunnels.iter().find(|(i, _)| *i == id).map(|(_, t)| ifname(t.netdev_ifindex));

    // Interfaces: the tunnels' underlays, then the other fast-path ports (LAN ports).
    let underlays: BTreeSet<u32> = tunnels.iter().map(|(_, t)| t.underlay_ifindex).collect();
    let mut interfaces = Vec::new();
    let lans: Vec<u32> = maps.ports().into_iter().filter(|p| !underlays.contains(p)).collect();
    for (ifindex, lan) in underlays.iter().map(|i| (*i, false)).chain(lans.into_iter().map(|i| (i, true))) {
        let mut i = Table::new();
        i.insert("name".into(), ifname(ifindex).into());
        if lan {
            i.insert("role".into(), "lan".into());
        }
        if let Some(mode) = netdev::xdp_mode(&handle, ifindex).await? {
            i.insert("xdp_mode".into(), mode.into());
        }
        interfaces.push(Value::Table(i));
    }

    let mut out_tunnels = Vec::new();
    // Protection is not in the maps: what `gre up` saved for the daemon (root's only, as the
    // pins and the configuration file are).
    let protected = crate::ipsec::load(instance)?;
    for (_, t) in &tunnels {
        let mut spec = tunnel(t);
        let addresses: Vec<Value> = netdev::addresses(&handle, t.netdev_ifindex).await?.iter().map(|a| Value::from(a.to_string())).collect();
        if !addresses.is_empty() {
            spec.insert("address".into(), Value::Array(addresses));
        }
        if t.flags & tunnel_flags::PROTECTED != 0
            && let Some(p) = protected.iter().find(|p| p.tunnel == ifname(t.netdev_ifindex))
        {
            spec.insert("protection".into(), Value::try_from(&p.protection)?);
        }
        out_tunnels.push(Value::Table(spec));
    }

    let mut routes: Vec<_> = maps.configured_routes();
    routes.sort_by_key(|(p, t, _)| (*t, *p));
    let routes: Vec<Value> = routes
        .into_iter()
        .filter_map(|(prefix, id, via)| {
            let mut r = Table::new();
            r.insert("prefix".into(), prefix.to_string().into());
            r.insert("tunnel".into(), name_of(id)?.into());
            if let Some(via) = via {
                r.insert("via".into(), via.to_string().into());
            }
            Some(Value::Table(r))
        })
        .collect();

    let mut peers: Vec<_> = maps.peers().into_iter().filter(|(_, _, p)| p.kind == peer_kind::STATIC).collect();
    peers.sort_by_key(|(id, overlay, _)| (*id, *overlay));
    let peers: Vec<Value> = peers
        .into_iter()
        .filter_map(|(id, overlay, p)| {
            let mut e = Table::new();
            e.insert("tunnel".into(), name_of(id)?.into());
            e.insert("overlay".into(), overlay.to_string().into());
            e.insert("nbma".into(), show_addr(&p.nbma).to_string().into());
            if p.flags & peer_flags::MULTICAST != 0 {
                e.insert("multicast".into(), true.into());
            }
            Some(Value::Table(e))
        })
        .collect();

    let mut doc = Table::new();
    let limits = instance::pinned_limits(&dir.join("maps"))?;
    if limits != crate::config::Limits::default() {
        let mut l = Table::new();
        l.insert("peers".into(), i64::from(limits.peers).into());
        l.insert("routes".into(), i64::from(limits.routes).into());
        doc.insert("limits".into(), Value::Table(l));
    }
    for (key, list) in [("interface", interfaces), ("tunnel", out_tunnels), ("route", routes), ("peer", peers)] {
        if !list.is_empty() {
            doc.insert(key.into(), Value::Array(list));
        }
    }
    Ok(format!("# running configuration of instance {instance}\n{}", toml::to_string(&doc)?))
}

/// The multicast groups of a multipoint tunnel, as the file writes them.
fn multicast_groups(t: &Tunnel) -> Vec<ipnet::IpNet> {
    t.multicast_groups
        .iter()
        .zip(t.multicast_group_lens)
        .filter(|(_, len)| *len != 0)
        .filter_map(|(a, len)| match show_addr(a) {
            std::net::IpAddr::V4(v4) => ipnet::Ipv4Net::new(v4, len.saturating_sub(96)).ok().map(ipnet::IpNet::V4),
            std::net::IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, len).ok().map(ipnet::IpNet::V6),
        })
        .collect()
}

/// A tunnel's settings under the names the file uses, defaults left out.
fn tunnel(t: &Tunnel) -> Table {
    let f = |flag: u32| t.flags & flag != 0;
    let mut s = Table::new();
    s.insert("name".into(), ifname(t.netdev_ifindex).into());
    if f(tunnel_flags::TEB) {
        s.insert("mode".into(), "gretap".into());
    }
    s.insert("interface".into(), ifname(t.underlay_ifindex).into());
    s.insert("local".into(), show_addr(&t.local).to_string().into());
    if f(tunnel_flags::MULTIPOINT) {
        // One NHS of priority 0 as an address; several (or a priority) as a list of tables.
        let list: Vec<(std::net::IpAddr, u8)> = t.nhs_list.iter().zip(t.nhs_priority).filter(|(a, _)| **a != [0; 16]).map(|(a, p)| (show_addr(a), p)).collect();
        match list.as_slice() {
            [] => {}
            [(a, 0)] => {
                s.insert("nhs".into(), a.to_string().into());
            }
            _ => {
                let entries = list.iter().map(|(a, p)| {
                    let mut e = toml::map::Map::new();
                    e.insert("address".into(), a.to_string().into());
                    e.insert("priority".into(), i64::from(*p).into());
                    toml::Value::Table(e)
                });
                s.insert("nhs".into(), toml::Value::Array(entries.collect()));
            }
        }
        // Strict is the default with NHRP.
        if f(tunnel_flags::STRICT) != (t.nhrp_role != nhrp_role::NONE) {
            s.insert("strict".into(), f(tunnel_flags::STRICT).into());
        }
        let groups: Vec<String> = multicast_groups(t).iter().map(ToString::to_string).collect();
        let default_groups: Vec<String> = crate::config::LINK_LOCAL_GROUPS.iter().map(ToString::to_string).collect();
        if groups != default_groups || t.multicast_rate != crate::config::DEFAULT_MULTICAST_RATE {
            let mut multicast = Table::new();
            multicast.insert("groups".into(), Value::Array(groups.into_iter().map(Value::from).collect()));
            multicast.insert("rate".into(), i64::from(t.multicast_rate).into());
            s.insert("multicast".into(), Value::Table(multicast));
        }
    } else {
        s.insert("remote".into(), show_addr(&t.remote).to_string().into());
    }
    match (f(tunnel_flags::IKEY), f(tunnel_flags::OKEY)) {
        (true, true) if t.ikey == t.okey => {
            s.insert("key".into(), i64::from(t.ikey).into());
        }
        (i, o) => {
            if i {
                s.insert("ikey".into(), i64::from(t.ikey).into());
            }
            if o {
                s.insert("okey".into(), i64::from(t.okey).into());
            }
        }
    }
    for (both, one, two) in [("csum", tunnel_flags::ICSUM, tunnel_flags::OCSUM), ("seq", tunnel_flags::ISEQ, tunnel_flags::OSEQ)] {
        match (f(one), f(two)) {
            (true, true) => {
                s.insert(both.into(), true.into());
            }
            (i, o) => {
                if i {
                    s.insert(format!("i{both}"), true.into());
                }
                if o {
                    s.insert(format!("o{both}"), true.into());
                }
            }
        }
    }
    if t.ttl != 0 {
        s.insert("ttl".into(), i64::from(t.ttl).into());
    }
    if f(tunnel_flags::TOS_INHERIT) {
        s.insert("tos".into(), "inherit".into());
    } else if t.tos != 0 {
        s.insert("tos".into(), i64::from(t.tos).into());
    }
    if f(tunnel_flags::FLOWLABEL_INHERIT) {
        s.insert("flowlabel".into(), "inherit".into());
    } else if t.flowlabel != 0 {
        s.insert("flowlabel".into(), i64::from(t.flowlabel).into());
    }
    if f(tunnel_flags::NOPMTUDISC) {
        s.insert("pmtudisc".into(), false.into());
    }
    if f(tunnel_flags::IGNORE_DF) {
        s.insert("ignore_df".into(), true.into());
    }
    if t.keepalive_period != 0 {
        let mut k = Table::new();
        k.insert("period".into(), i64::from(t.keepalive_period).into());
        k.insert("retries".into(), i64::from(t.keepalive_retries).into());
        s.insert("keepalive".into(), Value::Table(k));
    }
    if t.nhrp_role != nhrp_role::NONE {
        let mut n = Table::new();
        n.insert("role".into(), if t.nhrp_role == nhrp_role::NHS { "nhs" } else { "nhc" }.into());
        n.insert("holdtime".into(), i64::from(t.nhrp_holdtime).into());
        if t.nhrp_network_id != 1 {
            n.insert("network_id".into(), i64::from(t.nhrp_network_id).into());
        }
        let auth = t.nhrp_auth.iter().position(|b| *b == 0).map_or(&t.nhrp_auth[..], |n| &t.nhrp_auth[..n]);
        if !auth.is_empty() {
            n.insert("auth".into(), String::from_utf8_lossy(auth).into_owned().into());
        }
        s.insert("nhrp".into(), Value::Table(n));
    }
    s
}
