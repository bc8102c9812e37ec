//! Bounds-checked access to packet bytes, for XDP and TC alike (both expose `data`/`data_end`).
//! Every access is checked against `data_end` right before it, in the form the verifier follows.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// The largest offset we ever form a packet pointer with; keeps variable offsets bounded for the
/// verifier (and is far beyond any frame we handle).
pub const MAX_OFFSET: usize = 0x3fff;

/// Direct packet access.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;

    /// Bytes in the (linear part of the) packet.
    #[inline(always)]
    fn len(&self) -> usize {
        self.data_end() - self.data()
    }

    /// The context pointer itself, for helpers called from a `bpf_loop` callback.
    fn raw(&self) -> *mut c_void;

    /// Copies `len` bytes at `off` into `buf` with the hook's load helper, which checks bounds
    /// itself (and reads non-linear data); non-zero on failure.
    ///
    /// # Safety
    /// `raw` is this hook's context pointer and `buf` has room for `len` bytes.
    unsafe fn load_raw(raw: *mut c_void, off: u32, buf: *mut u8, len: u32) -> i64;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.ctx.cast()
    }
    #[inline(always)]
    unsafe fn load_raw(raw: *mut c_void, off: u32, buf: *mut u8, len: u32) -> i64 {
        // SAFETY: per the contract.
        unsafe { bpf_xdp_load_bytes(raw.cast(), off, buf.cast(), len) }
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.skb.skb.cast()
    }
    #[inline(always)]
    unsafe fn load_raw(raw: *mut c_void, off: u32, buf: *mut u8, len: u32) -> i64 {
        // SAFETY: per the contract.
        unsafe { bpf_skb_load_bytes(raw, off, buf.cast(), len) }
    }
}

/// A pointer to `N` bytes at `off`, or `None` when the packet is shorter.
#[inline(always)]
pub fn bytes<const N: usize, P: Packet>(p: &P, off: usize) -> Option<*mut [u8; N]> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = p.data();
    if start + off + N > p.data_end() {
        return None;
    }
    Some((start + off) as *mut [u8; N])
}

/// A copy of `N` bytes at `off`, taken right after the bounds check: a volatile read, so the
/// compiler cannot move the loads past a point where the verifier has forgotten the check.
#[inline(always)]
pub fn read<const N: usize, P: Packet>(p: &P, off: usize) -> Option<[u8; N]> {
    // SAFETY: bounds checked by `bytes`.
    bytes::<N, P>(p, off).map(|b| unsafe { core::ptr::read_volatile(b) })
}

/// A big-endian u16 at `off`.
#[inline(always)]
pub fn be16<P: Packet>(p: &P, off: usize) -> Option<u16> {
    read::<2, P>(p, off).map(u16::from_be_bytes)
}

/// A big-endian u32 at `off`.
#[inline(always)]
pub fn be32<P: Packet>(p: &P, off: usize) -> Option<u32> {
    read::<4, P>(p, off).map(u32::from_be_bytes)
}
