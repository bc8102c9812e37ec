//! Privileged tests need root. Without it they skip with a message, except under CI (`CI` set),
//! where a skip would hide a failure: there they fail.

/// True if the test may go on; false if it should return (skip).
///
/// # Panics
/// Under CI without root.
#[must_use]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test}: needs root, and CI is set: privileged tests must run in CI");
    eprintln!("{test}: skipped (needs root)");
    false
}
