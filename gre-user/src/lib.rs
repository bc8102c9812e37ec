//! The `gre` control plane: configuration, loading and pinning the datapath, tunnel netdevs, and
//! reading the live maps.

pub mod change;
pub mod clock;
pub mod config;
pub mod control;
pub mod converge;
pub mod daemon;
pub mod datapath_log;
pub mod instance;
pub mod ipsec;
pub mod kernel_routes;
pub mod loader;
pub mod logs;
pub mod maps;
pub mod metrics;
pub mod netdev;
pub mod netns;
pub mod nhrp;
pub mod preflight;
pub mod protection;
pub mod reload;
pub mod runtime;
pub mod show;
pub mod showconf;
pub mod stats;
pub mod tunnels;

/// The eBPF object built from gre-ebpf, embedded so the `gre` binary is all an operator installs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gre"));
pub mod fib_watch;
pub mod pmtu;
pub mod reassembled;
pub mod xfrm;
