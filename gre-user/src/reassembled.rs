//! GRE that arrived in fragments. XDP passes fragments to the kernel, which reassembles them but
//! has no GRE module to give them to; `gre daemon` reads them from a raw socket and decapsulates
//! them here with the receive checks of the datapath (tunnel match with the multipoint
//! fallback, strict peers, checksum policy and checksum, sequence, size, RFC 6040), then injects
//! them into the tunnel netdev. What it delivers counts in the tunnel's `rx_packets`, what it
//! drops in its drops by reason, as if the datapath had seen the packet whole.
//!
//! A protected tunnel's GRE comes this way too: the kernel decrypts ESP and delivers the GRE
//! locally, where no device hook sees it but the raw socket does (past the kernel's inbound
//! policy check, so only what an SA protected). NHRP among it goes to the daemon's NHRP agent.

use std::os::fd::{AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};
use gre_common::{
    addr::Addr,
    drop,
    gre::{self, ECN_CE, ECN_MASK, ECN_NOT_ECT, FLAG_K},
    maps::{RX_KEY_PRESENT, RX_TEB, RxKey, Tunnel, tunnel_flags},
};

use crate::maps::Maps;

/// The outer header of a reassembled packet, as far as decapsulation needs it.
#[derive(Debug, Clone, Copy)]
pub struct Outer {
    pub local: Addr,
    pub remote: Addr,
    /// The outer ECN bits.
    pub ecn: u8,
}

/// NHRP that came this way, for the NHRP agent.
#[derive(Debug)]
pub struct Nhrp {
    pub tunnel: u32,
    pub remote: std::net::IpAddr,
    pub bytes: Vec<u8>,
}

/// Decapsulates one reassembled packet (`body`: the GRE header and payload) and delivers it, or
/// counts why not; NHRP is returned for the agent. GRE for no tunnel of ours is left alone, as
/// the datapath passes it.
///
/// # Errors
/// The counters cannot be written.
pub fn receive(maps: &mut Maps, o: &Outer, body: &[u8], injector: &OwnedFd) -> Result<Option<Nhrp>> {
    match decapsulate(maps, o, body) {
        Ok(Delivery::Nhrp(tunnel, bytes)) => Ok(Some(Nhrp { tunnel, remote: crate::maps::show_addr(&o.remote), bytes })),
        Ok(Delivery::Frame(id, t, frame, bytes)) => {
            let mut s = maps.state(id)?;
            if let Err(e) = inject(injector, t.inject_ifindex, &frame) {
                log::debug!("tunnel {id}: a reassembled packet not injected: {e:#}");
                s.reassembled_drops[drop::NO_INJECT_PORT as usize] += 1;
            } else {
                s.reassembled += 1;
                s.reassembled_bytes += bytes as u64;
            }
            maps.set_state(id, &s).map(|()| None)
        }
        Err((Some(id), reason)) => {
            let mut s = maps.state(id)?;
            s.reassembled_drops[reason as usize] += 1;
            maps.set_state(id, &s).map(|()| None)
        }
        Err((None, _)) => Ok(None),
    }
}

/// What a packet decapsulates to: for tunnel `id`, a frame to inject (with the tunnel's record
/// and the inner length), or NHRP.
enum Delivery {
    Frame(u32, Tunnel, Vec<u8>, usize),
    Nhrp(u32, Vec<u8>),
}

/// The delivery, or the tunnel (if known) and the drop reason.
fn decapsulate(maps: &Maps, o: &Outer, body: &[u8]) -> Result<Delivery, (Option<u32>, u32)> {
    let (h, hlen) = gre::Header::decode(body).map_err(|e| {
        let reason = match e {
            gre::Error::BadVersion(_) => drop::BAD_VERSION,
            gre::Error::Routing => drop::ROUTING,
            gre::Error::Truncated => drop::TRUNCATED,
        };
        (None, reason)
    })?;
    let mut key = RxKey { local: o.local, remote: o.remote, key: h.key.unwrap_or(0), flags: if h.flags() & FLAG_K != 0 { RX_KEY_PRESENT } else { 0 } };
    if h.protocol == gre::PROTO_TEB {
        key.flags |= RX_TEB;
    }
    // A point-to-point tunnel matches the remote; a multipoint one any remote.
    let Some((id, t)) = maps.match_rx(&key).or_else(|| maps.match_rx(&RxKey { remote: [0; 16], ..key })) else {
        // Between the endpoints of exactly one tunnel, the sender means that one; other GRE
        // is not a tunnel's to count.
        return Err((maps.sole_tunnel(&o.local, &o.remote), drop::KEY_MISMATCH));
    };
    let fail = |reason: u32| (Some(id), reason);
    // NHRP passes the strict gate, as in the datapath: it is how a spoke becomes a peer.
    if t.flags & tunnel_flags::STRICT != 0 && h.protocol != gre::PROTO_NHRP && !maps.is_peer(id, &o.remote) {
        return Err(fail(drop::UNKNOWN_PEER));
    }
    if h.checksum.is_some() != (t.flags & tunnel_flags::ICSUM != 0) {
        return Err(fail(drop::CHECKSUM_POLICY));
    }
    if h.checksum.is_some() && gre::internet_checksum(body) != 0 {
        return Err(fail(drop::BAD_CHECKSUM));
    }
    if t.flags & tunnel_flags::ISEQ != 0 && !h.sequence.is_some_and(|n| maps.sequence_acceptable(id, n)) {
        return Err(fail(drop::SEQUENCE));
    }
    let mut payload = &body[hlen..];
    let mut protocol = h.protocol;
    if protocol == gre::PROTO_CISCO_METADATA {
        let words = usize::from(*payload.get(3).ok_or(fail(drop::TRUNCATED))?);
        protocol = u16::from_be_bytes([payload[0], payload[1]]);
        payload = payload.get(gre::CMD_BASE_LEN + 4 * words..).ok_or(fail(drop::TRUNCATED))?;
    }
    if protocol == gre::PROTO_NHRP {
        return Ok(Delivery::Nhrp(id, payload.to_vec()));
    }
    let l2 = if protocol == gre::PROTO_TEB { gre::ETH_HLEN } else { 0 };
    if payload.len() > t.mtu as usize + l2 {
        return Err(fail(drop::TOO_BIG));
    }
    let mut frame = Vec::with_capacity(gre::ETH_HLEN + payload.len());
    match protocol {
        gre::PROTO_TEB => frame.extend_from_slice(payload),
        gre::PROTO_IPV4 | gre::PROTO_IPV6 => {
            frame.extend_from_slice(&t.netdev_mac);
            frame.extend_from_slice(&t.inject_mac);
            frame.extend_from_slice(&protocol.to_be_bytes());
            frame.extend_from_slice(payload);
        }
        _ => return Err(fail(drop::UNKNOWN_PROTOCOL)),
    }
    let ip = if protocol == gre::PROTO_TEB { gre::ETH_HLEN * 2 } else { gre::ETH_HLEN };
    ecn_decapsulate(o.ecn, &mut frame, ip).map_err(fail)?;
    Ok(Delivery::Frame(id, t, frame, payload.len()))
}

/// RFC 6040 on the IP packet at `at` of `frame` (as the datapath's ecn_decap): outer CE on a
/// not-ECT packet is a drop, on an ECT one it marks the packet CE.
fn ecn_decapsulate(outer: u8, frame: &mut [u8], at: usize) -> Result<(), u32> {
    let Some(&first) = frame.get(at) else { return Ok(()) };
    let (v6, inner) = match first >> 4 {
        4 if frame.len() >= at + gre::IPV4_HLEN => (false, frame[at + 1] & ECN_MASK),
        6 if frame.len() >= at + 2 => (true, (frame[at + 1] >> 4) & ECN_MASK),
        _ => return Ok(()),
    };
    if outer != ECN_CE || inner == ECN_CE {
        return Ok(());
    }
    if inner == ECN_NOT_ECT {
        return Err(drop::ECN);
    }
    if v6 {
        frame[at + 1] |= ECN_CE << 4;
    } else {
        frame[at + 1] |= ECN_CE;
        let ihl = usize::from(frame[at] & 0x0f) * 4;
        if let Some(h) = frame.get_mut(at..at + ihl) {
            h[10..12].copy_from_slice(&[0, 0]);
            let c = gre::internet_checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
    }
    Ok(())
}

/// Sends an Ethernet frame out of `ifindex` (the datapath end of a tunnel netdev: it arrives on
/// the kernel end as received).
fn inject(sock: &OwnedFd, ifindex: u32, frame: &[u8]) -> Result<()> {
    // SAFETY: all-zero is a valid sockaddr_ll to fill in.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
    to.sll_ifindex = i32::try_from(ifindex).context("ifindex")?;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(frame.get(..6).context("short frame")?);
    // SAFETY: `frame` and `to` are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap_or_default(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("injecting into the tunnel netdev");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(tos: u8) -> Vec<u8> {
        let mut h = vec![0x45, tos, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 203, 0, 113, 1, 203, 0, 113, 2];
        let c = gre::internet_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    #[test]
    fn rfc_6040_on_reassembled_packets() {
        // Outer CE on ECT(0): marked CE, header checksum still right.
        let mut f = [vec![0; 14], ipv4(0x02)].concat();
        assert_eq!(ecn_decapsulate(ECN_CE, &mut f, 14), Ok(()));
        assert_eq!((f[15] & ECN_MASK, gre::internet_checksum(&f[14..34])), (ECN_CE, 0));
        // Outer CE on not-ECT: dropped. Outer ECT on anything: unchanged.
        let mut f = [vec![0; 14], ipv4(0x00)].concat();
        assert_eq!(ecn_decapsulate(ECN_CE, &mut f, 14), Err(drop::ECN));
        let before = f.clone();
        assert_eq!(ecn_decapsulate(0x02, &mut f, 14), Ok(()));
        assert_eq!(f, before);
        // IPv6: the ECN bits sit across the first two bytes.
        let mut f = [vec![0; 14], vec![0x60, 0x10, 0, 0]].concat();
        assert_eq!(ecn_decapsulate(ECN_CE, &mut f, 14), Ok(()));
        assert_eq!(f[15], 0x30);
    }
}
