//! Checks before anything is touched, each failure with what to do about it: the kernel is new
//! enough, the process holds the capabilities the command needs.

use anyhow::{Result, bail};

/// Linux capabilities by number (linux/capability.h).
mod cap {
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const SYS_ADMIN: u32 = 21;
    pub const PERFMON: u32 = 38;
    pub const BPF: u32 = 39;
}

/// What a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Read pinned maps (`show`, `stats`, `showconf`).
    Read,
    /// Load programs, change links, routes and maps (`up`, `down`, `reload`, runtime changes).
    Change,
    /// All of that and raw sockets (`daemon`).
    Daemon,
}

/// The oldest kernel the datapath runs on: TCX links (6.6) for TC programs that can be pinned
/// and updated; `bpf_loop` (5.17) and the rest come before.
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// Checks the kernel and the capabilities for `needs`.
///
/// # Errors
/// The kernel is too old or a capability is missing; the message says what to do.
pub fn check(needs: Needs) -> Result<()> {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    if let Some(v) = kernel_version(&release)
        && v < MIN_KERNEL
    {
        bail!("kernel {release} is older than {}.{}: the datapath needs TCX links (6.6) and bpf_loop (5.17); upgrade the kernel", MIN_KERNEL.0, MIN_KERNEL.1);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok()).unwrap_or(u64::MAX);
    let has = |c: u32| effective & (1 << c) != 0;
    // Before CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN covered both.
    let bpf = has(cap::BPF) || has(cap::SYS_ADMIN);
    let perfmon = has(cap::PERFMON) || has(cap::SYS_ADMIN);
    let mut missing = Vec::new();
    if !bpf {
        missing.push("CAP_BPF");
    }
    if needs != Needs::Read && !has(cap::NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if needs != Needs::Read && !perfmon {
        missing.push("CAP_PERFMON");
    }
    if needs == Needs::Daemon && !has(cap::NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !missing.is_empty() {
        bail!(
            "missing {}: run as root, or grant them (systemd: AmbientCapabilities=, as in packaging/gre@.service; a binary: setcap cap_bpf,cap_perfmon,cap_net_admin,cap_net_raw+ep)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Major and minor of a kernel release string ("6.18.0-1-amd64" → (6, 18)).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.167"), Some((5, 15)));
        assert!(kernel_version("5.15.167").unwrap() < MIN_KERNEL);
        assert!(kernel_version("6.6.0").unwrap() >= MIN_KERNEL);
        assert_eq!(kernel_version("weird"), None);
    }
}
