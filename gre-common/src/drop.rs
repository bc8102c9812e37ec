//! Why the datapath dropped a packet. The index is the slot in the `DROPS` per-CPU array and in
//! each tunnel's `TunnelStats::drops`; the name is what `gre show` prints and the JSON field name,
//! so it never changes once released. New reasons are only ever appended.

/// The packet ended before a header it announced (Ethernet, VLAN, IP, GRE or its options).
pub const TRUNCATED: u32 = 0;
/// GRE version field not 0 (RFC 2784: the receiver must discard).
pub const BAD_VERSION: u32 = 1;
/// GRE routing-present bit set (RFC 1701 source routing; RFC 2784 receivers discard it).
pub const ROUTING: u32 = 2;
/// GRE protocol type this tunnel does not carry.
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
/// The GRE checksum does not match the packet.
pub const BAD_CHECKSUM: u32 = 10;
/// A checksum present on a tunnel without `icsum`, or absent on one with it (as ip_tunnel_rcv).
pub const CHECKSUM_POLICY: u32 = 11;
/// `iseq`: no sequence number, or one older than the last accepted.
pub const SEQUENCE: u32 = 12;
/// RFC 6040: outer CE on an inner packet that is not ECN-capable.
pub const ECN: u32 = 13;
/// The packet would be encapsulated into the tunnel that carries it (GRE in its own GRE).
pub const LOOP: u32 = 14;
/// `ocsum` on a GSO packet: the checksum must be per segment, which only the kernel's GSO could do.
pub const CHECKSUM_GSO: u32 = 15;

/// A frame that can only be sent with a known underlay next hop (a non-IP frame of a gretap
/// tunnel), while the kernel has not resolved it yet.
pub const NO_NEIGHBOUR: u32 = 16;

/// A decapsulated packet larger than this tunnel's MTU: the tunnel netdev cannot take it (the
/// remote's tunnel MTU is larger than ours). The fast path to a LAN port is not limited by it.
pub const TOO_BIG: u32 = 17;

/// Multipoint, strict: GRE from an NBMA address that is not one of the tunnel's peers.
pub const UNKNOWN_PEER: u32 = 18;
/// Multipoint: no peer for the next hop and no NHS to send through.
pub const NO_PEER: u32 = 19;

/// NHRP beyond what the daemon is handed per second (or with the ring full).
pub const NHRP_RATE: u32 = 20;

/// A Cisco keepalive beyond what one tunnel answers per second: reflection is bounded.
pub const KEEPALIVE_RATE: u32 = 21;
/// Multicast on a multipoint tunnel to a group outside the tunnel's `multicast.groups` (by
/// default only link-local scopes: routing-protocol hellos).
pub const MULTICAST_SCOPE: u32 = 22;
/// Multicast beyond the replicas a multipoint tunnel sends per second (`multicast.rate`).
pub const MULTICAST_RATE: u32 = 23;

/// A gretap frame whose VLAN tag travels beside it (hardware-offload style) in a GSO packet:
/// the tag must go inside each segment's frame, which only the kernel's segmentation could do.
pub const VLAN_GSO: u32 = 24;

/// Clear-text GRE for a protected tunnel: only what its IPsec SAs decrypt is accepted.
pub const UNPROTECTED: u32 = 25;

/// Number of drop reasons (the length of the `DROPS` array).
pub const COUNT: u32 = 26;

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
    "bad_checksum",
    "checksum_policy",
    "sequence",
    "ecn",
    "loop",
    "checksum_gso",
    "no_neighbour",
    "too_big",
    "unknown_peer",
    "no_peer",
    "nhrp_rate",
    "keepalive_rate",
    "multicast_scope",
    "multicast_rate",
    "vlan_gso",
    "unprotected",
];
