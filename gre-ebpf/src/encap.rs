//! TC egress encapsulation on the tunnel netdev: IPv4 or IPv6 inner → GRE / IPv4 or IPv6 (with
//! key, sequence and checksum as configured), then `bpf_redirect_neigh` to the underlay so the
//! kernel resolves the next hop and fills the MACs. Outer fields follow ip_gre / ip6_gre: TTL
//! fixed or inherited, TOS fixed or inherited with the inner ECN propagated (RFC 6040, as
//! INET_ECN_encapsulate), DF always set unless `nopmtudisc` (then copied from the inner IPv4
//! header, unless `ignore-df`).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_GRE, BPF_F_ADJ_ROOM_FIXED_GSO,
        TC_ACT_OK, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_head, bpf_skb_store_bytes, bpf_skb_vlan_pop},
    programs::TcContext,
};
use gre_common::{
    addr, drop,
    gre::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, FLAG_C, IPPROTO_GRE, IPV4_HLEN, IPV6_HLEN, PROTO_TEB, VLAN_HLEN},
    maps::{MAX_MULTICAST_PEERS, Tunnel, tunnel_flags},
};

use crate::{
    csum, fib,
    headers::{self, DEFAULT_TTL, HEADERS_MAX, Headers, Inner},
    limit,
    maps::{LIMITS, MULTICAST, TUNNELS, TX_BY_IFINDEX},
    peers, replicate, stats,
};

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
    if t.flags & tunnel_flags::PROTECTED != 0 && ifindex_of(ctx) != t.netdev_ifindex && is_own_gre(ctx, t) {
        // Our own output of a protected tunnel, on its way into the kernel's forwarding, where
        // xfrm applies the ESP policy (or blocks it): an inner packet can never look like this,
        // `inner` refuses GRE from the local address into a protected tunnel.
        return Ok(TC_ACT_OK);
    }
    let teb = t.flags & tunnel_flags::TEB != 0;
    // SAFETY: reading a field of the context.
    if teb && unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        tag_inside(ctx)?;
    }
    // A gretap carries the whole frame: its Ethernet header becomes part of the payload.
    let (inner, protocol, l2) = if teb {
        let frame_type = u16::from_be(ctx.load::<u16>(12).map_err(|_| drop::TRUNCATED)?);
        let inner = if frame_type == ETH_P_IPV4 || frame_type == ETH_P_IPV6 {
            inner(ctx, t)?
        } else {
            // ip_gre sends what carries no TTL with the route's default hop limit.
            Inner { ethertype: frame_type, tos: 0, ttl: DEFAULT_TTL, df: false, flowlabel: 0, hash: 0, protocol: 0, src: [0; 16], dst: [0; 16] }
        };
        (inner, PROTO_TEB, ETH_HLEN)
    } else {
        let inner = inner(ctx, t)?;
        let ethertype = inner.ethertype;
        (inner, ethertype, 0)
    };
    let mut inner = inner;
    if t.flags & tunnel_flags::OUTER_V6 != 0 {
        // SAFETY: the skb of this program run.
        inner.hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    }
    let inner_is_ip = inner.ethertype == ETH_P_IPV4 || inner.ethertype == ETH_P_IPV6;
    let inner_len = ctx.len() - ETH_HLEN as u32 + l2 as u32;
    // SAFETY: reading fields of the context.
    let gso = unsafe { (*ctx.skb.skb).gso_segs > 1 || (*ctx.skb.skb).gso_size != 0 };
    if gso && t.flags & (tunnel_flags::OCSUM | tunnel_flags::OSEQ) != 0 && ifindex_of(ctx) == t.netdev_ifindex {
        // Each segment needs its own checksum or number: on through the tunnel netdev, whose
        // GSO is off (gso_max_segs 1), so the kernel segments it; the segments come back to
        // this program at the ingress of the netdev's datapath end, one by one.
        return Ok(TC_ACT_OK);
    }
    let flags = headers::tx_flags(t, gso)?;
    let v6 = t.flags & tunnel_flags::OUTER_V6 != 0;
    let outer_type = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    // A multipoint tunnel sends each packet to the NBMA address of its overlay next hop.
    // Multicast on a multipoint tunnel goes to every peer mapped for it (see replicate.rs).
    let multicast = t.flags & tunnel_flags::MULTIPOINT != 0 && !teb && peers::is_multicast(&inner.dst);
    let remote = if multicast {
        // Replication multiplies: only the tunnel's groups (by default the link-local scopes
        // of routing protocols), at a bounded rate of replicas.
        if !peers::in_groups(t, &inner.dst) {
            return Err(drop::MULTICAST_SCOPE);
        }
        let list = MULTICAST.get(id).filter(|l| l.count > 0).ok_or(drop::NO_PEER)?;
        let limits = LIMITS.get_ptr_mut(id).ok_or(drop::MULTICAST_RATE)?;
        let replicas = u64::from(list.count.min(MAX_MULTICAST_PEERS as u32));
        // SAFETY: this tunnel's slot; a racing CPU can only let a few more through.
        if !limit::allow(unsafe { &mut (*limits).multicast }, replicas, u64::from(t.multicast_rate)) {
            return Err(drop::MULTICAST_RATE);
        }
        list.nbma[0]
    } else if t.flags & tunnel_flags::MULTIPOINT != 0 {
        peers::note_relay(id, t, &inner.src, &inner.dst);
        peers::resolve(id, t, &inner.src, &inner.dst)?
    } else {
        t.remote
    };
    let frame_eth: [u8; ETH_HLEN] = if teb && inner_is_ip { ctx.load(0).map_err(|_| drop::TRUNCATED)? } else { [0; ETH_HLEN] };

    if !inner_is_ip {
        // ARP and other non-IP frames of a gretap: bpf_skb_adjust_room and bpf_redirect_neigh
        // only take IP packets, so the frame gets a new head and a complete Ethernet header
        // toward the underlay next hop, which must be known (gre up keeps it resolved).
        let (smac, dmac) =
            if protected(t) { (t.netdev_mac, t.inject_mac) } else { fib::tunnel_next_hop(ctx.skb.skb.cast(), t, &remote).ok_or(drop::NO_NEIGHBOUR)? };
        let h = headers::build(id, t, &remote, &inner, inner_len, protocol, flags, None)?;
        // SAFETY: the helper grows the headroom; offsets below are re-checked by the helpers.
        if unsafe { bpf_skb_change_head(ctx.skb.skb, (ETH_HLEN + h.len) as u32, 0) } != 0 {
            return Err(drop::ENCAP_FAILED);
        }
        let mut eth = [0u8; ETH_HLEN];
        eth[..6].copy_from_slice(&dmac);
        eth[6..12].copy_from_slice(&smac);
        eth[12..].copy_from_slice(&outer_type.to_be_bytes());
        ctx.store(0, &eth, 0).map_err(|_| drop::ENCAP_FAILED)?;
        store_headers(ctx, &h)?;
        if flags & FLAG_C != 0 {
            write_checksum(ctx, ETH_HLEN + h.gre_at, None)?;
        }
        stats::count_tx(id, u64::from(inner_len));
        if t.flags & tunnel_flags::MULTIPOINT != 0 {
            stats::count_peer(id, &remote, u64::from(inner_len), false);
        }
        if protected(t) {
            return Ok(TC_ACT_OK);
        }
        // SAFETY: plain redirect to the underlay interface.
        #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
        return Ok(unsafe { bpf_redirect(t.underlay_ifindex, 0) } as i32);
    }

    let h = headers::build(id, t, &remote, &inner, inner_len, protocol, flags, teb.then_some(&frame_eth))?;
    let l3_flag = if v6 { BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 } else { BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 };
    // FIXED_GSO keeps gso_size: the tunnel MTU already leaves the room, and without it the kernel
    // would shrink every segment by the header length. A gretap also tells GSO that an inner
    // Ethernet header follows the GRE header.
    let mut adj = u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | l3_flag | BPF_F_ADJ_ROOM_ENCAP_L4_GRE);
    if teb {
        adj |= u64::from(BPF_F_ADJ_ROOM_ENCAP_L2_ETH) | ((ETH_HLEN as u64) << 56);
    }
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "at most HEADERS_MAX")]
    ctx.adjust_room(h.len as i32, BPF_ADJ_ROOM_MAC, adj).map_err(|_| drop::ENCAP_FAILED)?;
    store_headers(ctx, &h)?;
    // bpf_redirect_neigh refuses multicast destinations (IPv6 ND, 224.0.0.x hellos); any unicast
    // MAC will do, the helper writes the real one. A protected tunnel's packet goes to the
    // datapath end as received there (see `to_kernel`).
    let dmac = if protected(t) { &t.inject_mac } else { &t.netdev_mac };
    ctx.store(0, dmac, 0).and_then(|()| ctx.store(12, &outer_type.to_be(), 0)).map_err(|_| drop::ENCAP_FAILED)?;
    if flags & FLAG_C != 0 {
        write_checksum(ctx, ETH_HLEN + h.gre_at, Some(ETH_HLEN + h.len))?;
    }
    if multicast {
        replicate::start(ctx, id, inner_len);
        return Err(drop::ENCAP_FAILED);
    }
    stats::count_tx(id, u64::from(inner_len));
    if t.flags & tunnel_flags::MULTIPOINT != 0 {
        stats::count_peer(id, &remote, u64::from(inner_len), false);
    }
    if protected(t) {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: no parameters: the kernel looks the next hop up itself.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
    Ok(unsafe { bpf_redirect_neigh(t.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// A protected tunnel's GRE must pass the kernel's xfrm, which a redirect to the underlay would
/// skip. It goes on instead, addressed to the datapath end of the tunnel netdev: through the
/// veth at the netdev's egress, or straight up the stack at the datapath end's ingress. There
/// the kernel forwards it (forwarding and accept_local on that end only, set by `gre up`), and
/// ip_forward's output lookup finds the ESP transport policy and its SA, or the block policy
/// `gre up` installs below every other for this tunnel's GRE.
#[inline(always)]
pub fn protected(t: &Tunnel) -> bool {
    t.flags & tunnel_flags::PROTECTED != 0
}

/// Whether the packet at the datapath end is GRE from the tunnel's local address.
#[inline(always)]
fn is_own_gre(ctx: &TcContext, t: &Tunnel) -> bool {
    let Ok(ethertype) = ctx.load::<u16>(12) else { return false };
    match u16::from_be(ethertype) {
        ETH_P_IPV4 => {
            let Ok(h) = ctx.load::<[u8; IPV4_HLEN]>(ETH_HLEN) else { return false };
            h[9] == IPPROTO_GRE && addr::from_v4([h[12], h[13], h[14], h[15]]) == t.local
        }
        ETH_P_IPV6 => {
            let Ok(h) = ctx.load::<[u8; 24]>(ETH_HLEN) else { return false };
            h[6] == IPPROTO_GRE && h[8..24] == t.local
        }
        _ => false,
    }
}

/// A VLAN tag beside the frame (a VLAN device on a gretap puts it there, for hardware to insert)
/// belongs inside the frame the tunnel carries, as the kernel's gretap puts it: left beside, it
/// would end up on the outer frame. The frame then goes as a non-IP frame (its type is the tag's).
#[inline(always)]
fn tag_inside(ctx: &TcContext) -> Result<(), u32> {
    let skb = ctx.skb.skb;
    // SAFETY: reading fields of the context.
    let (gso, tci, proto) = unsafe { ((*skb).gso_size != 0, (*skb).vlan_tci, (*skb).vlan_proto) };
    if gso {
        return Err(drop::VLAN_GSO);
    }
    let macs: [u8; 12] = ctx.load(0).map_err(|_| drop::TRUNCATED)?;
    // SAFETY: the helpers act on this program's skb; offsets are re-checked by the stores.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 || unsafe { bpf_skb_change_head(skb, VLAN_HLEN as u32, 0) } != 0 {
        return Err(drop::ENCAP_FAILED);
    }
    let mut head = [0u8; 16];
    head[..12].copy_from_slice(&macs);
    // vlan_proto is kept in network order; the TCI in host order.
    #[expect(clippy::cast_possible_truncation, reason = "16-bit fields in 32-bit slots")]
    {
        head[12..14].copy_from_slice(&(proto as u16).to_ne_bytes());
        head[14..16].copy_from_slice(&(tci as u16).to_be_bytes());
    }
    ctx.store(0, &head, 0).map_err(|_| drop::ENCAP_FAILED)
}

/// The interface the program runs on: the tunnel netdev's egress, or its datapath end's ingress.
#[inline(always)]
fn ifindex_of(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Writes the headers right after the outer Ethernet header.
#[inline(always)]
fn store_headers(ctx: &TcContext, h: &Headers) -> Result<(), u32> {
    #[expect(clippy::cast_possible_truncation, reason = "at most HEADERS_MAX")]
    let len = (h.len as u32).clamp(1, HEADERS_MAX as u32);
    // SAFETY: `len` bytes of `h.buf` are readable; the helper checks the packet's bounds.
    let r = unsafe { bpf_skb_store_bytes(ctx.skb.skb.cast(), ETH_HLEN as u32, h.buf.as_ptr().cast(), len, 0) };
    if r == 0 { Ok(()) } else { Err(drop::ENCAP_FAILED) }
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
                && (protected(t) || addr::from_v4([h[16], h[17], h[18], h[19]]) == t.remote)
            {
                return Err(drop::LOOP);
            }
            Ok(Inner {
                ethertype,
                tos: h[1],
                ttl: h[8],
                df: h[6] & 0x40 != 0,
                flowlabel: 0,
                hash: 0,
                protocol: h[9],
                src: addr::from_v4([h[12], h[13], h[14], h[15]]),
                dst: addr::from_v4([h[16], h[17], h[18], h[19]]),
            })
        }
        ETH_P_IPV6 => {
            let h: [u8; IPV6_HLEN] = ctx.load(ETH_HLEN).map_err(|_| drop::TRUNCATED)?;
            if t.flags & tunnel_flags::OUTER_V6 != 0 && h[6] == IPPROTO_GRE && h[8..24] == t.local && (protected(t) || h[24..40] == t.remote) {
                return Err(drop::LOOP);
            }
            let tos = (h[0] << 4) | (h[1] >> 4);
            let flowlabel = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            Ok(Inner { ethertype, tos, ttl: h[7], df: true, flowlabel, hash: 0, protocol: h[6], src, dst })
        }
        _ => Err(drop::ENCAP_UNSUPPORTED),
    }
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
