//! Why the datapath dropped a packet. The index is the slot in the `DROPS` per-CPU array; the name
//! is what `gre show` prints and the JSON field name, so it must never change once released.

/// The packet ended before a header it announced (Ethernet, VLAN, IPv4, GRE or its options).
pub const TRUNCATED: u32 = 0;
/// GRE version field not 0 (RFC 2784: the receiver must discard).
pub const BAD_VERSION: u32 = 1;
/// GRE routing-present bit set (RFC 1701 source routing; RFC 2784 receivers discard it).
pub const ROUTING: u32 = 2;
/// GRE protocol type this datapath does not carry.
pub const UNKNOWN_PROTOCOL: u32 = 3;
/// GRE to one of our tunnel endpoints from a remote that no tunnel names.
pub const NO_TUNNEL: u32 = 4;
/// GRE between the endpoints of a tunnel, with a key (or no key) that no tunnel between them has.
pub const KEY_MISMATCH: u32 = 5;
/// The tunnel's injection port is not in the redirect map (the instance is half set up).
pub const NO_INJECT_PORT: u32 = 6;
/// A packet leaving the tunnel netdev that is neither IPv4 nor IPv6.
pub const ENCAP_UNSUPPORTED: u32 = 7;
/// The kernel refused to make room for the outer headers.
pub const ENCAP_FAILED: u32 = 8;
/// The tunnel netdev that sent the packet has no tunnel in the map.
pub const NO_TX_TUNNEL: u32 = 9;

/// Number of drop reasons (the length of the `DROPS` array).
pub const COUNT: u32 = 10;

/// Stable names, indexed by reason.
pub const NAMES: [&str; COUNT as usize] = [
    "truncated",
    "bad_version",
    "routing",
    "unknown_protocol",
    "no_tunnel",
    "key_mismatch",
    "no_inject_port",
    "encap_unsupported",
    "encap_failed",
    "no_tx_tunnel",
];
