//! The underlay's path MTU. A router with a smaller MTU on the way to a remote answers our
//! DF-marked GRE with ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6). The kernel's
//! GRE module would lower the path MTU toward that remote and make inner senders learn it; here
//! the ICMP reaches the daemon through the error queue of its raw GRE sockets, and the tunnel's
//! netdev MTU (and the datapath's copy) comes down to what the path carries — on a multipoint
//! tunnel, the smallest path among its peers. The kernel then does what it does at any smaller
//! link: ICMP to the senders of forwarded DF packets, smaller segments for its own TCP,
//! fragments for the rest. As the kernel's path MTU exceptions do, the lowering expires after
//! ten minutes; a smaller hop still there sends its ICMP again.

use std::{
    collections::HashMap,
    net::IpAddr,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use gre_common::{
    gre,
    maps::{Tunnel, tunnel_flags},
};
use log::{info, warn};
use socket2::Socket;

use crate::{maps::Maps, netdev};

/// How long a learned path MTU holds (the kernel's net.ipv4.route.mtu_expires default).
const EXPIRES: Duration = Duration::from_mins(10);
/// The smallest path MTU taken from ICMP (the kernel's net.ipv4.route.min_pmtu; IPv6's minimum
/// link MTU).
const MIN_PMTU_V4: u32 = 552;
const MIN_PMTU_V6: u32 = 1280;
/// SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 (linux/errqueue.h).
const ORIGIN_ICMP: u8 = 2;
const ORIGIN_ICMP6: u8 = 3;

/// A tunnel whose MTU was lowered: what it was, and until when the lowering holds.
struct Lowered {
    base: u32,
    until: Instant,
}

/// The path MTUs learned from ICMP, by tunnel id.
pub struct PathMtu {
    handle: rtnetlink::Handle,
    lowered: HashMap<u32, Lowered>,
}

impl PathMtu {
    /// Asks both raw GRE sockets for the ICMP errors about what we sent.
    ///
    /// # Errors
    /// A socket option cannot be set, or netlink cannot be reached.
    pub fn new(v4: &Socket, v6: &Socket) -> Result<Self> {
        let on: libc::c_int = 1;
        for (s, level, name, what) in [(v4, libc::IPPROTO_IP, libc::IP_RECVERR, "IP_RECVERR"), (v6, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, "IPV6_RECVERR")] {
            // SAFETY: setting an int socket option on our own socket.
            if unsafe { libc::setsockopt(s.as_raw_fd(), level, name, (&raw const on).cast(), 4) } != 0 {
                return Err(std::io::Error::last_os_error()).context(what);
            }
        }
        Ok(Self { handle: netdev::connect()?, lowered: HashMap::new() })
    }

    /// Reads every ICMP error queued on `sock` and lowers the tunnels they are about.
    pub async fn drain(&mut self, maps: &mut Maps, sock: &Socket) {
        while let Some((remote, mtu)) = next_error(sock) {
            if let Err(e) = self.learn(maps, remote, mtu).await {
                warn!("path MTU {mtu} toward {remote}: {e:#}");
            }
        }
    }

    /// Gives back their MTU to tunnels whose lowering has expired.
    pub async fn expire(&mut self, maps: &mut Maps) {
        let now = Instant::now();
        let due: Vec<u32> = self.lowered.iter().filter(|(_, l)| l.until <= now).map(|(id, _)| *id).collect();
        for id in due {
            let Some(l) = self.lowered.remove(&id) else { continue };
            let Some(t) = maps.tunnel(id) else { continue };
            match self.set(maps, id, &t, l.base).await {
                Ok(()) => info!("tunnel {id}: path MTU expired, MTU {} again", l.base),
                Err(e) => warn!("tunnel {id}: restoring MTU {}: {e:#}", l.base),
            }
        }
    }

    async fn learn(&mut self, maps: &mut Maps, remote: IpAddr, path_mtu: u32) -> Result<()> {
        let min = if remote.is_ipv4() { MIN_PMTU_V4 } else { MIN_PMTU_V6 };
        let path_mtu = path_mtu.max(min);
        let shown = remote;
        let remote = crate::maps::store_addr(remote);
        for (id, t) in maps.tunnels()? {
            // A multipoint tunnel's peers share its netdev: the smallest path among them is
            // its MTU for all (per-peer path MTUs are not kept), so none is black-holed.
            let ours = if t.flags & tunnel_flags::MULTIPOINT != 0 { maps.is_peer(id, &remote) } else { t.remote == remote };
            if !ours {
                continue;
            }
            let Some(mtu) = u32::try_from(overhead(&t)).ok().and_then(|o| path_mtu.checked_sub(o)) else { continue };
            let base = self.lowered.get(&id).map_or(t.mtu, |l| l.base);
            if mtu >= t.mtu {
                // Nothing smaller than what it has; a repeat only extends the lowering.
                if let Some(l) = self.lowered.get_mut(&id).filter(|_| mtu == t.mtu) {
                    l.until = Instant::now() + EXPIRES;
                }
                continue;
            }
            self.set(maps, id, &t, mtu).await?;
            self.lowered.insert(id, Lowered { base, until: Instant::now() + EXPIRES });
            info!("tunnel {id}: the path toward {shown} carries {path_mtu} bytes: MTU {mtu} (was {})", t.mtu);
        }
        Ok(())
    }

    async fn set(&self, maps: &mut Maps, id: u32, t: &Tunnel, mtu: u32) -> Result<()> {
        // The netdev first: it makes the kernel's senders smaller; then the fast paths' copy.
        netdev::set_mtu(&self.handle, t.netdev_ifindex, mtu).await?;
        maps.set_tunnel_mtu(id, mtu)
    }
}

/// What the outer headers add to a packet of tunnel `t` (and the inner Ethernet header of a
/// gretap): the tunnel MTU is the path MTU less this.
fn overhead(t: &Tunnel) -> usize {
    let mut flags = 0;
    for (f, bit) in [(tunnel_flags::OKEY, gre::FLAG_K), (tunnel_flags::OCSUM, gre::FLAG_C), (tunnel_flags::OSEQ, gre::FLAG_S)] {
        if t.flags & f != 0 {
            flags |= bit;
        }
    }
    let l2 = if t.flags & tunnel_flags::TEB != 0 { gre::ETH_HLEN } else { 0 };
    gre::overhead(t.flags & tunnel_flags::OUTER_V6 != 0, flags) + l2
}

/// The next "too big" error on `sock`'s error queue: the remote our packet was for and the path
/// MTU the router reported. Other errors are read and skipped.
fn next_error(sock: &Socket) -> Option<(IpAddr, u32)> {
    #[repr(C, align(8))]
    struct Control([u8; 256]);
    // The quoted packet from its GRE header on: not needed beyond the read.
    let mut data = [0u8; 128];
    let mut control = Control([0; 256]);
    loop {
        // The kernel puts the original packet's destination here.
        // SAFETY: all-zero is a valid sockaddr_storage / msghdr to fill in.
        let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut to).cast();
        msg.msg_namelen = u32::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or_default();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: every pointer in `msg` is valid for the lengths given.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        if let Some(found) = too_big(&msg).and_then(|mtu| Some((destination(&to)?, mtu))) {
            return Some(found);
        }
    }
}

/// The path MTU of one error-queue message, if it is ICMP "too big".
fn too_big(msg: &libc::msghdr) -> Option<u32> {
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    let err = unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        let mut found = None;
        while !c.is_null() {
            let level_type = ((*c).cmsg_level, (*c).cmsg_type);
            if level_type == (libc::IPPROTO_IP, libc::IP_RECVERR) || level_type == (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) {
                found = Some(libc::CMSG_DATA(c).cast::<libc::sock_extended_err>().read_unaligned());
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
        found?
    };
    let too_big = (err.ee_origin == ORIGIN_ICMP && err.ee_type == 3 && err.ee_code == 4) || (err.ee_origin == ORIGIN_ICMP6 && err.ee_type == 2);
    if !too_big {
        return None;
    }
    Some(err.ee_info)
}

/// The address in a socket address the kernel filled in.
fn destination(a: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(a.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a = unsafe { &*(&raw const *a).cast::<libc::sockaddr_in>() };
            Some(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a = unsafe { &*(&raw const *a).cast::<libc::sockaddr_in6>() };
            Some(IpAddr::from(a.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overhead_of_each_kind_of_tunnel() {
        let t = |flags| Tunnel { flags, ..Tunnel::default() };
        assert_eq!(overhead(&t(0)), 24);
        assert_eq!(overhead(&t(tunnel_flags::OKEY | tunnel_flags::OCSUM | tunnel_flags::OSEQ)), 36);
        assert_eq!(overhead(&t(tunnel_flags::OUTER_V6 | tunnel_flags::OKEY)), 48);
        assert_eq!(overhead(&t(tunnel_flags::TEB | tunnel_flags::OKEY)), 42);
    }
}
