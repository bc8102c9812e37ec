//! The daemon's files under `/run/gre` (the systemd unit's `RuntimeDirectory`): its sockets,
//! its lock, the NHRP state it leaves for the next daemon, and what `gre up` leaves it of the
//! protected tunnels' configuration.

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

use anyhow::{Context as _, Result, bail};

pub const DIR: &str = "/run/gre";

/// The file `instance.what` in the runtime directory.
#[must_use]
pub fn path(instance: &str, what: &str) -> PathBuf {
    PathBuf::from(DIR).join(format!("{instance}.{what}"))
}

/// One daemon per instance: an exclusive lock on `/run/gre/INSTANCE.lock`, held while the
/// returned file is open (the kernel drops it when the process ends, however it ends).
///
/// # Errors
/// Another daemon holds it, or the directory cannot be written.
pub fn lock(instance: &str) -> Result<File> {
    std::fs::create_dir_all(DIR).with_context(|| format!("creating {DIR}"))?;
    let p = path(instance, "lock");
    let f = File::options().create(true).write(true).truncate(false).open(&p).with_context(|| format!("opening {}", p.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("a gre daemon runs for instance {instance} already (it holds {})", p.display());
        }
        return Err(e).with_context(|| format!("locking {}", p.display()));
    }
    Ok(f)
}

/// Removes what a daemon of `instance` leaves in the runtime directory (its sockets if it was
/// killed, its lock, its saved NHRP state): at `gre down`, so that nothing of a removed instance
/// is taken up by a later one of the same name.
pub fn remove(instance: &str) {
    for what in ["log", "ctl", "lock", "nhrp", "protection"] {
        let _ = std::fs::remove_file(path(instance, what));
    }
}
