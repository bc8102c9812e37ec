//! NHRP (RFC 2332, with the Cisco and FRR practice): the wire codec and capture decoding.

pub mod agent;
pub mod answers;
pub mod dump;
pub mod engine;
/// The wire codec lives in its own crate (fuzzed without the datapath); this is its name here.
pub use nhrp_wire as wire;
