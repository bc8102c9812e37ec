//! What the fast paths' cached FIB answers depend on — routes, neighbours, addresses, links,
//! forwarding —
//! watched over netlink: `gre daemon` marks the answers stale on every change, so the datapath
//! never acts on an answer the kernel has since changed (without the daemon, answers live at
//! most 100 ms).

use anyhow::{Context as _, Result};
use rtnetlink::sys;

use crate::maps::Maps;

/// rtnetlink multicast groups (linux/rtnetlink.h, the legacy bit masks).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// RTNLGRP_IPV4_NETCONF and RTNLGRP_IPV6_NETCONF (24, 25) as masks: forwarding turned on or off.
const RTMGRP_IPV4_NETCONF: u32 = 1 << 23;
const RTMGRP_IPV6_NETCONF: u32 = 1 << 24;

/// A netlink socket subscribed to the changes, non-blocking.
pub struct FibWatch(sys::Socket);

impl std::os::fd::AsRawFd for FibWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FibWatch {
    /// # Errors
    /// The socket cannot be opened or bound.
    pub fn new() -> Result<Self> {
        let mut socket = sys::Socket::new(sys::protocols::NETLINK_ROUTE).context("opening a netlink socket for route changes")?;
        let groups = RTMGRP_LINK
            | RTMGRP_NEIGH
            | RTMGRP_IPV4_IFADDR
            | RTMGRP_IPV4_ROUTE
            | RTMGRP_IPV6_IFADDR
            | RTMGRP_IPV6_ROUTE
            | RTMGRP_IPV4_NETCONF
            | RTMGRP_IPV6_NETCONF;
        socket.bind(&sys::SocketAddr::new(0, groups)).context("subscribing to route, neighbour and link changes")?;
        socket.set_non_blocking(true).context("a non-blocking netlink socket")?;
        Ok(Self(socket))
    }

    /// Reads what the kernel announced; if anything, marks the datapath's answers stale. A
    /// full socket buffer (ENOBUFS: changes were lost) counts as a change too. Returns whether
    /// routes may have changed (a route, address or link message, or lost messages): the NHRP
    /// side rereads the kernel's routes then, not on a timer.
    pub fn drain(&self, maps: &mut Maps) -> bool {
        let mut buf = Vec::with_capacity(16384);
        let mut changed = false;
        let mut routes = false;
        loop {
            buf.clear();
            match self.0.recv(&mut buf, 0) {
                Ok(_) => {
                    changed = true;
                    routes |= announces_routes(&buf);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    changed = true;
                    routes = true;
                }
                Err(_) => break,
            }
        }
        if changed && let Err(e) = maps.mark_fib_changed() {
            log::warn!("{e:#}");
        }
        routes
    }
}

/// Whether a datagram of netlink messages holds a route, address or link change. NHRP's own
/// routes (protocol 47, which the daemon exports) do not count: nothing read from the kernel's
/// routes depends on them, and a hub exporting 10 000 would read the table again each time.
fn announces_routes(mut buf: &[u8]) -> bool {
    const TYPES: [u16; 6] = [libc::RTM_NEWROUTE, libc::RTM_DELROUTE, libc::RTM_NEWADDR, libc::RTM_DELADDR, libc::RTM_NEWLINK, libc::RTM_DELLINK];
    // The rtmsg after the 16-byte header: family, dst_len, src_len, tos, table, protocol.
    const RTM_PROTOCOL: usize = 16 + 5;
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let ours = matches!(kind, libc::RTM_NEWROUTE | libc::RTM_DELROUTE) && buf.get(RTM_PROTOCOL) == Some(&crate::kernel_routes::RTPROT_GRE);
        if TYPES.contains(&kind) && !ours {
            return true;
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        if len < 16 || next > buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    false
}
