//! The clocks: timers run on the monotonic clock (the datapath's `bpf_ktime_get_ns`, shared by
//! every process and unmoved by wall-clock steps); the wall clock only dates events for people.

use nix::time::{ClockId, clock_gettime};

/// Nanoseconds of the monotonic clock.
#[must_use]
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0))
}

/// Seconds of the monotonic clock: what holding times and deadlines count in.
#[must_use]
pub fn monotonic_secs() -> u64 {
    monotonic_ns() / 1_000_000_000
}

/// Seconds since the Unix epoch: when something happened, for people.
#[must_use]
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
