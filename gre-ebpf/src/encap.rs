//! TC egress encapsulation on the tunnel netdev: IPv4 or IPv6 inner → GRE / IPv4, then
//! `bpf_redirect_neigh` to the underlay so the kernel resolves the next hop and fills the MACs.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_GRE, BPF_F_ADJ_ROOM_FIXED_GSO,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_prandom_u32, bpf_redirect_neigh},
    programs::TcContext,
};
use gre_common::{
    addr, drop,
    gre::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, FLAG_K, IPPROTO_GRE, IPV4_HLEN},
    maps::{Tunnel, tunnel_flags},
};

use crate::{
    csum,
    maps::{TUNNELS, TX_BY_IFINDEX},
    stats,
};

/// Room flags: GRE in IPv4, keeping gso_size (the tunnel MTU already leaves the room; without
/// FIXED_GSO the kernel would shrink every segment by the header length).
const ADJ_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_GRE) as u64;
const IP_DF: u16 = 0x4000;

#[inline(always)]
pub fn try_encap(ctx: &TcContext) -> Result<i32, u32> {
    // SAFETY: reading a field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain u32 copied out at once.
    let id = unsafe { TX_BY_IFINDEX.get(&ifindex) }.copied().ok_or(drop::NO_TX_TUNNEL)?;
    let tunnel = TUNNELS.get(id).ok_or(drop::NO_TX_TUNNEL)?;

    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| drop::TRUNCATED)?);
    let ttl_at = match ethertype {
        ETH_P_IPV4 => ETH_HLEN + 8,
        ETH_P_IPV6 => ETH_HLEN + 7,
        _ => return Err(drop::ENCAP_UNSUPPORTED),
    };
    let inner_ttl = ctx.load::<u8>(ttl_at).map_err(|_| drop::TRUNCATED)?;
    let inner_len = ctx.len() - ETH_HLEN as u32;

    let with_key = tunnel.flags & tunnel_flags::OKEY != 0;
    let gre_len: u32 = if with_key { 8 } else { 4 };
    let outer = outer_ipv4(tunnel, inner_len + IPV4_HLEN as u32 + gre_len, inner_ttl);
    let mut gre = [0u8; 8];
    gre[..2].copy_from_slice(&(if with_key { FLAG_K } else { 0 }).to_be_bytes());
    gre[2..4].copy_from_slice(&ethertype.to_be_bytes());
    gre[4..].copy_from_slice(&tunnel.okey.to_be_bytes());

    #[expect(clippy::cast_possible_wrap, reason = "at most 28")]
    ctx.adjust_room((IPV4_HLEN as u32 + gre_len) as i32, BPF_ADJ_ROOM_MAC, ADJ_FLAGS)
        .map_err(|_| drop::ENCAP_FAILED)?;
    let stored = ctx.store(ETH_HLEN, &outer, 0).and_then(|()| {
        let at = ETH_HLEN + IPV4_HLEN;
        if with_key { ctx.store(at, &gre, 0) } else { ctx.store(at, &[gre[0], gre[1], gre[2], gre[3]], 0) }
    });
    // bpf_redirect_neigh refuses multicast destinations (IPv6 ND, 224.0.0.x hellos); any unicast
    // MAC will do, the helper writes the real one.
    let eth = ctx
        .store(0, &tunnel.netdev_mac, 0)
        .and_then(|()| ctx.store(12, &ETH_P_IPV4.to_be(), 0));
    if stored.is_err() || eth.is_err() {
        return Err(drop::ENCAP_FAILED);
    }
    stats::count_tx(id, u64::from(inner_len));
    // SAFETY: no parameters: the kernel looks the next hop up itself.
    #[expect(clippy::cast_possible_truncation, reason = "TC_ACT_* values")]
    Ok(unsafe { bpf_redirect_neigh(tunnel.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// The outer IPv4 header, checksum included. `total` may exceed 65535 for a GSO packet; the
/// kernel rewrites the length of every segment, so it is clamped.
#[inline(always)]
fn outer_ipv4(t: &Tunnel, total: u32, inner_ttl: u8) -> [u8; IPV4_HLEN] {
    let mut h = [0u8; IPV4_HLEN];
    h[0] = 0x45;
    h[1] = t.tos;
    #[expect(clippy::cast_possible_truncation, reason = "clamped")]
    h[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    let (id, frag) = if t.flags & tunnel_flags::NOPMTUDISC != 0 {
        // SAFETY: helper without arguments.
        #[expect(clippy::cast_possible_truncation, reason = "16 random bits")]
        ((unsafe { bpf_get_prandom_u32() }) as u16, 0)
    } else {
        (0, IP_DF)
    };
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = if t.ttl == 0 { inner_ttl } else { t.ttl };
    h[9] = IPPROTO_GRE;
    let local = addr::to_v4(&t.local).unwrap_or_default();
    let remote = addr::to_v4(&t.remote).unwrap_or_default();
    h[12..16].copy_from_slice(&local);
    h[16..20].copy_from_slice(&remote);
    let c = csum::ipv4_header(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}
