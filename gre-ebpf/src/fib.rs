//! Underlay next hops through the kernel's FIB (`bpf_fib_lookup`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup},
    helpers::bpf_fib_lookup as fib_lookup,
};
use gre_common::maps::{Tunnel, tunnel_flags};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The (source, destination) MACs toward a tunnel's remote on its underlay interface, when the
/// route and the neighbour are known; `None` otherwise.
#[inline(always)]
pub fn tunnel_next_hop(ctx: *mut c_void, t: &Tunnel) -> Option<([u8; 6], [u8; 6])> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.ifindex = t.underlay_ifindex;
    if t.flags & tunnel_flags::OUTER_V6 != 0 {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(&t.local);
        p.__bindgen_anon_4.ipv6_dst = words(&t.remote);
    } else {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([t.local[12], t.local[13], t.local[14], t.local[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([t.remote[12], t.remote[13], t.remote[14], t.remote[15]]);
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_possible_wrap, reason = "a small struct")]
    // SAFETY: `p` is a valid request of the size given; `ctx` is the program's context.
    let r = unsafe { fib_lookup(ctx, &raw mut p, core::mem::size_of::<bpf_fib_lookup>() as i32, BPF_FIB_LOOKUP_OUTPUT) };
    (r == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some((p.smac, p.dmac))
}

/// An address as the four network-order words the FIB request wants.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}
