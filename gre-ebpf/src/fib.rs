//! Underlay next hops through the kernel's FIB (`bpf_fib_lookup`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
    macros::map,
    maps::PerCpuArray,
};
use gre_common::maps::{Tunnel, tunnel_flags};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Per-CPU room for a FIB request: 64 bytes the programs' 512-byte stacks cannot spare.
#[map]
static FIB_REQUEST: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's request, zeroed.
#[inline(always)]
fn request() -> Option<&'static mut bpf_fib_lookup> {
    let p = FIB_REQUEST.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, used by one program run at a time; all-zero is a valid skeleton.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        Some(&mut *p)
    }
}

/// The (source, destination) MACs toward a tunnel's `remote` on its underlay interface, when the
/// route and the neighbour are known; `None` otherwise.
#[inline(always)]
pub fn tunnel_next_hop(ctx: *mut c_void, t: &Tunnel, remote: &[u8; 16]) -> Option<([u8; 6], [u8; 6])> {
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

/// An address as the four network-order words the FIB request wants.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Where the kernel would forward a packet: egress port and MACs.
pub struct Forward {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The kernel's forwarding decision for an IP packet arriving on `in_ifindex`, when it is a
/// plain unicast forward with a resolved neighbour that fits the egress MTU; `None` for
/// anything else (local delivery, no route or neighbour, too big, forwarding off), which the
/// kernel must then handle itself.
#[inline(always)]
pub fn forward(ctx: *mut c_void, v6: bool, src: &[u8; 16], dst: &[u8; 16], tos_or_flow: u32, tot_len: u16, in_ifindex: u32) -> Option<Forward> {
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
    (r == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(Forward { ifindex: p.ifindex, smac: p.smac, dmac: p.dmac })
}
