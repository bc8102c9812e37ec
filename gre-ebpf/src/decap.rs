//! XDP decapsulation: Ethernet / IPv4 or IPv6 / GRE → the tunnel's injection port. (One VLAN
//! tag is parsed, so that what is not the port's own traffic is told apart and passed on.)
//!
//! Only GRE addressed to one of our tunnel endpoints is ours. Anything else — other protocols,
//! other addresses, fragments (the kernel reassembles them) — passes untouched. Ours but broken or
//! matching no tunnel is dropped and counted by reason, per tunnel once the tunnel is known.
//! Receive checks follow the kernel's ip_tunnel_rcv: checksum policy, checksum, in-order
//! sequence, then RFC 6040 ECN decapsulation.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use gre_common::{
    addr::{self, Addr},
    drop,
    gre::{
        CMD_BASE_LEN, CMD_MAX_WORDS, ECN_CE, ECN_MASK, ECN_NOT_ECT, ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, FLAG_C, FLAG_K, FLAG_R,
        FLAG_S, IPPROTO_GRE, IPV4_HLEN, IPV6_DSTOPTS, IPV6_HLEN, IPV6_HOPOPTS, OPTION_LEN, PROTO_CISCO_METADATA, PROTO_IPV4, PROTO_IPV6, PROTO_KEEPALIVE,
        PROTO_NHRP, PROTO_TEB, VERSION_MASK, VLAN_HLEN, header_len,
    },
    maps::{EndpointKey, NHRP_PUNT_MAX, NhrpPunt, RX_KEY_PRESENT, RX_TEB, RxKey, Tunnel, Window, tunnel_flags},
};

use crate::{
    csum, fib, ip, limit,
    maps::{ENDPOINTS, INJECT_PORTS, LIMITS, NHRP_BUDGET, NHRP_PUNT, NHRP_SCRATCH, NHRP_SOURCES, PORTS, RX_MATCH, SEQUENCES, TUNNELS},
    packet::{Packet as _, be16, be32, bytes, read},
    stats,
};

/// `Ok(action)` for packets we pass, forward or consume; `Err(reason)` to drop and count.
type Verdict = Result<u32, u32>;

/// The outer IP header as far as decapsulation needs it. Offsets are from the frame start.
pub struct Outer {
    local: Addr,
    remote: Addr,
    l3: usize,
    /// Start of the GRE header.
    gre: usize,
    /// End of the IP payload (frames may carry Ethernet padding after it).
    end: usize,
    ecn: u8,
    v6: bool,
}

/// The GRE header.
pub struct Gre {
    flags: u16,
    protocol: u16,
    key: u32,
    seq: u32,
    len: usize,
}

#[inline(always)]
pub fn try_decap(ctx: &XdpContext) -> Verdict {
    let (outer, gre) = match parse(ctx) {
        Ok(parsed) => parsed,
        Err(verdict) => return verdict,
    };
    let mut rx = RxKey { local: outer.local, remote: outer.remote, key: 0, flags: 0 };
    if gre.flags & FLAG_K != 0 {
        rx.key = gre.key;
        rx.flags = RX_KEY_PRESENT;
    }
    if gre.protocol == PROTO_TEB {
        rx.flags |= RX_TEB;
    }
    // A point-to-point tunnel matches the remote; a multipoint one any remote (all zero).
    // SAFETY: the values are plain u32s copied out at once.
    let Some(id) = (unsafe { RX_MATCH.get(&rx) }).copied().or_else(|| unsafe { RX_MATCH.get(&RxKey { remote: [0; 16], ..rx }) }.copied()) else {
        return miss(&rx);
    };
    let Some(tunnel) = TUNNELS.get(id) else {
        return Err(drop::NO_TUNNEL);
    };
    if !for_us(ctx, tunnel, outer.l3) {
        // The kernel drops another host's frame, and gives a tagged one to the VLAN's device, not
        // to this port's tunnels; a bridge or packet socket may want either.
        return Ok(xdp_action::XDP_PASS);
    }
    // A protected tunnel takes only what the kernel's xfrm decrypted, which never reaches XDP
    // (the daemon's raw socket gets it, past the kernel's inbound policy check).
    if tunnel.flags & tunnel_flags::PROTECTED != 0 {
        return Err(stats::tunnel_drop(id, drop::UNPROTECTED));
    }
    // A multipoint tunnel's peers are those with counters (userspace makes them with the peer).
    // What arrived from one is counted here, before the deep checks, for the stack's sake; what
    // they drop is counted by reason.
    let known = tunnel.flags & tunnel_flags::MULTIPOINT == 0 || stats::count_peer(id, &outer.remote, (outer.end - outer.gre - gre.len) as u64, true);
    // NHRP passes even a strict tunnel's gate: it is how a new spoke becomes a known peer (the
    // daemon authenticates it; strangers' NHRP is rate-limited per source).
    if tunnel.flags & tunnel_flags::STRICT != 0 && !known && gre.protocol != PROTO_NHRP {
        return Err(stats::tunnel_drop(id, drop::UNKNOWN_PEER));
    }
    matched(ctx, &outer, &gre, id, tunnel, known).map_err(|reason| stats::tunnel_drop(id, reason))
}

/// Whether the frame is the underlay port's own traffic: untagged (a VLAN-tagged frame belongs
/// to that VLAN's device), and addressed to the port (its MAC, broadcast or multicast), as
/// eth_type_trans would classify it for the kernel to take. A tunnel whose underlay is not
/// known (all-zero MAC) takes any.
#[inline(always)]
fn for_us(ctx: &XdpContext, t: &Tunnel, l3: usize) -> bool {
    if t.underlay_mac == [0; 6] {
        return true;
    }
    let Some(dst) = read::<6, _>(ctx, 0) else { return false };
    l3 == ETH_HLEN && (dst[0] & 1 != 0 || dst == t.underlay_mac)
}

/// The outer headers, as far as they are read before any lookup: `Err` carries the final
/// verdict for what is not ours or cannot be parsed. (Alone, it is the benchmarks' parse-only
/// baseline.)
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<(Outer, Gre), Verdict> {
    let Some(mut ethertype) = be16(ctx, 12) else {
        return Err(Err(drop::TRUNCATED));
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16(ctx, ETH_HLEN + 2).ok_or(Err(drop::TRUNCATED))?;
        l3 += VLAN_HLEN;
    }
    let outer = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, l3)?,
        ETH_P_IPV6 => ipv6(ctx, l3)?,
        _ => return Err(Ok(xdp_action::XDP_PASS)),
    };
    match gre_header(ctx, &outer) {
        Ok(g) => Ok((outer, g)),
        Err(Err(reason)) => Err(ours_drop(&outer.local, reason)),
        Err(pass) => Err(pass),
    }
}

/// Outer IPv4: `Err` carries the final verdict for what is not ours or cannot be parsed.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Outer, Verdict> {
    let ip = read::<IPV4_HLEN, _>(ctx, l3).ok_or(Err(drop::TRUNCATED))?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_GRE || ihl < IPV4_HLEN {
        return Err(Ok(xdp_action::XDP_PASS));
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        // MF set or a non-zero offset: the kernel reassembles it.
        return Err(Ok(xdp_action::XDP_PASS));
    }
    Ok(Outer {
        local: addr::from_v4([ip[16], ip[17], ip[18], ip[19]]),
        remote: addr::from_v4([ip[12], ip[13], ip[14], ip[15]]),
        l3,
        gre: l3 + ihl,
        end: l3 + usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        ecn: ip[1] & ECN_MASK,
        v6: false,
    })
}

/// Outer IPv6, stepping over up to two hop-by-hop / destination options headers (ip6gre puts
/// its encapsulation limit in one).
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Outer, Verdict> {
    let ip = read::<IPV6_HLEN, _>(ctx, l3).ok_or(Err(drop::TRUNCATED))?;
    let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip[0] >> 4 != 6 || payload == 0 {
        return Err(Ok(xdp_action::XDP_PASS));
    }
    let mut remote = [0u8; 16];
    let mut local = [0u8; 16];
    remote.copy_from_slice(&ip[8..24]);
    local.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut gre = l3 + IPV6_HLEN;
    for _ in 0..2 {
        if next != IPV6_HOPOPTS && next != IPV6_DSTOPTS {
            break;
        }
        let Some(ext) = read::<2, _>(ctx, gre) else {
            return Err(ours_drop(&local, drop::TRUNCATED));
        };
        next = ext[0];
        gre += (usize::from(ext[1]) + 1) * 8;
    }
    if next != IPPROTO_GRE {
        // Not GRE, or a fragment (the kernel reassembles it), or more options than we walk.
        return Err(Ok(xdp_action::XDP_PASS));
    }
    Ok(Outer { local, remote, l3, gre, end: l3 + IPV6_HLEN + payload, ecn: (ip[1] >> 4) & ECN_MASK, v6: true })
}

#[inline(always)]
fn gre_header(ctx: &XdpContext, o: &Outer) -> Result<Gre, Verdict> {
    let word0 = be32(ctx, o.gre).ok_or(Err(drop::TRUNCATED))?;
    #[expect(clippy::cast_possible_truncation, reason = "the two halves of the first word")]
    let (flags, protocol) = ((word0 >> 16) as u16, word0 as u16);
    match flags & VERSION_MASK {
        0 => {}
        // PPTP's enhanced GRE (RFC 2637): the kernel's pptp module may own it, as with Linux.
        1 => return Err(Ok(xdp_action::XDP_PASS)),
        _ => return Err(Err(drop::BAD_VERSION)),
    }
    gre_options(ctx, o, flags, protocol).map_err(Err)
}

/// The optional fields of a version 0 GRE header.
#[inline(always)]
fn gre_options(ctx: &XdpContext, o: &Outer, flags: u16, protocol: u16) -> Result<Gre, u32> {
    if flags & FLAG_R != 0 {
        return Err(drop::ROUTING);
    }
    let len = header_len(flags);
    if o.gre + len > o.end || o.end > ctx.len() {
        return Err(drop::TRUNCATED);
    }
    let mut g = Gre { flags, protocol, key: 0, seq: 0, len };
    let mut at = o.gre + 4;
    if flags & FLAG_C != 0 {
        at += OPTION_LEN;
    }
    if flags & FLAG_K != 0 {
        g.key = be32(ctx, at).ok_or(drop::TRUNCATED)?;
        at += OPTION_LEN;
    }
    if flags & FLAG_S != 0 {
        g.seq = be32(ctx, at).ok_or(drop::TRUNCATED)?;
    }
    Ok(g)
}

/// Receive checks and delivery for a packet of tunnel `id`.
#[inline(always)]
fn matched(ctx: &XdpContext, o: &Outer, g: &Gre, id: u32, t: &Tunnel, known: bool) -> Verdict {
    // Bytes past the outer datagram (Ethernet padding, a trailer) are not part of it: trimmed, as
    // ip_rcv does, before anything reads or delivers the payload.
    // The mask changes nothing (the datagram ends within the frame, checked by `parse`), but
    // it bounds the offset for verifiers (6.12's) that lose its bounds across a spill.
    let trailer = ctx.len() - (o.end & 0xffff);
    if trailer > 0 {
        #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "at most a frame")]
        // SAFETY: shrinking by what lies past the datagram; the helper re-validates, and no
        // packet pointer survives the call.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(trailer as i32)) } != 0 {
            return Err(drop::TRUNCATED);
        }
    }
    let has_csum = g.flags & FLAG_C != 0;
    if has_csum != (t.flags & tunnel_flags::ICSUM != 0) {
        return Err(drop::CHECKSUM_POLICY);
    }
    if has_csum {
        // The sum over the GRE header (checksum included) and payload is all ones when intact.
        let sum = csum::sum_range(ctx, o.gre, o.end).ok_or(drop::TRUNCATED)?;
        if csum::fold(sum) != 0xffff {
            return Err(drop::BAD_CHECKSUM);
        }
    }
    if t.flags & tunnel_flags::ISEQ != 0 {
        check_sequence(id, g)?;
    }
    let mut inner = o.gre + g.len;
    let mut protocol = g.protocol;
    if protocol == PROTO_CISCO_METADATA {
        // Cisco TrustSec inline tag (SGT): step over it; the payload's type is in its first word.
        let cmd = read::<4, _>(ctx, inner).ok_or(drop::TRUNCATED)?;
        let words = usize::from(cmd[3]);
        if words > CMD_MAX_WORDS {
            return Err(drop::UNKNOWN_PROTOCOL);
        }
        protocol = u16::from_be_bytes([cmd[0], cmd[1]]);
        inner += CMD_BASE_LEN + 4 * words;
    }
    match protocol {
        PROTO_IPV4 => {
            let ih = read::<IPV4_HLEN, _>(ctx, inner).ok_or(drop::TRUNCATED)?;
            if !o.v6
                && t.flags & tunnel_flags::MULTIPOINT == 0
                && ih[9] == IPPROTO_GRE
                && addr::from_v4([ih[12], ih[13], ih[14], ih[15]]) == t.local
                && addr::from_v4([ih[16], ih[17], ih[18], ih[19]]) == t.remote
                && ih[8] > 1
                && is_keepalive(ctx, &ih, inner, o.end)
            {
                return answer_keepalive(ctx, o, inner, id);
            }
            if ecn_decap(o.ecn, ih[1] & ECN_MASK)? {
                ip::set_ce_ipv4(ctx, inner).ok_or(drop::TRUNCATED)?;
            }
            if ih[8] > 1 && forwardable_v4(&ih, o.end - inner) {
                let (src, dst) = (addr::from_v4([ih[12], ih[13], ih[14], ih[15]]), addr::from_v4([ih[16], ih[17], ih[18], ih[19]]));
                if let Some(verdict) = fast_decap(ctx, t, id, inner, o.end, false, &src, &dst, u32::from(ih[1])) {
                    return verdict;
                }
            }
        }
        PROTO_IPV6 => {
            let ih = read::<2, _>(ctx, inner).ok_or(drop::TRUNCATED)?;
            if ecn_decap(o.ecn, (ih[1] >> 4) & ECN_MASK)? {
                ip::set_ce_ipv6(ctx, inner).ok_or(drop::TRUNCATED)?;
            }
            let ih = read::<IPV6_HLEN, _>(ctx, inner).ok_or(drop::TRUNCATED)?;
            if ih[7] > 1 && forwardable_v6(&ih, o.end - inner) {
                let mut src = [0u8; 16];
                let mut dst = [0u8; 16];
                src.copy_from_slice(&ih[8..24]);
                dst.copy_from_slice(&ih[24..40]);
                let flow = u32::from_be_bytes([ih[0], ih[1], ih[2], ih[3]]) & 0x0fff_ffff;
                if let Some(verdict) = fast_decap(ctx, t, id, inner, o.end, true, &src, &dst, flow) {
                    return verdict;
                }
            }
        }
        PROTO_TEB => return inject_frame(ctx, o, inner, id, t.mtu),
        PROTO_NHRP => return punt_nhrp(ctx, o, g, inner, id, known),
        PROTO_KEEPALIVE => {
            // Our own keepalive, sent back by the remote: proof that the tunnel works both ways.
            stats::count_keepalive_returned(id);
            return Ok(xdp_action::XDP_DROP);
        }
        _ => return Err(drop::UNKNOWN_PROTOCOL),
    }
    if o.end - inner > t.mtu as usize {
        return Err(drop::TOO_BIG);
    }
    inject(ctx, t, protocol, inner, id, o.end - inner)
}

/// Whether ip_rcv and ip_forward would take this inner IPv4 header as it is: no options (the
/// kernel handles those), the total length exactly what the tunnel carried, a good header
/// checksum, and neither address what the kernel's input route calls martian (0/8, 127/8,
/// multicast, class E and broadcast; our own endpoint as the source is refused in `fast_decap`).
/// Anything else goes the kernel path, which decides.
#[inline(always)]
fn forwardable_v4(ih: &[u8; IPV4_HLEN], len: usize) -> bool {
    if ih[0] != 0x45 || usize::from(u16::from_be_bytes([ih[2], ih[3]])) != len {
        return false;
    }
    let mut sum = 0u64;
    for i in 0..IPV4_HLEN / 2 {
        sum += u64::from(u16::from_be_bytes([ih[2 * i], ih[2 * i + 1]]));
    }
    if csum::fold(sum) != 0xffff {
        return false;
    }
    let plain = |first: u8| first != 0 && first != 127 && first < 224;
    plain(ih[12]) && plain(ih[16])
}

/// Whether ip6_forward would forward this inner IPv6 header: the payload length exactly what the
/// tunnel carried, and neither address unspecified, loopback, link-local or multicast (the
/// kernel refuses to forward link-local scope and answers the rest itself; our own endpoint as
/// the source is refused in `fast_decap`).
#[inline(always)]
fn forwardable_v6(ih: &[u8; IPV6_HLEN], len: usize) -> bool {
    if usize::from(u16::from_be_bytes([ih[4], ih[5]])) + IPV6_HLEN != len {
        return false;
    }
    // The first byte decides for nearly every address; only ::/127 needs the rest read.
    let plain = |a: &[u8]| match a[0] {
        0xff => false,
        0xfe => a[1] & 0xc0 != 0x80,
        0 => !(a[1..15].iter().all(|b| *b == 0) && a[15] <= 1),
        _ => true,
    };
    plain(&ih[8..24]) && plain(&ih[24..40])
}

/// The decapsulation fast path: when the kernel would forward the inner packet out of a port
/// we may redirect to (a plain unicast forward, neighbour resolved, fits the MTU), do it here —
/// TTL / hop limit decremented, MACs from the FIB — instead of handing it to the tunnel netdev.
/// `None` leaves the packet to the kernel path.
#[expect(clippy::too_many_arguments, reason = "the parsed facts of one packet")]
#[inline(always)]
fn fast_decap(ctx: &XdpContext, t: &Tunnel, id: u32, inner: usize, end: usize, v6: bool, src: &[u8; 16], dst: &[u8; 16], tos_or_flow: u32) -> Option<Verdict> {
    // Our own endpoint as the source is martian to ip_forward: the kernel path. Compared as
    // words against the tunnel's record: `==` on arrays would call memcmp, and the decapsulation's
    // stack has no room for a copy.
    let word = |x: &[u8; 16], i: usize| u64::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3], x[i + 4], x[i + 5], x[i + 6], x[i + 7]]);
    if word(src, 8) == word(&t.local, 8) && word(src, 0) == word(&t.local, 0) {
        return None;
    }
    #[expect(clippy::cast_possible_truncation, reason = "bounded by the outer length")]
    let len = (end - inner) as u16;
    let fwd = fib::forward(ctx.ctx.cast(), v6, src, dst, tos_or_flow, len, t.netdev_ifindex)?;
    let ethertype = if v6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    ip::decrement_ttl(ctx, inner, v6)?;
    let mut hdr = [0u8; ETH_HLEN];
    hdr[..6].copy_from_slice(&fwd.dmac);
    hdr[6..12].copy_from_slice(&fwd.smac);
    hdr[12..].copy_from_slice(&ethertype.to_be_bytes());
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "bounded offsets")]
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (inner - ETH_HLEN) as i32) } != 0 {
        return Some(Err(drop::TRUNCATED));
    }
    let Some(eth) = bytes::<ETH_HLEN, _>(ctx, 0) else {
        return Some(Err(drop::TRUNCATED));
    };
    // SAFETY: bounds checked by `bytes`.
    unsafe { *eth = hdr };
    Some(match PORTS.redirect(fwd.ifindex, 0) {
        Ok(action) => {
            stats::count_fast_rx(id, u64::from(len));
            Ok(action)
        }
        Err(_) => Err(drop::NO_INJECT_PORT),
    })
}

/// NHRP handed to the daemon per CPU per second, at most: from known peers (a point-to-point
/// tunnel's remote, a multipoint tunnel's peers), from all other senders together, and from any
/// one of those. A flood costs the daemon little and cannot crowd out the peers' registrations.
const NHRP_KNOWN_PER_SECOND: u64 = 1000;
const NHRP_UNKNOWN_PER_SECOND: u64 = 200;
const NHRP_PER_SOURCE_PER_SECOND: u64 = 10;

/// Extensions looked at for the password, at most.
const NHRP_EXTENSIONS_SEEN: usize = 8;
/// NHRP's Authentication extension, and Cisco's cleartext form: a 4-byte SPI, then the password.
const NHRP_EXT_AUTHENTICATION: u16 = 7;
const NHRP_AUTH_SPI_LEN: usize = 4;

/// `N` bytes at a variable offset, copied by the helper: walking extensions makes offsets the
/// verifier cannot follow as packet pointers.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    let off = u32::try_from(off).ok()?;
    #[expect(clippy::cast_possible_truncation, reason = "a few bytes")]
    // SAFETY: the helper checks the bounds against the packet and writes at most N bytes to b.
    let r = unsafe { XdpContext::load_raw(ctx.raw(), off, b.as_mut_ptr(), N as u32) };
    (r == 0).then_some(b)
}

/// Whether the NHRP packet at `at` carries tunnel `id`'s password (tunnels without one: never).
/// The daemon checks it again; this only picks the budget.
#[inline(always)]
fn authenticated(ctx: &XdpContext, at: usize, end: usize, id: u32) -> bool {
    let Some(t) = TUNNELS.get(id) else { return false };
    if t.nhrp_auth[0] == 0 {
        return false;
    }
    // The fixed header: packet size at 10, extension offset at 14.
    let Some(h) = load::<6>(ctx, at + 10) else { return false };
    let (size, extoff) = (usize::from(u16::from_be_bytes([h[0], h[1]])), usize::from(u16::from_be_bytes([h[4], h[5]])));
    if extoff == 0 {
        return false;
    }
    let limit = (at + size).min(end);
    let mut pos = at + extoff;
    for _ in 0..NHRP_EXTENSIONS_SEEN {
        let Some(e) = load::<4>(ctx, pos) else { return false };
        let len = usize::from(u16::from_be_bytes([e[2], e[3]]));
        match u16::from_be_bytes([e[0], e[1]]) & 0x3fff {
            0 => return false,
            NHRP_EXT_AUTHENTICATION => {
                let body = pos + 4 + NHRP_AUTH_SPI_LEN;
                let mut n = 0;
                while n < t.nhrp_auth.len() && t.nhrp_auth[n] != 0 {
                    match load::<1>(ctx, body + n) {
                        Some([b]) if b == t.nhrp_auth[n] => n += 1,
                        _ => return false,
                    }
                }
                return len == NHRP_AUTH_SPI_LEN + n && pos + 4 + len <= limit;
            }
            _ => pos += 4 + len,
        }
        if pos >= limit {
            return false;
        }
    }
    false
}

/// NHRP goes to the daemon, never to the overlay: with the outer addresses and key as they were
/// on the wire (the true NBMA address of a spoke behind NAT).
/// Its keys live in a per-CPU scratch map: the decapsulation's stack is nearly full.
#[inline(always)]
fn punt_nhrp(ctx: &XdpContext, o: &Outer, g: &Gre, inner: usize, id: u32, known: bool) -> Verdict {
    if !known {
        // An unknown source gets a window of its own.
        let scratch = NHRP_SCRATCH.get_ptr_mut(0).ok_or(drop::NHRP_RATE)?;
        // SAFETY: a per-CPU slot, used by one program run at a time.
        let scratch = unsafe { &mut *scratch };
        scratch.source = o.remote;
        // An IPv6 sender holds a /64 at least: its addresses share one window, or a flood from
        // random addresses of one prefix would pass as many strangers. (IPv4-mapped: per host.)
        // (Compared and cleared as words: a slice comparison would be a memcmp call.)
        let s = &mut scratch.source;
        let head = u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let mapped = head == 0 && u32::from_be_bytes([s[8], s[9], s[10], s[11]]) == 0xffff;
        if !mapped {
            for b in &mut s[8..16] {
                *b = 0;
            }
        }
        let allowed = match NHRP_SOURCES.get_ptr_mut(&scratch.source) {
            // SAFETY: an LRU entry; a racing CPU can only let a few more through.
            Some(w) => limit::allow(unsafe { &mut *w }, 1, NHRP_PER_SOURCE_PER_SECOND),
            None => {
                scratch.window = Window::default();
                limit::allow(&mut scratch.window, 1, NHRP_PER_SOURCE_PER_SECOND);
                NHRP_SOURCES.insert(&scratch.source, &scratch.window, 0).is_ok()
            }
        };
        if !allowed {
            return Err(drop::NHRP_RATE);
        }
    }
    // Strangers that carry the tunnel's password have a budget of their own: a flood without it,
    // however many sources it comes from, cannot keep a new spoke from registering.
    let slot = if known {
        0
    } else if authenticated(ctx, inner, o.end, id) {
        2
    } else {
        1
    };
    let budget = NHRP_BUDGET.get_ptr_mut(slot).ok_or(drop::NHRP_RATE)?;
    let per_second = if known { NHRP_KNOWN_PER_SECOND } else { NHRP_UNKNOWN_PER_SECOND };
    // SAFETY: a per-CPU slot, used by one program run at a time.
    if !limit::allow(unsafe { &mut *budget }, 1, per_second) {
        return Err(drop::NHRP_RATE);
    }
    let len = (o.end - inner).min(NHRP_PUNT_MAX);
    if len == 0 {
        return Err(drop::TRUNCATED);
    }
    let Some(mut entry) = NHRP_PUNT.reserve::<NhrpPunt>(0) else {
        return Err(drop::NHRP_RATE);
    };
    let p = entry.as_mut_ptr();
    // In 1..=NHRP_PUNT_MAX, in a form the verifier can bound.
    #[expect(clippy::cast_possible_truncation, reason = "at most NHRP_PUNT_MAX")]
    let n = (((len - 1) & (NHRP_PUNT_MAX - 1)) + 1) as u32;
    // SAFETY: `p` is the reserved record; the helper copies n bytes into its data.
    let loaded = unsafe {
        (*p).tunnel = id;
        (*p).len = n;
        (*p).key = g.key;
        (*p).keyed = u32::from(g.flags & FLAG_K != 0);
        (*p).local = o.local;
        (*p).remote = o.remote;
        #[expect(clippy::cast_possible_truncation, reason = "bounded offsets")]
        bpf_xdp_load_bytes(ctx.ctx, inner as u32, (*p).data.as_mut_ptr().cast(), n)
    };
    if loaded != 0 {
        entry.discard(0);
        return Err(drop::TRUNCATED);
    }
    entry.submit(0);
    stats::count_nhrp_punted(id);
    Ok(xdp_action::XDP_DROP)
}

/// `iseq`: a sequence number must be present and not older than the last accepted; gaps are
/// fine. Like the kernel, the state is updated without a lock.
#[inline(always)]
fn check_sequence(id: u32, g: &Gre) -> Result<(), u32> {
    if g.flags & FLAG_S == 0 {
        return Err(drop::SEQUENCE);
    }
    let state = SEQUENCES.get_ptr_mut(id).ok_or(drop::SEQUENCE)?;
    // SAFETY: a map value of this tunnel; concurrent writers only race on an ordering heuristic.
    let next = unsafe { (*state).rx_next };
    #[expect(clippy::cast_possible_wrap, reason = "serial-number arithmetic (RFC 1982)")]
    if next != 0 && (g.seq.wrapping_sub(next) as i32) < 0 {
        return Err(drop::SEQUENCE);
    }
    // SAFETY: as above.
    unsafe { (*state).rx_next = g.seq.wrapping_add(1) };
    Ok(())
}

/// RFC 6040 decapsulation (as the kernel's INET_ECN_decapsulate): outer CE on a not-ECT inner
/// packet is dropped; outer CE on an ECT inner packet marks it CE. Returns whether to mark.
#[inline(always)]
fn ecn_decap(outer: u8, inner: u8) -> Result<bool, u32> {
    if inner == ECN_NOT_ECT {
        return if outer == ECN_CE { Err(drop::ECN) } else { Ok(false) };
    }
    Ok(outer == ECN_CE && inner != ECN_CE)
}

/// Whether the inner IPv4 packet `ih` at `inner` (GRE from our end to the remote, already
/// checked) is a keepalive as Cisco builds them: a bare GRE header of protocol type 0 and
/// nothing after it. Any other GRE from us to the remote is an ordinary inner packet, and the
/// kernel path decides about it.
#[inline(always)]
fn is_keepalive(ctx: &XdpContext, ih: &[u8; IPV4_HLEN], inner: usize, end: usize) -> bool {
    let total = usize::from(u16::from_be_bytes([ih[2], ih[3]]));
    let Some(word0) = be32(ctx, inner + IPV4_HLEN) else { return false };
    #[expect(clippy::cast_possible_truncation, reason = "the two halves of the first word")]
    let (flags, protocol) = ((word0 >> 16) as u16, word0 as u16);
    ih[0] == 0x45 && protocol == PROTO_KEEPALIVE && flags & (VERSION_MASK | FLAG_R) == 0 && total == IPV4_HLEN + header_len(flags) && inner + total <= end
}

/// Keepalives one tunnel reflects per second at most: Cisco's shortest period is one second, so
/// this leaves room for several remotes' worth while bounding what a forger gets reflected.
const KEEPALIVES_PER_SECOND: u64 = 10;

/// A Cisco keepalive from the remote: the inner packet is GRE addressed back to the remote. Send
/// it there from here at line rate, as a router would (TTL decremented), instead of through the
/// kernel.
#[inline(always)]
fn answer_keepalive(ctx: &XdpContext, o: &Outer, inner: usize, id: u32) -> Verdict {
    let limits = LIMITS.get_ptr_mut(id).ok_or(drop::KEEPALIVE_RATE)?;
    // SAFETY: this tunnel's slot; a racing CPU can only let a few more through.
    if !limit::allow(unsafe { &mut (*limits).keepalive }, 1, KEEPALIVES_PER_SECOND) {
        return Err(drop::KEEPALIVE_RATE);
    }
    // A cold path: the helper checks bounds itself, so no packet pointer has to survive the
    // compiler's reuse of earlier checks.
    let mut l2 = [0u8; ETH_HLEN + VLAN_HLEN];
    #[expect(clippy::cast_possible_truncation, reason = "14 or 18")]
    // SAFETY: the helper copies at most the buffer's size and checks the packet's bounds.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, l2.as_mut_ptr().cast(), o.l3 as u32) } != 0 {
        return Err(drop::TRUNCATED);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&l2[..6]);
    l2.copy_within(6..12, 0);
    l2[6..12].copy_from_slice(&mac);
    ip::decrement_ttl(ctx, inner, false).ok_or(drop::TRUNCATED)?;
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "bounded offsets")]
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (inner - o.l3) as i32) } != 0 {
        return Err(drop::TRUNCATED);
    }
    #[expect(clippy::cast_possible_truncation, reason = "14 or 18")]
    // SAFETY: as above.
    if unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, l2.as_mut_ptr().cast(), o.l3 as u32) } != 0 {
        return Err(drop::TRUNCATED);
    }
    stats::count_keepalive_answered(id);
    Ok(xdp_action::XDP_TX)
}

/// gretap: the payload is an Ethernet frame; after RFC 6040 on the IP packet it carries, it goes
/// into the tunnel netdev as it is.
#[inline(always)]
fn inject_frame(ctx: &XdpContext, o: &Outer, inner: usize, id: u32, mtu: u32) -> Verdict {
    if inner + ETH_HLEN > o.end {
        return Err(drop::TRUNCATED);
    }
    let frame_type = be16(ctx, inner + 12).ok_or(drop::TRUNCATED)?;
    // A tagged frame may be as large as the netdev takes: MTU, Ethernet header and one tag.
    let tag = if frame_type == ETH_P_8021Q || frame_type == ETH_P_8021AD { VLAN_HLEN } else { 0 };
    if o.end - inner > mtu as usize + ETH_HLEN + tag {
        return Err(drop::TOO_BIG);
    }
    let l3 = inner + ETH_HLEN;
    match frame_type {
        ETH_P_IPV4 => {
            let tos = read::<2, _>(ctx, l3).ok_or(drop::TRUNCATED)?[1];
            if ecn_decap(o.ecn, tos & ECN_MASK)? {
                ip::set_ce_ipv4(ctx, l3).ok_or(drop::TRUNCATED)?;
            }
        }
        ETH_P_IPV6 => {
            let ih = read::<2, _>(ctx, l3).ok_or(drop::TRUNCATED)?;
            if ecn_decap(o.ecn, (ih[1] >> 4) & ECN_MASK)? {
                ip::set_ce_ipv6(ctx, l3).ok_or(drop::TRUNCATED)?;
            }
        }
        _ => {}
    }
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "bounded offsets")]
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, inner as i32) } != 0 {
        return Err(drop::TRUNCATED);
    }
    match INJECT_PORTS.redirect(id, 0) {
        Ok(action) => {
            stats::count_rx(id, (o.end - inner) as u64);
            Ok(action)
        }
        Err(_) => Err(drop::NO_INJECT_PORT),
    }
}

/// Replaces the outer headers by an Ethernet header and redirects into the tunnel netdev.
#[inline(always)]
fn inject(ctx: &XdpContext, t: &Tunnel, protocol: u16, inner: usize, id: u32, inner_len: usize) -> Verdict {
    // The destination is the tunnel netdev's own MAC, so the kernel takes the frame as its own.
    let mut hdr = [0u8; ETH_HLEN];
    hdr[..6].copy_from_slice(&t.netdev_mac);
    hdr[6..12].copy_from_slice(&t.inject_mac);
    let ethertype = if protocol == PROTO_IPV6 { ETH_P_IPV6 } else { ETH_P_IPV4 };
    hdr[12..].copy_from_slice(&ethertype.to_be_bytes());
    #[expect(clippy::cast_possible_wrap, clippy::cast_possible_truncation, reason = "bounded offsets")]
    // SAFETY: the helper re-validates; all packet pointers above are dead after this call.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, (inner - ETH_HLEN) as i32) } != 0 {
        return Err(drop::TRUNCATED);
    }
    let eth = bytes::<ETH_HLEN, _>(ctx, 0).ok_or(drop::TRUNCATED)?;
    // SAFETY: bounds checked by `bytes`.
    unsafe { *eth = hdr };
    match INJECT_PORTS.redirect(id, 0) {
        Ok(action) => {
            stats::count_rx(id, inner_len as u64);
            Ok(action)
        }
        Err(_) => Err(drop::NO_INJECT_PORT),
    }
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
    // SAFETY: the value is copied out at once.
    if let Some(users) = unsafe { ENDPOINTS.get(&pair) }.copied() {
        // A gretap tunnel for an IP packet, or a gre tunnel for a frame: the key matched, the
        // protocol type did not.
        let other = RxKey { flags: rx.flags ^ RX_TEB, ..*rx };
        // SAFETY: the value is a plain u32 copied out at once.
        match unsafe { RX_MATCH.get(&other) }.copied() {
            Some(id) => Err(stats::tunnel_drop(id, drop::UNKNOWN_PROTOCOL)),
            // The one tunnel between these endpoints is the one the sender means.
            None if users.users == 1 => Err(stats::tunnel_drop(users.tunnel, drop::KEY_MISMATCH)),
            None => Err(drop::KEY_MISMATCH),
        }
    } else {
        ours_drop(&rx.local, drop::NO_TUNNEL)
    }
}
