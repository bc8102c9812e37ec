//! XDP on LAN ports: the encapsulation fast path. A routed IPv4/IPv6 packet whose destination is
//! in the overlay route table goes straight into its tunnel and out of the underlay port, when
//! everything is known: the tunnel is plain GRE, the packet fits the tunnel MTU, its TTL does not
//! expire, and the underlay next hop is resolved. Anything else passes to the kernel, which
//! routes it through the tunnel netdev (the slow path, and the one that sends ICMP).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use gre_common::{
    addr,
    gre::{ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6, FLAG_C, IPV4_HLEN, IPV6_HLEN},
    maps::tunnel_flags,
};

use crate::{
    csum, fib,
    headers::{self, HEADERS_MAX, Inner},
    ip,
    maps::{PORT_MACS, PORTS, ROUTES, TUNNELS},
    packet::{Packet as _, be16, bytes, read},
    peers, stats,
};

const PASS: u32 = xdp_action::XDP_PASS;

#[inline(always)]
pub fn try_lan(ctx: &XdpContext) -> Result<u32, u32> {
    // Only what the kernel would route: frames for this port's MAC (not another host's on a
    // promiscuous port, not broadcast or multicast: DHCP, mDNS and the like are the kernel's).
    let Some(dst_mac) = read::<6, _>(ctx, 0) else { return Ok(PASS) };
    // SAFETY: reading a field of the context.
    let in_ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the value is copied out at once.
    if unsafe { PORT_MACS.get(&in_ifindex) }.is_none_or(|m| *m != dst_mac) {
        return Ok(PASS);
    }
    let Some(ethertype) = be16(ctx, 12) else { return Ok(PASS) };
    let v6 = match ethertype {
        ETH_P_IPV4 => false,
        ETH_P_IPV6 => true,
        _ => return Ok(PASS),
    };
    // The destination, TTL, TOS and length of the inner packet.
    let (dst, inner) = if v6 {
        let Some(h) = read::<IPV6_HLEN, _>(ctx, ETH_HLEN) else { return Ok(PASS) };
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&h[24..40]);
        let flowlabel = u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]);
        let len = usize::from(u16::from_be_bytes([h[4], h[5]])) + IPV6_HLEN;
        let mut src = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        (dst, (Inner { ethertype, tos: (h[0] << 4) | (h[1] >> 4), ttl: h[7], df: true, flowlabel, hash: 0, protocol: h[6], src, dst }, len))
    } else {
        let Some(h) = read::<IPV4_HLEN, _>(ctx, ETH_HLEN) else { return Ok(PASS) };
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let dst = addr::from_v4([h[16], h[17], h[18], h[19]]);
        let src = addr::from_v4([h[12], h[13], h[14], h[15]]);
        (dst, (Inner { ethertype, tos: h[1], ttl: h[8], df: h[6] & 0x40 != 0, flowlabel: 0, hash: 0, protocol: h[9], src, dst }, len))
    };
    let (mut inner, inner_len) = inner;
    let Some(route) = ROUTES.get(Key::new(128, dst)) else { return Ok(PASS) };
    let id = route.tunnel;
    let Some(t) = TUNNELS.get(id) else { return Ok(PASS) };
    if t.flags & tunnel_flags::OUTER_V6 != 0 {
        // Only IPv6 outer headers carry a flow label: hashed only for them.
        inner.hash = headers::flow_hash(&inner.src, &inner.dst, inner.protocol);
    }
    // Left to the kernel: gretap (LAN frames are bridged, not routed), packets too big for the
    // tunnel (ICMP or fragments), TTL about to expire (ICMP), unknown underlay next hop (ARP/ND),
    // and protected tunnels (their GRE must pass the kernel's xfrm, see encap.rs).
    if t.flags & (tunnel_flags::TEB | tunnel_flags::PROTECTED) != 0 || inner_len > t.mtu as usize || inner_len + ETH_HLEN > ctx.len() || inner.ttl <= 1 {
        return Ok(PASS);
    }
    // The overlay route must be the kernel's choice too: not one of our own addresses, not a
    // more specific route elsewhere, forwarding on.
    #[expect(clippy::cast_possible_truncation, reason = "bounded by the MTU")]
    if !fib::routes_into(ctx.ctx.cast(), &inner, inner_len as u16, in_ifindex, t.netdev_ifindex) {
        return Ok(PASS);
    }
    // Multipoint: only a resolved peer, whose entry also keeps its underlay next hop; the kernel
    // path sends the rest through the NHS.
    let (remote, hop) = if t.flags & tunnel_flags::MULTIPOINT != 0 {
        // The route is the one just found: no second lookup.
        let Some(p) = peers::entry(id, &peers::hop_of(route, &dst)) else { return Ok(PASS) };
        // SAFETY: a peer map value, read at once.
        (unsafe { (*p).nbma }, fib::peer_next_hop(ctx.ctx.cast(), t, p))
    } else {
        (t.remote, fib::tunnel_next_hop(ctx.ctx.cast(), t, &t.remote))
    };
    let Some((smac, dmac)) = hop else { return Ok(PASS) };
    if PORTS.get(t.underlay_ifindex).is_none() {
        return Ok(PASS);
    }
    ip::decrement_ttl(ctx, ETH_HLEN, v6).ok_or(gre_common::drop::TRUNCATED)?;
    inner.ttl -= 1;
    let flags = headers::tx_flags(t, false).map_err(|r| stats::tunnel_drop(id, r))?;
    #[expect(clippy::cast_possible_truncation, reason = "bounded by the MTU")]
    let h = headers::build(id, t, &remote, &inner, inner_len as u32, ethertype, flags, None).map_err(|r| stats::tunnel_drop(id, r))?;
    let v6_outer = t.flags & tunnel_flags::OUTER_V6 != 0;
    let mut eth = [0u8; ETH_HLEN];
    eth[..6].copy_from_slice(&dmac);
    eth[6..12].copy_from_slice(&smac);
    eth[12..].copy_from_slice(&(if v6_outer { ETH_P_IPV6 } else { ETH_P_IPV4 }).to_be_bytes());

    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "at most HEADERS_MAX")]
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(h.len as i32)) } != 0 {
        return Err(stats::tunnel_drop(id, gre_common::drop::ENCAP_FAILED));
    }
    let Some(out) = bytes::<ETH_HLEN, _>(ctx, 0) else { return Err(stats::tunnel_drop(id, gre_common::drop::TRUNCATED)) };
    // SAFETY: bounds checked by `bytes`.
    unsafe { *out = eth };
    #[expect(clippy::cast_possible_truncation, reason = "at most HEADERS_MAX")]
    let len = (h.len as u32).clamp(1, HEADERS_MAX as u32);
    // SAFETY: `len` bytes of `h.buf` are readable; the helper checks the packet's bounds.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, ETH_HLEN as u32, h.buf.as_ptr().cast_mut().cast(), len) } != 0 {
        return Err(stats::tunnel_drop(id, gre_common::drop::ENCAP_FAILED));
    }
    if flags & FLAG_C != 0 {
        let gre = ETH_HLEN + h.gre_at;
        let sum = csum::sum_range(ctx, gre, ctx.len()).ok_or(gre_common::drop::ENCAP_FAILED)?;
        let mut c = (!csum::fold(sum)).to_be_bytes();
        #[expect(clippy::cast_possible_truncation, reason = "bounded offsets")]
        // SAFETY: two bytes of `c`; the helper checks the packet's bounds.
        if unsafe { bpf_xdp_store_bytes(ctx.ctx, (gre + 4) as u32, c.as_mut_ptr().cast(), 2) } != 0 {
            return Err(stats::tunnel_drop(id, gre_common::drop::ENCAP_FAILED));
        }
    }
    match PORTS.redirect(t.underlay_ifindex, 0) {
        Ok(action) => {
            stats::count_fast_tx(id, inner_len as u64);
            if t.flags & tunnel_flags::MULTIPOINT != 0 {
                stats::count_peer(id, &remote, inner_len as u64, false);
            }
            Ok(action)
        }
        Err(_) => Err(stats::tunnel_drop(id, gre_common::drop::ENCAP_FAILED)),
    }
}
