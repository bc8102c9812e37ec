//! What the integration tests and the demo share: privileged-test policy, network namespaces with
//! veth topologies on documentation addresses, the `gre` binary, and traffic across them.
#![allow(clippy::missing_panics_doc, clippy::must_use_candidate, reason = "test helpers panic on purpose when the test cannot go on")]

pub mod capture;
pub mod fixture;
pub mod frr;
pub mod gre;
pub mod ovs;
pub mod peers;
pub mod privilege;
pub mod topology;
pub mod traffic;
pub mod vm;
