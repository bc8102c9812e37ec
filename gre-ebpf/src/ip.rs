//! Edits of IP headers in the packet, as a router makes them: TTL / hop limit, ECN CE, with the
//! IPv4 header checksum updated incrementally (RFC 1624).

use gre_common::gre::{ECN_CE, IPV4_HLEN};

use crate::{
    csum,
    packet::{Packet, bytes},
};

/// Decrements the TTL (IPv4) or hop limit (IPv6) of the header at `at`.
#[inline(always)]
pub fn decrement_ttl<P: Packet>(p: &P, at: usize, v6: bool) -> Option<()> {
    if v6 {
        let b = bytes::<8, P>(p, at)?;
        // SAFETY: bounds checked by `bytes`; the hop limit is byte 7.
        unsafe { (*b)[7] -= 1 };
    } else {
        let h = bytes::<IPV4_HLEN, P>(p, at)?;
        // SAFETY: bounds checked by `bytes`.
        let h = unsafe { &mut *h };
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        update_checksum(h, old, u16::from_be_bytes([h[8], h[9]]));
    }
    Some(())
}

/// Marks the IPv4 header at `at` Congestion Experienced.
#[inline(always)]
pub fn set_ce_ipv4<P: Packet>(p: &P, at: usize) -> Option<()> {
    let h = bytes::<IPV4_HLEN, P>(p, at)?;
    // SAFETY: bounds checked by `bytes`.
    let h = unsafe { &mut *h };
    let old = u16::from_be_bytes([h[0], h[1]]);
    h[1] |= ECN_CE;
    update_checksum(h, old, u16::from_be_bytes([h[0], h[1]]));
    Some(())
}

/// Marks the IPv6 header at `at` Congestion Experienced (bits 4-5 of its second byte).
#[inline(always)]
pub fn set_ce_ipv6<P: Packet>(p: &P, at: usize) -> Option<()> {
    let b = bytes::<2, P>(p, at)?;
    // SAFETY: bounds checked by `bytes`.
    unsafe { (*b)[1] |= ECN_CE << 4 };
    Some(())
}

/// Incremental IPv4 header checksum update for one changed 16-bit word.
#[inline(always)]
fn update_checksum(h: &mut [u8; IPV4_HLEN], old: u16, new: u16) {
    let sum = u64::from(!u16::from_be_bytes([h[10], h[11]])) + u64::from(!old) + u64::from(new);
    h[10..12].copy_from_slice(&(!csum::fold(sum)).to_be_bytes());
}
