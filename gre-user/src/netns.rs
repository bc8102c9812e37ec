//! `gre -n NAME`: run in a named network namespace, as `ip -n NAME` does.
//!
//! Only the network namespace changes; the mount namespace stays, so `/sys/fs/bpf` pins remain
//! shared with the rest of the host (`ip netns exec` would give a private, short-lived bpffs).

use std::fs::File;

use anyhow::{Context as _, Result};
use nix::sched::{CloneFlags, setns};

/// Enters `/run/netns/NAME`. Call before any thread is started: it changes the calling thread only.
///
/// # Errors
/// No such namespace, or not allowed.
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).with_context(|| format!("opening network namespace {path}"))?;
    setns(ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering network namespace {name}"))
}
