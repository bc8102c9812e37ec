//! Types shared by the eBPF datapath and the `gre` control plane: wire-format facts, map keys and
//! values, and the names of the maps and programs. Everything here is `#[repr(C)]` with explicit
//! padding, so both sides see the same bytes.
#![no_std]

pub mod addr;
pub mod drop;
pub mod gre;
pub mod maps;
