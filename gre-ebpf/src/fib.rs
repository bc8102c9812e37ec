//! Next hops through the kernel's FIB (`bpf_fib_lookup`), with a short-lived cache in front.
//!
//! A FIB lookup with its neighbour lookup is the largest single cost of a fast-path packet
//! (about a third of the decapsulation program). Answers are kept for `CACHE_NS` per (port,
//! TOS or flow label, source, destination), and what the FIB would not answer (no route,
//! unresolved neighbour, too big) is never cached: the kernel path keeps handling it at once.
//! While `gre daemon` runs, every route, neighbour, address or link change it hears of from
//! netlink marks all answers from before it stale (`FIB_CHANGED`), so a change reaches the fast
//! paths at once; without it, within `CACHE_NS`.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use gre_common::maps::{Peer, Tunnel, tunnel_flags};

use crate::maps::PORTS;

/// How long a cached answer is used.
const CACHE_NS: u64 = 100_000_000;

/// `CacheKey::tos_or_flow` of a tunnel's own next hop: not a TOS byte nor a 20-bit flow label.
const TUNNEL_HOP: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy)]
struct CacheKey {
    ifindex: u32,
    tos_or_flow: u32,
    src: [u8; 16],
    dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CacheEntry {
    ifindex: u32,
    /// The largest packet the FIB has let through this way (it reports the MTU only when a
    /// packet is too big).
    fits: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
    pad0: u32,
    stamp: u64,
}

/// Recent FIB answers. Entries are replaced whole, so a reader never sees half an update.
#[map]
static FIB_CACHE: LruHashMap<CacheKey, CacheEntry> = LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

/// Per-CPU room for a cache key and a new entry: the programs' 512-byte stacks cannot spare
/// them.
#[repr(C)]
struct Scratch {
    key: CacheKey,
    entry: CacheEntry,
}

#[map]
static FIB_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's scratch, with the key filled in.
#[inline(always)]
fn scratch(ifindex: u32, tos_or_flow: u32, src: &[u8; 16], dst: &[u8; 16]) -> Option<&'static mut Scratch> {
    let s = FIB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, used by one program run at a time.
    let s = unsafe { &mut *s };
    s.key = CacheKey { ifindex, tos_or_flow, src: *src, dst: *dst };
    Some(s)
}

/// The cached answer for `key`, fresh or not (a stale one still tells what size got through).
#[inline(always)]
fn cached(key: &CacheKey) -> Option<&'static CacheEntry> {
    // SAFETY: entries are replaced whole, never written in place.
    unsafe { FIB_CACHE.get(key) }
}

/// When the daemon last heard of a change the FIB's answers depend on (CLOCK_MONOTONIC_COARSE,
/// the clock of the stamps): answers stamped before are stale.
#[map]
pub static FIB_CHANGED: Array<u64> = Array::with_max_entries(1, 0);

/// Now, on the clock the caches' stamps use.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether an answer stamped `stamp` may still be used at `now`: young enough, and given after
/// the last change the daemon heard of.
#[inline(always)]
fn fresh(stamp: u64, now: u64) -> bool {
    now.wrapping_sub(stamp) < CACHE_NS && FIB_CHANGED.get(0).is_none_or(|changed| stamp > *changed)
}

#[inline(always)]
fn remember(s: &mut Scratch, ifindex: u32, fits: u32, smac: [u8; 6], dmac: [u8; 6], stamp: u64) {
    s.entry = CacheEntry { ifindex, fits, smac, dmac, pad0: 0, stamp };
    // A full cache evicts its least recently used entry; a failed insert only costs a lookup.
    let _ = FIB_CACHE.insert(&s.key, &s.entry, 0);
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Per-CPU room for a FIB request: 64 bytes the programs' 512-byte stacks cannot spare.
#[map]
static FIB_REQUEST: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's request, zeroed.
#[inline(always)]
fn request() -> Option<&'static mut bpf_fib_lookup> {
    let p = FIB_REQUEST.get_ptr_mut(0)?;
    // Eight stores, not `write_bytes`: that becomes a call to a byte-at-a-time BPF memset.
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 8;
    let w = p.cast::<u64>();
    for i in 0..WORDS {
        // SAFETY: within the 8-byte-aligned per-CPU slot, used by one program run at a time.
        unsafe { w.add(i).write_volatile(0) };
    }
    // SAFETY: as above; all-zero is a valid skeleton.
    Some(unsafe { &mut *p })
}

/// The (source, destination) MACs toward a tunnel's `remote` on its underlay interface, when the
/// route and the neighbour are known; `None` otherwise.
#[inline(always)]
pub fn tunnel_next_hop(ctx: *mut c_void, t: &Tunnel, remote: &[u8; 16]) -> Option<([u8; 6], [u8; 6])> {
    let s = scratch(t.underlay_ifindex, TUNNEL_HOP, &t.local, remote)?;
    let now = now();
    if let Some(e) = cached(&s.key).filter(|e| fresh(e.stamp, now)) {
        return Some((e.smac, e.dmac));
    }
    let r = ask(ctx, t, remote)?;
    remember(s, t.underlay_ifindex, 0, r.0, r.1, now);
    Some(r)
}

/// The FIB's answer for a tunnel's `remote`, uncached.
#[inline(always)]
fn ask(ctx: *mut c_void, t: &Tunnel, remote: &[u8; 16]) -> Option<([u8; 6], [u8; 6])> {
    let p = request()?;
    p.ifindex = t.underlay_ifindex;
    if t.flags & tunnel_flags::OUTER_V6 != 0 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&t.local);
        p.__bindgen_anon_4.ipv6_dst = words(remote);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([t.local[12], t.local[13], t.local[14], t.local[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([remote[12], remote[13], remote[14], remote[15]]);
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "a small struct")]
    // SAFETY: `p` is a valid request of the size given; `ctx` is the program's context.
    let r = unsafe { fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_OUTPUT) };
    (r == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some((p.smac, p.dmac))
}

/// The (source, destination) MACs toward multipoint peer `p` on the tunnel's underlay: kept in
/// the peer's entry for `CACHE_NS`, asked of the FIB otherwise. The entry is written in place
/// (MACs, then time) by whichever CPU finds it stale; what it writes is nearly always what was
/// there, so a reader on another CPU at that moment still reads a valid next hop.
#[inline(always)]
pub fn peer_next_hop(ctx: *mut c_void, t: &Tunnel, p: *mut Peer) -> Option<([u8; 6], [u8; 6])> {
    let now = now();
    // SAFETY: `p` is a peer map value; see above for concurrent writers.
    unsafe {
        if fresh((*p).hop_ns, now) {
            let m = (*p).hop_macs;
            return Some(([m[0], m[1], m[2], m[3], m[4], m[5]], [m[6], m[7], m[8], m[9], m[10], m[11]]));
        }
    }
    // SAFETY: as above.
    let nbma = unsafe { (*p).nbma };
    let r = ask(ctx, t, &nbma)?;
    // SAFETY: as above.
    unsafe {
        (*p).hop_macs = [r.0[0], r.0[1], r.0[2], r.0[3], r.0[4], r.0[5], r.1[0], r.1[1], r.1[2], r.1[3], r.1[4], r.1[5]];
        (*p).hop_ns = now;
    }
    Some(r)
}

/// An address as the four network-order words the FIB request wants.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Whether the kernel would forward an IP packet arriving on `in_ifindex` into the tunnel
/// netdev `netdev_ifindex`: a unicast route through it (not a more specific one elsewhere, not
/// one of our own addresses, not a broadcast), forwarding on, the packet within its MTU. Asked
/// of the FIB without the neighbour (the tunnel netdev has none), and cached as the forwarding
/// answers are.
#[inline(always)]
pub fn routes_into(ctx: *mut c_void, inner: &crate::headers::Inner, tot_len: u16, in_ifindex: u32, netdev_ifindex: u32) -> bool {
    let v6 = inner.ethertype == gre_common::gre::ETH_P_IPV6;
    let tos_or_flow = if v6 { u32::from(inner.tos) << 20 | inner.flowlabel } else { u32::from(inner.tos) };
    let Some(s) = scratch(in_ifindex, tos_or_flow, &inner.src, &inner.dst) else { return false };
    if let Some(e) = cached(&s.key).filter(|e| fresh(e.stamp, now()) && u32::from(tot_len) <= e.fits) {
        return e.ifindex == netdev_ifindex;
    }
    let Some(p) = request() else { return false };
    p.ifindex = in_ifindex;
    p.__bindgen_anon_1.tot_len = tot_len;
    if v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = tos_or_flow.to_be();
        p.__bindgen_anon_3.ipv6_src = words(&inner.src);
        p.__bindgen_anon_4.ipv6_dst = words(&inner.dst);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = inner.tos;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([inner.src[12], inner.src[13], inner.src[14], inner.src[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([inner.dst[12], inner.dst[13], inner.dst[14], inner.dst[15]]);
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "a small struct")]
    // SAFETY: `p` is a valid request of the size given; `ctx` is the program's context.
    let r = unsafe { fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_SKIP_NEIGH) };
    if r != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || p.ifindex != netdev_ifindex {
        return false;
    }
    // Only the egress matters here (no MACs: the tunnel netdev has no neighbours).
    remember(s, netdev_ifindex, u32::from(tot_len), [0; 6], [0; 6], now());
    true
}

/// Where the kernel would forward a packet: egress port and MACs.
pub struct Forward {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The kernel's forwarding decision for an IP packet arriving on `in_ifindex`, when it is a
/// plain unicast forward out of a fast-path port (`PORTS`) with a resolved neighbour that fits
/// the egress MTU; `None` for anything else (local delivery, no route or neighbour, too big,
/// forwarding off), which the kernel must then handle itself.
#[inline(always)]
pub fn forward(ctx: *mut c_void, v6: bool, src: &[u8; 16], dst: &[u8; 16], tos_or_flow: u32, tot_len: u16, in_ifindex: u32) -> Option<Forward> {
    let s = scratch(in_ifindex, tos_or_flow, src, dst)?;
    if let Some(e) = cached(&s.key).filter(|e| fresh(e.stamp, now()) && u32::from(tot_len) <= e.fits) {
        return Some(Forward { ifindex: e.ifindex, smac: e.smac, dmac: e.dmac });
    }
    let p = request()?;
    p.ifindex = in_ifindex;
    p.__bindgen_anon_1.tot_len = tot_len;
    if v6 {
        p.family = AF_INET6;
        p.__bindgen_anon_2.flowinfo = tos_or_flow.to_be();
        p.__bindgen_anon_3.ipv6_src = words(src);
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    } else {
        p.family = AF_INET;
        #[expect(clippy::cast_possible_truncation, reason = "the TOS byte")]
        {
            p.__bindgen_anon_2.tos = tos_or_flow as u8;
        }
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[12], src[13], src[14], src[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[12], dst[13], dst[14], dst[15]]);
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "a small struct")]
    // SAFETY: `p` is a valid request of the size given; `ctx` is the program's context.
    let r = unsafe { fib_lookup(ctx, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    // Only a port the fast paths may redirect to is an answer (checked here, once per cached
    // answer, rather than for every packet).
    if r != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || PORTS.get(p.ifindex).is_none() {
        return None;
    }
    // What fits is the largest size asked while the answer holds (a hit for a larger packet asks
    // the FIB again). A stale entry's size is not carried over: the egress MTU may have come
    // down since. Looked up again rather than kept from above: this program's stack has no room
    // to spare across the FIB call, and this is the miss path.
    let fits = match cached(&s.key) {
        Some(e) if fresh(e.stamp, now()) => u32::from(tot_len).max(e.fits),
        _ => u32::from(tot_len),
    };
    remember(s, p.ifindex, fits, p.smac, p.dmac, now());
    Some(Forward { ifindex: p.ifindex, smac: p.smac, dmac: p.dmac })
}
