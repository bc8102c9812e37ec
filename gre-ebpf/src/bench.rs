//! Programs of `cargo xtask bench` only, never attached by `gre`: a frame generator run with
//! BPF_PROG_TEST_RUN's live frames, a plain redirect hop (the baseline the datapath's hops are
//! compared with) and a sink that counts what reaches the end of a pipeline.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use gre_common::{
    gre::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_GRE},
    maps::{BENCH_HEAD, BenchFrame},
};

use crate::packet::read;

const IPPROTO_UDP: u8 = 17;

/// The frame the generator writes (index 0).
#[map]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// Where the generator (index 0) and the hop (index 1) send frames.
#[map]
static BENCH_PORTS: DevMap = DevMap::with_max_entries(2, 0);

/// Frames that reached the sink, per CPU.
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Live frames are recycled with whatever the pipeline wrote into them, so every frame is
/// written afresh: the same head each time, with a random destination when asked.
#[xdp]
pub fn gre_bench_gen(ctx: XdpContext) -> u32 {
    let Some(f) = BENCH_FRAME.get(0) else { return xdp_action::XDP_ABORTED };
    // In 1..=BENCH_HEAD, in a form the verifier can bound.
    #[expect(clippy::cast_possible_truncation, reason = "BENCH_HEAD is small")]
    let len = (f.len.wrapping_sub(1) & (BENCH_HEAD as u32 - 1)) + 1;
    // SAFETY: `head` has `len` readable bytes; the helper checks the packet's bounds.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, f.head.as_ptr().cast_mut().cast(), len) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    if f.spread > 1 {
        // SAFETY: helper without arguments.
        let mut dst = (f.spread_base.wrapping_add(unsafe { bpf_get_prandom_u32() } % f.spread)).to_be_bytes();
        // SAFETY: four bytes of `dst`; the helper checks the packet's bounds.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, f.spread_at, dst.as_mut_ptr().cast(), 4) } != 0 {
            return xdp_action::XDP_ABORTED;
        }
    }
    BENCH_PORTS.redirect(0, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// The parse-only baseline: reads what decapsulation reads before any lookup (Ethernet, VLAN,
/// outer IPv4 or IPv6, GRE with its options), and passes the frame.
#[xdp]
pub fn gre_bench_parse(ctx: XdpContext) -> u32 {
    match crate::decap::parse(&ctx) {
        Ok(parsed) => {
            // Kept, so that the compiler cannot leave the parsing out.
            core::hint::black_box(parsed);
            xdp_action::XDP_PASS
        }
        Err(Ok(action)) => action,
        Err(Err(_)) => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn gre_bench_hop(_ctx: XdpContext) -> u32 {
    BENCH_PORTS.redirect(1, 0).unwrap_or(xdp_action::XDP_ABORTED)
}

/// Counts the generator's frames (UDP over IPv4 or IPv6, or GRE carrying it), not what the
/// kernel of the sink's namespace sends on its own (neighbour discovery, MLD), and drops
/// everything.
#[xdp]
pub fn gre_bench_sink(ctx: XdpContext) -> u32 {
    let ours = |proto: u8| proto == IPPROTO_UDP || proto == IPPROTO_GRE;
    let counted = match read::<24, _>(&ctx, 0) {
        Some(h) => match u16::from_be_bytes([h[12], h[13]]) {
            ETH_P_IPV4 => ours(h[23]),
            ETH_P_IPV6 => ours(h[20]),
            _ => false,
        },
        None => false,
    };
    if counted && let Some(c) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}
