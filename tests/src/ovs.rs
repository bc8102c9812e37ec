//! Open vSwitch's userspace datapath as an independent GRE peer. ovsdb-server and ovs-vswitchd
//! run in a namespace of the test with a private run, database, log and configuration directory
//! (`datapath_type=netdev`: no kernel module, nothing system-wide), and are killed when dropped.
//!
//! ```text
//!   namespace "ours"                namespace "ovs"                           namespace "host"
//!   eth0 198.51.100.1/24 ══veth══ up0 ─ br-phy (LOCAL 198.51.100.2/24)
//!                                      br-int ─ gre1 (GRE, remote 198.51.100.1)
//!                                             └ h0 ════════════════veth════ eth0 203.0.113.2/24
//!                                                                                2001:db8:100::2/64
//! ```
//!
//! OVS terminates tunnels on a bridge whose LOCAL port holds the underlay address (br-phy, with
//! the veth to us); the tunnel port and the overlay host are on a second bridge (br-int).

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::topology::{Lab, ns_sh, sh};

pub const OURS: &str = "198.51.100.1";
pub const OVS: &str = "198.51.100.2";
pub const OUR_OVERLAY: &str = "203.0.113.1";
pub const OUR_OVERLAY6: &str = "2001:db8:100::1";
pub const HOST_OVERLAY: &str = "203.0.113.2";
pub const HOST_OVERLAY6: &str = "2001:db8:100::2";
/// The MAC the host's static neighbours name for our overlay addresses on an L3 tunnel, and the
/// source OVS writes on what it hands the host (a documentation MAC, RFC 7042).
const L3_MAC: &str = "00:00:5e:00:53:01";

/// The OVS binaries the tests run.
const BINARIES: &[&str] = &["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ovs-appctl"];

/// Whether Open vSwitch is installed (`cargo xtask setup` installs it).
///
/// # Errors
/// A binary is missing or does not run.
pub fn installed() -> Result<()> {
    for b in BINARIES {
        Command::new(b).arg("--version").output().ok().filter(|o| o.status.success()).with_context(|| format!("{b} does not run (openvswitch-switch)"))?;
    }
    Ok(())
}

/// ovsdb-server and ovs-vswitchd in a namespace, on a private directory.
pub struct Ovs {
    dir: PathBuf,
    /// ovs-vswitchd then ovsdb-server: the order they are stopped in.
    daemons: Vec<Child>,
}

impl Ovs {
    /// Creates the database in `dir` and starts both daemons in `ns`; returns once ovs-vswitchd
    /// answers on its control socket.
    ///
    /// # Errors
    /// A daemon does not start (the error carries its log).
    pub fn start(ns: &str, dir: &Path) -> Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ovs = Self { dir: dir.to_path_buf(), daemons: Vec::new() };
        ovs.run("ovsdb-tool", &["create", &ovs.path("conf.db")])?;
        let db = ovs.path("conf.db");
        let server = ovs.daemon(ns, "ovsdb-server", &[&db, &format!("--remote=punix:{}", ovs.path("db.sock"))])?;
        ovs.daemons.push(server);
        ovs.wait_for_socket("db.sock")?;
        // One handler and one revalidator thread: all a test needs, and light on a small machine.
        ovs.vsctl_no_wait(&["init", "--", "set", "open_vswitch", ".", "other_config:n-handler-threads=1", "other_config:n-revalidator-threads=1"])?;
        let vswitchd = ovs.daemon(ns, "ovs-vswitchd", &[&format!("unix:{}", ovs.path("db.sock"))])?;
        ovs.daemons.insert(0, vswitchd);
        ovs.wait_for_socket("ovs-vswitchd.ctl")?;
        Ok(ovs)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A command that finds this instance's sockets and files, and nobody else's.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            cmd.env(var, &self.dir);
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.command(program).args(args).output().with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `name` in `ns` in the foreground (the test owns it), logging to the directory.
    fn daemon(&self, ns: &str, name: &str, args: &[&str]) -> Result<Child> {
        let mut cmd = self.command("ip");
        cmd.args(["netns", "exec", ns, name])
            .args(args)
            .arg(format!("--unixctl={}", self.path(&format!("{name}.ctl"))))
            .arg(format!("--log-file={}", self.path(&format!("{name}.log"))))
            .arg(format!("--pidfile={}", self.path(&format!("{name}.pid"))))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe. `ip netns exec` execs the daemon in place, which
        // keeps the death signal: a test process killed outright leaves no daemon behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn().with_context(|| format!("starting {name}"))
    }

    fn wait_for_socket(&mut self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.dir.join(name).exists() {
            for d in &mut self.daemons {
                if let Some(status) = d.try_wait()? {
                    bail!("an OVS daemon exited ({status}) before {name} appeared:\n{}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!("no {name} after 20 s:\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `ovs-vsctl ARGS…`, waiting until ovs-vswitchd has applied the change.
    ///
    /// # Errors
    /// ovs-vsctl fails or ovs-vswitchd does not catch up within 30 s.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.path("db.sock"));
        self.run("ovs-vsctl", &[&[db.as_str(), "--timeout=30"], args].concat())
    }

    fn vsctl_no_wait(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.path("db.sock"));
        self.run("ovs-vsctl", &[&[db.as_str(), "--no-wait"], args].concat())
    }

    /// `ovs-ofctl ARGS…`.
    ///
    /// # Errors
    /// ovs-ofctl fails.
    pub fn ofctl(&self, args: &[&str]) -> Result<String> {
        self.run("ovs-ofctl", args)
    }

    /// `ovs-appctl ARGS…` to ovs-vswitchd.
    ///
    /// # Errors
    /// ovs-appctl fails.
    pub fn appctl(&self, args: &[&str]) -> Result<String> {
        let target = self.path("ovs-vswitchd.ctl");
        self.run("ovs-appctl", &[&["-t", target.as_str()], args].concat())
    }

    /// What OVS counted as dropped for a fault, by coverage counter: the datapath's drops
    /// (`datapath_drop_*`: a tunnel header it could not pop, a checksum that does not verify) and
    /// the translation's (`drop_action_*`), except drops by the flow table, which the L3 flows
    /// make on purpose (whatever the host sends that is not for the tunnel).
    ///
    /// # Errors
    /// ovs-appctl fails.
    pub fn drops(&self) -> Result<BTreeMap<String, u64>> {
        let out = self.appctl(&["coverage/show"])?;
        let mut drops = BTreeMap::new();
        for line in out.lines() {
            let (Some(name), Some((_, total))) = (line.split_whitespace().next(), line.split_once("total:")) else { continue };
            if (name.starts_with("datapath_drop_") || name.starts_with("drop_action_")) && name != "drop_action_of_pipeline" {
                drops.insert(name.to_string(), total.trim().parse().with_context(|| format!("coverage line {line:?}"))?);
            }
        }
        Ok(drops)
    }

    /// The length of ovs-vswitchd's log now, to read what it logs from here on.
    #[must_use]
    pub fn log_mark(&self) -> usize {
        std::fs::read_to_string(self.path("ovs-vswitchd.log")).map_or(0, |s| s.len())
    }

    /// What ovs-vswitchd logged since `mark`.
    #[must_use]
    pub fn log_since(&self, mark: usize) -> String {
        std::fs::read_to_string(self.path("ovs-vswitchd.log")).map(|s| s.get(mark..).unwrap_or_default().to_string()).unwrap_or_default()
    }

    /// Both daemons' logs, for an error message.
    #[must_use]
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.path(n)).unwrap_or_else(|e| format!("({e})"));
        format!("--- ovsdb-server.log\n{}--- ovs-vswitchd.log\n{}", read("ovsdb-server.log"), read("ovs-vswitchd.log"))
    }
}

impl Drop for Ovs {
    /// Stops ovs-vswitchd, then ovsdb-server (SIGTERM, SIGKILL after 5 s), and removes the
    /// directory.
    fn drop(&mut self) {
        for mut d in self.daemons.drain(..) {
            if let Ok(pid) = i32::try_from(d.id()) {
                // SAFETY: signalling our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while d.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = d.kill();
                    let _ = d.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our namespace, Open vSwitch's and the overlay host behind it. OVS goes first when dropped
/// (its daemons run in the lab's namespaces).
pub struct OvsPeer {
    pub ovs: Ovs,
    pub lab: Lab,
    pub ours: String,
    /// OVS's namespace: capture on `up0` here, which sees both directions before any XDP
    /// program (a capture on our eth0 misses what XDP takes).
    pub sw: String,
    pub host: String,
}

fn mac(ns: &str, dev: &str) -> Result<String> {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v[0]["address"].as_str().map(String::from).with_context(|| format!("no MAC for {dev} in {out}"))
}

impl OvsPeer {
    /// The namespaces, OVS with its two bridges, and both ends addressed; no tunnel port yet.
    ///
    /// # Errors
    /// A step fails (what was made is removed).
    pub fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag);
        let ours = lab.add_ns("ours")?;
        let sw = lab.add_ns("ovs")?;
        let host = lab.add_ns("host")?;
        // The OVS namespace's own kernel stays off the underlay: it has no GRE, and would answer
        // GRE that reached it with ICMP protocol unreachable. GRE comes addressed to br-phy's
        // MAC, which the kernel ignores on up0; up0 has no address, no ARP (nobody learns its
        // MAC) and no IPv6, and reverse-path filtering drops the rest (our address is behind
        // br-phy).
        ns_sh(&sw, &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns_sh(&sw, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1"])?;
        // The underlay carries IPv4 only, so that nothing but GRE and ARP crosses it.
        sh(&["ip", "-n", &ours, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &sw])?;
        ns_sh(&ours, &["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])?;
        sh(&["ip", "-n", &ours, "addr", "add", &format!("{OURS}/24"), "dev", "eth0"])?;
        sh(&["ip", "-n", &ours, "link", "set", "eth0", "up"])?;
        // A gateway: it forwards on the underlay (our gretap's ARP needs it, see README).
        ns_sh(&ours, &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"])?;
        sh(&["ip", "-n", &sw, "link", "set", "up0", "arp", "off", "up"])?;
        // The overlay host: quiet (no link-local address, no router solicitation, no DAD), so
        // that an L3 tunnel carries only what the test sends.
        ns_sh(
            &host,
            &["sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1", "net.ipv6.conf.default.router_solicitations=0", "net.ipv6.conf.default.accept_dad=0"],
        )?;
        sh(&["ip", "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", "h0", "netns", &sw])?;
        sh(&["ip", "-n", &host, "addr", "add", &format!("{HOST_OVERLAY}/24"), "dev", "eth0"])?;
        sh(&["ip", "-n", &host, "addr", "add", &format!("{HOST_OVERLAY6}/64"), "dev", "eth0", "nodad"])?;
        sh(&["ip", "-n", &host, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", &sw, "link", "set", "h0", "arp", "off", "up"])?;
        // OVS reads and writes the veths through AF_PACKET, which neither completes a checksum
        // left to the NIC nor passes the offload on: every sender completes its own.
        for (ns, dev) in [(&ours, "eth0"), (&sw, "up0"), (&host, "eth0"), (&sw, "h0")] {
            ns_sh(ns, &["ethtool", "-K", dev, "tx", "off"])?;
        }
        let dir = std::env::temp_dir().join(&sw);
        let ovs = Ovs::start(&sw, &dir)?;
        let peer = Self { ovs, lab, ours, sw, host };
        peer.bridges().with_context(|| format!("setting up Open vSwitch\n{}", peer.ovs.logs()))?;
        Ok(peer)
    }

    /// br-phy with the underlay address and the veth to us, br-int with the veth to the host.
    fn bridges(&self) -> Result<()> {
        let bridges = "add-br br-phy -- set bridge br-phy datapath_type=netdev -- add-port br-phy up0 \
                       -- add-br br-int -- set bridge br-int datapath_type=netdev -- add-port br-int h0";
        self.ovs.vsctl(&bridges.split_whitespace().collect::<Vec<_>>())?;
        sh(&["ip", "-n", &self.sw, "addr", "add", &format!("{OVS}/24"), "dev", "br-phy"])?;
        sh(&["ip", "-n", &self.sw, "link", "set", "br-phy", "up"])?;
        // OVS routes tunnel traffic by a table of its own, and sends to the neighbour it has
        // in its own cache: without an entry, the first packet would be lost.
        self.ovs.appctl(&["ovs/route/add", &format!("{OURS}/32"), "br-phy"])?;
        self.ovs.appctl(&["tnl/arp/set", "br-phy", OURS, &mac(&self.ours, "eth0")?])?;
        Ok(())
    }

    /// Makes br-int's tunnel port GRE to us with OVS `options` (`key=1001`, `csum=true`, …):
    /// Ethernet over GRE (`ethernet`, switched by NORMAL) or L3 GRE (`packet_type=legacy_l3`).
    /// A port from an earlier call is replaced.
    ///
    /// # Errors
    /// OVS refuses the port or the flows.
    pub fn tunnel(&self, options: &[&str], ethernet: bool) -> Result<()> {
        let remote = format!("options:remote_ip={OURS}");
        // The old port and the datapath flows made for it go first: left to the revalidator,
        // they would be logged as traffic for a tunnel port that no longer exists.
        self.ovs.appctl(&["revalidator/purge"])?;
        self.ovs.vsctl(&["--if-exists", "del-port", "br-int", "gre1"])?;
        let mut args = vec!["add-port", "br-int", "gre1", "--", "set", "interface", "gre1", "type=gre", &remote];
        if !ethernet {
            args.push("options:packet_type=legacy_l3");
        }
        let options: Vec<String> = options.iter().map(|o| format!("options:{o}")).collect();
        args.extend(options.iter().map(String::as_str));
        self.ovs.vsctl(&args)?;
        self.ovs.ofctl(&["del-flows", "br-int"])?;
        sh(&["ip", "-n", &self.host, "neigh", "flush", "dev", "eth0", "nud", "all"])?;
        if ethernet {
            // The host resolves our addresses across the tunnel (ARP, neighbour discovery).
            return self.ovs.ofctl(&["add-flow", "br-int", "actions=NORMAL"]).map(|_| ());
        }
        // An L3 tunnel port takes Ethernet frames with their header stripped and hands over
        // what it receives behind a blank one, which the flow fills in for the host. No ARP or
        // neighbour discovery crosses: the host has static neighbours for our addresses.
        for ours in [OUR_OVERLAY, OUR_OVERLAY6] {
            sh(&["ip", "-n", &self.host, "neigh", "replace", ours, "lladdr", L3_MAC, "dev", "eth0", "nud", "permanent"])?;
        }
        let host_mac = mac(&self.host, "eth0")?;
        for flow in [
            format!("in_port=h0,ip,nw_dst={OUR_OVERLAY},actions=output:gre1"),
            format!("in_port=h0,ipv6,ipv6_dst={OUR_OVERLAY6},actions=output:gre1"),
            format!("in_port=gre1,actions=mod_dl_src:{L3_MAC},mod_dl_dst:{host_mac},output:h0"),
        ] {
            self.ovs.ofctl(&["add-flow", "br-int", &flow])?;
        }
        Ok(())
    }

    /// Sets the host's link to br-int to `mtu`: the tunnel MTU of our end, so that neither
    /// end sends what the other cannot take.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn set_host_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        sh(&["ip", "-n", &self.host, "link", "set", "eth0", "mtu", &mtu])?;
        sh(&["ip", "-n", &self.sw, "link", "set", "h0", "mtu", &mtu]).map(|_| ())
    }

    /// What OVS can tell about a failure: what ovs-vswitchd logged since `mark`
    /// ([`Ovs::log_mark`]), br-int's flows, the datapath's and the tunnel neighbours.
    #[must_use]
    pub fn report(&self, mark: usize) -> String {
        let flows = self.ovs.ofctl(&["dump-flows", "br-int"]).unwrap_or_else(|e| format!("{e:#}\n"));
        let dp = self.ovs.appctl(&["dpctl/dump-flows"]).unwrap_or_else(|e| format!("{e:#}\n"));
        let neigh = self.ovs.appctl(&["tnl/neigh/show"]).unwrap_or_else(|e| format!("{e:#}\n"));
        let log = self.ovs.log_since(mark);
        format!("--- ovs-vswitchd.log\n{log}--- br-int flows\n{flows}--- datapath flows\n{dp}--- tunnel neighbours\n{neigh}")
    }
}
