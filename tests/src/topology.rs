//! Network namespaces joined by veth pairs, on documentation addresses only. Everything made here
//! is removed on drop — namespaces (and with them every link in them) and the `gre` instances
//! brought up in them — also when the test panics.

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

/// Runs a command and fails with its stderr if it exits non-zero.
///
/// # Errors
/// The command cannot start or fails.
pub fn sh(cmd: &[&str]) -> Result<String> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().with_context(|| format!("running {}", cmd.join(" ")))?;
    if !out.status.success() {
        bail!("{} failed ({}): {}{}", cmd.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim(), String::from_utf8_lossy(&out.stdout).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a namespace (`ip netns exec`).
///
/// # Errors
/// As [`sh`].
pub fn ns_sh(ns: &str, cmd: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    sh(&full)
}

/// An interface's index and MAC address, looked up in namespace `ns`.
///
/// # Errors
/// The interface is not there.
pub fn link(ns: &str, ifname: &str) -> Result<(u32, [u8; 6])> {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    let index = u32::try_from(v[0]["ifindex"].as_u64().context("ifindex")?)?;
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(v[0]["address"].as_str().context("address")?.split(':')) {
        *m = u8::from_str_radix(part, 16)?;
    }
    Ok((index, mac))
}

/// A set of namespaces and `gre` instances that go away together.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    instances: Vec<(String, String)>,
}

impl Lab {
    /// A lab whose names start with `tag` and are unique to this process and call.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        Self { prefix, namespaces: Vec::new(), instances: Vec::new() }
    }

    /// The full name of namespace `short` of this lab.
    #[must_use]
    pub fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Name for a `gre` instance of this lab (also unique on the host, where bpffs is shared).
    #[must_use]
    pub fn instance(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Creates namespace `short` with loopback up.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn add_ns(&mut self, short: &str) -> Result<String> {
        let ns = self.ns(short);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Joins two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), addresses them and
    /// brings both ends up. The pair is created inside `a`, never in the root namespace.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn link(&self, (a, a_if, a_addr): (&str, &str, &str), (b, b_if, b_addr): (&str, &str, &str)) -> Result<()> {
        sh(&["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b])?;
        for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname])?;
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
            // Test-only veth artefact: a locally generated checksum left to "hardware" is lost when
            // XDP runs on the receiving veth. Real NICs are not affected.
            ns_sh(ns, &["ethtool", "-K", ifname, "tx", "off"])?;
        }
        Ok(())
    }

    /// Brings up a `gre` instance in `ns` from TOML text; it is taken down on drop.
    ///
    /// # Errors
    /// `gre up` fails.
    pub fn gre_up(&mut self, ns: &str, short: &str, config: &str) -> Result<String> {
        let instance = self.instance(short);
        let path = std::env::temp_dir().join(format!("{instance}.toml"));
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        self.instances.push((ns.to_string(), instance.clone()));
        let r = crate::gre::run(ns, &instance, &["up", "-c", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        r?;
        Ok(instance)
    }

    /// Names instance `short` in `ns` and has the lab take it down at the end, for instances
    /// something else brings up (`gre daemon -c`).
    pub fn adopt(&mut self, ns: &str, short: &str) -> String {
        let instance = self.instance(short);
        self.instances.push((ns.to_string(), instance.clone()));
        instance
    }

    /// Takes a `gre` instance down now (and forgets it).
    ///
    /// # Errors
    /// `gre down` fails.
    pub fn gre_down(&mut self, ns: &str, instance: &str) -> Result<()> {
        self.instances.retain(|(n, i)| !(n == ns && i == instance));
        crate::gre::run(ns, instance, &["down"]).map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (ns, instance) in std::mem::take(&mut self.instances) {
            if let Err(e) = crate::gre::run(&ns, &instance, &["down"]) {
                eprintln!("cleanup: {e:#}");
            }
            // If `gre down` could not run, still leave no pins behind.
            let dir = std::path::Path::new(gre_user::instance::PIN_ROOT).join(&instance);
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir(gre_user::instance::PIN_ROOT);
            }
        }
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = sh(&["ip", "netns", "del", &ns]) {
                eprintln!("cleanup: {e:#}");
            }
        }
    }
}

/// Two sites and the underlay router between them:
///
/// ```text
///   site a                       wan                        site b
///   eth0 198.51.100.1/26 ── a0 198.51.100.62/26
///                              b0 198.51.100.126/26 ── eth0 198.51.100.65/26
///   eth0 2001:db8:1::1/64 ── a0 2001:db8:1::ffff/64
///                              b0 2001:db8:2::ffff/64 ── eth0 2001:db8:2::1/64
///   gre0 203.0.113.1/30, 2001:db8:100::1/64  ═══ GRE ═══  gre0 203.0.113.2/30, 2001:db8:100::2/64
/// ```
pub struct TwoSites {
    pub lab: Lab,
    pub a: String,
    pub wan: String,
    pub b: String,
}

pub const A_UNDERLAY: &str = "198.51.100.1";
pub const B_UNDERLAY: &str = "198.51.100.65";
pub const A_UNDERLAY6: &str = "2001:db8:1::1";
pub const B_UNDERLAY6: &str = "2001:db8:2::1";
pub const A_OVERLAY4: &str = "203.0.113.1";
pub const B_OVERLAY4: &str = "203.0.113.2";
pub const A_OVERLAY6: &str = "2001:db8:100::1";
pub const B_OVERLAY6: &str = "2001:db8:100::2";

impl TwoSites {
    /// Builds the namespaces and the underlay; no tunnel yet.
    ///
    /// # Errors
    /// A step fails (what was made is removed).
    pub fn new(tag: &str) -> Result<Self> {
        let mut lab = Lab::new(tag);
        let a = lab.add_ns("a")?;
        let wan = lab.add_ns("wan")?;
        let b = lab.add_ns("b")?;
        lab.link((&a, "eth0", "198.51.100.1/26"), (&wan, "a0", "198.51.100.62/26"))?;
        lab.link((&b, "eth0", "198.51.100.65/26"), (&wan, "b0", "198.51.100.126/26"))?;
        // The IPv6 underlay beside it (no DAD: the addresses are usable at once).
        for (ns, ifname, addr) in
            [(&a, "eth0", "2001:db8:1::1/64"), (&wan, "a0", "2001:db8:1::ffff/64"), (&b, "eth0", "2001:db8:2::1/64"), (&wan, "b0", "2001:db8:2::ffff/64")]
        {
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname, "nodad"])?;
        }
        ns_sh(&wan, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        ns_sh(&wan, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        sh(&["ip", "-n", &a, "route", "add", "default", "via", "198.51.100.62"])?;
        sh(&["ip", "-n", &b, "route", "add", "default", "via", "198.51.100.126"])?;
        sh(&["ip", "-n", &a, "-6", "route", "add", "default", "via", "2001:db8:1::ffff"])?;
        sh(&["ip", "-n", &b, "-6", "route", "add", "default", "via", "2001:db8:2::ffff"])?;
        Ok(Self { lab, a, wan, b })
    }

    /// The configuration of one site's end of a tunnel.
    #[must_use]
    pub fn site_config(local: &str, remote: &str, key: Option<u32>, overlay4: &str, overlay6: &str) -> String {
        let key = key.map_or_else(String::new, |k| format!("key = {k}\n"));
        Self::site_config_with(local, remote, &format!("{key}ttl = 64\n"), overlay4, overlay6)
    }

    /// The configuration of one site's end of a tunnel, with `options` (TOML lines) added.
    #[must_use]
    pub fn site_config_with(local: &str, remote: &str, options: &str, overlay4: &str, overlay6: &str) -> String {
        format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\n\
             local = \"{local}\"\nremote = \"{remote}\"\n{options}\
             address = [\"{overlay4}/30\", \"{overlay6}/64\"]\n"
        )
    }

    /// Brings up a tunnel with the same `options` on both sites, between the given underlay
    /// addresses of a and b; returns the instances of a and b.
    ///
    /// # Errors
    /// `gre up` fails on either side.
    pub fn tunnel_with(&mut self, a_underlay: &str, b_underlay: &str, options: &str) -> Result<(String, String)> {
        let ca = Self::site_config_with(a_underlay, b_underlay, options, A_OVERLAY4, A_OVERLAY6);
        let cb = Self::site_config_with(b_underlay, a_underlay, options, B_OVERLAY4, B_OVERLAY6);
        let (a, b) = (self.a.clone(), self.b.clone());
        let ia = self.lab.gre_up(&a, "a", &ca)?;
        let ib = self.lab.gre_up(&b, "b", &cb)?;
        Ok((ia, ib))
    }

    /// Brings up a keyed (or keyless) point-to-point tunnel between the sites; returns the
    /// instances of a and b.
    ///
    /// # Errors
    /// `gre up` fails on either side.
    pub fn tunnel(&mut self, key: Option<u32>) -> Result<(String, String)> {
        let ca = Self::site_config(A_UNDERLAY, B_UNDERLAY, key, A_OVERLAY4, A_OVERLAY6);
        let cb = Self::site_config(B_UNDERLAY, A_UNDERLAY, key, B_OVERLAY4, B_OVERLAY6);
        let (a, b) = (self.a.clone(), self.b.clone());
        let ia = self.lab.gre_up(&a, "a", &ca)?;
        let ib = self.lab.gre_up(&b, "b", &cb)?;
        Ok((ia, ib))
    }
}

/// Two sites with a LAN host behind each: `host_a` (203.0.113.66/26) on a's `lan0`
/// (203.0.113.65/26), `host_b` (203.0.113.130/26) on b's `lan0` (203.0.113.129/26). The sites
/// route; the veth ends that receive redirected frames run GRO, which gives them the NAPI context
/// XDP redirects into veth need.
pub struct SitesWithLans {
    pub sites: TwoSites,
    pub host_a: String,
    pub host_b: String,
}

pub const HOST_A: &str = "203.0.113.66";
pub const HOST_B: &str = "203.0.113.130";

impl SitesWithLans {
    /// # Errors
    /// A step fails (what was made is removed).
    pub fn new(tag: &str) -> Result<Self> {
        let mut sites = TwoSites::new(tag)?;
        let host_a = sites.lab.add_ns("ha")?;
        let host_b = sites.lab.add_ns("hb")?;
        let (a, b, wan) = (sites.a.clone(), sites.b.clone(), sites.wan.clone());
        sites.lab.link((&host_a, "eth0", "203.0.113.66/26"), (&a, "lan0", "203.0.113.65/26"))?;
        sites.lab.link((&host_b, "eth0", "203.0.113.130/26"), (&b, "lan0", "203.0.113.129/26"))?;
        sh(&["ip", "-n", &host_a, "route", "add", "default", "via", "203.0.113.65"])?;
        sh(&["ip", "-n", &host_b, "route", "add", "default", "via", "203.0.113.129"])?;
        for ns in [&a, &b] {
            ns_sh(ns, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        }
        for (ns, ifname) in [(&host_a, "eth0"), (&host_b, "eth0"), (&wan, "a0"), (&wan, "b0")] {
            ns_sh(ns, &["ethtool", "-K", ifname, "gro", "on"])?;
        }
        Ok(Self { sites, host_a, host_b })
    }

    /// Brings up the tunnel with the LAN ports and a route to the other LAN on each site.
    ///
    /// # Errors
    /// `gre up` fails.
    pub fn tunnel(&mut self, key: u32) -> Result<(String, String)> {
        let conf = |local: &str, remote: &str, o4: &str, o6: &str, lan: &str| {
            format!(
                "[[interface]]\nname = \"eth0\"\n\n[[interface]]\nname = \"lan0\"\nrole = \"lan\"\n\n\
                 [[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nkey = {key}\n\
                 address = [\"{o4}/30\", \"{o6}/64\"]\n\n[[route]]\nprefix = \"{lan}\"\ntunnel = \"gre0\"\n"
            )
        };
        let (a, b) = (self.sites.a.clone(), self.sites.b.clone());
        let ia = self.sites.lab.gre_up(&a, "a", &conf(A_UNDERLAY, B_UNDERLAY, A_OVERLAY4, A_OVERLAY6, "203.0.113.128/26"))?;
        let ib = self.sites.lab.gre_up(&b, "b", &conf(B_UNDERLAY, A_UNDERLAY, B_OVERLAY4, B_OVERLAY6, "203.0.113.64/26"))?;
        Ok((ia, ib))
    }
}

/// A hub and `n` spokes behind one underlay router, each on its own /28 of 198.51.100.0/24:
/// the hub at 198.51.100.10, spoke `i` (from 1) at 198.51.100.(16 i + 1). Overlay 203.0.113.0/24:
/// the hub .254, spoke `i` .`i`.
pub struct HubAndSpokes {
    pub lab: Lab,
    pub wan: String,
    pub hub: String,
    pub spokes: Vec<String>,
}

pub const HUB_NBMA: &str = "198.51.100.10";
pub const HUB_OVERLAY: &str = "203.0.113.254";
/// The hub's NBMA address on an IPv6 underlay ([`HubAndSpokes::add_ipv6`]).
pub const HUB_NBMA6: &str = "2001:db8:ff::10";

impl HubAndSpokes {
    /// # Errors
    /// A step fails (what was made is removed).
    pub fn new(tag: &str, n: u8) -> Result<Self> {
        let mut lab = Lab::new(tag);
        let wan = lab.add_ns("wan")?;
        let hub = lab.add_ns("hub")?;
        lab.link((&hub, "eth0", "198.51.100.10/28"), (&wan, "h0", "198.51.100.14/28"))?;
        sh(&["ip", "-n", &hub, "route", "add", "default", "via", "198.51.100.14"])?;
        let mut spokes = Vec::new();
        for i in 1..=n {
            let ns = lab.add_ns(&format!("s{i}"))?;
            let base = 16 * u32::from(i);
            lab.link((&ns, "eth0", &format!("198.51.100.{}/28", base + 1)), (&wan, &format!("s{i}"), &format!("198.51.100.{}/28", base + 14)))?;
            sh(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("198.51.100.{}", base + 14)])?;
            spokes.push(ns);
        }
        ns_sh(&wan, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // The hub routes spoke-to-spoke traffic back into the tunnel, without ICMP redirects.
        for key in ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"] {
            ns_sh(&hub, &["sysctl", "-q", "-w", key])?;
        }
        Ok(Self { lab, wan, hub, spokes })
    }

    /// Gives the underlay IPv6 as well: the hub 2001:db8:ff::10/64, spoke `i` 2001:db8:`i`::1/64,
    /// the router ::ffff on each link, default routes through it.
    ///
    /// # Errors
    /// A step fails.
    pub fn add_ipv6(&self) -> Result<()> {
        let mut links = vec![(self.hub.as_str(), "h0", "2001:db8:ff::")];
        let prefixes: Vec<String> = (1..=self.spokes.len()).map(|i| format!("2001:db8:{i}::")).collect();
        for (i, ns) in self.spokes.iter().enumerate() {
            links.push((ns.as_str(), ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"][i], &prefixes[i]));
        }
        for (ns, wan_side, prefix) in links {
            let host = if ns == self.hub { HUB_NBMA6.to_string() } else { format!("{prefix}1") };
            sh(&["ip", "-n", ns, "addr", "add", &format!("{host}/64"), "dev", "eth0", "nodad"])?;
            sh(&["ip", "-n", &self.wan, "addr", "add", &format!("{prefix}ffff/64"), "dev", wan_side, "nodad"])?;
            sh(&["ip", "-n", ns, "-6", "route", "add", "default", "via", &format!("{prefix}ffff")])?;
        }
        ns_sh(&self.wan, &["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// The IPv6 NBMA address of spoke `i` (from 1), after [`HubAndSpokes::add_ipv6`].
    #[must_use]
    pub fn spoke_nbma6(i: u8) -> String {
        format!("2001:db8:{i}::1")
    }

    /// The NBMA address of spoke `i` (from 1).
    #[must_use]
    pub fn spoke_nbma(i: u8) -> String {
        format!("198.51.100.{}", 16 * u32::from(i) + 1)
    }

    /// The overlay address of spoke `i` (from 1).
    #[must_use]
    pub fn spoke_overlay(i: u8) -> String {
        format!("203.0.113.{i}")
    }

    /// A multipoint tunnel's configuration: key 100, the overlay /24, `extra` TOML lines in the
    /// tunnel, and static peers (overlay, NBMA).
    #[must_use]
    /// Brings up the hub's instance (its tunnel with `hub_extra`) and one on each spoke
    /// (`spoke_extra` in its tunnel, the hub as its static peer, `spoke_tail` after: routes…):
    /// the hub's instance, and each spoke's namespace and instance.
    ///
    /// # Errors
    /// An instance does not come up.
    pub fn up(&mut self, hub_extra: &str, spoke_extra: &str, spoke_tail: &str) -> Result<(String, Vec<(String, String)>)> {
        let hub = self.lab.gre_up(&self.hub.clone(), "hub", &Self::config(HUB_NBMA, HUB_OVERLAY, hub_extra, &[]))?;
        let mut spokes = Vec::new();
        for (i, ns) in (1..).zip(self.spokes.clone()) {
            let conf = Self::config(&Self::spoke_nbma(i), &Self::spoke_overlay(i), spoke_extra, &[(HUB_OVERLAY, HUB_NBMA)]) + spoke_tail;
            let instance = self.lab.gre_up(&ns, &format!("s{i}"), &conf)?;
            spokes.push((ns, instance));
        }
        Ok((hub, spokes))
    }

    pub fn config(local: &str, overlay: &str, extra: &str, peers: &[(&str, &str)]) -> String {
        let mut c = format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nkey = 100\n{extra}address = [\"{overlay}/24\"]\n"
        );
        for (overlay, nbma) in peers {
            c += &format!("\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{overlay}\"\nnbma = \"{nbma}\"\n");
        }
        c
    }
}
