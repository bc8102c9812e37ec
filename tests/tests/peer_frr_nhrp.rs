//! Our NHRP against FRR's nhrpd (Debian bookworm's FRR 8.4 in a guest running Debian's 6.1 kernel,
//! whose ip_gre it manages): an FRR hub with two of our spokes — phase 2 (FRR forwards a
//! resolution to its target, which answers the requester directly) and phase 3 (FRR's redirect:
//! a Traffic Indication, our resolution, our shortcut) — our hub with an FRR spoke (our Traffic
//! Indication, FRR's shortcut to our other spoke), registrations expiring when either side stops,
//! a registration without our password refused, and uniqueness both ways (FRR's claim of an
//! address our spoke holds refused with code 14; FRR's unique binding kept against our spoke's). Each case pings over the overlay with exact
//! counts, reads what crossed the bridge with tshark (no fault, every NHRP checksum good) and
//! FRR's log (nothing of ours refused); once spokes have resolved each other, every ping crosses
//! between their NBMA addresses and none reaches the hub. One guest serves every case.
//!
//! ```text
//!   namespace "ours" (a)  198.51.100.1 ─┐
//!   namespace "b"         198.51.100.3 ─┴─ bridge ─ guest (FRR) 198.51.100.2
//! ```
//!
//! Overlay 203.0.113.0/24, GRE key 100. With the FRR hub: hub .254, our spokes a = .1, b = .2.
//! With our hub (in a): hub .254, our spoke b = .2, the FRR spoke .1.

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gre_tests::{
    capture::{Capture, field},
    gre,
    peers::{GUEST, LinuxPeer, OURS},
    privilege,
    topology::{HubAndSpokes, ns_sh},
    traffic,
    vm::Kernel,
};
use serde_json::Value;

const A_NBMA: &str = OURS;
const B_NBMA: &str = "198.51.100.3";
const FRR_NBMA: &str = GUEST;
/// The NAT device's address on the underlay, and that of the spoke behind it.
const NAT_PUBLIC: &str = "198.51.100.4";
const NAT_INSIDE: &str = "198.51.100.130";
const HUB: &str = "203.0.113.254";
const SPOKE1: &str = "203.0.113.1";
const SPOKE2: &str = "203.0.113.2";
/// Short enough to keep the expiry cases brief; both implementations register every third of it.
const HOLDTIME: u64 = 15;
const PINGS: u32 = 5;
/// The GRE key of [`HubAndSpokes::config`], which our nodes' configurations come from.
const KEY: u32 = 100;
/// FRR's configuration in the guest (its /etc and /run are its own).
const FRR_ETC: &str = "/etc/frr/test";

/// The guest, once: FRR's daemons run as root, which must be in FRR's vty group; vtysh lets root
/// in without PAM; the hub routes spoke to spoke back into gre1 without ICMP redirects.
fn guest_prep() -> String {
    format!(
        "getent group frr > /dev/null || groupadd -r frr\ngetent group frrvty > /dev/null || groupadd -r frrvty\n\
         usermod -a -G frr,frrvty root\nmkdir -p /run/frr {FRR_ETC}\n\
         printf 'username root nopassword\\n' > /etc/frr/vtysh.conf\nprintf 'hostname frr\\n' > {FRR_ETC}/zebra.conf\n\
         sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0\n\
         modprobe -a ip_gre\n"
    )
}

/// Stops FRR's daemons (SIGTERM, as an operator would) and removes what a case left in the guest.
const FRR_STOP: &str = "
for d in nhrpd zebra; do
    f=/run/frr/$d.pid
    [ -f $f ] || continue
    pid=$(cat $f)
    kill $pid 2> /dev/null || true
    for i in $(seq 100); do kill -0 $pid 2> /dev/null || break; sleep 0.1; done
    rm -f $f
done
iptables-legacy -F FORWARD 2> /dev/null || true
ip link del gre1 2> /dev/null || true
";

/// Phase 3 on FRR's hub: traffic routed from gre1 back into gre1 goes to nhrpd over NFLOG, which
/// sends the source a Traffic Indication. FRR's documented rule masks both ends to /24, so all the
/// spokes of a /24 share four indications a minute; /32 masks give each pair its own.
const REDIRECT_RULE: &str = "iptables-legacy -A FORWARD -i gre1 -o gre1 -m hashlimit --hashlimit-upto 4/minute \
     --hashlimit-burst 1 --hashlimit-mode srcip,dstip --hashlimit-srcmask 32 --hashlimit-dstmask 32 \
     --hashlimit-name loglimit-0 -j NFLOG --nflog-group 1 --nflog-size 128";

/// Who pings.
#[derive(Clone, Copy)]
enum Pinger<'a> {
    Ours(&'a str),
    Guest,
}

/// One NHRP message as tshark reads it (for an Error Indication, the first of its two headers).
#[derive(Debug)]
struct Nhrp {
    from: String,
    to: String,
    kind: String,
    src_proto: String,
    dst_proto: String,
    client_nbma: Vec<String>,
    error: Vec<String>,
}

/// The guest, the underlay and what the running case brought up (the daemons go first, before
/// the instances they run on, when a panic drops it all).
struct World {
    /// Our daemons and instances of the running case; [`World::reset`] takes them down.
    daemons: Vec<gre::Daemon>,
    instances: Vec<(String, String)>,
    p: LinuxPeer,
    /// Our second node.
    b: String,
    /// Our node behind the NAT device.
    c: String,
    /// Arguments our daemons get (the running case's).
    daemon_args: Vec<&'static str>,
}

impl World {
    fn new(kernel: &Kernel) -> Result<Self> {
        let mut p = LinuxPeer::new("fn", kernel)?;
        let (b, _) = p.add_ours("b", B_NBMA)?;
        let c = behind_nat(&mut p)?;
        // Our hub (in a) routes spoke to spoke back into the tunnel, without ICMP redirects.
        ns_sh(&p.ours, &["sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0"])?;
        p.guest.ok(&guest_prep())?;
        Ok(Self { daemons: Vec::new(), instances: Vec::new(), p, b, c, daemon_args: Vec::new() })
    }

    fn a(&self) -> String {
        self.p.ours.clone()
    }

    /// FRR's log (`debug nhrp all`), in the directory the guest shares with us.
    fn log(&self) -> std::path::PathBuf {
        self.p.guest.shared().join("nhrpd.log")
    }

    /// Brings up one of our instances in `ns` and starts its daemon.
    fn ours(&mut self, ns: &str, short: &str, config: &str) -> Result<String> {
        let instance = self.p.lab.gre_up(ns, short, config)?;
        self.instances.push((ns.to_string(), instance.clone()));
        self.daemons.push(gre::Daemon::start_args(ns, &instance, &self.daemon_args));
        Ok(instance)
    }

    /// Our hub in a: NHS with our holding time, `nhrp` options added to its role.
    fn our_hub(&mut self, nhrp: &str) -> Result<String> {
        let a = self.a();
        let config = HubAndSpokes::config(A_NBMA, HUB, &format!("nhrp = {{ role = \"nhs\", holdtime = {HOLDTIME}{nhrp} }}\n"), &[]);
        self.ours(&a, "hub", &config)
    }

    /// One of our spokes: its NHS `HUB` at `hub_nbma`; phase 3 routes the overlay through it.
    fn our_spoke(&mut self, ns: &str, local: &str, overlay: &str, hub_nbma: &str, phase3: bool, nhrp: &str) -> Result<String> {
        let extra = format!("nhs = \"{HUB}\"\nnhrp = {{ role = \"nhc\", holdtime = {HOLDTIME}{nhrp} }}\n");
        let mut config = HubAndSpokes::config(local, overlay, &extra, &[(HUB, hub_nbma)]);
        if phase3 {
            write!(config, "\n[[route]]\nprefix = \"203.0.113.0/24\"\ntunnel = \"gre0\"\nvia = \"{HUB}\"\n")?;
        }
        let short = if ns == self.b {
            "s2"
        } else if ns == self.c {
            "s3"
        } else {
            "s1"
        };
        self.ours(ns, short, &config)
    }

    /// Our two spokes (a = spoke 1, b = spoke 2) on the FRR hub, registered at both ends.
    fn our_spokes(&mut self, phase3: bool) -> Result<[(String, String); 2]> {
        let (a, b) = (self.a(), self.b.clone());
        let i1 = self.our_spoke(&a, A_NBMA, SPOKE1, FRR_NBMA, phase3, "")?;
        let i2 = self.our_spoke(&b, B_NBMA, SPOKE2, FRR_NBMA, phase3, "")?;
        self.registered_at_frr(&[(SPOKE1, A_NBMA), (SPOKE2, B_NBMA)])?;
        let up = serde_json::json!([{ "tunnel": "gre0", "overlay": HUB, "nbma": FRR_NBMA, "priority": 0, "current": true, "state": "up" }]);
        for (ns, i) in [(&a, &i1), (&b, &i2)] {
            wait("our spoke to see FRR's hub up", 10, || Ok(serde_json::from_str::<Value>(&gre::run(ns, i, &["show", "nhs", "-j"])?)? == up))?;
        }
        Ok([(a, i1), (b, i2)])
    }

    /// Starts zebra and nhrpd with gre1 made by `gre1` (a script) and `config` (nhrpd's, after
    /// the logging lines); returns once nhrpd has taken gre1's address as its own.
    fn frr_start(&mut self, gre1: &str, config: &str) -> Result<()> {
        let log = self.log();
        // Each case reads the log from its own start.
        let _ = std::fs::remove_file(&log);
        self.p.guest.ok_timeout(
            &format!(
                "{gre1}\ncat > {FRR_ETC}/nhrpd.conf <<'EOF'\nhostname frr\nlog file {} debugging\ndebug nhrp all\n{config}EOF\n\
                 /usr/lib/frr/zebra -d -u root -g root -f {FRR_ETC}/zebra.conf -i /run/frr/zebra.pid\n\
                 for i in $(seq 100); do [ -S /run/frr/zserv.api ] && break; sleep 0.1; done\n\
                 /usr/lib/frr/nhrpd -d -u root -g root -f {FRR_ETC}/nhrpd.conf -i /run/frr/nhrpd.pid\n\
                 for i in $(seq 100); do vtysh -c 'show ip nhrp cache json' 2> /dev/null | grep -q '\"type\":\"local\"' && exit 0; sleep 0.2; done\n\
                 echo 'nhrpd did not take up gre1' >&2; exit 1",
                log.display()
            ),
            Duration::from_mins(1),
        )?;
        Ok(())
    }

    /// FRR as the hub (NHS): gre1 holds the hub's /32 and routes the overlay; with `redirect`,
    /// phase 3 (Traffic Indications from NFLOG).
    fn frr_hub(&mut self, redirect: bool) -> Result<()> {
        let mut gre1 = format!(
            "ip link add gre1 type gre local {FRR_NBMA} key {KEY} ttl 64\nip addr add {HUB}/32 dev gre1\nip link set gre1 up\n\
             ip route add 203.0.113.0/24 dev gre1\n"
        );
        let (mut global, mut interface) = (String::new(), String::new());
        if redirect {
            gre1 += REDIRECT_RULE;
            global = "nhrp nflog-group 1\n".to_string();
            interface = " ip nhrp redirect\n".to_string();
        }
        let config = format!("{global}interface gre1\n ip nhrp network-id 1\n ip nhrp holdtime {HOLDTIME}\n ip nhrp shortcut\n{interface}");
        self.frr_start(&gre1, &config)
    }

    /// FRR as a spoke of our hub in a: its /32 on gre1, the other spokes through the hub (FRR
    /// resolves only when a Traffic Indication asks it to; the shortcut is more specific).
    fn frr_spoke(&mut self) -> Result<()> {
        let gre1 = format!(
            "ip link add gre1 type gre local {FRR_NBMA} key {KEY} ttl 64\nip addr add {SPOKE1}/32 dev gre1\nip link set gre1 up\n\
             ip route add 203.0.113.0/24 via {HUB} dev gre1 onlink\n"
        );
        let config = format!("interface gre1\n ip nhrp network-id 1\n ip nhrp holdtime {HOLDTIME}\n ip nhrp nhs {HUB} nbma {A_NBMA}\n ip nhrp shortcut\n");
        self.frr_start(&gre1, &config)
    }

    /// FRR as a spoke that knows only its hub's NBMA address (`ip nhrp nhs dynamic nbma …`): it
    /// learns the hub's overlay address from the Registration Reply.
    fn frr_spoke_dynamic(&mut self) -> Result<()> {
        let gre1 = format!(
            "ip link add gre1 type gre local {FRR_NBMA} key {KEY} ttl 64\nip addr add {SPOKE1}/32 dev gre1\nip link set gre1 up\n\
             ip route add 203.0.113.0/24 dev gre1\n"
        );
        let config = format!("interface gre1\n ip nhrp network-id 1\n ip nhrp holdtime {HOLDTIME}\n ip nhrp nhs dynamic nbma {A_NBMA}\n ip nhrp shortcut\n");
        self.frr_start(&gre1, &config)
    }

    /// The rows of a `show … json` command of FRR's.
    fn frr_table(&mut self, command: &str) -> Result<Vec<Value>> {
        let out = self.p.guest.run_timeout(&format!("vtysh -c '{command} json'"), Duration::from_secs(30))?;
        // Some print a line of text before the JSON, and exit non-zero on an empty table.
        let at = out.stdout.find(['{', '[']).with_context(|| format!("{command} json printed {:?} {:?}", out.stdout, out.stderr))?;
        let v: Value = serde_json::from_str(&out.stdout[at..]).with_context(|| format!("{command} json printed {:?}", out.stdout))?;
        Ok(v.get("table").unwrap_or(&v).as_array().cloned().unwrap_or_default())
    }

    /// FRR's cache entry for `protocol`: (type, NBMA address).
    fn frr_entry(&mut self, protocol: &str) -> Result<Option<(String, String)>> {
        let rows = self.frr_table("show ip nhrp cache")?;
        Ok(rows.iter().find(|r| r["protocol"] == protocol).map(|r| (text(&r["type"]), text(&r["nbma"]))))
    }

    fn registered_at_frr(&mut self, spokes: &[(&str, &str)]) -> Result<()> {
        for (overlay, nbma) in spokes {
            wait(&format!("FRR's hub to register {overlay}"), 15, || Ok(self.frr_entry(overlay)? == Some(("dynamic".to_string(), (*nbma).to_string()))))?;
        }
        Ok(())
    }

    /// Pings `count` times; fails unless every reply came back.
    fn ping(&mut self, from: Pinger<'_>, dst: &str, count: u32) -> Result<()> {
        match from {
            Pinger::Ours(ns) => traffic::ping(ns, dst, count).map(|_| ()),
            Pinger::Guest => self.p.guest_ping(dst, count),
        }
    }

    /// Two pings that must both go unanswered (a destination nobody knows the way to).
    fn unanswered(&mut self, from: Pinger<'_>, dst: &str) -> Result<()> {
        let out = match from {
            Pinger::Ours(ns) => {
                let out = std::process::Command::new("ip").args(["netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", dst]).output()?;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Pinger::Guest => self.p.guest.run_timeout(&format!("ping -c 2 -i 0.2 -W 1 {dst}"), Duration::from_secs(30))?.stdout,
        };
        ensure!(out.contains("2 packets transmitted, 0 received"), "ping {dst} should have gone unanswered:\n{out}");
        Ok(())
    }

    /// [`PINGS`] pings from `from` to `dst` once both ends know each other: on the source's port
    /// of the bridge every echo and every reply crosses between the two NBMA addresses `ends`,
    /// and none reaches the hub's port; tshark finds no fault at either.
    fn direct(&mut self, from: Pinger<'_>, dst: &str, ends: (&str, &str), source_port: &str, hub_port: &str) -> Result<()> {
        let sw = self.p.sw.clone();
        let mut at_source = Capture::start(&sw, source_port, "ip proto 47");
        let mut at_hub = Capture::start(&sw, hub_port, "ip proto 47");
        self.ping(from, dst, PINGS)?;
        let flows = icmp_flows(&mut at_source);
        let n = |a: &str, b: &str| flows.iter().filter(|(s, d)| s == a && d == b).count();
        let pings = usize::try_from(PINGS)?;
        ensure!(
            (n(ends.0, ends.1), n(ends.1, ends.0), flows.len()) == (pings, pings, 2 * pings),
            "{PINGS} echoes and replies between {} and {} expected, the source's port saw {flows:?}",
            ends.0,
            ends.1
        );
        let relayed = icmp_flows(&mut at_hub);
        ensure!(relayed.is_empty(), "the hub's port carried pings: {relayed:?}");
        for cap in [&mut at_source, &mut at_hub] {
            let faults = cap.faults();
            ensure!(faults.is_empty(), "tshark: {faults:?}");
        }
        Ok(())
    }

    /// Nothing we sent was dropped by FRR as malformed or unforwardable: nhrpd logs each such
    /// packet (`From NBMA: error: WHY`, `FWD-FAIL`).
    fn frr_refused_nothing(&self) -> Result<()> {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let refused: Vec<&str> = log.lines().filter(|l| l.contains(": error: ") || l.contains("FWD-FAIL")).collect();
        ensure!(refused.is_empty(), "FRR refused what we sent:\n{}", refused.join("\n"));
        Ok(())
    }

    /// What to read when a case fails: FRR's tables and log, our instances, the guest's console.
    fn report(&mut self) {
        let frr = "vtysh -c 'show ip nhrp cache' -c 'show ip nhrp nhs' -c 'show ip nhrp shortcut' -c 'show dmvpn'\n\
                   ip route; ip neigh show dev gre1; iptables-legacy -vnL FORWARD";
        match self.p.guest.run_timeout(frr, Duration::from_secs(30)) {
            Ok(out) => eprintln!("--- FRR\n{}{}", out.stdout, out.stderr),
            Err(e) => eprintln!("--- FRR: {e:#}"),
        }
        // Without strongSwan nhrpd logs a VICI error every 2 s: left out.
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("VICI")).collect();
        eprintln!("--- FRR's log (debug nhrp all), the last 80 lines\n{}", lines[lines.len().saturating_sub(80)..].join("\n"));
        for (ns, i) in &self.instances {
            eprintln!("--- ours in {ns}\n{}", gre::run(ns, i, &["show"]).unwrap_or_else(|e| format!("{e:#}")));
        }
        eprintln!("--- guest console\n{}", self.p.guest.console());
    }

    /// Takes down what the case brought up, whether it passed or not: our daemons (SIGTERM) and
    /// instances, FRR's daemons and gre1.
    fn reset(&mut self) -> Result<()> {
        self.daemons.clear();
        self.daemon_args.clear();
        let mut result = Ok(());
        for (ns, i) in std::mem::take(&mut self.instances) {
            if let Err(e) = self.p.lab.gre_down(&ns, &i) {
                result = Err(e);
            }
        }
        self.p.guest.ok_timeout(FRR_STOP, Duration::from_mins(1))?;
        result
    }
}

/// A NAT device on the underlay (namespace n at [`NAT_PUBLIC`], nftables masquerade) with our
/// node c behind it at [`NAT_INSIDE`]. GRE has no ports: the device hands arriving GRE to its one
/// inside host, as a home router's DMZ does.
fn behind_nat(p: &mut LinuxPeer) -> Result<String> {
    let (n, _) = p.add_ours("n", NAT_PUBLIC)?;
    let c = p.lab.add_ns("c")?;
    ns_sh(&n, &["ip", "link", "add", "in0", "type", "veth", "peer", "name", "eth0", "netns", &c])?;
    ns_sh(&n, &["ip", "addr", "add", "198.51.100.129/25", "dev", "in0"])?;
    ns_sh(&n, &["ip", "link", "set", "in0", "up"])?;
    ns_sh(&n, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    ns_sh(&c, &["ip", "addr", "add", &format!("{NAT_INSIDE}/25"), "dev", "eth0"])?;
    ns_sh(&c, &["ip", "link", "set", "eth0", "up"])?;
    ns_sh(&c, &["ip", "route", "add", "default", "via", "198.51.100.129"])?;
    for (ns, port) in [(&n, "in0"), (&c, "eth0")] {
        ns_sh(ns, &["ethtool", "-K", port, "tx", "off"])?;
    }
    ns_sh(&n, &["nft", "add", "table", "ip", "nat"])?;
    ns_sh(&n, &["nft", "add chain ip nat out { type nat hook postrouting priority srcnat; }"])?;
    ns_sh(&n, &["nft", "add rule ip nat out oifname eth0 masquerade"])?;
    ns_sh(&n, &["nft", "add chain ip nat in { type nat hook prerouting priority dstnat; }"])?;
    ns_sh(&n, &["nft", &format!("add rule ip nat in iifname eth0 ip protocol gre dnat to {NAT_INSIDE}")])?;
    ns_sh(&c, &["ping", "-c", "1", "-W", "5", GUEST])?;
    Ok(c)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Polls `ok` every 250 ms for up to `secs` seconds.
fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok()? {
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for {what}");
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The outer (source, destination) of each GRE frame carrying ICMP.
fn icmp_flows(cap: &mut Capture) -> Vec<(String, String)> {
    let first = |p: &Value, f: &str| field(p, f).first().cloned().unwrap_or_default();
    cap.decode("gre && icmp", &["ip.src", "ip.dst"]).iter().map(|p| (first(p, "ip.src"), first(p, "ip.dst"))).collect()
}

/// The NHRP in a capture, in which tshark must find no fault and every NHRP checksum good.
fn nhrp_messages(cap: &mut Capture) -> Result<Vec<Nhrp>> {
    let fields = [
        "ip.src",
        "ip.dst",
        "nhrp.hdr.op.type",
        "nhrp.src.prot.addr",
        "nhrp.dst.prot.addr",
        "nhrp.client.nbma.addr",
        "nhrp.err.code",
        "nhrp.hdr.chksum.status",
    ];
    let mut out = Vec::new();
    for p in cap.decode("nhrp", &fields) {
        let first = |f: &str| field(&p, f).first().cloned().unwrap_or_default();
        let sums = field(&p, "nhrp.hdr.chksum.status");
        ensure!(!sums.is_empty() && sums.iter().all(|s| s == "1"), "an NHRP checksum tshark did not verify or does not find good: {p}");
        out.push(Nhrp {
            from: first("ip.src"),
            to: first("ip.dst"),
            kind: first("nhrp.hdr.op.type"),
            src_proto: first("nhrp.src.prot.addr"),
            dst_proto: first("nhrp.dst.prot.addr"),
            client_nbma: field(&p, "nhrp.client.nbma.addr"),
            error: field(&p, "nhrp.err.code"),
        });
    }
    let faults = cap.faults();
    ensure!(faults.is_empty(), "tshark: {faults:?}");
    Ok(out)
}

/// The first message of `kind` from NBMA address `from` to `to` about `src` → `dst` (protocol
/// addresses), or an error listing what there was.
fn find<'a>(msgs: &'a [Nhrp], kind: &str, (from, to): (&str, &str), (src, dst): (&str, &str)) -> Result<&'a Nhrp> {
    msgs.iter()
        .find(|m| m.kind == kind && m.from == from && m.to == to && m.src_proto == src && m.dst_proto == dst)
        .with_context(|| format!("no NHRP type {kind} from {from} to {to} about {src} > {dst} in {msgs:#?}"))
}

fn peer_nbma(ns: &str, instance: &str, overlay: &str) -> Result<Option<String>> {
    let v = gre::show(ns, instance)?;
    Ok(v["peers"].as_array().and_then(|l| l.iter().find(|p| p["overlay"] == overlay)).map(|p| text(&p["nbma"])))
}

fn has_route(ns: &str, instance: &str, prefix: &str, via: &str) -> Result<bool> {
    let v = gre::show(ns, instance)?;
    Ok(v["routes"].as_array().is_some_and(|l| l.iter().any(|r| r["prefix"] == prefix && r["via"] == via)))
}

fn nhrp_count(ns: &str, instance: &str, dir: &str, kind: &str) -> Result<u64> {
    gre::show(ns, instance)?["tunnels"][0][dir][kind].as_u64().with_context(|| format!("{dir}.{kind}"))
}

/// Phase 2 on an FRR hub: spoke 1's resolution of spoke 2 goes to the hub, which forwards it to
/// spoke 2 (FRR forwards what it has a binding for rather than answering); spoke 2 answers spoke 1
/// directly, and from then on the spokes talk directly.
fn frr_hub_phase2(w: &mut World) -> Result<()> {
    w.frr_hub(false)?;
    let [(a, i1), (b, i2)] = w.our_spokes(false)?;
    let dmvpn = w.frr_table("show dmvpn")?;
    for nbma in [A_NBMA, B_NBMA] {
        ensure!(dmvpn.iter().any(|r| r["src"] == FRR_NBMA && r["dst"] == nbma), "FRR's show dmvpn lacks {nbma}: {dmvpn:?}");
    }
    // The hub reaches each spoke by what they registered.
    w.ping(Pinger::Guest, SPOKE1, 3)?;
    w.ping(Pinger::Guest, SPOKE2, 3)?;
    let sw = w.p.sw.clone();
    let mut at_hub = Capture::start(&sw, "vmtap0", "ip proto 47");
    let mut at_s1 = Capture::start(&sw, "up0", "ip proto 47");
    // The first packets cross the hub while the spokes resolve each other.
    w.ping(Pinger::Ours(&a), SPOKE2, 3)?;
    wait("spoke 1 to learn spoke 2", 10, || Ok(peer_nbma(&a, &i1, SPOKE2)?.as_deref() == Some(B_NBMA)))?;
    wait("spoke 2 to learn spoke 1", 10, || Ok(peer_nbma(&b, &i2, SPOKE1)?.as_deref() == Some(A_NBMA)))?;
    ensure!(!icmp_flows(&mut at_hub).is_empty(), "the first pings did not cross the hub");
    let hub = nhrp_messages(&mut at_hub)?;
    find(&hub, "1", (A_NBMA, FRR_NBMA), (SPOKE1, SPOKE2))?;
    find(&hub, "1", (FRR_NBMA, B_NBMA), (SPOKE1, SPOKE2)).context("FRR forwards the request to its target")?;
    ensure!(!hub.iter().any(|m| m.kind == "2" && m.from == FRR_NBMA), "FRR answered a resolution itself: {hub:#?}");
    let s1 = nhrp_messages(&mut at_s1)?;
    let reply = find(&s1, "2", (B_NBMA, A_NBMA), (SPOKE1, SPOKE2)).context("spoke 2 answers spoke 1 directly")?;
    // The answer's first CIE (then those of its extensions: responder, transit records).
    ensure!(reply.client_nbma.first().map(String::as_str) == Some(B_NBMA), "{reply:?}");
    w.direct(Pinger::Ours(&a), SPOKE2, (A_NBMA, B_NBMA), "up0", "vmtap0")
}

/// Phase 3 on an FRR hub: the spokes route the overlay through the hub; FRR, relaying spoke 1's
/// packets to spoke 2 (and the replies), sends each a Traffic Indication; each resolves the other
/// (FRR forwards the request to the target, which answers directly) and takes a /32 shortcut.
fn frr_hub_phase3(w: &mut World) -> Result<()> {
    w.frr_hub(true)?;
    let [(a, i1), (b, i2)] = w.our_spokes(true)?;
    let sw = w.p.sw.clone();
    let mut at_hub = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.ping(Pinger::Ours(&a), SPOKE2, 3)?;
    wait("spoke 1's shortcut to spoke 2", 10, || has_route(&a, &i1, "203.0.113.2/32", SPOKE2))?;
    wait("spoke 2's shortcut to spoke 1", 10, || has_route(&b, &i2, "203.0.113.1/32", SPOKE1))?;
    ensure!(!icmp_flows(&mut at_hub).is_empty(), "the first pings did not cross the hub");
    let hub = nhrp_messages(&mut at_hub)?;
    // FRR's indication names the source as its destination and carries the relayed packet.
    find(&hub, "8", (FRR_NBMA, A_NBMA), (HUB, SPOKE1)).context("FRR's Traffic Indication to spoke 1")?;
    find(&hub, "8", (FRR_NBMA, B_NBMA), (HUB, SPOKE2)).context("FRR's Traffic Indication to spoke 2")?;
    find(&hub, "1", (FRR_NBMA, B_NBMA), (SPOKE1, SPOKE2)).context("FRR forwards spoke 1's resolution")?;
    for (ns, i) in [(&a, &i1), (&b, &i2)] {
        ensure!(nhrp_count(ns, i, "nhrp_received", "traffic_indication")? >= 1, "{ns} counted no Traffic Indication");
    }
    w.direct(Pinger::Ours(&a), SPOKE2, (A_NBMA, B_NBMA), "up0", "vmtap0")
}

/// Our hub with an FRR spoke and one of ours: FRR registers; its packets to our spoke cross our
/// hub, which sends it a Traffic Indication; FRR (`ip nhrp shortcut`) resolves through our hub,
/// which passes the request to our spoke; our spoke answers FRR, which installs a shortcut
/// route, and our spoke, told likewise for its replies, one of its own.
fn our_hub_frr_spoke(w: &mut World) -> Result<()> {
    let a = w.a();
    let b = w.b.clone();
    let hub = w.our_hub("")?;
    let i2 = w.our_spoke(&b, B_NBMA, SPOKE2, A_NBMA, true, "")?;
    wait("our spoke's registration", 10, || Ok(peer_nbma(&a, &hub, SPOKE2)?.is_some()))?;
    // Our hub first: FRR's registration retries back off 1, 2, 4 … s.
    w.frr_spoke()?;
    wait("FRR's registration on our hub", 15, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA)))?;
    let listed = gre::show(&a, &hub)?["peers"].as_array().cloned().unwrap_or_default();
    let frr = listed.iter().find(|p| p["overlay"] == SPOKE1).context("FRR's peer")?;
    ensure!(frr["kind"] == "dynamic" && frr["expires_in"].as_u64().is_some_and(|s| s <= HOLDTIME), "FRR's registration: {frr}");
    wait("FRR to see its registration taken", 10, || Ok(w.frr_entry(HUB)? == Some(("nhs".to_string(), A_NBMA.to_string()))))?;
    w.ping(Pinger::Guest, HUB, 3)?;
    let sw = w.p.sw.clone();
    let mut at_frr = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.ping(Pinger::Guest, SPOKE2, 3)?;
    wait("FRR's shortcut to our spoke", 15, || {
        let rows = w.frr_table("show ip nhrp shortcut")?;
        Ok(rows.iter().any(|r| r["prefix"] == "203.0.113.2/32" && r["via"] == SPOKE2) && w.frr_entry(SPOKE2)?.is_some_and(|(_, nbma)| nbma == B_NBMA))
    })?;
    wait("our spoke's shortcut to FRR", 10, || has_route(&b, &i2, "203.0.113.1/32", SPOKE1))?;
    ensure!(icmp_flows(&mut at_frr).iter().any(|(s, d)| s == FRR_NBMA && d == A_NBMA), "the first pings did not cross our hub");
    let seen = nhrp_messages(&mut at_frr)?;
    find(&seen, "8", (A_NBMA, FRR_NBMA), (HUB, SPOKE1)).context("our Traffic Indication to FRR")?;
    find(&seen, "1", (FRR_NBMA, A_NBMA), (SPOKE1, SPOKE2)).context("FRR's resolution")?;
    // Our hub passes it on to our spoke (as FRR's and Cisco's phase 3 hubs do), which answers
    // FRR itself: the answer's first CIE (then those of its extensions: responder, transit
    // records) is our spoke's binding.
    ensure!(nhrp_count(&a, &hub, "nhrp_sent", "resolution_request")? >= 1, "our hub passed on no resolution");
    let reply = find(&seen, "2", (B_NBMA, FRR_NBMA), (SPOKE1, SPOKE2)).context("our spoke's answer to FRR")?;
    ensure!(reply.client_nbma.first().map(String::as_str) == Some(B_NBMA), "{reply:?}");
    // FRR's kernel now routes our spoke straight to it.
    let route = w.p.guest.ok(&format!("ip route show {SPOKE2}; ip neigh show {SPOKE2} dev gre1"))?;
    ensure!(route.contains("dev gre1 proto nhrp") && route.contains(&format!("lladdr {B_NBMA}")), "FRR's kernel: {route}");
    w.direct(Pinger::Guest, SPOKE2, (FRR_NBMA, B_NBMA), "vmtap0", "up0")
}

/// How long `overlay` outlives its registrar's stop: it must go within the holding time (plus a
/// tick), and not before the last registration's holding time could have run out — the holding
/// time, not a message, removed it.
fn expiry(what: &str, mut gone: impl FnMut() -> Result<bool>) -> Result<()> {
    let stopped = Instant::now();
    wait(what, HOLDTIME + 5, &mut gone)?;
    let after = stopped.elapsed();
    eprintln!("  {what}: {:.1} s after the stop", after.as_secs_f64());
    // The last registration was at most a third of the holding time before the stop (and a
    // second or two of timers on either side).
    ensure!(after >= Duration::from_secs(HOLDTIME - HOLDTIME / 3 - 2), "{what} after {after:?}: before its holding time ran out");
    Ok(())
}

/// Our spoke leaves for good on an FRR hub (`gre daemon --purge-on-exit`): its daemon withdraws
/// the registration with a Purge Request, which FRR 8.4 ignores, so FRR drops the entry when its
/// holding time runs out; then the hub cannot reach the spoke.
fn expiry_our_spoke_stops(w: &mut World) -> Result<()> {
    w.frr_hub(false)?;
    w.daemon_args = vec!["--purge-on-exit"];
    let a = w.a();
    let i1 = w.our_spoke(&a, A_NBMA, SPOKE1, FRR_NBMA, false, "")?;
    w.registered_at_frr(&[(SPOKE1, A_NBMA)])?;
    wait("our spoke to see its NHS up", 10, || Ok(gre::show(&a, &i1)?["tunnels"][0]["state"] == "up"))?;
    w.ping(Pinger::Guest, SPOKE1, 3)?;
    let sw = w.p.sw.clone();
    let mut at_s1 = Capture::start(&sw, "up0", "ip proto 47");
    w.daemons.clear();
    expiry("FRR to forget spoke 1", || Ok(w.frr_entry(SPOKE1)?.is_none()))?;
    let seen = nhrp_messages(&mut at_s1)?;
    find(&seen, "5", (A_NBMA, FRR_NBMA), (SPOKE1, HUB)).context("our spoke's Purge Request")?;
    w.unanswered(Pinger::Guest, SPOKE1)
}

/// An FRR spoke stops (nhrpd ends without a word: FRR sends no Purge Request): our hub forgets
/// it when its registration's holding time runs out.
fn expiry_frr_spoke_stops(w: &mut World) -> Result<()> {
    let a = w.a();
    let hub = w.our_hub("")?;
    w.frr_spoke()?;
    wait("FRR's registration on our hub", 15, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA)))?;
    w.ping(Pinger::Guest, HUB, 3)?;
    let sw = w.p.sw.clone();
    let mut at_frr = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.p.guest.ok("kill $(cat /run/frr/nhrpd.pid); rm /run/frr/nhrpd.pid")?;
    expiry("our hub to forget FRR", || Ok(peer_nbma(&a, &hub, SPOKE1)?.is_none()))?;
    let seen = nhrp_messages(&mut at_frr)?;
    ensure!(!seen.iter().any(|m| m.kind == "5"), "a Purge Request after all: {seen:#?}");
    w.unanswered(Pinger::Ours(&a), SPOKE1)
}

/// FRR's hub stops (nhrpd ends and answers no more registrations): our spoke counts its NHS
/// down when its last registration's holding time runs out.
fn expiry_frr_hub_stops(w: &mut World) -> Result<()> {
    w.frr_hub(false)?;
    let a = w.a();
    let i1 = w.our_spoke(&a, A_NBMA, SPOKE1, FRR_NBMA, false, "")?;
    w.registered_at_frr(&[(SPOKE1, A_NBMA)])?;
    let state = |i: &str| -> Result<Value> { Ok(gre::show(&a, i)?["tunnels"][0]["state"].clone()) };
    wait("our spoke to see its NHS up", 10, || Ok(state(&i1)? == "up"))?;
    w.ping(Pinger::Ours(&a), HUB, 3)?;
    w.p.guest.ok("kill $(cat /run/frr/nhrpd.pid); rm /run/frr/nhrpd.pid")?;
    // Down after three unanswered registrations (1 + 2 + 4 s after the first one that goes
    // unanswered, which is at most a third of the holding time after the stop), not after the
    // holding time.
    let stopped = Instant::now();
    wait("our spoke to count its NHS down", HOLDTIME / 3 + 10, || Ok(state(&i1)? == "down"))?;
    let after = stopped.elapsed();
    eprintln!("  our spoke counted FRR's hub down {:.1} s after the stop", after.as_secs_f64());
    ensure!(after >= Duration::from_secs(6), "down after {after:?}: before three registrations could go unanswered");
    Ok(())
}

/// Two hubs, one FRR's and one ours: our spoke registers with both (FRR's preferred), sends
/// through FRR's; FRR's nhrpd stops, and our spoke moves to our hub within its registration
/// timeout and reaches it.
fn two_hubs_frr_and_ours(w: &mut World) -> Result<()> {
    const OUR_HUB: &str = "203.0.113.253";
    w.frr_hub(false)?;
    let (a, b) = (w.a(), w.b.clone());
    let hub_config = HubAndSpokes::config(A_NBMA, OUR_HUB, &format!("nhrp = {{ role = \"nhs\", holdtime = {HOLDTIME} }}\n"), &[]);
    let hub = w.ours(&a, "hub", &hub_config)?;
    let spoke_nhrp = format!(
        "nhs = [{{ address = \"{HUB}\", priority = 1 }}, {{ address = \"{OUR_HUB}\", priority = 2 }}]\nnhrp = {{ role = \"nhc\", holdtime = {HOLDTIME} }}\n"
    );
    let spoke = w.ours(&b, "s2", &HubAndSpokes::config(B_NBMA, SPOKE2, &spoke_nhrp, &[(HUB, FRR_NBMA), (OUR_HUB, A_NBMA)]))?;
    w.registered_at_frr(&[(SPOKE2, B_NBMA)])?;
    wait("our spoke's registration on our hub", 10, || Ok(peer_nbma(&a, &hub, SPOKE2)?.as_deref() == Some(B_NBMA)))?;
    let nhs = |w: &World| -> Result<Vec<(String, String, bool)>> {
        let v: Value = serde_json::from_str(&gre::run(&w.b, &spoke, &["show", "nhs", "-j"])?)?;
        Ok(v.as_array().into_iter().flatten().map(|n| (text(&n["overlay"]), text(&n["state"]), n["current"] == true)).collect())
    };
    let both = vec![(HUB.to_string(), "up".to_string(), true), (OUR_HUB.to_string(), "up".to_string(), false)];
    wait("both hubs up, FRR's preferred", 10, || Ok(nhs(w)? == both))?;
    w.ping(Pinger::Ours(&b), HUB, 3)?;
    w.ping(Pinger::Ours(&b), OUR_HUB, 3)?;
    w.p.guest.ok("kill $(cat /run/frr/nhrpd.pid); rm /run/frr/nhrpd.pid")?;
    let moved = vec![(HUB.to_string(), "down".to_string(), false), (OUR_HUB.to_string(), "up".to_string(), true)];
    wait("our spoke to move to our hub", HOLDTIME / 3 + 10, || Ok(nhs(w)? == moved))?;
    ensure!(gre::show(&b, &spoke)?["tunnels"][0]["state"] == "up", "our spoke counts itself without an NHS");
    w.ping(Pinger::Ours(&b), OUR_HUB, 3)
}

/// Our hub with a password. FRR 8.4 has no `ip nhrp authentication` (no password to configure,
/// none sent, none checked), so the mismatch that can be tested is FRR's registration without
/// our password: our hub refuses it with an Error Indication (Authentication Failure), FRR
/// counts its registration failed, and our hub does not learn it; our spoke with the password
/// registers with the same hub.
fn wrong_password(w: &mut World) -> Result<()> {
    let (a, b) = (w.a(), w.b.clone());
    let hub = w.our_hub(", auth = \"dmvpn\"")?;
    w.our_spoke(&b, B_NBMA, SPOKE2, A_NBMA, false, ", auth = \"dmvpn\"")?;
    wait("our spoke's registration", 10, || Ok(peer_nbma(&a, &hub, SPOKE2)?.is_some()))?;
    let sw = w.p.sw.clone();
    let mut at_frr = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.frr_spoke()?;
    wait("our hub to refuse FRR", 15, || Ok(nhrp_count(&a, &hub, "nhrp_sent", "error_indication")? >= 1))?;
    let log = w.log();
    wait("FRR to log the failed registration", 10, || Ok(std::fs::read_to_string(&log).unwrap_or_default().contains("NHS: Registration failed")))?;
    let seen = nhrp_messages(&mut at_frr)?;
    find(&seen, "3", (FRR_NBMA, A_NBMA), (SPOKE1, HUB))?;
    let refusal = find(&seen, "7", (A_NBMA, FRR_NBMA), (HUB, SPOKE1)).context("our Error Indication")?;
    ensure!(refusal.error == ["11"], "Authentication Failure expected: {refusal:?}");
    ensure!(!seen.iter().any(|m| m.kind == "4"), "a Registration Reply to FRR: {seen:#?}");
    ensure!(peer_nbma(&a, &hub, SPOKE1)?.is_none(), "our hub took FRR's registration");
    let nhs = w.frr_table("show ip nhrp nhs")?;
    ensure!(nhs.iter().all(|r| r["protocol"] == "(unspec)"), "FRR thinks it registered: {nhs:?}");
    w.ping(Pinger::Ours(&b), HUB, 3)?;
    w.unanswered(Pinger::Guest, HUB)
}

/// The code of each Registration Reply to `to` in a capture (tshark's reading: the first CIE's;
/// those of the Responder Address and NAT extensions follow).
fn registration_codes(cap: &mut Capture, to: &str) -> Vec<String> {
    cap.decode(&format!("nhrp.hdr.op.type == 4 && ip.dst == {to}"), &["nhrp.code"]).iter().filter_map(|p| field(p, "nhrp.code").first().cloned()).collect()
}

/// Uniqueness, as our hub holds it against FRR: our spoke (in b) registers 203.0.113.1 first,
/// uniquely; FRR, configured with the same address, claims it from its own NBMA address and is
/// refused with code 14 (Unique Internet Address Already Registered); the binding stays ours.
fn uniqueness_frr_claim_refused(w: &mut World) -> Result<()> {
    let (a, b) = (w.a(), w.b.clone());
    let hub = w.our_hub("")?;
    let i2 = w.our_spoke(&b, B_NBMA, SPOKE1, A_NBMA, false, "")?;
    wait("our spoke's registration", 10, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(B_NBMA)))?;
    let sw = w.p.sw.clone();
    let mut at_frr = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.frr_spoke()?;
    wait("our hub to answer FRR's claim", 15, || Ok(nhrp_count(&a, &hub, "nhrp_sent", "registration_reply")? >= 2))?;
    thread::sleep(Duration::from_secs(3));
    let codes = registration_codes(&mut at_frr, FRR_NBMA);
    ensure!(!codes.is_empty() && codes.iter().all(|c| c == "14"), "our replies to FRR: codes {codes:?}");
    ensure!(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(B_NBMA), "FRR's claim moved the binding");
    let nhs = w.frr_table("show ip nhrp nhs")?;
    ensure!(nhs.iter().all(|r| r["protocol"] == "(unspec)"), "FRR thinks it registered: {nhs:?}");
    // Our spoke still reaches the hub through the binding it holds.
    w.ping(Pinger::Ours(&b), HUB, 3)?;
    ensure!(gre::show(&b, &i2)?["tunnels"][0]["state"] == "up", "our spoke lost its NHS");
    Ok(())
}

/// The other way round: FRR registers first, with its U flag (0x8000), which our hub reads as
/// unique: our spoke's later claim of the same address is refused, and FRR keeps its binding.
fn uniqueness_frr_binding_kept(w: &mut World) -> Result<()> {
    let (a, b) = (w.a(), w.b.clone());
    let hub = w.our_hub("")?;
    w.frr_spoke()?;
    wait("FRR's registration on our hub", 15, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA)))?;
    let sw = w.p.sw.clone();
    let mut at_b = Capture::start(&sw, "up-b", "ip proto 47");
    let i2 = w.our_spoke(&b, B_NBMA, SPOKE1, A_NBMA, false, "")?;
    wait("our spoke to be answered", 10, || Ok(nhrp_count(&b, &i2, "nhrp_received", "registration_reply")? >= 1))?;
    thread::sleep(Duration::from_secs(1));
    let codes = registration_codes(&mut at_b, B_NBMA);
    ensure!(!codes.is_empty() && codes.iter().all(|c| c == "14"), "our hub's replies to our spoke: codes {codes:?}");
    ensure!(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA), "our spoke's claim moved FRR's binding");
    ensure!(gre::show(&b, &i2)?["tunnels"][0]["state"] == "down", "our refused spoke counts its NHS up");
    w.ping(Pinger::Guest, HUB, 3)
}

/// NAT on the underlay: our spoke (in c) behind the NAT device registers with our hub, which
/// sees it at the NAT's address and says so (the NAT extension); FRR (`ip nhrp shortcut`)
/// resolves it through our hub, our spoke answers FRR itself from behind the NAT — its binding
/// the address it has, the NAT extension the one FRR must use — and the shortcuts run between
/// FRR and the NAT's address.
fn nat_our_hub_frr_spoke(w: &mut World) -> Result<()> {
    let (a, c) = (w.a(), w.c.clone());
    let hub = w.our_hub("")?;
    let sw = w.p.sw.clone();
    let mut at_nat = Capture::start(&sw, "up-n", "ip proto 47");
    let ic = w.our_spoke(&c, NAT_INSIDE, SPOKE2, A_NBMA, true, "")?;
    wait("our spoke's registration, from the NAT's address", 10, || Ok(peer_nbma(&a, &hub, SPOKE2)?.as_deref() == Some(NAT_PUBLIC)))?;
    wait("our NATed spoke to see its NHS up", 10, || Ok(gre::show(&c, &ic)?["tunnels"][0]["state"] == "up"))?;
    thread::sleep(Duration::from_millis(500));
    // The hub's reply: the spoke's claimed address in the request, and in the NAT extension
    // what the hub saw.
    let replies = at_nat.decode(&format!("nhrp.hdr.op.type == 4 && ip.dst == {NAT_PUBLIC}"), &["nhrp.client.nbma.addr", "nhrp.src.nbma.addr"]);
    ensure!(
        replies.iter().any(|p| field(p, "nhrp.client.nbma.addr").contains(&NAT_PUBLIC.to_string()) && field(p, "nhrp.src.nbma.addr") == [NAT_INSIDE]),
        "no Registration Reply naming the NAT's address: {replies:?}"
    );
    w.frr_spoke()?;
    wait("FRR's registration on our hub", 15, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA)))?;
    let mut at_frr = Capture::start(&sw, "vmtap0", "ip proto 47");
    w.ping(Pinger::Guest, SPOKE2, 3)?;
    wait("FRR's shortcut to our NATed spoke", 15, || {
        let rows = w.frr_table("show ip nhrp shortcut")?;
        Ok(rows.iter().any(|r| r["prefix"] == "203.0.113.2/32" && r["via"] == SPOKE2) && w.frr_entry(SPOKE2)?.is_some_and(|(_, nbma)| nbma == NAT_PUBLIC))
    })?;
    // FRR knows the address our spoke claims as well as the one it is reached at.
    let row = w.frr_table("show ip nhrp cache")?.into_iter().find(|r| r["protocol"] == SPOKE2).context("FRR's entry for our spoke")?;
    ensure!(row["claimed_nbma"] == NAT_INSIDE, "FRR's entry for our NATed spoke: {row}");
    wait("our NATed spoke's shortcut to FRR", 10, || has_route(&c, &ic, "203.0.113.1/32", SPOKE1))?;
    let seen = nhrp_messages(&mut at_frr)?;
    let answer = find(&seen, "2", (NAT_PUBLIC, FRR_NBMA), (SPOKE1, SPOKE2)).context("our NATed spoke's answer to FRR")?;
    ensure!(answer.client_nbma.first().map(String::as_str) == Some(NAT_INSIDE), "{answer:?}");
    ensure!(answer.client_nbma.iter().any(|n| n == NAT_PUBLIC), "no NAT extension naming {NAT_PUBLIC}: {answer:?}");
    w.direct(Pinger::Guest, SPOKE2, (FRR_NBMA, NAT_PUBLIC), "vmtap0", "up0")
}

/// NAT with FRR as the hub: FRR sees our spoke c at the NAT's address and puts it in the NAT
/// extension of its reply; our spoke a resolves c through FRR, which forwards the request to the
/// NAT's address; c answers a itself, and a takes the address the answer came from.
fn nat_frr_hub(w: &mut World) -> Result<()> {
    let (a, c) = (w.a(), w.c.clone());
    w.frr_hub(false)?;
    let sw = w.p.sw.clone();
    let mut at_nat = Capture::start(&sw, "up-n", "ip proto 47");
    let i1 = w.our_spoke(&a, A_NBMA, SPOKE1, FRR_NBMA, false, "")?;
    let ic = w.our_spoke(&c, NAT_INSIDE, SPOKE2, FRR_NBMA, false, "")?;
    w.registered_at_frr(&[(SPOKE1, A_NBMA), (SPOKE2, NAT_PUBLIC)])?;
    let row = w.frr_table("show ip nhrp cache")?.into_iter().find(|r| r["protocol"] == SPOKE2).context("FRR's entry for our spoke")?;
    ensure!(row["claimed_nbma"] == NAT_INSIDE, "FRR's entry for our NATed spoke: {row}");
    wait("our NATed spoke to see FRR's hub up", 10, || Ok(gre::show(&c, &ic)?["tunnels"][0]["state"] == "up"))?;
    let mut at_s1 = Capture::start(&sw, "up0", "ip proto 47");
    w.ping(Pinger::Ours(&a), SPOKE2, 3)?;
    wait("spoke 1 to learn the NATed spoke at the NAT's address", 10, || Ok(peer_nbma(&a, &i1, SPOKE2)?.as_deref() == Some(NAT_PUBLIC)))?;
    wait("the NATed spoke to learn spoke 1", 10, || Ok(peer_nbma(&c, &ic, SPOKE1)?.as_deref() == Some(A_NBMA)))?;
    let at_n = nhrp_messages(&mut at_nat)?;
    find(&at_n, "1", (FRR_NBMA, NAT_PUBLIC), (SPOKE1, SPOKE2)).context("FRR forwards the request to the NAT's address")?;
    let s1 = nhrp_messages(&mut at_s1)?;
    let answer = find(&s1, "2", (NAT_PUBLIC, A_NBMA), (SPOKE1, SPOKE2)).context("the NATed spoke answers spoke 1 directly")?;
    ensure!(answer.client_nbma.iter().any(|n| n == NAT_PUBLIC), "no NAT extension naming {NAT_PUBLIC}: {answer:?}");
    w.direct(Pinger::Ours(&a), SPOKE2, (A_NBMA, NAT_PUBLIC), "up0", "vmtap0")
}

/// FRR with `ip nhrp nhs dynamic nbma …` registers with our hub not knowing its overlay address
/// (its request names FRR's own): our reply, addressed from the hub, teaches it, and FRR maps
/// the hub as its NHS and reaches it.
fn our_hub_frr_dynamic_nhs(w: &mut World) -> Result<()> {
    let a = w.a();
    let hub = w.our_hub("")?;
    w.frr_spoke_dynamic()?;
    wait("FRR's registration on our hub", 15, || Ok(peer_nbma(&a, &hub, SPOKE1)?.as_deref() == Some(FRR_NBMA)))?;
    wait("FRR to learn the hub's address", 10, || Ok(w.frr_entry(HUB)? == Some(("nhs".to_string(), A_NBMA.to_string()))))?;
    let nhs = w.frr_table("show ip nhrp nhs")?;
    ensure!(nhs.iter().any(|r| r["protocol"] == HUB), "FRR's NHS table: {nhs:?}");
    w.ping(Pinger::Guest, HUB, 3)
}

type Case = (&'static str, fn(&mut World) -> Result<()>);

const CASES: &[Case] = &[
    ("frr hub, phase 2", frr_hub_phase2),
    ("frr hub, phase 3", frr_hub_phase3),
    ("our hub, frr spoke", our_hub_frr_spoke),
    ("expiry, our spoke stops", expiry_our_spoke_stops),
    ("expiry, frr spoke stops", expiry_frr_spoke_stops),
    ("expiry, frr hub stops", expiry_frr_hub_stops),
    ("wrong password", wrong_password),
    ("uniqueness, frr claims", uniqueness_frr_claim_refused),
    ("uniqueness, frr holds", uniqueness_frr_binding_kept),
    ("nat, our hub, frr spoke", nat_our_hub_frr_spoke),
    ("nat, frr hub", nat_frr_hub),
    ("our hub, frr dynamic nhs", our_hub_frr_dynamic_nhs),
    ("two hubs, frr's and ours", two_hubs_frr_and_ours),
];

#[test]
fn frr_nhrp_peers() {
    if !privilege::require_root("frr_nhrp_peers") {
        return;
    }
    let kernel = Kernel::bookworm().expect("the bookworm kernel (cargo xtask setup)");
    let start = Instant::now();
    let mut w = World::new(&kernel).expect("guest and underlay");
    eprintln!("guest up in {:.1} s", start.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    // GRE_CASES=NAME,… runs only the cases whose names contain one of them.
    let only = std::env::var("GRE_CASES").ok();
    for (name, run) in CASES.iter().filter(|(n, _)| only.as_deref().is_none_or(|o| o.split(',').any(|w| n.contains(w)))) {
        let t = Instant::now();
        let result = run(&mut w).and_then(|()| w.frr_refused_nothing());
        match &result {
            Ok(()) => eprintln!("frr {name:<24} ok ({:.1} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("frr {name:<24} FAILED ({:.1} s): {e:#}", t.elapsed().as_secs_f64());
                w.report();
                failed.push(*name);
            }
        }
        if let Err(e) = w.reset() {
            eprintln!("cleaning up after {name}: {e:#}");
            failed.push(*name);
        }
    }
    eprintln!("all cases in {:.1} s", start.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "failed against FRR: {failed:?}");
}
