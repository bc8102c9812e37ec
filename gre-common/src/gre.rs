//! The GRE header (RFC 2784 with the RFC 2890 key and sequence extensions): the one place that
//! states its layout. The datapath parses with these constants; userspace encodes and decodes with
//! [`Header`].

/// Checksum present.
pub const FLAG_C: u16 = 0x8000;
/// Routing present (RFC 1701; never valid here).
pub const FLAG_R: u16 = 0x4000;
/// Key present (RFC 2890).
pub const FLAG_K: u16 = 0x2000;
/// Sequence number present (RFC 2890).
pub const FLAG_S: u16 = 0x1000;
/// The version field, the low three bits of the flags word.
pub const VERSION_MASK: u16 = 0x0007;

/// Length of the fixed part: flags/version and protocol type.
pub const BASE_LEN: usize = 4;
/// Each optional field (checksum+reserved1, key, sequence) is one 32-bit word.
pub const OPTION_LEN: usize = 4;
/// The longest header we accept: base plus checksum, key and sequence.
pub const MAX_LEN: usize = BASE_LEN + 3 * OPTION_LEN;

/// Protocol types (EtherType values) carried in the GRE header.
pub const PROTO_IPV4: u16 = 0x0800;
pub const PROTO_IPV6: u16 = 0x86DD;
/// Transparent Ethernet bridging (gretap).
pub const PROTO_TEB: u16 = 0x6558;
/// NHRP control traffic.
pub const PROTO_NHRP: u16 = 0x2001;
/// Cisco keepalive: an empty GRE packet that the remote sends back to its origin.
pub const PROTO_KEEPALIVE: u16 = 0x0000;
/// Cisco MetaData (TrustSec inline tagging): a header of its own before the payload, whose first
/// two bytes are the payload's protocol type and whose fourth gives its option words.
pub const PROTO_CISCO_METADATA: u16 = 0x8909;
/// Cisco MetaData: fixed part (type, version, length) plus `length` 4-byte option words.
pub const CMD_BASE_LEN: usize = 4;
pub const CMD_MAX_WORDS: usize = 3;

/// IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

/// Ethernet, IPv4 and VLAN sizes the datapath needs alongside GRE's.
pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// IPv6 extension headers the decapsulator steps over to reach GRE (ip6gre senders put an
/// encapsulation-limit option in a destination options header).
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_FRAGMENT: u8 = 44;
/// ECN field (RFC 3168) in the TOS byte / traffic class.
pub const ECN_MASK: u8 = 0x03;
pub const ECN_NOT_ECT: u8 = 0x00;
pub const ECN_ECT0: u8 = 0x02;
pub const ECN_CE: u8 = 0x03;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Length of a GRE header with the given flags word.
#[inline(always)]
#[must_use]
pub const fn header_len(flags: u16) -> usize {
    let mut len = BASE_LEN;
    if flags & FLAG_C != 0 {
        len += OPTION_LEN;
    }
    if flags & FLAG_K != 0 {
        len += OPTION_LEN;
    }
    if flags & FLAG_S != 0 {
        len += OPTION_LEN;
    }
    len
}

/// Outer-header overhead of a tunnel that sends the given GRE flags over IPv4 or IPv6, as the
/// kernel's ip_gre / ip6_gre compute it for the tunnel MTU.
#[must_use]
pub const fn overhead(outer_v6: bool, flags: u16) -> usize {
    (if outer_v6 { IPV6_HLEN } else { IPV4_HLEN }) + header_len(flags)
}

/// The Internet checksum (RFC 1071) of `data`: the value to put in a checksum field that was
/// zero while summing; over data that includes a correct checksum it is 0.
#[must_use]
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    let folded = sum as u16;
    !folded
}

/// A decoded GRE header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub protocol: u16,
    pub checksum: Option<u16>,
    pub key: Option<u32>,
    pub sequence: Option<u32>,
}

/// Why a GRE header could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the flags announce.
    Truncated,
    /// Version other than 0.
    BadVersion(u16),
    /// Routing-present bit set.
    Routing,
}

impl Header {
    /// The flags word this header encodes to (version 0).
    #[must_use]
    pub const fn flags(&self) -> u16 {
        let mut f = 0;
        if self.checksum.is_some() {
            f |= FLAG_C;
        }
        if self.key.is_some() {
            f |= FLAG_K;
        }
        if self.sequence.is_some() {
            f |= FLAG_S;
        }
        f
    }

    /// Encoded length in bytes.
    #[must_use]
    pub const fn len(&self) -> usize {
        header_len(self.flags())
    }

    /// Never empty: the fixed part is always there.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header to the front of `out` and returns its length.
    ///
    /// # Errors
    /// [`Error::Truncated`] when `out` is shorter than [`Header::len`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let len = self.len();
        if out.len() < len {
            return Err(Error::Truncated);
        }
        out[0..2].copy_from_slice(&self.flags().to_be_bytes());
        out[2..4].copy_from_slice(&self.protocol.to_be_bytes());
        let mut at = BASE_LEN;
        if let Some(c) = self.checksum {
            out[at..at + 2].copy_from_slice(&c.to_be_bytes());
            out[at + 2..at + 4].fill(0);
            at += OPTION_LEN;
        }
        if let Some(k) = self.key {
            out[at..at + 4].copy_from_slice(&k.to_be_bytes());
            at += OPTION_LEN;
        }
        if let Some(s) = self.sequence {
            out[at..at + 4].copy_from_slice(&s.to_be_bytes());
        }
        Ok(len)
    }

    /// Decodes the header at the front of `buf`; returns it and its length. Reserved flag bits are
    /// ignored, as RFC 2784 and the kernel's ip_gre do.
    ///
    /// # Errors
    /// [`Error`] says which check failed.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), Error> {
        if buf.len() < BASE_LEN {
            return Err(Error::Truncated);
        }
        let flags = u16::from_be_bytes([buf[0], buf[1]]);
        if flags & VERSION_MASK != 0 {
            return Err(Error::BadVersion(flags & VERSION_MASK));
        }
        if flags & FLAG_R != 0 {
            return Err(Error::Routing);
        }
        let len = header_len(flags);
        if buf.len() < len {
            return Err(Error::Truncated);
        }
        let word = |at: usize| u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let mut h = Self { protocol: u16::from_be_bytes([buf[2], buf[3]]), ..Self::default() };
        let mut at = BASE_LEN;
        if flags & FLAG_C != 0 {
            h.checksum = Some(u16::from_be_bytes([buf[at], buf[at + 1]]));
            at += OPTION_LEN;
        }
        if flags & FLAG_K != 0 {
            h.key = Some(word(at));
            at += OPTION_LEN;
        }
        if flags & FLAG_S != 0 {
            h.sequence = Some(word(at));
        }
        Ok((h, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_follow_flags() {
        assert_eq!(header_len(0), 4);
        assert_eq!(header_len(FLAG_K), 8);
        assert_eq!(header_len(FLAG_C | FLAG_K | FLAG_S), MAX_LEN);
        assert_eq!(overhead(false, 0), 24);
        assert_eq!(overhead(false, FLAG_K), 28);
        assert_eq!(overhead(true, FLAG_C | FLAG_K | FLAG_S), 56);
    }

    #[test]
    fn encodes_rfc_layout() {
        let h = Header { protocol: PROTO_IPV4, checksum: Some(0xabcd), key: Some(42), sequence: Some(7) };
        let mut buf = [0xffu8; 16];
        assert_eq!(h.encode(&mut buf), Ok(16));
        assert_eq!(buf, [0xb0, 0x00, 0x08, 0x00, 0xab, 0xcd, 0, 0, 0, 0, 0, 42, 0, 0, 0, 7]);
        assert_eq!(Header::decode(&buf), Ok((h, 16)));
    }

    #[test]
    fn key_only_round_trip() {
        let h = Header { protocol: PROTO_IPV6, key: Some(0xdead_beef), ..Header::default() };
        let mut buf = [0u8; 8];
        assert_eq!(h.encode(&mut buf), Ok(8));
        assert_eq!(buf, [0x20, 0x00, 0x86, 0xdd, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Header::decode(&buf), Ok((h, 8)));
    }

    #[test]
    fn rejects_what_rfc_2784_discards() {
        assert_eq!(Header::decode(&[0x00, 0x01, 0x08, 0x00]), Err(Error::BadVersion(1)));
        assert_eq!(Header::decode(&[0x40, 0x00, 0x08, 0x00]), Err(Error::Routing));
        assert_eq!(Header::decode(&[0x20, 0x00, 0x08]), Err(Error::Truncated));
        // Key announced but missing.
        assert_eq!(Header::decode(&[0x20, 0x00, 0x08, 0x00, 0, 0]), Err(Error::Truncated));
        assert_eq!(Header { key: Some(1), ..Header::default() }.encode(&mut [0u8; 7]), Err(Error::Truncated));
    }

    #[test]
    fn internet_checksum_of_rfc_1071_example() {
        // RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 is ddf2, so the checksum is 220d.
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0x22, 0x0d]), 0);
        // An odd length is padded with a zero byte.
        assert_eq!(internet_checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn reserved_bits_are_ignored() {
        // Strict-source-route and recursion bits set: ignored on receipt, like ip_gre.
        let (h, len) = Header::decode(&[0x0f, 0x00, 0x08, 0x00]).unwrap();
        assert_eq!((h.protocol, len), (PROTO_IPV4, 4));
    }
}
