//! What the integration tests and the demo share: privileged-test policy, network namespaces with
//! veth topologies on documentation addresses, the `gre` binary, and traffic across them.

pub mod fixture;
pub mod gre;
pub mod privilege;
pub mod topology;
pub mod traffic;
