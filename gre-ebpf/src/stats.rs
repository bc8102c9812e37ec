//! Counter updates. Per-CPU maps, so plain adds are race-free.

use crate::maps::{DROPS, TUNNEL_STATS};

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_rx(tunnel: u32, bytes: u64) {
    if let Some(s) = TUNNEL_STATS.get_ptr_mut(tunnel) {
        // SAFETY: as above.
        unsafe {
            (*s).rx_packets += 1;
            (*s).rx_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_tx(tunnel: u32, bytes: u64) {
    if let Some(s) = TUNNEL_STATS.get_ptr_mut(tunnel) {
        // SAFETY: as above.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += bytes;
        }
    }
}
