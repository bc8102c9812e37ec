//! The outer headers of an encapsulated packet (IPv4 or IPv6, GRE with checksum field, key and
//! sequence), built on the stack. Shared by the TC encapsulation on the tunnel netdev and the XDP
//! encapsulation on LAN ports: one place for these facts, two hooks that write the result.

use gre_common::{
    addr::Addr,
    drop,
    gre::{ECN_CE, ECN_ECT0, ECN_MASK, ETH_HLEN, ETH_P_IPV4, FLAG_C, FLAG_K, FLAG_S, IPPROTO_GRE, IPV4_HLEN, IPV6_HLEN, MAX_LEN},
    maps::{Tunnel, tunnel_flags},
};

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::PerCpuArray};

use crate::{csum, maps::SEQUENCES};

const IP_DF: u16 = 0x4000;
/// The default hop limit, for frames that carry none of their own.
pub const DEFAULT_TTL: u8 = 64;

/// What the outer header takes from the inner packet.
pub struct Inner {
    pub ethertype: u16,
    /// TOS byte / traffic class.
    pub tos: u8,
    pub ttl: u8,
    pub df: bool,
    pub flowlabel: u32,
    /// A hash of the inner flow: the outer IPv6 flow label when the tunnel sets none (as
    /// ip6_make_flowlabel, for ECMP and RSS in the underlay).
    pub hash: u32,
    /// The inner IP protocol / next header (0 for non-IP frames).
    pub protocol: u8,
    /// Source and destination (16-byte form; zero for non-IP frames).
    pub src: Addr,
    pub dst: Addr,
}

/// Outer IP header, GRE header and (for a gretap) the inner Ethernet header, contiguous: what
/// goes right after the outer Ethernet header.
pub struct Headers {
    pub buf: [u8; HEADERS_MAX],
    pub len: usize,
    /// Offset of the GRE header in `buf`.
    pub gre_at: usize,
}

pub const HEADERS_MAX: usize = IPV6_HLEN + MAX_LEN + ETH_HLEN;

/// The GRE flags a tunnel sends with; `gso` packets cannot carry a checksum.
#[inline(always)]
pub fn tx_flags(t: &Tunnel, gso: bool) -> Result<u16, u32> {
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
    Ok(flags)
}

/// Per-CPU room for the headers being built: the programs' 512-byte stacks cannot spare it.
#[map]
static HEADERS: PerCpuArray<Headers> = PerCpuArray::with_max_entries(1, 0);

/// Builds the headers of tunnel `id` for an inner packet (or frame) of `inner_len` bytes, in this
/// CPU's scratch space.
#[expect(clippy::too_many_arguments, reason = "the facts of one packet and tunnel")]
#[inline(always)]
pub fn build(
    id: u32,
    t: &Tunnel,
    remote: &Addr,
    inner: &Inner,
    inner_len: u32,
    protocol: u16,
    flags: u16,
    frame_eth: Option<&[u8; ETH_HLEN]>,
) -> Result<&'static mut Headers, u32> {
    let (gre, gre_len) = gre_header(id, t, flags, protocol)?;
    let h = HEADERS.get_ptr_mut(0).ok_or(drop::ENCAP_FAILED)?;
    // SAFETY: a per-CPU slot, used by one program run at a time.
    let h = unsafe { &mut *h };
    h.len = 0;
    let payload = inner_len + gre_len as u32;
    if t.flags & tunnel_flags::OUTER_V6 != 0 {
        h.buf[..IPV6_HLEN].copy_from_slice(&outer_ipv6(t, remote, inner, payload));
        h.gre_at = IPV6_HLEN;
    } else {
        h.buf[..IPV4_HLEN].copy_from_slice(&outer_ipv4(t, remote, inner, payload + IPV4_HLEN as u32));
        h.gre_at = IPV4_HLEN;
    }
    h.buf[h.gre_at..h.gre_at + MAX_LEN].copy_from_slice(&gre);
    h.len = h.gre_at + gre_len;
    if let Some(eth) = frame_eth {
        h.buf[h.len..h.len + ETH_HLEN].copy_from_slice(eth);
        h.len += ETH_HLEN;
    }
    Ok(h)
}

/// The GRE header (RFC 2784/2890 order: checksum+reserved, key, sequence), checksum field zero.
#[inline(always)]
pub fn gre_header(id: u32, t: &Tunnel, flags: u16, protocol: u16) -> Result<([u8; MAX_LEN], usize), u32> {
    // Four network-order words, each written once: a zeroed array, even of words, is a call to
    // eBPF's byte-at-a-time memset on every packet.
    let w0 = ((u32::from(flags) << 16) | u32::from(protocol)).to_be();
    let key = t.okey.to_be();
    let seq = if flags & FLAG_S != 0 {
        let state = SEQUENCES.get_ptr_mut(id).ok_or(drop::ENCAP_FAILED)?;
        #[expect(clippy::cast_possible_truncation, reason = "sequence numbers are 32-bit")]
        // SAFETY: an 8-byte aligned u64 in a map value.
        let seq = unsafe { fetch_add(&raw mut (*state).tx_count, 1) }.wrapping_add(1) as u32;
        seq.to_be()
    } else {
        0
    };
    // The options present, in order: checksum (zero here), key, sequence number.
    let (w1, w2, w3, words) = match (flags & FLAG_C != 0, flags & FLAG_K != 0, flags & FLAG_S != 0) {
        (false, false, false) => (0, 0, 0, 1),
        (true, false, false) => (0, 0, 0, 2),
        (false, true, false) => (key, 0, 0, 2),
        (false, false, true) => (seq, 0, 0, 2),
        (true, true, false) => (0, key, 0, 3),
        (true, false, true) => (0, seq, 0, 3),
        (false, true, true) => (key, seq, 0, 3),
        (true, true, true) => (0, key, seq, 4),
    };
    // SAFETY: [u32; 4] and [u8; 16] have the same size, and every bit pattern is a valid u8.
    Ok((unsafe { core::mem::transmute::<[u32; MAX_LEN / 4], [u8; MAX_LEN]>([w0, w1, w2, w3]) }, words * 4))
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
pub fn outer_ipv4(t: &Tunnel, remote: &Addr, inner: &Inner, total: u32) -> [u8; IPV4_HLEN] {
    let mut h = [0u8; IPV4_HLEN];
    h[0] = 0x45;
    h[1] = outer_tos(t, inner);
    #[expect(clippy::cast_possible_truncation, reason = "clamped")]
    h[2..4].copy_from_slice(&(total.min(0xffff) as u16).to_be_bytes());
    let df = if t.flags & tunnel_flags::NOPMTUDISC == 0 { true } else { inner.ethertype == ETH_P_IPV4 && inner.df && t.flags & tunnel_flags::IGNORE_DF == 0 };
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
    h[16..20].copy_from_slice(&remote[12..]);
    let c = csum::ipv4_header(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// The outer IPv6 header.
#[inline(always)]
pub fn outer_ipv6(t: &Tunnel, remote: &Addr, inner: &Inner, payload: u32) -> [u8; IPV6_HLEN] {
    let flowlabel = if t.flags & tunnel_flags::FLOWLABEL_INHERIT != 0 {
        inner.flowlabel
    } else if t.flowlabel != 0 {
        t.flowlabel
    } else {
        // Linux turns the hash so that its better-mixed high half lands in the 20 bits.
        inner.hash.rotate_left(16)
    };
    let word0 = (6u32 << 28) | (u32::from(outer_tos(t, inner)) << 20) | (flowlabel & 0x000f_ffff);
    let mut h = [0u8; IPV6_HLEN];
    h[..4].copy_from_slice(&word0.to_be_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "clamped")]
    h[4..6].copy_from_slice(&(payload.min(0xffff) as u16).to_be_bytes());
    h[6] = IPPROTO_GRE;
    h[7] = outer_ttl(t, inner);
    h[8..24].copy_from_slice(&t.local);
    h[24..40].copy_from_slice(remote);
    h
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

/// A hash of an inner flow where no skb hash exists (XDP): its addresses and protocol, mixed
/// with the 32-bit finalizer of MurmurHash3 so that every input bit reaches the flow label.
#[inline(always)]
pub fn flow_hash(src: &Addr, dst: &Addr, protocol: u8) -> u32 {
    let mut h = u32::from(protocol);
    let mut i = 0;
    while i < 4 {
        let w = |a: &Addr| u32::from_be_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
        h = (h ^ w(src)).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        h = (h ^ w(dst)).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
