//! Multipoint tunnels: where a packet goes. The overlay route gives the next hop (or the
//! destination itself, on the tunnel's subnet); the peer table (the NHRP cache) gives its NBMA
//! address. While a peer is unknown, traffic goes through the NHS, and the daemon is asked —
//! once a second per destination at most — to resolve it.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use gre_common::{
    addr::Addr,
    drop,
    maps::{Event, MAX_MULTICAST_GROUPS, Peer, PeerKey, Route, Tunnel, event_kind, nhrp_role, peer_kind},
};

use crate::maps::{EVENTS, PEERS, RESOLUTION_ASKED, ROUTES};

const ZERO: Addr = [0; 16];
const SECOND: u64 = 1_000_000_000;

/// The overlay next hop toward `dst` in tunnel `id`.
#[inline(always)]
pub fn next_hop(id: u32, dst: &Addr) -> Addr {
    match ROUTES.get(Key::new(128, *dst)) {
        Some(r) if r.tunnel == id => hop_of(r, dst),
        _ => *dst,
    }
}

/// The overlay next hop of `route` (the route toward `dst`, already looked up).
#[inline(always)]
pub fn hop_of(route: &Route, dst: &Addr) -> Addr {
    if route.nexthop == ZERO { *dst } else { route.nexthop }
}

/// The NBMA address of a resolved peer, refreshing its `used` time at most once a second.
#[inline(always)]
pub fn lookup(id: u32, overlay: &Addr) -> Option<Addr> {
    // SAFETY: a map value read at once.
    entry(id, overlay).map(|p| unsafe { (*p).nbma })
}

/// The entry of a resolved peer, its `used` time refreshed at most once a second.
#[inline(always)]
pub fn entry(id: u32, overlay: &Addr) -> Option<*mut Peer> {
    let key = PeerKey { tunnel: id, pad0: 0, overlay: *overlay };
    let p = PEERS.get_ptr_mut(&key)?;
    // SAFETY: a map value; `used_ns` is advisory, a racing write is harmless.
    unsafe {
        if (*p).kind == peer_kind::INCOMPLETE {
            return None;
        }
        let now = bpf_ktime_get_ns();
        if now.wrapping_sub((*p).used_ns) > SECOND {
            (*p).used_ns = now;
        }
    }
    Some(p)
}

/// True if `overlay` is a resolved peer of tunnel `id`.
#[inline(always)]
fn known(id: u32, overlay: &Addr) -> bool {
    let key = PeerKey { tunnel: id, pad0: 0, overlay: *overlay };
    // SAFETY: a map value read at once.
    unsafe { PEERS.get(&key) }.is_some_and(|p| p.kind != peer_kind::INCOMPLETE)
}

/// The outer destination for a packet of multipoint tunnel `id` from `src` to `dst`.
#[inline(always)]
pub fn resolve(id: u32, t: &Tunnel, src: &Addr, dst: &Addr) -> Result<Addr, u32> {
    let hop = next_hop(id, dst);
    if let Some(nbma) = lookup(id, &hop) {
        return Ok(nbma);
    }
    ask_resolution(id, &hop, src);
    if t.nhs != ZERO {
        if let Some(nbma) = lookup(id, &t.nhs) {
            return Ok(nbma);
        }
    }
    Err(drop::NO_PEER)
}

/// An NHS relaying traffic from one of its peers (or a host behind one) to another (it came in
/// through the tunnel and goes back out of it): the daemon is asked to send the source a
/// Traffic Indication, so that it resolves the destination and takes a shortcut (DMVPN phase 3).
#[inline(always)]
pub fn note_relay(id: u32, t: &Tunnel, src: &Addr, dst: &Addr) {
    // A peer itself needs no route lookup; a host behind one does. Neither counts as a use of
    // the source's entry (`used` is about sending to a peer).
    if t.nhrp_role == nhrp_role::NHS && (known(id, src) || known(id, &next_hop(id, src))) {
        tell(event_kind::TRAFFIC_INDICATION, id, dst, src);
    }
}

/// Tells the daemon that `target` needs resolving, unless it was told less than a second ago.
#[inline(always)]
fn ask_resolution(id: u32, target: &Addr, source: &Addr) {
    tell(event_kind::RESOLUTION_WANTED, id, target, source);
}

/// Sends the daemon an event about `target`, at most once a second per kind, tunnel and target.
#[inline(always)]
fn tell(kind: u32, id: u32, target: &Addr, source: &Addr) {
    // The kind goes into the key's spare word, so the two kinds are limited separately.
    let key = PeerKey { tunnel: id, pad0: kind, overlay: *target };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is a plain u64 copied out at once.
    if unsafe { RESOLUTION_ASKED.get(&key) }.is_some_and(|last| now.wrapping_sub(*last) < SECOND) {
        return;
    }
    let _ = RESOLUTION_ASKED.insert(&key, &now, 0);
    let event = Event { kind, tunnel: id, target: *target, source: *source, time_ns: now, pad0: 0 };
    // Slow path only (once a second per tunnel and target at most): what `gre log` shows.
    log_event(kind, id, target, source);
    // A full ring drops the event: the next packet (after a second) asks again.
    let _ = EVENTS.output::<Event>(&event, 0);
}

/// True when `dst` is in one of the multicast groups tunnel `t` replicates.
#[inline(always)]
pub fn in_groups(t: &Tunnel, dst: &Addr) -> bool {
    let halves = |a: &Addr| {
        let (mut hi, mut lo) = ([0u8; 8], [0u8; 8]);
        hi.copy_from_slice(&a[..8]);
        lo.copy_from_slice(&a[8..]);
        (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
    };
    let (dh, dl) = halves(dst);
    let mut i = 0;
    while i < MAX_MULTICAST_GROUPS {
        let len = u32::from(t.multicast_group_lens[i]);
        if len != 0 {
            let (ph, pl) = halves(&t.multicast_groups[i]);
            let mask_hi = if len >= 64 { u64::MAX } else { !(u64::MAX >> len) };
            let mask_lo = if len <= 64 {
                0
            } else if len >= 128 {
                u64::MAX
            } else {
                !(u64::MAX >> (len - 64))
            };
            if (dh ^ ph) & mask_hi == 0 && (dl ^ pl) & mask_lo == 0 {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// True for an IPv4 (224.0.0.0/4) or IPv6 (ff00::/8) multicast destination.
#[inline(always)]
pub fn is_multicast(dst: &Addr) -> bool {
    match gre_common::addr::to_v4(dst) {
        Some(v4) => v4[0] & 0xf0 == 0xe0,
        None => dst[0] == 0xff,
    }
}

/// One line for `gre log` about an event for the daemon.
#[inline(always)]
fn log_event(kind: u32, id: u32, target: &Addr, source: &Addr) {
    match (gre_common::addr::to_v4(target), gre_common::addr::to_v4(source)) {
        (Some(t), Some(s)) if kind == event_kind::RESOLUTION_WANTED => {
            aya_log_ebpf::info!(&(), "tunnel {}: no peer for {:i} (from {:i}): resolution asked", id, u32::from_be_bytes(t), u32::from_be_bytes(s));
        }
        (Some(t), Some(s)) => {
            aya_log_ebpf::info!(&(), "tunnel {}: relayed {:i} -> {:i}: traffic indication asked", id, u32::from_be_bytes(s), u32::from_be_bytes(t));
        }
        _ => aya_log_ebpf::info!(&(), "tunnel {}: event {} for an IPv6 overlay address", id, kind),
    }
}
