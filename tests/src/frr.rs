//! FRR's daemons (Debian's packages: zebra, bgpd, ospfd) in a network namespace of a test, each
//! namespace with its own FRR path space (`-N`: sockets and pid files under `/run/frr/NAME`)
//! and a scratch configuration directory. They run as FRR's own user, as packaged. Everything
//! is stopped and removed on drop.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const DAEMONS: &str = "/usr/lib/frr";

/// FRR's daemons in one namespace.
pub struct Frr {
    ns: String,
    run: PathBuf,
    etc: PathBuf,
    daemons: Vec<&'static str>,
    /// ospfd keeps its graceful-restart state outside the path space: removed if it made it.
    gr_state: Option<PathBuf>,
}

/// Where ospfd keeps its graceful-restart state, whatever its path space.
const OSPF_GR_STATE: &str = "/run/frr/ospfd-gr.json";

impl Frr {
    /// Starts zebra, then each of `daemons` with its configuration (`(name, text)`, such as
    /// `("bgpd", "router bgp 65000\n…")`), in namespace `ns`. zebra's own lines, if any, come
    /// as `("zebra", …)`.
    ///
    /// # Errors
    /// FRR is not installed, or a daemon does not start.
    pub fn start(ns: &str, daemons: &[(&'static str, &str)]) -> Result<Self> {
        if !std::path::Path::new(DAEMONS).join("zebra").exists() {
            bail!("FRR is not installed (`cargo xtask setup` installs Debian's frr)");
        }
        let run = PathBuf::from("/run/frr").join(ns);
        let etc = std::env::temp_dir().join(format!("gre-frr-{ns}"));
        let gr_state = (daemons.iter().any(|(n, _)| *n == "ospfd") && !std::path::Path::new(OSPF_GR_STATE).exists()).then(|| PathBuf::from(OSPF_GR_STATE));
        let mut frr = Self { ns: ns.to_string(), run, etc, daemons: Vec::new(), gr_state };
        for d in [&frr.run, &frr.etc] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let zebra = daemons.iter().find(|(n, _)| *n == "zebra").map_or("", |(_, t)| *t);
        std::fs::write(frr.etc.join("zebra.conf"), format!("hostname {ns}\nlog file {}\n{zebra}", frr.etc.join("zebra.log").display()))?;
        let daemons: Vec<&(&'static str, &str)> = daemons.iter().filter(|(n, _)| *n != "zebra").collect();
        for (name, text) in &daemons {
            std::fs::write(frr.etc.join(format!("{name}.conf")), format!("hostname {ns}\nlog file {}\n{text}", frr.etc.join(format!("{name}.log")).display()))?;
        }
        let chown = Command::new("chown").args(["-R", "frr:frr"]).arg(&frr.run).arg(&frr.etc).status().context("chown")?;
        if !chown.success() {
            bail!("chown frr: {chown}");
        }
        for name in std::iter::once("zebra").chain(daemons.iter().map(|(n, _)| *n)) {
            let out = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(PathBuf::from(DAEMONS).join(name))
                .args(["-d", "-N", ns, "-f"])
                .arg(frr.etc.join(format!("{name}.conf")))
                .arg("-i")
                .arg(frr.run.join(format!("{name}.pid")))
                .output()
                .with_context(|| format!("starting {name}"))?;
            if !out.status.success() {
                bail!("{name} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
            }
            frr.daemons.push(name);
            // zebra first: the others connect to its socket.
            if name == "zebra" {
                frr.wait_for_file("zserv.api")?;
            }
        }
        Ok(frr)
    }

    fn wait_for_file(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.run.join(name).exists() {
            if Instant::now() > deadline {
                bail!("{} did not appear", self.run.join(name).display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A `vtysh` command's output.
    ///
    /// # Errors
    /// vtysh fails.
    pub fn vtysh(&self, command: &str) -> Result<String> {
        let out = Command::new("ip").args(["netns", "exec", &self.ns, "vtysh", "-N", &self.ns, "-c", command]).output().context("vtysh")?;
        if !out.status.success() {
            bail!("vtysh -c '{command}' in {}: {}", self.ns, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Commands in configuration mode, one per line of `lines` (`router bgp 65000`, …).
    ///
    /// # Errors
    /// vtysh fails.
    pub fn configure(&self, lines: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, "vtysh", "-N", &self.ns, "-c", "configure terminal"]);
        for l in lines {
            cmd.args(["-c", l]);
        }
        let out = cmd.output().context("vtysh")?;
        if !out.status.success() {
            bail!("configuring {}: {}", self.ns, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The end of a daemon's log, for a failure's report.
    pub fn log_tail(&self, daemon: &str) -> String {
        let text = std::fs::read_to_string(self.etc.join(format!("{daemon}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        for name in self.daemons.iter().rev() {
            if let Ok(pid) = std::fs::read_to_string(self.run.join(format!("{name}.pid")))
                && let Ok(pid) = pid.trim().parse::<i32>()
            {
                // SAFETY: a signal to a daemon this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                // SAFETY: signal 0 only probes.
                while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(f) = &self.gr_state {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(&self.run);
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
