//! The instance layer: where an instance's pins live under `/sys/fs/bpf/gre/<instance>/`, bpffs,
//! the eBPF object's loader with the instance's table sizes, and taking the pins away. Commands
//! build on this; it builds on nothing but the maps' names and the configuration's limits.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use gre_common::maps::names;
use log::info;

use crate::config;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Our folder in it; nothing outside it is ever touched.
pub const PIN_ROOT: &str = "/sys/fs/bpf/gre";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// A loader of the eBPF object whose peer and route tables have the capacities `limits` asks for.
#[must_use]
pub fn object_loader(limits: &config::Limits) -> aya::EbpfLoader<'static> {
    let mut loader = aya::EbpfLoader::new();
    for name in [names::PEERS, names::NBMA_PEERS, names::PEER_STATS] {
        loader.map_max_entries(name, limits.peers);
    }
    loader.map_max_entries(names::ROUTES, limits.routes);
    loader
}

/// The limits a running instance was brought up with, read from its pinned maps.
///
/// # Errors
/// A map is not pinned there.
pub fn pinned_limits(maps_dir: &Path) -> Result<config::Limits> {
    let capacity = |name: &str| -> Result<u32> {
        let path = maps_dir.join(name);
        Ok(aya::maps::MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?.max_entries())
    };
    Ok(config::Limits { peers: capacity(names::PEERS)?, routes: capacity(names::ROUTES)? })
}

/// The pin folder of an instance.
///
/// # Errors
/// The name could escape the folder or is not a plain name.
pub fn instance_dir(instance: &str) -> Result<PathBuf> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && instance != "."
        && instance != ".."
        && instance.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        bail!("instance name {instance:?} must be 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(Path::new(PIN_ROOT).join(instance))
}

/// Mounts bpffs at /sys/fs/bpf unless it is there already.
///
/// # Errors
/// The mount fails (not root, or no bpffs in this kernel).
pub fn ensure_bpffs() -> Result<()> {
    let is_bpffs = nix::sys::statfs::statfs(BPFFS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if !is_bpffs {
        info!("mounting bpffs at {BPFFS}");
        fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
        nix::mount::mount(Some("bpf"), BPFFS, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mounting bpffs at {BPFFS} (it needs CAP_SYS_ADMIN; or mount it beforehand: mount -t bpf bpf {BPFFS})"))?;
    }
    Ok(())
}

/// The pin folder of an instance that is up (bpffs mounted first if need be).
///
/// # Errors
/// The instance is not up, or bpffs cannot be mounted.
pub fn running_dir(instance: &str) -> Result<PathBuf> {
    let dir = instance_dir(instance)?;
    ensure_bpffs()?;
    if !dir.exists() {
        bail!("instance {instance} is not up (no {})", dir.display());
    }
    Ok(dir)
}

/// Loads a program, retrying when the verifier was interrupted (EAGAIN: a signal arrived while
/// it worked through a large program), as libbpf does.
///
/// # Errors
/// The load fails for another reason, or keeps being interrupted.
pub fn load(mut f: impl FnMut() -> Result<(), aya::programs::ProgramError>) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. }) if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

pub(crate) fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    p.try_into().with_context(|| format!("program {name} has an unexpected type"))
}

/// Removes an instance's pin folder, and our root folder if it is left empty.
///
/// # Errors
/// A pin cannot be removed.
pub fn remove_pins(dir: &Path) -> Result<()> {
    for sub in ["links", "progs", "maps"] {
        let sub = dir.join(sub);
        if let Ok(entries) = fs::read_dir(&sub) {
            for e in entries.flatten() {
                fs::remove_file(e.path()).with_context(|| format!("unpinning {}", e.path().display()))?;
            }
            fs::remove_dir(&sub).with_context(|| format!("removing {}", sub.display()))?;
        }
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
    // Another instance may hold it; only an empty root goes.
    let _ = fs::remove_dir(PIN_ROOT);
    Ok(())
}
