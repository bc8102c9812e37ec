//! Rate limits of what the datapath does on its own account (keepalive reflection, multicast
//! replication, NHRP handed to the daemon): fixed one-second windows on the monotonic clock.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use gre_common::maps::Window;

const SECOND: u64 = 1_000_000_000;

/// Whether `n` more fit in `w` at `per_second`; if so they are counted. A window shared by CPUs
/// is updated without a lock: a race can let a few more through, never unboundedly many.
#[inline(always)]
pub fn allow(w: &mut Window, n: u64, per_second: u64) -> bool {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(w.start_ns) >= SECOND {
        w.start_ns = now;
        w.count = 0;
    }
    if w.count + n > per_second {
        return false;
    }
    w.count += n;
    true
}
