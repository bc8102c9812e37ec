//! `gre log`: what happens, as it happens — the datapath's slow-path events (resolutions it asks
//! for, redirects it wants sent), written with aya-log (never on a per-packet path: each is
//! limited to once a second per tunnel and address) and read from the running encapsulation
//! program's log ring; and, when `gre daemon` runs for the instance, the daemon's own log lines,
//! from its log socket.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;
use gre_common::maps::programs;
use tokio::io::{AsyncBufReadExt as _, unix::AsyncFd};

use crate::instance;

/// Prints each record on a line of its own, with the time, and counts them.
struct Print {
    seen: AtomicUsize,
}

impl log::Log for Print {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        println!("{secs:.3} datapath {} {}", record.level(), record.args());
        self.seen.fetch_add(1, Ordering::Relaxed);
    }

    fn flush(&self) {}
}

/// Follows the datapath's log of `instance` until interrupted, or until `count` lines.
///
/// # Errors
/// The instance is not up or its program cannot be read.
pub async fn follow(instance: &str, count: Option<usize>) -> Result<()> {
    let dir = instance::running_dir(instance)?;
    let path = dir.join("progs").join(programs::ENCAP);
    let id = ProgramInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.id();
    let print: &'static Print = Box::leak(Box::new(Print { seen: AtomicUsize::new(0) }));
    let logger = EbpfLogger::init_from_id_with_logger(id, print).context("opening the datapath's log")?;
    // SAFETY: the logger (and its ring's descriptor) is moved in and owned by the AsyncFd for as
    // long as it is registered.
    let mut fd = unsafe { AsyncFd::register(logger) }.map_err(|e| e.into_parts().1).context("watching the datapath's log")?;
    let mut daemon = match tokio::net::UnixStream::connect(crate::logs::socket_path(instance)).await {
        Ok(s) => Some(tokio::io::BufReader::new(s).lines()),
        Err(_) => {
            eprintln!("(no gre daemon runs for instance {instance}: the datapath's events only)");
            None
        }
    };
    while count.is_none_or(|c| print.seen.load(Ordering::Relaxed) < c) {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            line = async { daemon.as_mut()?.next_line().await.ok().flatten() }, if daemon.is_some() => {
                match line {
                    Some(line) => {
                        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                        println!("{secs:.3} daemon {line}");
                        print.seen.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        eprintln!("(the daemon stopped)");
                        daemon = None;
                    }
                }
            }
        }
    }
    Ok(())
}
