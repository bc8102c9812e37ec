//! Running the `gre` binary.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// Path of the `gre` binary: `GRE_BIN`, or the workspace's debug build.
#[must_use]
pub fn bin() -> PathBuf {
    std::env::var_os("GRE_BIN").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gre"), PathBuf::from)
}

/// Runs `gre -n NETNS -i INSTANCE ARGS…` and returns its standard output.
///
/// # Errors
/// It cannot start or exits non-zero (the error carries its stderr).
pub fn run(netns: &str, instance: &str, args: &[&str]) -> Result<String> {
    let bin = bin();
    let out = Command::new(&bin)
        .args(["-n", netns, "-I", instance])
        .args(args)
        .output()
        .with_context(|| format!("running {} (build it with `cargo xtask build`)", bin.display()))?;
    if !out.status.success() {
        bail!("gre -n {netns} -I {instance} {} failed ({}):\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `gre show -j` parsed.
///
/// # Errors
/// `gre show` fails or prints something that is not JSON.
pub fn show(netns: &str, instance: &str) -> Result<serde_json::Value> {
    let out = run(netns, instance, &["show", "-j"])?;
    serde_json::from_str(&out).with_context(|| format!("gre show -j printed {out:?}"))
}

/// The counters of a report of `gre show -j`, read the one way every test reads them.
pub mod counters {
    use anyhow::{Context as _, Result};
    use serde_json::Value;

    /// Counter `field` of the report's first tunnel.
    ///
    /// # Errors
    /// The report has no such counter.
    pub fn tunnel(v: &Value, field: &str) -> Result<u64> {
        v["tunnels"][0][field].as_u64().with_context(|| format!("{field} of the first tunnel in {v}"))
    }

    /// (rx_packets, tx_packets) of the report's first tunnel.
    ///
    /// # Errors
    /// As [`tunnel`].
    pub fn packets(v: &Value) -> Result<(u64, u64)> {
        Ok((tunnel(v, "rx_packets")?, tunnel(v, "tx_packets")?))
    }

    /// The instance's drops, every reason together.
    #[must_use]
    pub fn drops(v: &Value) -> u64 {
        sum(&v["drops"])
    }

    /// The first tunnel's drops, every reason together.
    #[must_use]
    pub fn tunnel_drops(v: &Value) -> u64 {
        sum(&v["tunnels"][0]["drops"])
    }

    fn sum(drops: &Value) -> u64 {
        drops.as_object().map_or(0, |d| d.values().filter_map(Value::as_u64).sum())
    }
}

/// Counter `field` of the first tunnel of `instance` in `ns`, from `gre show -j`.
///
/// # Panics
/// `gre show` fails or has no such counter.
#[must_use]
pub fn counter(ns: &str, instance: &str, field: &str) -> u64 {
    let v = show(ns, instance).unwrap_or_else(|e| panic!("gre show: {e:#}"));
    counters::tunnel(&v, field).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `gre daemon` for an instance, as a child process stopped (SIGTERM) when dropped.
pub struct Daemon(Option<std::process::Child>);

impl Daemon {
    /// Starts `gre -n NS -i INSTANCE daemon`.
    pub fn start(ns: &str, instance: &str) -> Self {
        Self(Some(Command::new(bin()).args(["-n", ns, "-I", instance, "daemon"]).stderr(std::process::Stdio::null()).spawn().expect("gre daemon")))
    }

    /// Starts `gre -n NS -I INSTANCE daemon -c CONFIG`: it brings the instance up first.
    pub fn start_with(ns: &str, instance: &str, config: &std::path::Path) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["-n", ns, "-I", instance, "daemon", "-c"]).arg(config).stderr(std::process::Stdio::null());
        Self(Some(cmd.spawn().expect("gre daemon")))
    }

    /// Starts `gre -n NS -I INSTANCE daemon ARGS…`.
    pub fn start_args(ns: &str, instance: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["-n", ns, "-I", instance, "daemon"]).args(args).stderr(std::process::Stdio::null());
        Self(Some(cmd.spawn().expect("gre daemon")))
    }

    /// Starts `gre -n NS -I INSTANCE daemon` with these environment variables.
    pub fn start_env(ns: &str, instance: &str, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["-n", ns, "-I", instance, "daemon"]).envs(env.iter().copied()).stderr(std::process::Stdio::null());
        Self(Some(cmd.spawn().expect("gre daemon")))
    }

    /// Its process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(std::process::Child::id)
    }

    /// Kills it without letting it say goodbye (SIGKILL): as a crash or a power cut would.
    pub fn kill(mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    /// Stops it as an operator would (SIGTERM) and waits for it.
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(i32::try_from(c.id()).unwrap(), libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}
