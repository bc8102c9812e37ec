//! Every map of the datapath, defined once. Names and value types come from gre-common.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf},
};
use gre_common::{
    drop,
    maps::{
        EndpointKey, EndpointUse, MAX_PEERS, MAX_PORTS, MAX_ROUTES, MAX_TUNNELS, MulticastPeers, NbmaKey, NeighbourKey, Peer, PeerKey, PeerStats, Route, RxKey,
        Sequence, Tunnel, TunnelLimits, TunnelState, TunnelStats, Window,
    },
};

/// Tunnel parameters, indexed by tunnel id.
#[map]
pub static TUNNELS: Array<Tunnel> = Array::with_max_entries(MAX_TUNNELS, 0);

/// Decapsulation match: (local, remote, key) → tunnel id.
#[map]
pub static RX_MATCH: HashMap<RxKey, u32> = HashMap::with_max_entries(MAX_TUNNELS, 0);

/// Known endpoint pairs and, with remote = any, our local endpoints: tells "not ours" (passed on)
/// from "ours but no tunnel" and "key mismatch" (counted drops). Looked up on misses only.
#[map]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointUse> = HashMap::with_max_entries(MAX_TUNNELS * 2, 0);

/// Encapsulation: tunnel netdev ifindex → tunnel id.
#[map]
pub static TX_BY_IFINDEX: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TUNNELS, 0);

/// Injection ports (the datapath end of each tunnel netdev), by tunnel id. A hash, so that a
/// tunnel's entry can be removed.
#[map]
pub static INJECT_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TUNNELS, 0);

/// Per-tunnel counters, indexed by tunnel id.
#[map]
pub static TUNNEL_STATS: PerCpuArray<TunnelStats> = PerCpuArray::with_max_entries(MAX_TUNNELS, 0);

/// Sequence numbers, indexed by tunnel id (shared by all CPUs: updated atomically).
#[map]
pub static SEQUENCES: Array<Sequence> = Array::with_max_entries(MAX_TUNNELS, 0);

/// Managed neighbours made by `gre up` (only userspace uses it; it lives here to be pinned with
/// the instance's other state).
#[map]
pub static NEIGHBOURS: HashMap<NeighbourKey, u32> = HashMap::with_max_entries(MAX_TUNNELS * 2, 0);

/// Overlay routes: inner destination prefix (16-byte form) → tunnel and overlay next hop. Read by
/// the LAN fast path and by multipoint tunnels; the same routes are in the kernel for the slow path.
#[map]
pub static ROUTES: LpmTrie<[u8; 16], Route> = LpmTrie::with_max_entries(MAX_ROUTES, BPF_F_NO_PREALLOC);

/// The NHRP cache of multipoint tunnels: (tunnel, overlay address) → NBMA address.
#[map]
pub static PEERS: HashMap<PeerKey, Peer> = HashMap::with_max_entries(MAX_PEERS, BPF_F_NO_PREALLOC);

/// How many peers of a multipoint tunnel use each NBMA address: userspace keeps a peer's
/// PEER_STATS entry (by which the datapath knows a peer) while any does.
#[map]
pub static NBMA_PEERS: HashMap<NbmaKey, u32> = HashMap::with_max_entries(MAX_PEERS, BPF_F_NO_PREALLOC);

/// Per-peer counters of multipoint tunnels, by NBMA address; entries made by userspace.
#[map]
pub static PEER_STATS: PerCpuHashMap<NbmaKey, PeerStats> = PerCpuHashMap::with_max_entries(MAX_PEERS, BPF_F_NO_PREALLOC);

/// Per multipoint tunnel: the NBMA addresses multicast is replicated to.
#[map]
pub static MULTICAST: Array<MulticastPeers> = Array::with_max_entries(MAX_TUNNELS, 0);

/// Programs the encapsulation tail-calls (a fresh 512-byte stack each): multicast replication.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(4, 0);

/// Per CPU: the multicast replication handed to the tail call (tunnel, inner length).
#[map]
pub static REPLICATION: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Datapath → daemon: resolution wanted (rate-limited per destination).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Datapath → daemon: NHRP packets with their outer addresses and key.
#[map]
pub static NHRP_PUNT: RingBuf = RingBuf::with_byte_size(512 * 1024, 0);

/// Per CPU: NHRP handed to the daemon in the current second, from known peers (0), from anyone
/// else (1), and from anyone else with the tunnel's password (2), so that strangers cannot use up
/// the budget of the peers, nor a flood without the password that of new spokes.
#[map]
pub static NHRP_BUDGET: PerCpuArray<Window> = PerCpuArray::with_max_entries(3, 0);

/// NHRP handed to the daemon per unknown source in the current second (an IPv4 address, an
/// IPv6 /64): one sender cannot take the whole budget of strangers (a new spoke's registration
/// still gets through).
#[map]
pub static NHRP_SOURCES: LruHashMap<[u8; 16], Window> = LruHashMap::with_max_entries(4096, 0);

/// Per CPU: a key and a value for NHRP_SOURCES, built here rather than on the stack.
#[map]
pub static NHRP_SCRATCH: PerCpuArray<SourceWindow> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct SourceWindow {
    pub source: [u8; 16],
    pub window: Window,
}

/// Rate limits of keepalive reflection and multicast replication, by tunnel id.
#[map]
pub static LIMITS: Array<TunnelLimits> = Array::with_max_entries(MAX_TUNNELS, 0);

/// When a resolution was last asked for, per (tunnel, destination): at most one a second.
#[map]
pub static RESOLUTION_ASKED: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(4096, 0);

/// Ports the fast paths may redirect to (underlay and LAN interfaces), by ifindex.
#[map]
pub static PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_PORTS, 0);

/// The MAC of each port in PORTS: the LAN fast path takes only frames addressed to it.
#[map]
pub static PORT_MACS: HashMap<u32, [u8; 6]> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Tunnel state and daemon counters (written by `gre daemon` only; pinned with the instance).
#[map]
pub static TUNNEL_STATE: Array<TunnelState> = Array::with_max_entries(MAX_TUNNELS, 0);

/// Drops by reason (gre_common::drop).
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop::COUNT, 0);
