//! TC egress encapsulation on the tunnel netdev: IPv4 or IPv6 inner → GRE / IPv4 or IPv6 (with
//! key, sequence and checksum as configured), then `bpf_redirect_neigh` to the underlay so the
//! kernel resolves the next hop and fills the MACs. Outer fields follow ip_gre / ip6_gre: TTL
//! fixed or inherited, TOS fixed or inherited with the inner ECN propagated (RFC 6040, as
//! INET_ECN_encapsulate), DF always set unless `nopmtudisc` (then copied from the inner IPv4
//! header, unless `ignore-df`).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
        BPF_F_ADJ_ROOM_ENCAP_L4_GRE,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head},
    programs::TcContext,
};
use gre_common::{
    addr, drop,
    gre::{
        ECN_CE, ECN_ECT0, ECN_MASK, ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, FLAG_C, FLAG_K, FLAG_S,
        IPPROTO_GRE, IPV4_HLEN, IPV6_HLEN, MAX_LEN, PROTO_TEB,
    },
    maps::{Tunnel, tunnel_flags},
};

use crate::{
    csum, fib,
    maps::{SEQUENCES, TUNNELS, TX_BY_IFINDEX},
    stats,
};

const IP_DF: u16 = 0x4000;
/// The default hop limit, for frames that carry none of their own.
const DEFAULT_TTL: u8 = 64;

/// What the outer header takes from the inner packet.
struct Inner {
    ethertype: u16,
    /// TOS byte / traffic class.
    tos: u8,
    ttl: u8,
    df: bool,
    flowlabel: u32,
}

#[inline(always)]
pub fn try_encap(ctx: &TcContext) -> Result<i32, u32> {
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain u32 copied out at once.
    let id = unsafe { TX_BY_IFINDEX.get(&ifindex) }.copied().ok_or(drop::NO_TX_TUNNEL)?;
    let tunnel = TUNNELS.get(id).ok_or(drop::NO_TX_TUNNEL)?;
    encap(ctx, id, tunnel).map_err(|reason| stats::tunnel_drop(id, reason))
}

#[inline(always)]
fn encap(ctx: &TcContext, id: u32, t: &Tunnel) -> Result<i32, u32> {
    let teb = t.flags & tunnel_flags::TEB != 0;
    // A gretap carries the whole frame: its Ethernet header becomes part of the payload.
    let (inner, protocol, l2) = if teb {
        let frame_type = u16::from_be(ctx.load::<u16>(12).map_err(|_| drop::TRUNCATED)?);
        let inner = if frame_type == ETH_P_IPV4 || frame_type == ETH_P_IPV6 {
            inner(ctx, t)?
        } else {
            // ip_gre sends what carries no TTL with the route's default hop limit.
            Inner { ethertype: frame_type, tos: 0, ttl: DEFAULT_TTL, df: false, flowlabel: 0 }
        };
        (inner, PROTO_TEB, ETH_HLEN)
    } else {
        let inner = inner(ctx, t)?;
        let ethertype = inner.ethertype;
        (inner, ethertype, 0)
    };
    let inner_is_ip = inner.ethertype == ETH_P_IPV4 || inner.ethertype == ETH_P_IPV6;
    let inner_len = ctx.len() - ETH_HLEN as u32 + l2 as u32;
    // SAFETY: reading fields of the context.
    let gso = unsafe { (*ctx.skb.skb).gso_segs > 1 || (*ctx.skb.skb).gso_size != 0 };
    let mut flags = 0u16;
    if t.flags & tunnel_flags::OCSUM != 0 {
        if gso {
            return Err(drop::CHECKSUM_GSO);
        }
        flags |= FLAG_C;
    }
    if t.flags & tunnel_flags::OKEY != 0 {
        flags |= FLAG_K;
    }
    if t.flags & tunnel_flags::OSEQ != 0 {
        flags |= FLAG_S;
    }
    let v6 = t.flags & tunnel_flags::OUTER_V6 != 0;
    let outer_len = if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let outer_type = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    let at = ETH_HLEN + outer_len;

    if !inner_is_ip {
        // ARP and other non-IP frames of a gretap: bpf_skb_adjust_room and bpf_redirect_neigh
        // only take IP packets, so the frame gets a new head and a complete Ethernet header
        // toward the underlay next hop, which must be known (gre up keeps it resolved).
        let (smac, dmac) = fib::tunnel_next_hop(ctx.skb.skb.cast(), t).ok_or(drop::NO_NEIGHBOUR)?;
        let (gre, gre_len) = gre_header(id, t, flags, protocol)?;
        let room = (at + gre_len) as u32;
        // SAFETY: the helper grows the headroom; offsets below are re-checked by store.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, room, 0) } != 0 {
            return Err(drop::ENCAP_FAILED);
        }
        let mut eth = [0u8; ETH_HLEN];
        eth[..6].copy_from_slice(&dmac);
        eth[6..12].copy_from_slice(&smac);
        eth[12..].copy_from_slice(&outer_type.to_be_bytes());
        ctx.store(0, &eth, 0).map_err(|_| drop::ENCAP_FAILED)?;
        store_headers(ctx, t, &inner, inner_len, v6, &gre, gre_len)?;
        if flags & FLAG_C != 0 {
            write_checksum(ctx, at, None)?;
        }
        stats::count_tx(id, u64::from(inner_len));
        // SAFETY: plain redirect to the underlay interface.
        #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
        return Ok(unsafe { bpf_redirect(t.underlay_ifindex, 0) } as i32);
    }

    let (gre, gre_len) = gre_header(id, t, flags, protocol)?;
    let frame_eth: [u8; ETH_HLEN] = if teb { ctx.load(0).map_err(|_| drop::TRUNCATED)? } else { [0; ETH_HLEN] };
    let room = (outer_len + gre_len + l2) as u32;
    let l3_flag = if v6 { BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 } else { BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 };
    // FIXED_GSO keeps gso_size: the tunnel MTU already leaves the room, and without it the kernel
    // would shrink every segment by the header length. A gretap also tells GSO that an inner
    // Ethernet header follows the GRE header.
    let mut adj = u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | l3_flag | BPF_F_ADJ_ROOM_ENCAP_L4_GRE);
    if teb {
        adj |= u64::from(BPF_F_ADJ_ROOM_ENCAP_L2_ETH) | ((ETH_HLEN as u64) << 56);
    }
    #[expect(clippy::cast_possible_wrap, reason = "at most 70")]
    ctx.adjust_room(room as i32, BPF_ADJ_ROOM_MAC, adj).map_err(|_| drop::ENCAP_FAILED)?;
    store_headers(ctx, t, &inner, inner_len, v6, &gre, gre_len)?;
    if teb {
        ctx.store(at + gre_len, &frame_eth, 0).map_err(|_| drop::ENCAP_FAILED)?;
    }
    // bpf_redirect_neigh refuses multicast destinations (IPv6 ND, 224.0.0.x hellos); any unicast
    // MAC will do, the helper writes the real one.
    ctx.store(0, &t.netdev_mac, 0).and_then(|()| ctx.store(12, &outer_type.to_be(), 0)).map_err(|_| drop::ENCAP_FAILED)?;
    if flags & FLAG_C != 0 {
        write_checksum(ctx, at, Some(at + gre_len + l2))?;
    }
    stats::count_tx(id, u64::from(inner_len));
    // SAFETY: no parameters: the kernel looks the next hop up itself.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
    Ok(unsafe { bpf_redirect_neigh(t.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// Writes the outer IP header at ETH_HLEN and the GRE header after it.
#[inline(always)]
fn store_headers(ctx: &TcContext, t: &Tunnel, inner: &Inner, inner_len: u32, v6: bool, gre: &[u8; MAX_LEN], gre_len: usize) -> Result<(), u32> {
    let payload = inner_len + gre_len as u32;
    let stored = if v6 {
        ctx.store(ETH_HLEN, &outer_ipv6(t, inner, payload), 0)
    } else {
        ctx.store(ETH_HLEN, &outer_ipv4(t, inner, payload + IPV4_HLEN as u32), 0)
    };
    let at = ETH_HLEN + if v6 { IPV6_HLEN } else { IPV4_HLEN };
    stored
        .and_then(|()| match gre_len {
            4 => ctx.store(at, &first::<4>(gre), 0),
            8 => ctx.store(at, &first::<8>(gre), 0),
            12 => ctx.store(at, &first::<12>(gre), 0),
            _ => ctx.store(at, gre, 0),
        })
        .map_err(|_| drop::ENCAP_FAILED)
}

#[inline(always)]
fn first<const N: usize>(b: &[u8; MAX_LEN]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

/// Reads what the outer header inherits, and refuses what cannot go into this tunnel.
#[inline(always)]
fn inner(ctx: &TcContext, t: &Tunnel) -> Result<Inner, u32> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| drop::TRUNCATED)?);
    match ethertype {
        ETH_P_IPV4 => {
            let h: [u8; IPV4_HLEN] = ctx.load(ETH_HLEN).map_err(|_| drop::TRUNCATED)?;
            // GRE from this tunnel's own endpoints inside itself: the route to the remote points
            // into the tunnel (ip_tunnel_xmit's "route to self" check).
            if t.flags & tunnel_flags::OUTER_V6 == 0
                && h[9] == IPPROTO_GRE
                && addr::from_v4([h[12], h[13], h[14], h[15]]) == t.local
                && addr::from_v4([h[16], h[17], h[18], h[19]]) == t.remote
            {
                return Err(drop::LOOP);
            }
            Ok(Inner { ethertype, tos: h[1], ttl: h[8], df: h[6] & 0x40 != 0, flowlabel: 0 })
        }
        ETH_P_IPV6 => {
            let h: [u8; IPV6_HLEN] = ctx.load(ETH_HLEN).map_err(|_| drop::TRUNCATED)?;
            if t.flags & tunnel_flags::OUTER_V6 != 0 && h[6] == IPPROTO_GRE && h[8..24] == t.local && h[24..40] == t.remote {
                return Err(drop::LOOP);
            }
            let tos = (h[0] << 4) | (h[1] >> 4);
            let flowlabel = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
            Ok(Inner { ethertype, tos, ttl: h[7], df: true, flowlabel })
        }
        _ => Err(drop::ENCAP_UNSUPPORTED),
    }
}

/// The GRE header (RFC 2784/2890 order: checksum+reserved, key, sequence), checksum field zero.
#[inline(always)]
fn gre_header(id: u32, t: &Tunnel, flags: u16, protocol: u16) -> Result<([u8; MAX_LEN], usize), u32> {
    let mut h = [0u8; MAX_LEN];
    h[..2].copy_from_slice(&flags.to_be_bytes());
    h[2..4].copy_from_slice(&protocol.to_be_bytes());
    let mut at = 4;
    if flags & FLAG_C != 0 {
        at += 4;
    }
    if flags & FLAG_K != 0 {
        h[at..at + 4].copy_from_slice(&t.okey.to_be_bytes());
        at += 4;
    }
    if flags & FLAG_S != 0 {
        let state = SEQUENCES.get_ptr_mut(id).ok_or(drop::ENCAP_FAILED)?;
        #[expect(clippy::cast_possible_truncation, reason = "sequence numbers are 32-bit")]
        // SAFETY: an 8-byte aligned u64 in a map value.
        let seq = unsafe { fetch_add(&raw mut (*state).tx_count, 1) }.wrapping_add(1) as u32;
        h[at..at + 4].copy_from_slice(&seq.to_be_bytes());
        at += 4;
    }
    Ok((h, at))
}

/// Outer TOS: fixed or inherited, with the inner ECN copied (CE becomes ECT(0)).
#[inline(always)]
fn outer_tos(t: &Tunnel, inner: &Inner) -> u8 {
    let base = if t.flags & tunnel_flags::TOS_INHERIT != 0 { inner.tos } else { t.tos };
    let ecn = inner.tos & ECN_MASK;
    (base & !ECN_MASK) | if ecn == ECN_CE { ECN_ECT0 } else { ecn }
}

#[inline(always)]
fn outer_ttl(t: &Tunnel, inner: &Inner) -> u8 {
    if t.ttl == 0 { inner.ttl } else { t.ttl }
}

/// The outer IPv4 header, checksum included. `total` may exceed 65535 for a GSO packet; the
/// kernel rewrites the length of every segment, so it is clamped.
#[inline(always)]
fn outer_ipv4(t: &Tunnel, inner: &Inner, total: u32) -> [u8; IPV4_HLEN] {
    let mut h = [0u8; IPV4_HLEN];
    h[0] = 0x45;
    h[1] = outer_tos(t, inner);
    #[expect(clippy::cast_possible_truncation, reason = "clamped")]
    h[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    let df = if t.flags & tunnel_flags::NOPMTUDISC == 0 {
        true
    } else {
        inner.ethertype == ETH_P_IPV4 && inner.df && t.flags & tunnel_flags::IGNORE_DF == 0
    };
    let (id, frag) = if df {
        (0, IP_DF)
    } else {
        // SAFETY: helper without arguments.
        #[expect(clippy::cast_possible_truncation, reason = "16 random bits")]
        ((unsafe { bpf_get_prandom_u32() }) as u16, 0)
    };
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = outer_ttl(t, inner);
    h[9] = IPPROTO_GRE;
    h[12..16].copy_from_slice(&t.local[12..]);
    h[16..20].copy_from_slice(&t.remote[12..]);
    let c = csum::ipv4_header(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The outer IPv6 header.
#[inline(always)]
fn outer_ipv6(t: &Tunnel, inner: &Inner, payload: u32) -> [u8; IPV6_HLEN] {
    let flowlabel = if t.flags & tunnel_flags::FLOWLABEL_INHERIT != 0 { inner.flowlabel } else { t.flowlabel };
    let word0 = (6u32 << 28) | (u32::from(outer_tos(t, inner)) << 20) | (flowlabel & 0x000f_ffff);
    let mut h = [0u8; IPV6_HLEN];
    h[..4].copy_from_slice(&word0.to_be_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "clamped")]
    h[4..6].copy_from_slice(&(payload.min(0xffff) as u16).to_be_bytes());
    h[6] = IPPROTO_GRE;
    h[7] = outer_ttl(t, inner);
    h[8..24].copy_from_slice(&t.local);
    h[24..40].copy_from_slice(&t.remote);
    h
}

/// Fills the GRE checksum over the GRE header and payload (non-GSO packets only).
///
/// A locally sent TCP or UDP packet may still have its own checksum to be completed
/// (CHECKSUM_PARTIAL: the field holds the pseudo-header sum, and the kernel or the NIC writes the
/// final value only after this program). The GRE checksum must cover the final value, so it is
/// computed as if the inner checksum were already complete; the packet is not changed.
#[inline(always)]
fn write_checksum(ctx: &TcContext, gre: usize, inner_ip: Option<usize>) -> Result<(), u32> {
    let end = ctx.len() as usize;
    let mut sum = csum::sum_range(ctx, gre, end).ok_or(drop::ENCAP_FAILED)?;
    if let Some(adjust) = inner_ip.and_then(|inner| pending_l4_checksum(ctx, inner, end)) {
        sum += adjust;
    }
    let c = !csum::fold(sum);
    ctx.store(gre + 4, &c.to_be_bytes(), 0).map_err(|_| drop::ENCAP_FAILED)
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// If the inner TCP/UDP checksum is pending (the field holds exactly the pseudo-header sum and
/// the segment does not verify), what to add to a sum over the packet as it is to get the sum
/// over the packet with the completed checksum: `~field + final`. `None` when it is complete (or
/// not TCP/UDP, or broken: then the far end sees what was sent).
#[inline(always)]
fn pending_l4_checksum(ctx: &TcContext, inner: usize, end: usize) -> Option<u64> {
    let first: [u8; 1] = ctx.load(inner).ok()?;
    let (l4, proto, pseudo) = if first[0] >> 4 == 4 {
        let h: [u8; IPV4_HLEN] = ctx.load(inner).ok()?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]])).checked_sub(ihl)?;
        let mut addrs = [0u8; 8];
        addrs.copy_from_slice(&h[12..20]);
        (inner + ihl, h[9], csum::sum_words(&addrs) + u64::from(h[9]) + len as u64)
    } else {
        let h: [u8; IPV6_HLEN] = ctx.load(inner).ok()?;
        let len = u64::from(u16::from_be_bytes([h[4], h[5]]));
        let mut addrs = [0u8; 32];
        addrs.copy_from_slice(&h[8..40]);
        (inner + IPV6_HLEN, h[6], csum::sum_words(&addrs) + u64::from(h[6]) + len)
    };
    let field_at = match proto {
        IPPROTO_TCP => l4 + 16,
        IPPROTO_UDP => l4 + 6,
        _ => return None,
    };
    let field = u16::from_be(ctx.load::<u16>(field_at).ok()?);
    let segment = csum::sum_range(ctx, l4, end)?;
    if csum::fold(segment + pseudo) == 0xffff || field != csum::fold(pseudo) {
        return None;
    }
    // The sum of the rest of the segment is segment - field, i.e. segment + ~field.
    let completed = !csum::fold(segment + u64::from(!field) + pseudo);
    Some(u64::from(!field) + u64::from(completed))
}

/// Atomic fetch-and-add (BPF_ATOMIC | BPF_ADD | BPF_FETCH, kernel 5.12+). Written in assembly
/// because the toolchain targets the generic BPF CPU, whose code generator only allows the
/// non-fetching add, and the BPF target has no `AtomicU64::fetch_add`.
///
/// # Safety
/// `ptr` must point to an 8-byte aligned u64 that every writer updates atomically.
#[inline(always)]
unsafe fn fetch_add(ptr: *mut u64, mut value: u64) -> u64 {
    // SAFETY: per the function contract.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            v = inout(reg) value,
            p = in(reg) ptr,
            options(nostack),
        );
    }
    value
}
