//! NHRP (RFC 2332, with the Cisco and FRR practice): the wire codec and capture decoding.

pub mod agent;
pub mod dump;
pub mod engine;
pub mod wire;
