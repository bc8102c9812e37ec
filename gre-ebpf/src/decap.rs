//! XDP decapsulation: Ethernet (one optional VLAN tag) / IPv4 / GRE → the tunnel's injection port.
//!
//! Only GRE addressed to one of our tunnel endpoints is ours. Anything else — other protocols,
//! other addresses, fragments (the kernel reassembles them) — passes untouched. Ours but broken or
//! matching no tunnel is dropped and counted by reason.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use gre_common::{
    addr::{self, Addr},
    drop,
    gre::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, FLAG_C, FLAG_K, FLAG_R, IPPROTO_GRE,
        IPV4_HLEN, OPTION_LEN, PROTO_IPV4, PROTO_IPV6, VERSION_MASK, VLAN_HLEN, header_len,
    },
    maps::{EndpointKey, RX_KEY_PRESENT, RxKey},
};

use crate::{
    maps::{ENDPOINTS, INJECT_PORTS, RX_MATCH, TUNNELS},
    packet::{be16, be32, bytes},
    stats,
};

/// `Ok(action)` for packets we pass or forward, `Err(reason)` for packets to drop and count.
type Verdict = Result<u32, u32>;

#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Verdict {
    let Some(mut ethertype) = be16(ctx, 12) else {
        return Err(drop::TRUNCATED);
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = be16(ctx, ETH_HLEN + 2) else {
            return Err(drop::TRUNCATED);
        };
        ethertype = inner;
        l3 += VLAN_HLEN;
    }
    if ethertype != ETH_P_IPV4 {
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(ip) = bytes::<IPV4_HLEN>(ctx, l3) else {
        return Err(drop::TRUNCATED);
    };
    // SAFETY: bounds checked by `bytes`.
    let ip = unsafe { *ip };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_GRE || ihl < IPV4_HLEN {
        return Ok(xdp_action::XDP_PASS);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        // MF set or a non-zero offset: the kernel reassembles it.
        return Ok(xdp_action::XDP_PASS);
    }
    let remote = addr::from_v4([ip[12], ip[13], ip[14], ip[15]]);
    let local = addr::from_v4([ip[16], ip[17], ip[18], ip[19]]);
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let gre = l3 + ihl;

    let Some(word0) = be32(ctx, gre) else {
        return ours_drop(&local, drop::TRUNCATED);
    };
    let flags = (word0 >> 16) as u16;
    let protocol = (word0 & 0xffff) as u16;
    if flags & VERSION_MASK != 0 {
        return ours_drop(&local, drop::BAD_VERSION);
    }
    if flags & FLAG_R != 0 {
        return ours_drop(&local, drop::ROUTING);
    }
    let gre_len = header_len(flags);
    let end = gre + gre_len;
    if ctx.data() + end > ctx.data_end() || ihl + gre_len > tot_len || l3 + tot_len > frame_len(ctx) {
        return ours_drop(&local, drop::TRUNCATED);
    }
    let mut rx = RxKey { local, remote, key: 0, flags: 0 };
    if flags & FLAG_K != 0 {
        let at = gre + 4 + if flags & FLAG_C != 0 { OPTION_LEN } else { 0 };
        let Some(key) = be32(ctx, at) else {
            return ours_drop(&local, drop::TRUNCATED);
        };
        rx.key = key;
        rx.flags = RX_KEY_PRESENT;
    }

    // SAFETY: the value is a plain u32 copied out at once.
    let Some(id) = (unsafe { RX_MATCH.get(&rx) }).copied() else {
        return miss(&rx);
    };
    let Some(tunnel) = TUNNELS.get(id) else {
        return Err(drop::NO_TUNNEL);
    };
    if protocol != PROTO_IPV4 && protocol != PROTO_IPV6 {
        return Err(drop::UNKNOWN_PROTOCOL);
    }

    // Drop the outer headers but for room for an Ethernet header, then write that header. The
    // destination is the tunnel netdev's own MAC, so the kernel takes the frame as its own.
    let mut hdr = [0u8; ETH_HLEN];
    hdr[..6].copy_from_slice(&tunnel.netdev_mac);
    hdr[6..12].copy_from_slice(&tunnel.inject_mac);
    hdr[12..].copy_from_slice(&protocol.to_be_bytes());
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "at most 96")]
    let strip = (end - ETH_HLEN) as i32;
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, strip) } != 0 {
        return Err(drop::TRUNCATED);
    }
    let Some(eth) = bytes::<ETH_HLEN>(ctx, 0) else {
        return Err(drop::TRUNCATED);
    };
    // SAFETY: bounds checked by `bytes`.
    unsafe { *eth = hdr };
    match INJECT_PORTS.redirect(id, 0) {
        Ok(action) => {
            stats::count_rx(id, (tot_len - ihl - gre_len) as u64);
            Ok(action)
        }
        Err(_) => Err(drop::NO_INJECT_PORT),
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// A broken GRE packet is ours to drop only if it is addressed to one of our endpoints.
#[inline(always)]
fn ours_drop(local: &Addr, reason: u32) -> Verdict {
    let any = EndpointKey { local: *local, remote: [0; 16] };
    // SAFETY: only presence is tested.
    if unsafe { ENDPOINTS.get(&any) }.is_some() { Err(reason) } else { Ok(xdp_action::XDP_PASS) }
}

/// A well-formed GRE packet that matched no tunnel: a key mismatch between known endpoints, no
/// tunnel from that remote to one of ours, or not ours at all (passed).
#[inline(always)]
fn miss(rx: &RxKey) -> Verdict {
    let pair = EndpointKey { local: rx.local, remote: rx.remote };
    // SAFETY: only presence is tested.
    if unsafe { ENDPOINTS.get(&pair) }.is_some() {
        Err(drop::KEY_MISMATCH)
    } else {
        ours_drop(&rx.local, drop::NO_TUNNEL)
    }
}
