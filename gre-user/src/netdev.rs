//! Network devices through rtnetlink: the tunnel netdev (a veth pair) and underlay lookups.

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth,
    packet_route::link::{LinkAttribute, LinkMessage},
};

/// What the loader needs to know of a link.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A netlink connection whose I/O runs on the current tokio runtime.
///
/// # Errors
/// The netlink socket cannot be opened.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Looks a link up by name; `None` if there is none.
///
/// # Errors
/// Netlink fails for another reason than "no such device".
pub async fn find(handle: &Handle, name: &str) -> Result<Option<Link>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(link_of(&msg))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

/// Looks a link up by name and fails if it does not exist.
///
/// # Errors
/// No such link, or netlink fails.
pub async fn get(handle: &Handle, name: &str) -> Result<Link> {
    find(handle, name).await?.ok_or_else(|| anyhow!("interface {name} does not exist"))
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut mtu = 0;
    let mut mac = [0u8; 6];
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
            _ => {}
        }
    }
    Link { index: msg.header.index, mtu, mac }
}

/// Creates the tunnel netdev: a veth pair `name` (kernel side: NOARP, `mtu`, overlay addresses,
/// and no GSO when `no_gso`) and `inject` (where the datapath injects decapsulated packets).
/// Both are left down; [`up`] brings them up once the programs are attached.
///
/// # Errors
/// A link of either name exists already, or netlink fails.
pub async fn create_tunnel_netdev(handle: &Handle, name: &str, inject: &str, mtu: u32, no_gso: bool, addresses: &[IpNet]) -> Result<(Link, Link)> {
    for n in [name, inject] {
        if find(handle, n).await?.is_some() {
            bail!("interface {n} exists already; pick another tunnel name or remove it");
        }
    }
    handle
        .link()
        .add(LinkVeth::new(name, inject).build())
        .execute()
        .await
        .with_context(|| format!("creating veth pair {name}/{inject}"))?;
    let kernel = get(handle, name).await?;
    let dp = get(handle, inject).await?;
    // No link-local address and no router solicitations: the tunnel stays silent until used, as a
    // point-to-point GRE device with no IPv6 configured would. Must precede bringing it up.
    // The datapath end carries no IP of its own.
    sysctl_ipv6(name, "addr_gen_mode", "1")?;
    sysctl_ipv6(inject, "disable_ipv6", "1")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(kernel.index).mtu(mtu).arp(false).build())
        .execute()
        .await
        .with_context(|| format!("setting MTU {mtu} and NOARP on {name}"))?;
    if no_gso {
        // One segment per packet: the stack then hands over packets of one MSS, not GSO ones, so
        // each can carry its own GRE checksum.
        handle
            .link()
            .set(LinkUnspec::new_with_index(kernel.index).append_extra_attribute(LinkAttribute::GsoMaxSegs(1)).build())
            .execute()
            .await
            .with_context(|| format!("setting gso_max_segs 1 on {name}"))?;
    }
    // The datapath end carries whole underlay-sized frames; never let it be the bottleneck.
    handle
        .link()
        .set(LinkUnspec::new_with_index(dp.index).mtu(mtu).arp(false).build())
        .execute()
        .await
        .with_context(|| format!("setting MTU on {inject}"))?;
    for a in addresses {
        handle
            .address()
            .add(kernel.index, a.addr(), a.prefix_len())
            .execute()
            .await
            .with_context(|| format!("adding address {a} to {name}"))?;
    }
    Ok((get(handle, name).await?, dp))
}

/// Sets a per-interface IPv6 sysctl, if the kernel has IPv6. /proc/sys/net belongs to the
/// network namespace of the process, so this reaches the namespace `gre -n` entered.
fn sysctl_ipv6(ifname: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
    if std::path::Path::new(&path).exists() {
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Brings a link up.
///
/// # Errors
/// Netlink fails.
pub async fn up(handle: &Handle, index: u32) -> Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing up link {index}"))
}

/// Deletes a link (a veth pair goes with either end). A link that is gone already is fine.
///
/// # Errors
/// Netlink fails for another reason.
pub async fn delete(handle: &Handle, index: u32) -> Result<()> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting link {index}")),
    }
}
