//! Multicast on a multipoint tunnel (routing-protocol hellos) goes to every peer mapped for
//! multicast. The encapsulation writes the headers for the first peer and tail-calls this
//! program (a stack of its own), which sends a clone to each other peer — its outer destination,
//! checksum and MACs rewritten — in a `bpf_loop`, whose body the verifier checks once however
//! many peers there are, and at the end sends the packet itself to the first peer.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_INGRESS, TC_ACT_SHOT},
    helpers::{bpf_clone_redirect, bpf_loop, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use gre_common::{
    addr::Addr,
    drop,
    gre::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, IPV4_HLEN},
    maps::{MAX_MULTICAST_PEERS, TAIL_REPLICATE, Tunnel, tunnel_flags},
};

use crate::{
    csum, encap, fib,
    maps::{MULTICAST, REPLICATION, TAIL_CALLS, TUNNELS},
    stats,
};

/// Starts the replication of the packet in `ctx` (headers written for peer 0). Returns only if
/// the tail call failed.
#[inline(always)]
pub fn start(ctx: &TcContext, id: u32, inner_len: u32) {
    if let Some(state) = REPLICATION.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, used by one program run at a time.
        unsafe { *state = [id, inner_len] };
        // SAFETY: the slot holds our replication program, or the call falls through.
        unsafe { TAIL_CALLS.tail_call(ctx, TAIL_REPLICATE) };
    }
}

/// State shared with the `bpf_loop` callback.
#[repr(C)]
struct Clones {
    skb: *mut __sk_buff,
    id: u32,
    inner_len: u32,
}

#[inline(always)]
pub fn step(ctx: &TcContext) -> i32 {
    let Some(state) = REPLICATION.get_ptr_mut(0) else { return TC_ACT_SHOT };
    // SAFETY: as above.
    let [id, inner_len] = unsafe { *state };
    let (Some(t), Some(list)) = (TUNNELS.get(id), MULTICAST.get(id)) else { return TC_ACT_SHOT };
    let count = list.count.min(MAX_MULTICAST_PEERS as u32);
    let mut clones = Clones { skb: ctx.skb.skb, id, inner_len };
    // Peers 1.. get clones; peer 0 the packet itself, last.
    // SAFETY: the callback touches only `clones`, maps, and the packet through helpers.
    unsafe { bpf_loop(count.saturating_sub(1), clone_to_peer as *mut c_void, (&raw mut clones).cast(), 0) };
    let first = list.nbma[0];
    if rewrite(ctx, t, &first).is_none() {
        return TC_ACT_SHOT;
    }
    stats::count_tx(id, u64::from(inner_len));
    stats::count_peer(id, &first, u64::from(inner_len), false);
    if encap::protected(t) {
        // To the datapath end, as encap.rs sends a protected tunnel's unicast.
        // SAFETY: a redirect into the tunnel netdev's own datapath end.
        #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
        return unsafe { bpf_redirect(t.inject_ifindex, u64::from(BPF_F_INGRESS)) } as i32;
    }
    // SAFETY: no parameters: the kernel looks the next hop up itself.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
    let r = unsafe { bpf_redirect_neigh(t.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    r
}

/// Round `i`: a clone to peer `i + 1`, its next hop resolved (replicas bypass the neighbour
/// layer; `gre up` and `gre daemon` keep the next hops of multicast peers resolved).
extern "C" fn clone_to_peer(i: u64, state: *mut c_void) -> i64 {
    // SAFETY: `state` is the Clones that `step` passed.
    let c = unsafe { &*state.cast::<Clones>() };
    let (Some(t), Some(list)) = (TUNNELS.get(c.id), MULTICAST.get(c.id)) else { return 1 };
    #[expect(clippy::cast_possible_truncation, reason = "masked to the list size")]
    let nbma = list.nbma[((i + 1) as usize) & (MAX_MULTICAST_PEERS - 1)];
    let ctx = TcContext::new(c.skb);
    if rewrite(&ctx, t, &nbma).is_some() {
        let sent = if encap::protected(t) {
            // SAFETY: a clone of this packet into the datapath end, as protected unicast goes.
            unsafe { bpf_clone_redirect(c.skb, t.inject_ifindex, u64::from(BPF_F_INGRESS)) }
        } else {
            // SAFETY: a clone of this packet to the underlay.
            unsafe { bpf_clone_redirect(c.skb, t.underlay_ifindex, 0) }
        };
        if sent == 0 {
            stats::count_tx(c.id, u64::from(c.inner_len));
            stats::count_peer(c.id, &nbma, u64::from(c.inner_len), false);
        }
    } else {
        stats::tunnel_drop(c.id, drop::NO_NEIGHBOUR);
    }
    0
}

/// Points the outer header at `nbma` (IPv4 checksum recomputed) and fills the MACs toward it.
#[inline(always)]
fn rewrite(ctx: &TcContext, t: &Tunnel, nbma: &Addr) -> Option<()> {
    let (smac, dmac) = if encap::protected(t) { (t.netdev_mac, t.inject_mac) } else { fib::tunnel_next_hop(ctx.skb.skb.cast(), t, nbma)? };
    let v6 = t.flags & tunnel_flags::OUTER_V6 != 0;
    if v6 {
        ctx.store(ETH_HLEN + 24, nbma, 0).ok()?;
    } else {
        let mut ip: [u8; IPV4_HLEN] = ctx.load(ETH_HLEN).ok()?;
        ip[16..20].copy_from_slice(&nbma[12..]);
        ip[10] = 0;
        ip[11] = 0;
        let c = csum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ctx.store(ETH_HLEN, &ip, 0).ok()?;
    }
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&dmac);
    eth[6..12].copy_from_slice(&smac);
    eth[12..].copy_from_slice(&(if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 }).to_be_bytes());
    ctx.store(0, &eth, 0).ok()
}
