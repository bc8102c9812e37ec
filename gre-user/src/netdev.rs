//! Network devices through rtnetlink: the tunnel netdev (a veth pair) and underlay lookups.

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        link::{LinkAttribute, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
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
    find(handle, name).await?.ok_or_else(|| anyhow!("interface {name} does not exist here (see `ip link`; for another network namespace, `gre -n NETNS …`)"))
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

/// How the kernel side of a tunnel netdev is set up.
#[derive(Debug, Clone, Copy)]
pub struct NetdevSpec<'a> {
    pub mtu: u32,
    /// The datapath end's MTU: `mtu`, or more when whole outer packets pass through it.
    pub dp_mtu: u32,
    /// A gretap: an Ethernet link with ARP; otherwise NOARP, like a GRE device.
    pub ethernet: bool,
    /// One segment per packet (for tunnels that checksum every packet).
    pub no_gso: bool,
    pub addresses: &'a [IpNet],
}

/// Creates the tunnel netdev: a veth pair `name` (kernel side: `spec`) and `inject` (where the
/// datapath injects decapsulated packets). Both are left down; [`up`] brings them up once the
/// programs are attached.
///
/// # Errors
/// A link of either name exists already, or netlink fails.
pub async fn create_tunnel_netdev(handle: &Handle, name: &str, inject: &str, spec: NetdevSpec<'_>) -> Result<(Link, Link)> {
    let NetdevSpec { mtu, dp_mtu, ethernet, no_gso, addresses } = spec;
    for n in [name, inject] {
        if find(handle, n).await?.is_some() {
            bail!("interface {n} exists already; pick another tunnel name or remove it");
        }
    }
    handle.link().add(LinkVeth::new(name, inject).build()).execute().await.with_context(|| format!("creating veth pair {name}/{inject}"))?;
    let kernel = get(handle, name).await?;
    let dp = get(handle, inject).await?;
    // No link-local address and no router solicitations: the tunnel stays silent until used, as a
    // point-to-point GRE device with no IPv6 configured would. Must precede bringing it up.
    // The datapath end carries no IP of its own.
    sysctl_ipv6(name, "addr_gen_mode", "1")?;
    sysctl_ipv6(inject, "disable_ipv6", "1")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(kernel.index).mtu(mtu).arp(ethernet).build())
        .execute()
        .await
        .with_context(|| format!("setting MTU {mtu} and ARP {ethernet} on {name}"))?;
    if no_gso {
        // One segment per packet: the stack then hands over packets of one MSS, not GSO ones, so
        // each can carry its own GRE checksum and sequence number (GSO would copy one header to
        // every segment; ip_gre turns GSO off for such tunnels too).
        handle
            .link()
            .set(LinkUnspec::new_with_index(kernel.index).append_extra_attribute(LinkAttribute::GsoMaxSegs(1)).build())
            .execute()
            .await
            .with_context(|| format!("setting gso_max_segs 1 on {name}"))?;
    }
    // The datapath end: what goes through it must fit the kernel end anyway.
    handle
        .link()
        .set(LinkUnspec::new_with_index(dp.index).mtu(dp_mtu).arp(false).build())
        .execute()
        .await
        .with_context(|| format!("setting MTU on {inject}"))?;
    for a in addresses {
        handle.address().add(kernel.index, a.addr(), a.prefix_len()).execute().await.with_context(|| format!("adding address {a} to {name}"))?;
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

/// The underlay next hop toward `dst`: the interface and the gateway, or `dst` itself when it
/// is on link.
///
/// # Errors
/// No route, or netlink fails.
pub async fn next_hop(handle: &Handle, dst: IpAddr) -> Result<(u32, IpAddr)> {
    let msg = match dst {
        IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(v4, 32).build(),
        IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(v6, 128).build(),
    };
    let mut routes = handle.route().get(msg).execute();
    let route = routes.try_next().await.with_context(|| format!("looking up the route to {dst}"))?.ok_or_else(|| anyhow!("no route to {dst}"))?;
    let mut oif = None;
    let mut gateway = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    Ok((oif.ok_or_else(|| anyhow!("the route to {dst} has no interface"))?, gateway.unwrap_or(dst)))
}

/// Asks the kernel to keep the neighbour `addr` on `ifindex` resolved (a managed entry), so the
/// datapath can send to it without the kernel's help. An entry the kernel made on its own (some
/// traffic resolved it, and it would age out) becomes managed, keeping its state and address;
/// an operator's permanent entry, or one managed already, is left as it is. Returns true if the
/// entry is ours to remove at `gre down`.
///
/// # Errors
/// Netlink fails for another reason.
pub async fn manage_neighbour(handle: &Handle, ifindex: u32, addr: IpAddr) -> Result<bool> {
    let mut req = handle.neighbours().add(ifindex, addr).state(NeighbourState::None);
    req.message_mut().attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    match req.execute().await {
        Ok(()) => return Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(e).with_context(|| format!("adding a managed neighbour {addr} on link {ifindex}")),
    }
    let Some(existing) = find_neighbour(handle, ifindex, addr).await? else { return Ok(false) };
    let managed = existing.attributes.iter().any(|a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)));
    if managed || matches!(existing.header.state, NeighbourState::Permanent | NeighbourState::Noarp) {
        return Ok(false);
    }
    let mut req = handle.neighbours().add(ifindex, addr).state(existing.header.state).replace();
    for a in existing.attributes {
        if let NeighbourAttribute::LinkLayerAddress(mac) = a {
            req.message_mut().attributes.push(NeighbourAttribute::LinkLayerAddress(mac));
        }
    }
    req.message_mut().attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    req.execute().await.with_context(|| format!("making neighbour {addr} on link {ifindex} managed"))?;
    Ok(true)
}

/// The neighbour entry of `addr` on `ifindex`, if there is one.
async fn find_neighbour(handle: &Handle, ifindex: u32, addr: IpAddr) -> Result<Option<NeighbourMessage>> {
    let mut entries = handle.neighbours().get().execute();
    while let Some(m) = entries.try_next().await.context("listing neighbours")? {
        let dst = m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        });
        if m.header.ifindex == ifindex && dst == Some(addr) {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Deletes a neighbour entry; one that is gone already is fine.
///
/// # Errors
/// Netlink fails for another reason.
pub async fn delete_neighbour(handle: &Handle, ifindex: u32, addr: IpAddr) -> Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = ifindex;
    msg.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.attributes.push(NeighbourAttribute::Destination(addr.into()));
    match handle.neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting neighbour {addr} on link {ifindex}")),
    }
}

/// Adds a route to `prefix` through link `ifindex` (no gateway: the tunnel is point to point).
/// Returns false when the kernel has one already (the tunnel's own subnet, for one).
///
/// # Errors
/// Netlink fails.
pub async fn add_route(handle: &Handle, prefix: IpNet, ifindex: u32) -> Result<bool> {
    match handle.route().add(route_message(prefix, ifindex)).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
            log::info!("route {prefix}: the kernel has one already; only the datapath's entry is added");
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("adding route {prefix} dev {ifindex}")),
    }
}

/// Deletes a route `add_route` made (protocol static: the kernel's own routes, such as the
/// tunnel's subnet, are never touched). One that is gone is fine.
///
/// # Errors
/// Netlink fails for another reason.
pub async fn del_route(handle: &Handle, prefix: IpNet, ifindex: u32) -> Result<()> {
    match handle.route().del(route_message(prefix, ifindex)).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting route {prefix} dev {ifindex}")),
    }
}

/// A static route to `prefix` out of `ifindex` (the builder's protocol is static).
fn route_message(prefix: IpNet, ifindex: u32) -> rtnetlink::packet_route::route::RouteMessage {
    match prefix {
        IpNet::V4(p) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(p.network(), p.prefix_len()).output_interface(ifindex).build(),
        IpNet::V6(p) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(p.network(), p.prefix_len()).output_interface(ifindex).build(),
    }
}

/// Adds (`add`) or deletes one of NHRP's routes in the kernel: `prefix` out of `ifindex`,
/// toward `via` (else on the link), with protocol `protocol`, in table `table`. A route that
/// is there already (adding) or gone (deleting) is fine.
///
/// # Errors
/// Netlink fails for another reason.
pub async fn nhrp_route(handle: &Handle, add: bool, prefix: IpNet, ifindex: u32, via: Option<IpAddr>, protocol: u8, table: u32) -> Result<()> {
    use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
    let scope = if via.is_some() { RouteScope::Universe } else { RouteScope::Link };
    let msg = match (prefix, via) {
        (IpNet::V4(p), via) => {
            let b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(p.network(), p.prefix_len()).output_interface(ifindex);
            let b = if let Some(IpAddr::V4(g)) = via { b.gateway(g) } else { b };
            b.protocol(RouteProtocol::from(protocol)).scope(scope).table_id(table).build()
        }
        (IpNet::V6(p), via) => {
            let b = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(p.network(), p.prefix_len()).output_interface(ifindex);
            let b = if let Some(IpAddr::V6(g)) = via { b.gateway(g) } else { b };
            b.protocol(RouteProtocol::from(protocol)).scope(scope).table_id(table).build()
        }
    };
    let r = if add { handle.route().add(msg).execute().await } else { handle.route().del(msg).execute().await };
    match r {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST || e.raw_code() == -libc::ESRCH => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{} route {prefix} dev {ifindex}", if add { "adding" } else { "deleting" })),
    }
}

/// A route of the kernel's main table, as far as the datapath's use of it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: IpNet,
    /// The output link (of a multipath route: its first next hop's).
    pub oif: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// Who installed it (RTPROT_*).
    pub protocol: u8,
    /// Unicast, blackhole, unreachable... (RTN_*).
    pub kind: u8,
    /// The metric: of two routes to one prefix, the lower is used.
    pub priority: u32,
    pub table: u32,
}

/// RT_TABLE_MAIN.
pub const MAIN_TABLE: u32 = 254;

/// RTN_UNICAST: a route that forwards.
pub const RTN_UNICAST: u8 = 1;

/// The kernel's IPv4 and IPv6 routes of the main table and of `extra` (NHRP's own table).
///
/// # Errors
/// Netlink fails.
pub async fn kernel_routes(handle: &Handle, extra: u32) -> Result<Vec<KernelRoute>> {
    use rtnetlink::packet_route::route::RouteMessage;
    let mut out = Vec::new();
    let dumps = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for request in dumps {
        let mut routes = handle.route().get(request).execute();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            let msg: RouteMessage = msg;
            let mut table = u32::from(msg.header.table);
            let (mut dst, mut oif, mut gateway, mut priority) = (None, None, None, 0);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(d) => dst = route_addr(d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(g) => gateway = route_addr(g),
                    RouteAttribute::Priority(p) => priority = *p,
                    RouteAttribute::MultiPath(hops) if oif.is_none() => {
                        if let Some(h) = hops.first() {
                            oif = Some(h.interface_index);
                            gateway = h.attributes.iter().find_map(|a| if let RouteAttribute::Gateway(g) = a { route_addr(g) } else { None });
                        }
                    }
                    _ => {}
                }
            }
            if table != MAIN_TABLE && table != extra {
                continue;
            }
            let len = msg.header.destination_prefix_length;
            let dst = dst.unwrap_or(if msg.header.address_family == AddressFamily::Inet6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            let Ok(prefix) = IpNet::new(dst, len) else { continue };
            out.push(KernelRoute { prefix, oif, gateway, protocol: msg.header.protocol.into(), kind: msg.header.kind.into(), priority, table });
        }
    }
    Ok(out)
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The addresses of link `ifindex` with their prefix lengths, IPv6 link-local ones left out.
///
/// # Errors
/// Netlink fails.
pub async fn addresses(handle: &Handle, ifindex: u32) -> Result<Vec<IpNet>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(ifindex).execute();
    while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) = attr
                && !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
                && let Ok(net) = IpNet::new(*a, msg.header.prefix_len)
            {
                out.push(net);
            }
        }
    }
    Ok(out)
}

/// How XDP is attached to link `ifindex`: "native", "skb", or `None` when it is not.
///
/// # Errors
/// Netlink fails.
pub async fn xdp_mode(handle: &Handle, ifindex: u32) -> Result<Option<&'static str>> {
    use rtnetlink::packet_route::link::{LinkXdp, XdpAttached};
    let mut links = handle.link().get().match_index(ifindex).execute();
    let Some(msg) = links.try_next().await.with_context(|| format!("looking up link {ifindex}"))? else { return Ok(None) };
    for attr in &msg.attributes {
        if let LinkAttribute::Xdp(xdp) = attr {
            for x in xdp {
                match x {
                    LinkXdp::Attached(XdpAttached::Driver) => return Ok(Some("native")),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => return Ok(Some("skb")),
                    _ => {}
                }
            }
        }
    }
    Ok(None)
}

/// The first IPv4 address of link `ifindex`.
///
/// # Errors
/// Netlink fails.
pub async fn first_ipv4(handle: &Handle, ifindex: u32) -> Result<Option<Ipv4Addr>> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut addrs = handle.address().get().set_link_index_filter(ifindex).execute();
    while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr {
                return Ok(Some(*a));
            }
        }
    }
    Ok(None)
}

/// Brings a link up.
///
/// # Errors
/// Netlink fails.
pub async fn up(handle: &Handle, index: u32) -> Result<()> {
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.with_context(|| format!("bringing up link {index}"))
}

/// Sets a link's MTU.
///
/// # Errors
/// Netlink fails.
pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<()> {
    handle.link().set(LinkUnspec::new_with_index(index).mtu(mtu).build()).execute().await.with_context(|| format!("setting MTU {mtu} on link {index}"))
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

/// The name of a link in this namespace, or `if<index>` when it is gone.
pub fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        format!("if{index}")
    } else {
        // SAFETY: on success the buffer holds a NUL-terminated name.
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }
}
