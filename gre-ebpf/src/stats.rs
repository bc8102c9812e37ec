//! Counter updates. Per-CPU maps, so plain adds are race-free.

use gre_common::{
    addr::Addr,
    drop::COUNT,
    maps::{NbmaKey, TunnelStats},
};

use crate::maps::{DROPS, PEER_STATS, TUNNEL_STATS};

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn with_tunnel(tunnel: u32, f: impl FnOnce(&mut TunnelStats)) {
    if let Some(s) = TUNNEL_STATS.get_ptr_mut(tunnel) {
        // SAFETY: as above.
        f(unsafe { &mut *s });
    }
}

/// Counts a drop against a tunnel; returns the reason so callers can pass it on.
#[inline(always)]
pub fn tunnel_drop(tunnel: u32, reason: u32) -> u32 {
    if reason < COUNT {
        with_tunnel(tunnel, |s| s.drops[reason as usize] += 1);
    }
    reason
}

#[inline(always)]
pub fn count_rx(tunnel: u32, bytes: u64) {
    with_tunnel(tunnel, |s| {
        s.rx_packets += 1;
        s.rx_bytes += bytes;
    });
}

#[inline(always)]
pub fn count_tx(tunnel: u32, bytes: u64) {
    with_tunnel(tunnel, |s| {
        s.tx_packets += 1;
        s.tx_bytes += bytes;
    });
}

#[inline(always)]
pub fn count_keepalive_answered(tunnel: u32) {
    with_tunnel(tunnel, |s| s.keepalives_answered += 1);
}

#[inline(always)]
pub fn count_keepalive_returned(tunnel: u32) {
    with_tunnel(tunnel, |s| s.keepalives_returned += 1);
}

/// A packet decapsulated and forwarded by the fast path: received, and of those fast (one
/// lookup of the tunnel's counters for both).
#[inline(always)]
pub fn count_fast_rx(tunnel: u32, bytes: u64) {
    with_tunnel(tunnel, |s| {
        s.rx_packets += 1;
        s.rx_bytes += bytes;
        s.fast_rx += 1;
    });
}

/// A packet encapsulated by the LAN fast path: sent, and of those fast.
#[inline(always)]
pub fn count_fast_tx(tunnel: u32, bytes: u64) {
    with_tunnel(tunnel, |s| {
        s.tx_packets += 1;
        s.tx_bytes += bytes;
        s.fast_tx += 1;
    });
}

#[inline(always)]
pub fn count_nhrp_punted(tunnel: u32) {
    with_tunnel(tunnel, |s| s.nhrp_punted += 1);
}

/// Counts a packet to (`rx` false) or from a peer of multipoint tunnel `tunnel`, by NBMA address.
#[inline(always)]
pub fn count_peer(tunnel: u32, nbma: &Addr, bytes: u64, rx: bool) -> bool {
    let key = NbmaKey { tunnel, pad0: 0, nbma: *nbma };
    let Some(s) = PEER_STATS.get_ptr_mut(&key) else { return false };
    {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        let s = unsafe { &mut *s };
        if rx {
            s.rx_packets += 1;
            s.rx_bytes += bytes;
        } else {
            s.tx_packets += 1;
            s.tx_bytes += bytes;
        }
    }
    true
}
