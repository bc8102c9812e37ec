//! Bounds-checked access to XDP packet bytes. Every access is checked against `data_end` right
//! before it, in the form the verifier can follow.

use aya_ebpf::programs::XdpContext;

/// A pointer to `N` bytes at `off`, or `None` when the packet is shorter.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + N > end {
        return None;
    }
    Some((start + off) as *mut [u8; N])
}

/// A big-endian u16 at `off`.
#[inline(always)]
pub fn be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    // SAFETY: bounds checked by `bytes`.
    bytes::<2>(ctx, off).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// A big-endian u32 at `off`.
#[inline(always)]
pub fn be32(ctx: &XdpContext, off: usize) -> Option<u32> {
    // SAFETY: bounds checked by `bytes`.
    bytes::<4>(ctx, off).map(|p| u32::from_be_bytes(unsafe { *p }))
}
