//! Map and program names, keys and values. Each map is defined once in the eBPF object (see
//! `gre-ebpf/src/maps.rs`); these are the types both sides agree on.

use crate::addr::Addr;

/// How many tunnels one instance can hold (the size of the tunnel-indexed arrays).
pub const MAX_TUNNELS: u32 = 256;
/// How many peers (NHRP cache entries) one instance can hold.
pub const MAX_PEERS: u32 = 65536;
/// How many overlay routes the fast path can hold.
pub const MAX_ROUTES: u32 = 16384;
/// How many ports (underlay and LAN interfaces) the fast paths can redirect to.
pub const MAX_PORTS: u32 = 64;

/// Map names, as pinned under `/sys/fs/bpf/gre/<instance>/`.
pub mod names {
    pub const TUNNELS: &str = "TUNNELS";
    pub const RX_MATCH: &str = "RX_MATCH";
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const TX_BY_IFINDEX: &str = "TX_BY_IFINDEX";
    pub const INJECT_PORTS: &str = "INJECT_PORTS";
    pub const TUNNEL_STATS: &str = "TUNNEL_STATS";
    pub const SEQUENCES: &str = "SEQUENCES";
    pub const NEIGHBOURS: &str = "NEIGHBOURS";
    pub const ROUTES: &str = "ROUTES";
    pub const PORTS: &str = "PORTS";
    pub const PORT_MACS: &str = "PORT_MACS";
    pub const TUNNEL_STATE: &str = "TUNNEL_STATE";
    pub const PEERS: &str = "PEERS";
    pub const NBMA_PEERS: &str = "NBMA_PEERS";
    pub const PEER_STATS: &str = "PEER_STATS";
    pub const EVENTS: &str = "EVENTS";
    pub const NHRP_PUNT: &str = "NHRP_PUNT";
    pub const MULTICAST: &str = "MULTICAST";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    pub const DROPS: &str = "DROPS";
    pub const FIB_CHANGED: &str = "FIB_CHANGED";

    /// Every map that outlives a program: pinned at `gre up`, kept by `gre reload`. (The others
    /// are per-CPU scratch space and rate limits, new with each program.)
    pub const PINNED: &[&str] = &[
        TUNNELS,
        RX_MATCH,
        ENDPOINTS,
        TX_BY_IFINDEX,
        INJECT_PORTS,
        TUNNEL_STATS,
        SEQUENCES,
        NEIGHBOURS,
        ROUTES,
        PORTS,
        PORT_MACS,
        TUNNEL_STATE,
        PEERS,
        NBMA_PEERS,
        PEER_STATS,
        EVENTS,
        NHRP_PUNT,
        MULTICAST,
        TAIL_CALLS,
        DROPS,
        FIB_CHANGED,
    ];
}

/// Program names in the eBPF object.
pub mod programs {
    /// XDP on the underlay: GRE decapsulation.
    pub const DECAP: &str = "gre_decap";
    /// TC egress on the tunnel netdev: GRE encapsulation.
    pub const ENCAP: &str = "gre_encap";
    /// XDP on the tunnel netdev: gives its veth NAPI so redirected frames are accepted.
    pub const NAPI_PASS: &str = "gre_napi_pass";
    /// XDP on LAN ports: encapsulation fast path for routed overlay traffic.
    pub const LAN: &str = "gre_lan";
    /// TC, tail-called by the encapsulation: one multicast replica per call.
    pub const REPLICATE: &str = "gre_replicate";
    /// TC: an empty program, the floor of the benchmarks (never attached).
    pub const TC_PASS: &str = "gre_tc_pass";
    /// TC, tests only: puts VLAN tag 100 beside each frame, as a VLAN device or a VLAN-aware
    /// bridge does (for hosts whose kernel has neither).
    pub const TEST_VLAN_TAG: &str = "gre_test_vlan_tag";
    /// XDP, benchmarks only: the frame generator (run with live frames).
    pub const BENCH_GEN: &str = "gre_bench_gen";
    /// XDP, benchmarks only: decapsulation's parsing alone (the parse-only baseline).
    pub const BENCH_PARSE: &str = "gre_bench_parse";
    /// XDP, benchmarks only: a plain redirect hop, the baseline of the datapath's hops.
    pub const BENCH_HOP: &str = "gre_bench_hop";
    /// XDP, benchmarks only: counts and drops what reaches the end of a pipeline.
    pub const BENCH_SINK: &str = "gre_bench_sink";
}

/// Benchmark frame generator: the most it writes into every frame.
pub const BENCH_HEAD: usize = 128;

/// What `gre_bench_gen` writes into each frame (`BENCH_FRAME[0]`): the first `len` bytes
/// (1..=`BENCH_HEAD`), all the pipeline may change, and optionally a destination drawn at random for each frame, so that lookups do not all hit one
/// key: the big-endian u32 at `spread_at` becomes `spread_base + random % spread` when
/// `spread > 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BenchFrame {
    pub head: [u8; BENCH_HEAD],
    pub len: u32,
    pub spread: u32,
    pub spread_base: u32,
    pub spread_at: u32,
}

/// `RxKey::flags`: the packet (or tunnel) carries a key.
pub const RX_KEY_PRESENT: u32 = 1;
/// `RxKey::flags`: the packet carries Ethernet (protocol type 0x6558), the tunnel is a gretap.
/// Like the kernel, which keeps gre and gretap tunnels in separate tables, this lets a gre and a
/// gretap tunnel share endpoints and key.
pub const RX_TEB: u32 = 2;

/// Decapsulation match: the outer addresses as seen on receipt (local = destination) and the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RxKey {
    pub local: Addr,
    pub remote: Addr,
    pub key: u32,
    pub flags: u32,
}

/// A pair of outer endpoints. `remote` all zero means "any remote": that entry marks `local` as
/// one of ours, so GRE to it that matches no tunnel is counted and dropped rather than passed on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointKey {
    pub local: Addr,
    pub remote: Addr,
}

/// What uses an [`EndpointKey`]: how many tunnels, and which one when there is just one (a key
/// mismatch between its endpoints is then counted on that tunnel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointUse {
    pub users: u32,
    /// The tunnel id when `users` is 1; `u32::MAX` otherwise.
    pub tunnel: u32,
}

/// `Tunnel::flags` bits.
pub mod tunnel_flags {
    /// Received packets must carry `ikey`.
    pub const IKEY: u32 = 1 << 0;
    /// Transmitted packets carry `okey`.
    pub const OKEY: u32 = 1 << 1;
    /// ip(8) `nopmtudisc`: the outer DF copies the inner IPv4 DF instead of being always set.
    pub const NOPMTUDISC: u32 = 1 << 2;
    /// Received packets must carry a checksum, which is verified (`icsum`).
    pub const ICSUM: u32 = 1 << 3;
    /// Transmitted packets carry a checksum (`ocsum`).
    pub const OCSUM: u32 = 1 << 4;
    /// Received packets must carry a sequence number, in order (`iseq`).
    pub const ISEQ: u32 = 1 << 5;
    /// Transmitted packets carry a sequence number (`oseq`).
    pub const OSEQ: u32 = 1 << 6;
    /// The outer TOS / traffic class copies the inner one (`tos inherit`).
    pub const TOS_INHERIT: u32 = 1 << 7;
    /// With `nopmtudisc`, never set DF on the outer header (`ignore-df`).
    pub const IGNORE_DF: u32 = 1 << 8;
    /// The outer header is IPv6 (ip6gre).
    pub const OUTER_V6: u32 = 1 << 9;
    /// The outer IPv6 flow label copies the inner IPv6 one (`flowlabel inherit`).
    pub const FLOWLABEL_INHERIT: u32 = 1 << 10;
    /// gretap / ip6gretap: Ethernet frames (protocol type 0x6558) instead of IP packets.
    pub const TEB: u32 = 1 << 11;
    /// Multipoint GRE: no fixed remote; the outer destination comes from the peer table.
    pub const MULTIPOINT: u32 = 1 << 12;
    /// Multipoint: accept GRE only from NBMA addresses of known peers.
    pub const STRICT: u32 = 1 << 13;
    /// IPsec (ESP transport between the NBMA addresses): GRE is sent through the kernel's xfrm
    /// and accepted only as it decrypts it; clear-text GRE from the wire is dropped.
    pub const PROTECTED: u32 = 1 << 14;
}

/// One tunnel, indexed by its id in the `TUNNELS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Tunnel {
    pub local: Addr,
    pub remote: Addr,
    pub ikey: u32,
    pub okey: u32,
    /// [`tunnel_flags`].
    pub flags: u32,
    /// Outer IPv6 flow label (20 bits) unless inherited.
    pub flowlabel: u32,
    /// Outer TTL / hop limit; 0 inherits the inner packet's.
    pub ttl: u8,
    /// Outer TOS byte / traffic class, unless inherited. Its ECN bits are ignored: ECN is always
    /// propagated from the inner packet (RFC 6040).
    pub tos: u8,
    /// 1 when the slot holds a tunnel.
    pub in_use: u8,
    pub pad0: u8,
    /// The kernel-facing tunnel netdev (`gre0`): TC egress encapsulates what leaves it.
    pub netdev_ifindex: u32,
    /// Its veth peer (`gre0-dp`): decapsulated packets are redirected here.
    pub inject_ifindex: u32,
    /// Where encapsulated packets are sent (`bpf_redirect_neigh`).
    pub underlay_ifindex: u32,
    /// MTU of the tunnel netdev: what the fast path may encapsulate without the kernel's help.
    pub mtu: u32,
    /// Multipoint: overlay address of the NHS where traffic goes while a peer is unresolved —
    /// the preferred one that answers, set by `gre daemon` (all zero: none).
    pub nhs: Addr,
    /// NHRP role of a multipoint tunnel ([`nhrp_role`]); its holding time, network id and
    /// authentication (Cisco style: a password of up to 8 bytes, zero-padded).
    pub nhrp_role: u8,
    pub pad2: u8,
    pub nhrp_holdtime: u16,
    pub nhrp_network_id: u32,
    pub nhrp_auth: [u8; 8],
    /// Seconds between keepalives `gre daemon` sends; 0: none.
    pub keepalive_period: u16,
    /// Keepalives that may go unanswered before the tunnel is declared down.
    pub keepalive_retries: u8,
    pub pad1: u8,
    /// MAC of `gre0`: the destination of decapsulated frames, so the kernel takes them as its own.
    pub netdev_mac: [u8; 6],
    /// MAC of `gre0-dp`: their source.
    pub inject_mac: [u8; 6],
    /// MAC of the underlay interface: GRE in a frame for another host's MAC (a promiscuous
    /// port, a bridge member) is not ours, as the kernel drops PACKET_OTHERHOST (all zero:
    /// not known, not checked).
    pub underlay_mac: [u8; 6],
    pub pad3: [u8; 2],
    /// Multipoint: replicas of multicast sent per second at most (0: no multicast).
    pub multicast_rate: u32,
    /// Multipoint: the multicast groups replicated to the peers, as prefixes of the 16-byte
    /// form (IPv4 lengths plus 96); a length of 0 marks an unused slot.
    pub multicast_groups: [Addr; MAX_MULTICAST_GROUPS],
    pub multicast_group_lens: [u8; MAX_MULTICAST_GROUPS],
    /// Multipoint: every NHS a client registers with, by overlay address (all zero: unused
    /// slot), and its priority (lower is preferred).
    pub nhs_list: [Addr; MAX_NHS],
    pub nhs_priority: [u8; MAX_NHS],
}

/// How many multicast group prefixes one multipoint tunnel replicates.
pub const MAX_MULTICAST_GROUPS: usize = 4;
/// How many NHSs one multipoint tunnel registers with.
pub const MAX_NHS: usize = 4;

/// A fixed one-second window of a rate limit: when it began (bpf_ktime_get_ns) and what it has
/// let through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Window {
    pub start_ns: u64,
    pub count: u64,
}

/// Per-tunnel rate limits of what the datapath sends on its own account (shared by all CPUs,
/// updated without a lock: a race lets a few more through, never unboundedly many).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelLimits {
    /// Keepalives reflected.
    pub keepalive: Window,
    /// Multicast replicas.
    pub multicast: Window,
}

/// Per-tunnel counters (a per-CPU array indexed by tunnel id). Packets are counted as the kernel's
/// tunnel devices count them: one per packet handed over, GSO or not; bytes are inner L3 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Cisco keepalives of the remote that the datapath sent back to it.
    pub keepalives_answered: u64,
    /// Our own keepalives that came back (GRE protocol type 0 from the remote).
    pub keepalives_returned: u64,
    /// NHRP packets handed to the daemon.
    pub nhrp_punted: u64,
    /// Of `rx_packets`: decapsulated straight to a LAN port (XDP fast path).
    pub fast_rx: u64,
    /// Of `tx_packets`: encapsulated straight from a LAN port (XDP fast path).
    pub fast_tx: u64,
    /// Drops of this tunnel's packets by reason (`drop`); the global `DROPS` counts them too.
    pub drops: [u64; crate::drop::COUNT as usize],
}

impl TunnelStats {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.keepalives_answered += other.keepalives_answered;
        self.keepalives_returned += other.keepalives_returned;
        self.nhrp_punted += other.nhrp_punted;
        self.fast_rx += other.fast_rx;
        self.fast_tx += other.fast_tx;
        for (d, o) in self.drops.iter_mut().zip(other.drops) {
            *d += o;
        }
    }
}

/// Sequence-number state of a tunnel (a plain array: shared by all CPUs, updated atomically).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Sequence {
    /// Packets sent with a sequence number; the next one carries this + 1, modulo 2^32 (ip_gre
    /// starts at 1). 64 bits because that is the atomic width BPF offers.
    pub tx_count: u64,
    /// The next sequence number expected; 0 until the first packet is accepted.
    pub rx_next: u32,
    pub pad0: u32,
}

/// A peer of a multipoint tunnel: the overlay (protocol) address behind an NBMA address. The
/// table is the NHRP cache: static entries from the configuration, dynamic ones from NHRP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerKey {
    pub tunnel: u32,
    pub pad0: u32,
    pub overlay: Addr,
}

/// `Peer::kind`.
pub mod peer_kind {
    pub const STATIC: u8 = 0;
    pub const DYNAMIC: u8 = 1;
    /// Resolution asked, no answer yet: traffic keeps going through the NHS.
    pub const INCOMPLETE: u8 = 2;
    pub const NAMES: [&str; 3] = ["static", "dynamic", "incomplete"];
}

/// `Peer::flags`.
pub mod peer_flags {
    /// Multicast (routing-protocol hellos) is replicated to this peer.
    pub const MULTICAST: u8 = 1;
    /// An NHS holds this entry for a registration (so a restarted daemon takes it up again).
    pub const REGISTERED: u8 = 2;
    /// Registered with the uniqueness flag: no other NBMA address may claim it.
    pub const UNIQUE: u8 = 4;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    pub nbma: Addr,
    /// [`peer_kind`].
    pub kind: u8,
    /// [`peer_flags`].
    pub flags: u8,
    pub pad0: [u8; 6],
    /// When the entry expires, in seconds of the monotonic clock (`bpf_ktime_get_ns`; 0:
    /// never), so that a step of the wall clock neither expires nor keeps it. Userspace removes
    /// expired entries.
    pub expires: u64,
    /// Last time the datapath sent to it (bpf_ktime_get_ns, refreshed at most once a second).
    pub used_ns: u64,
    /// The underlay next hop toward `nbma` as the datapath last found it in the FIB (source
    /// and destination MAC), and when (bpf_ktime_get_coarse_ns; 0: not yet). Kept here rather
    /// than in a cache of its own so that a hub with many spokes finds it with the peer.
    pub hop_macs: [u8; 12],
    pub pad1: u32,
    pub hop_ns: u64,
    /// The NBMA address the peer says it has, where NAT makes it differ from `nbma` (all zero:
    /// the same, or not known).
    pub claimed: Addr,
}

/// An NBMA address of a multipoint tunnel's peers (strict mode: who may send to us).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NbmaKey {
    pub tunnel: u32,
    pub pad0: u32,
    pub nbma: Addr,
}

/// Counters of one peer of a multipoint tunnel, by its NBMA address (a per-CPU hash keyed by
/// [`NbmaKey`]; userspace creates the entry with the peer and removes it with the last overlay
/// address at that NBMA address). Bytes are those after the GRE header, as for tunnels.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// An overlay route: into which tunnel, toward which overlay next hop (all zero: the
/// destination itself, on the tunnel's subnet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Route {
    pub tunnel: u32,
    /// [`route_flags`]: what put it there (the datapath reads none of it).
    pub flags: u32,
    pub nexthop: Addr,
}

/// `Route::flags`.
pub mod route_flags {
    /// A phase 3 shortcut `gre daemon` installed (not configured; goes with its peer).
    pub const SHORTCUT: u32 = 1;
    /// A kernel route into the tunnel's netdev (a routing daemon's, or the operator's), which
    /// `gre daemon` mirrors.
    pub const KERNEL: u32 = 2;
    /// Bits 8 to 15: the entry's own prefix length (as stored: IPv4 counts the 96 bits of
    /// the mapping), so that userspace learns which prefix a longest-match lookup found.
    pub const LEN_SHIFT: u32 = 8;

    /// The stored prefix length in `flags`.
    #[must_use]
    pub const fn len(flags: u32) -> u32 {
        (flags >> LEN_SHIFT) & 0xff
    }
}

/// How many peers one multipoint tunnel replicates multicast to (a power of two: the datapath
/// masks its index). The list costs 16 bytes per peer per tunnel: 2 MiB for all tunnels.
pub const MAX_MULTICAST_PEERS: usize = 512;

/// The NBMA addresses a multipoint tunnel replicates multicast to (its peers flagged multicast),
/// kept by userspace from the peer table; indexed by tunnel id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticastPeers {
    pub count: u32,
    pub pad0: u32,
    pub nbma: [Addr; MAX_MULTICAST_PEERS],
}

impl Default for MulticastPeers {
    fn default() -> Self {
        Self { count: 0, pad0: 0, nbma: [[0; 16]; MAX_MULTICAST_PEERS] }
    }
}

/// Slot of the replication program in the TAIL_CALLS program array.
pub const TAIL_REPLICATE: u32 = 0;

/// `Event::kind`.
pub mod event_kind {
    /// A multipoint tunnel had traffic for an overlay address it has no peer for.
    pub const RESOLUTION_WANTED: u32 = 1;
    /// An NHS relayed traffic between two of its peers: tell the source (phase 3 redirect).
    pub const TRAFFIC_INDICATION: u32 = 2;
}

/// A record of the EVENTS ring buffer, datapath to daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// [`event_kind`].
    pub kind: u32,
    pub tunnel: u32,
    /// The overlay address concerned.
    pub target: Addr,
    /// The overlay source of the packet that caused it.
    pub source: Addr,
    pub time_ns: u64,
    pub pad0: u64,
}

/// The most NHRP bytes handed to the daemon per packet (NHRP packets are small; a larger one is
/// cut, and the daemon sees it truncated).
pub const NHRP_PUNT_MAX: usize = 1024;

/// An NHRP packet as it arrived, datapath to daemon (the NHRP_PUNT ring buffer): with the outer
/// addresses and key as they were on the wire — the true NBMA address, also behind NAT.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NhrpPunt {
    pub tunnel: u32,
    /// Bytes of NHRP in `data`.
    pub len: u32,
    pub key: u32,
    /// 1 if the packet had a GRE key.
    pub keyed: u32,
    pub local: Addr,
    pub remote: Addr,
    pub data: [u8; NHRP_PUNT_MAX],
}

/// `Tunnel::nhrp_role`.
pub mod nhrp_role {
    pub const NONE: u8 = 0;
    /// Next Hop Server: the hub, which takes registrations and answers resolutions.
    pub const NHS: u8 = 1;
    /// Next Hop Client: a spoke, which registers with its NHS and resolves through it.
    pub const NHC: u8 = 2;
}

/// `TunnelState::state`.
pub mod tunnel_state {
    /// No keepalives configured, or `gre daemon` not running yet.
    pub const UNKNOWN: u32 = 0;
    pub const UP: u32 = 1;
    pub const DOWN: u32 = 2;
    /// Stable names, indexed by state.
    pub const NAMES: [&str; 3] = ["unknown", "up", "down"];
}

/// What `gre daemon` knows of a tunnel (an array indexed by tunnel id, written by the daemon
/// only, read by `gre show`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelState {
    /// [`tunnel_state`].
    pub state: u32,
    /// How often the state changed.
    pub transitions: u32,
    /// When it last changed, seconds since the Unix epoch.
    pub since: u64,
    /// Keepalives the daemon sent.
    pub keepalives_sent: u64,
    /// Packets that arrived as fragments, were reassembled by the kernel and decapsulated by the
    /// daemon.
    pub reassembled: u64,
    /// NHRP messages received, by packet type (index = type − 1; RFC 2332 types 1–7 and the
    /// Traffic Indication, 8).
    pub nhrp_rx: [u64; NHRP_TYPES],
    /// NHRP messages sent, by packet type as above.
    pub nhrp_tx: [u64; NHRP_TYPES],
    /// NHRP messages received that did not decode or were of no known type, and messages that
    /// could not be sent.
    pub nhrp_errors: u64,
    /// Inner bytes of the reassembled packets (as `TunnelStats::rx_bytes`).
    pub reassembled_bytes: u64,
    /// Reassembled packets the daemon dropped, by reason (`drop`), as the datapath would have.
    pub reassembled_drops: [u64; crate::drop::COUNT as usize],
    /// Bit i set: `Tunnel::nhs_list[i]` answers our registrations.
    pub nhs_up: u32,
    pub pad0: u32,
}

/// NHRP packet types counted in [`TunnelState`].
pub const NHRP_TYPES: usize = 8;

/// Prefix length of an IPv4 prefix stored as an IPv4-mapped address in the overlay route table.
#[must_use]
pub const fn route_prefix_len(v4: bool, len: u8) -> u32 {
    if v4 { 96 + len as u32 } else { len as u32 }
}

/// A neighbour entry `gre up` asked the kernel to keep resolved (a managed neighbour), so that
/// `gre down` removes exactly those.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighbourKey {
    pub ifindex: u32,
    pub pad0: u32,
    pub addr: Addr,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::EndpointUse {}
    unsafe impl aya::Pod for super::NeighbourKey {}
    unsafe impl aya::Pod for super::BenchFrame {}
    unsafe impl aya::Pod for super::TunnelState {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::Peer {}
    unsafe impl aya::Pod for super::NbmaKey {}
    unsafe impl aya::Pod for super::PeerStats {}
    unsafe impl aya::Pod for super::Route {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::MulticastPeers {}
    // SAFETY: all of these are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::RxKey {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::Tunnel {}
    unsafe impl aya::Pod for super::TunnelStats {}
    unsafe impl aya::Pod for super::Sequence {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<RxKey>(), 40);
        assert_eq!(core::mem::size_of::<EndpointKey>(), 32);
        assert_eq!(core::mem::size_of::<Tunnel>(), 32 + 16 + 4 + 20 + 12 + 16 + 16 + 8 + 4 + 17 * MAX_MULTICAST_GROUPS + 17 * MAX_NHS);
        assert_eq!(core::mem::size_of::<PeerKey>(), 24);
        assert_eq!(core::mem::size_of::<Peer>(), 80);
        assert_eq!(core::mem::size_of::<Route>(), 24);
        assert_eq!(core::mem::size_of::<Event>(), 56);
        assert_eq!(core::mem::size_of::<NhrpPunt>(), 48 + NHRP_PUNT_MAX);
        assert_eq!(core::mem::size_of::<TunnelState>(), 32 + 16 * NHRP_TYPES + 16 + 8 * crate::drop::COUNT as usize + 8);
        assert_eq!(core::mem::size_of::<MulticastPeers>(), 8 + 16 * MAX_MULTICAST_PEERS);
        assert_eq!(core::mem::size_of::<TunnelStats>(), 72 + 8 * crate::drop::COUNT as usize);
        assert_eq!(core::mem::size_of::<Sequence>(), 16);
        assert_eq!(core::mem::size_of::<PeerStats>(), 32);
        assert_eq!(core::mem::size_of::<NeighbourKey>(), 24);
    }
}
