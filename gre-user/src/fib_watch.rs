//! What the fast paths' cached FIB answers depend on — routes, neighbours, addresses, links —
//! watched over netlink: `gre daemon` marks the answers stale on every change, so the datapath
//! never acts on an answer the kernel has since changed (without the daemon, answers live at
//! most 100 ms).

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

use crate::maps::Maps;

/// rtnetlink multicast groups (linux/rtnetlink.h, the legacy bit masks).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// A netlink socket subscribed to the changes, non-blocking.
pub struct FibWatch(OwnedFd);

impl std::os::fd::AsRawFd for FibWatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl FibWatch {
    /// # Errors
    /// The socket cannot be opened or bound.
    pub fn new() -> Result<Self> {
        // SAFETY: plain socket creation; the descriptor is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening a netlink socket for route changes");
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_nl to fill in.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or_default();
        addr.nl_groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or_default();
        // SAFETY: binding our socket to an address of the size given.
        if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
            return Err(std::io::Error::last_os_error()).context("subscribing to route, neighbour and link changes");
        }
        Ok(Self(fd))
    }

    /// Reads what the kernel announced; if anything, marks the datapath's answers stale. A
    /// full socket buffer (ENOBUFS: changes were lost) counts as a change too.
    pub fn drain(&self, maps: &mut Maps) {
        let mut buf = [0u8; 16384];
        let mut changed = false;
        loop {
            // SAFETY: receiving into our buffer of its length.
            let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                changed = true;
                continue;
            }
            let e = std::io::Error::last_os_error();
            changed |= e.raw_os_error() == Some(libc::ENOBUFS);
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                break;
            }
        }
        if changed && let Err(e) = maps.mark_fib_changed() {
            log::warn!("{e:#}");
        }
    }
}
