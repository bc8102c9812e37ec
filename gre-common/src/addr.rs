//! Outer and overlay addresses are stored family-tagged in 16 bytes: IPv6 as is, IPv4 as an
//! IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). IPv4 and IPv6 share one key layout and one code path.

/// The 12-byte prefix that marks an IPv4-mapped address.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// A 16-byte address as stored in map keys and values.
pub type Addr = [u8; 16];

/// The stored form of an IPv4 address given as its four network-order octets.
#[inline(always)]
#[must_use]
pub const fn from_v4(octets: [u8; 4]) -> Addr {
    // Built as four words: in eBPF, a byte array with a run of zeroes is a call to a
    // byte-at-a-time memset.
    let words = [0u32, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes(octets)];
    // SAFETY: [u32; 4] and [u8; 16] have the same size, and every bit pattern is a valid u8.
    unsafe { core::mem::transmute::<[u32; 4], Addr>(words) }
}

/// The IPv4 octets of a stored address, if it is IPv4-mapped.
#[must_use]
pub fn to_v4(a: &Addr) -> Option<[u8; 4]> {
    if a[..12] == V4_MAPPED_PREFIX { Some([a[12], a[13], a[14], a[15]]) } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trip() {
        let a = from_v4([198, 51, 100, 7]);
        assert_eq!(&a[..12], &V4_MAPPED_PREFIX);
        assert_eq!(to_v4(&a), Some([198, 51, 100, 7]));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        assert_eq!(to_v4(&v6), None);
    }
}
