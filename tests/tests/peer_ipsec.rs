//! A protected tunnel against Linux's ip_gre protected by strongSwan, in two guests (this host's
//! kernel has no ESP; bookworm-backports' 6.12 runs our datapath and the peer): IKEv2 with a
//! pre-shared key between our daemon's charon (driven over vici) and the peer's charon (loaded by
//! swanctl), ESP in transport mode for the GRE. A capture of the underlay between the guests
//! must hold nothing but ESP, IKE and ARP — while the peer has no IKE configuration yet, while
//! pings and TCP (SHA-256 at both ends) cross, while clear-text GRE is thrown at us, and while
//! our charon restarts.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use gre_tests::{
    capture::{Capture, field},
    gre, privilege,
    topology::{Lab, sh},
    vm::{Guest, Kernel, guest_files},
};

const OURS: &str = "198.51.100.1";
const LINUX: &str = "198.51.100.2";
const OUR_OVERLAY: &str = "203.0.113.1";
const LINUX_OVERLAY: &str = "203.0.113.2";
const PSK: &str = "a pre-shared key for the tests";
const PINGS: u32 = 5;
const TCP_BYTES: u64 = 1 << 20;
/// What both charons propose: within the plugins Debian's strongswan packages bring.
const IKE: &str = "aes256-sha256-modp2048";
const ESP: &str = "aes256gcm16";
/// Our side rekeys its SAs this often (seconds), so that traffic crosses rekeyings.
const REKEY: u32 = 20;

/// charon with its vici socket at the default path and a log in /tmp.
const CHARON: &str = r#"cat > /tmp/strongswan.conf <<'EOF'
charon {
  load_modular = yes
  install_routes = no
  plugins {
    include /etc/strongswan.d/charon/*.conf
  }
  filelog {
    f {
      path = /tmp/charon.log
      default = 1
      ike = 2
      append = yes
    }
  }
}
EOF
STRONGSWAN_CONF=/tmp/strongswan.conf setsid /usr/lib/ipsec/charon > /tmp/charon.out 2>&1 < /dev/null &
for i in $(seq 100); do [ -S /var/run/charon.vici ] && break; sleep 0.1; done
[ -S /var/run/charon.vici ]"#;

fn underlay(addr: &str) -> String {
    format!(
        "modprobe -a esp4 xfrm_user\nsysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.eth0.disable_ipv6=1\n\
         ip addr add {addr}/24 dev eth0\nip link set eth0 up\n{CHARON}"
    )
}

fn linux_swanctl() -> String {
    format!(
        "connections {{\n gre {{\n  version = 2\n  proposals = {IKE}\n  local_addrs = {LINUX}\n  remote_addrs = {OURS}\n  \
         local {{\n   auth = psk\n   id = {LINUX}\n  }}\n  remote {{\n   auth = psk\n   id = {OURS}\n  }}\n  \
         children {{\n   gre {{\n    mode = transport\n    esp_proposals = {ESP}\n    local_ts = dynamic[gre]\n    remote_ts = dynamic[gre]\n    start_action = trap\n   }}\n  }}\n }}\n}}\n\
         secrets {{\n ike-1 {{\n  id-a = {OURS}\n  id-b = {LINUX}\n  secret = \"{PSK}\"\n }}\n}}\n"
    )
}

fn our_config() -> String {
    format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"tun0\"\ninterface = \"eth0\"\nlocal = \"{OURS}\"\nremote = \"{LINUX}\"\nkey = 5\n\
         address = [\"{OUR_OVERLAY}/30\"]\n\n[tunnel.protection]\npsk = \"{PSK}\"\nproposals = [\"{IKE}\"]\nesp_proposals = [\"{ESP}\"]\nrekey_time = {REKEY}\n"
    )
}

/// Frames of a capture that are neither ESP, IKE (UDP 500 and 4500) nor ARP.
fn clear_text(cap: &mut Capture) -> Vec<String> {
    cap.decode("!esp && !isakmp && !arp && !(udp.port == 4500)", &["frame.protocols", "ip.src", "ip.dst"])
        .iter()
        .map(|f| format!("{:?} {:?}->{:?}", field(f, "frame.protocols"), field(f, "ip.src"), field(f, "ip.dst")))
        .collect()
}

struct World {
    ours: Guest,
    linux: Guest,
    /// Namespace of the underlay's capture point (the veth between the guests' bridges).
    sw: String,
    _lab: Lab,
}

impl World {
    fn new() -> Result<Self> {
        let kernel = Kernel::backports()?;
        let mut lab = Lab::new("ipsec");
        let (a, b) = (lab.add_ns("a")?, lab.add_ns("b")?);
        // The bridges and veths carry the guests' frames only (no IPv6 of their own).
        for ns in [&a, &b] {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        }
        let mut ours = Guest::boot("ours", &a, &kernel, 1)?;
        let mut linux = Guest::boot("linux", &b, &kernel, 1)?;
        sh(&["ip", "-n", &a, "link", "add", "wa", "type", "veth", "peer", "name", "wb", "netns", &b])?;
        ours.plug(0, "wa")?;
        linux.plug(0, "wb")?;
        ours.ok(&underlay(OURS))?;
        linux.ok(&underlay(LINUX))?;
        linux.ok(&format!(
            "modprobe ip_gre\nip link add gre1 type gre local {LINUX} remote {OURS} key 5\nip addr add {LINUX_OVERLAY}/30 dev gre1\nip link set gre1 up\n\
             for i in $(seq 10); do ping -c 1 -W 2 {OURS} > /dev/null && break; done
ping -c 1 -W 2 {OURS} > /dev/null || {{ ip -s link show eth0; ip neigh; exit 1; }}"
        ))?;
        let shared = ours.shared();
        std::fs::write(shared.join("gre.toml"), our_config())?;
        let bin = gre::bin();
        ours.ok(&format!(
            "{bin} up --config {cfg}\nsetsid {bin} daemon > {log} 2>&1 < /dev/null &",
            bin = bin.display(),
            cfg = shared.join("gre.toml").display(),
            log = shared.join("daemon.log").display()
        ))?;
        Ok(Self { ours, linux, sw: a, _lab: lab })
    }

    fn gre(&mut self, args: &str) -> Result<String> {
        self.ours.ok(&format!("{} {args}", gre::bin().display()))
    }

    /// The child SAs `gre show ipsec` lists, as (remote, state).
    fn sas(&mut self) -> Result<Vec<(String, String)>> {
        let v: serde_json::Value = serde_json::from_str(&self.gre("show ipsec -j")?)?;
        Ok(v["children"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["remote"].as_str().unwrap_or("").to_string(), c["state"].as_str().unwrap_or("").to_string()))
            .collect())
    }

    /// The inbound SPIs of the installed child SAs.
    fn spis(&mut self) -> Result<Vec<String>> {
        let v: serde_json::Value = serde_json::from_str(&self.gre("show ipsec -j")?)?;
        Ok(v["children"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["state"] == "INSTALLED")
            .filter_map(|c| c["spi_in"].as_str().map(str::to_string))
            .collect())
    }

    fn wait_for_sa(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let sas = self.sas()?;
            if sas.iter().any(|(r, s)| r == LINUX && s == "INSTALLED") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.ours.ok("tail -30 /tmp/charon.log").unwrap_or_default();
                bail!("no SA with {LINUX} within {within:?} ({sas:?}); our charon:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Pings that must all be answered, both ways.
    fn pings(&mut self) -> Result<()> {
        self.ours.ok(&format!("ping -c {PINGS} -i 0.3 -W 3 {LINUX_OVERLAY} | grep -q ' {PINGS} received'"))?;
        self.linux.ok(&format!("ping -c {PINGS} -i 0.3 -W 3 {OUR_OVERLAY} | grep -q ' {PINGS} received'"))?;
        Ok(())
    }

    /// `TCP_BYTES` from `from` to a listener in `to` at `addr`: both ends' "BYTES SHA256" equal.
    fn tcp(from: &mut Guest, to: &mut Guest, addr: &str, port: u16) -> Result<()> {
        let tcp = guest_files().join("tcp.py");
        let (ready, out) = (to.shared().join(format!("tcp{port}.ready")), to.shared().join(format!("tcp{port}.out")));
        to.ok(&format!("setsid python3 {} recv {addr} {port} {} > {} 2>&1 < /dev/null &", tcp.display(), ready.display(), out.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            ensure!(Instant::now() < deadline, "the TCP listener did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let sent = from.ok_timeout(&format!("python3 {} send {addr} {port} {TCP_BYTES}", tcp.display()), Duration::from_mins(3))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let got = loop {
            let got = std::fs::read_to_string(&out).unwrap_or_default();
            if got.ends_with('\n') {
                break got;
            }
            ensure!(Instant::now() < deadline, "the receiver printed nothing: {got:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(sent.trim() == got.trim() && sent.starts_with(&TCP_BYTES.to_string()), "sent {sent:?}, received {got:?}");
        Ok(())
    }

    fn drops(&mut self, reason: &str) -> Result<u64> {
        let v: serde_json::Value = serde_json::from_str(&self.gre("show drops -j")?)?;
        Ok(v["by_tunnel"]["tun0"][reason].as_u64().unwrap_or(0))
    }
}

#[test]
fn protected_tunnel_with_linux_ip_gre_and_strongswan() -> Result<()> {
    if !privilege::require_root("protected_tunnel_with_linux_ip_gre_and_strongswan") {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut w = World::new()?;
    let result = run(&mut w);
    if result.is_err() {
        for (name, g) in [("ours", &mut w.ours), ("linux", &mut w.linux)] {
            eprintln!("--- {name}'s charon\n{}", g.ok("tail -40 /tmp/charon.log; cat /tmp/charon.out; swanctl --list-conns").unwrap_or_default());
        }
        eprintln!("--- our daemon\n{}", std::fs::read_to_string(w.ours.shared().join("daemon.log")).unwrap_or_default());
    }
    result
}

fn run(w: &mut World) -> Result<()> {
    // 1. The peer has no IKE configuration: nothing gets through, and nothing in clear text.
    let mut cap = Capture::start(&w.sw, "wa", "");
    let out = w.ours.run_timeout(&format!("ping -c 3 -W 2 {LINUX_OVERLAY}"), Duration::from_secs(30))?;
    ensure!(out.status != 0, "pings crossed before any SA: {}", out.stdout);
    let leaked = clear_text(&mut cap);
    ensure!(leaked.is_empty(), "clear text on the underlay before the SA: {leaked:?}");

    // 2. The peer's charon gets its configuration; our daemon's SA comes up (it traps, too).
    let swanctl = w.linux.shared().join("swanctl.conf");
    std::fs::write(&swanctl, linux_swanctl())?;
    w.linux.ok(&format!("swanctl --load-all --file {}", swanctl.display()))?;
    w.ours.run_timeout(&format!("ping -c 2 -W 2 {LINUX_OVERLAY}"), Duration::from_secs(30))?;
    w.wait_for_sa(Duration::from_secs(60))?;
    let table = w.gre("show ipsec")?;
    ensure!(table.contains("INSTALLED") && table.contains(LINUX), "gre show ipsec:\n{table}");

    // 3. Pings and TCP both ways, and only ESP on the wire.
    let mut cap = Capture::start(&w.sw, "wa", "");
    w.pings()?;
    World::tcp(&mut w.ours, &mut w.linux, LINUX_OVERLAY, 5001)?;
    World::tcp(&mut w.linux, &mut w.ours, OUR_OVERLAY, 5002)?;
    let leaked = clear_text(&mut cap);
    ensure!(leaked.is_empty(), "clear text on the underlay: {:?}", &leaked[..leaked.len().min(10)]);
    let esp = cap.decode("esp", &["ip.src"]);
    ensure!(esp.len() > 2 * (TCP_BYTES as usize / 1500), "only {} ESP frames for the pings and 2 MiB of TCP", esp.len());
    ensure!(cap.faults().is_empty(), "tshark: {:?}", cap.faults());

    // 3b. `gre reload` (the programs replaced under traffic) and a rekeying (every 20 s on our
    // side): TCP across both, and still nothing in clear.
    let mut cap = Capture::start(&w.sw, "wa", "");
    let before = w.spis()?;
    w.gre("reload")?;
    World::tcp(&mut w.ours, &mut w.linux, LINUX_OVERLAY, 5003)?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(REKEY) * 3);
    loop {
        let now = w.spis()?;
        if !now.is_empty() && now.iter().all(|s| !before.contains(s)) {
            break;
        }
        ensure!(Instant::now() < deadline, "no rekeying within {}s: SPIs {before:?} then {now:?}", 3 * REKEY);
        std::thread::sleep(Duration::from_secs(1));
    }
    World::tcp(&mut w.linux, &mut w.ours, OUR_OVERLAY, 5004)?;
    let leaked = clear_text(&mut cap);
    ensure!(leaked.is_empty(), "clear text across reload and rekeying: {:?}", &leaked[..leaked.len().min(10)]);

    // 4. Clear-text GRE at our address is dropped and counted, never delivered or answered.
    let before = w.drops("unprotected")?;
    let mut cap = Capture::start(&w.sw, "wa", "");
    w.linux.ok(&format!(
        "python3 - <<'EOF'\nfrom scapy.all import IP, GRE, ICMP, send\n\
         send(IP(src='{LINUX}', dst='{OURS}')/GRE(key_present=1, key=5, proto=0x0800)/IP(src='{LINUX_OVERLAY}', dst='{OUR_OVERLAY}')/ICMP(), count=4, verbose=False)\nEOF"
    ))?;
    std::thread::sleep(Duration::from_secs(2));
    let dropped = w.drops("unprotected")? - before;
    ensure!(dropped == 4, "{dropped} clear-text GRE packets counted as unprotected, not 4");
    let from_us: Vec<String> = clear_text(&mut cap).into_iter().filter(|f| f.contains(&format!("[\"{OURS}\"]->"))).collect();
    ensure!(from_us.is_empty(), "we answered clear text: {from_us:?}");

    // 5. Our charon stops (its SAs and policies go with it) and starts again: meanwhile nothing
    // in clear; then the daemon loads the connection into the new charon and traffic flows.
    let mut cap = Capture::start(&w.sw, "wa", "");
    w.ours.ok("pkill -TERM -x charon\nfor i in $(seq 50); do pgrep -x charon > /dev/null || break; sleep 0.2; done")?;
    let out = w.ours.run_timeout(&format!("ping -c 3 -W 2 {LINUX_OVERLAY}"), Duration::from_secs(30))?;
    ensure!(out.status != 0, "pings crossed with charon stopped: {}", out.stdout);
    w.ours.ok(CHARON)?;
    w.wait_for_sa(Duration::from_secs(60))?;
    w.pings()?;
    let leaked = clear_text(&mut cap);
    ensure!(leaked.is_empty(), "clear text across charon's restart: {leaked:?}");
    let log = std::fs::read_to_string(w.ours.shared().join("daemon.log")).context("the daemon's log")?;
    ensure!(log.matches("has the connections of 1 protected tunnel").count() >= 2, "the daemon did not reload charon:\n{log}");
    Ok(())
}

/// One guest at a time in this file: TCG on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const HUB: &str = "198.51.100.10";
const HUB_OVERLAY: &str = "203.0.113.254";

/// Our hub and two spokes, protected, as namespaces of one 6.12 guest (no ip_gre loaded), each
/// with its own charon: registrations, hub traffic and spoke-to-spoke traffic over ESP only; the
/// spokes' resolution brings up their own SA before the shortcut is used, and when that SA goes,
/// so does the shortcut.
#[test]
fn protected_dmvpn_of_our_hub_and_spokes() -> Result<()> {
    if !privilege::require_root("protected_dmvpn_of_our_hub_and_spokes") {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kernel = Kernel::backports()?;
    let mut lab = Lab::new("ipsecm");
    let host = lab.add_ns("host")?;
    let mut g = Guest::boot("dmvpn", &host, &kernel, 0)?;
    let result = dmvpn(&mut g);
    if result.is_err() {
        for n in ["hub", "s1", "s2"] {
            eprintln!("--- {n}: charon, daemon\n{}", g.ok(&format!("tail -25 /tmp/charon-{n}.log; tail -15 /tmp/daemon-{n}.log")).unwrap_or_default());
        }
    }
    result
}

fn node_config(local: &str, overlay: &str, nhrp: &str, node: &str) -> String {
    format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"mgre0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nkey = 100\n{nhrp}address = [\"{overlay}/24\"]\n\
         protection = {{ psk = \"{PSK}\", proposals = [\"{IKE}\"], esp_proposals = [\"{ESP}\"], vici = \"/tmp/{node}.vici\" }}\n"
    )
}

fn dmvpn(g: &mut Guest) -> Result<()> {
    let bin = gre::bin();
    let bin = bin.display();
    let shared = g.shared();
    let nodes = [("hub", HUB, HUB_OVERLAY), ("s1", "198.51.100.17", "203.0.113.1"), ("s2", "198.51.100.33", "203.0.113.2")];
    let mut script = String::from(
        "modprobe -a esp4 xfrm_user veth bridge\nip netns add lan\nip -n lan link add br0 type bridge\nip -n lan link set br0 up\n\
         ip netns exec lan sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1\n\
         setsid ip netns exec lan tshark -q -i br0 -w /tmp/lan.pcap > /tmp/tshark.out 2>&1 < /dev/null &\n\
         for i in $(seq 150); do [ -s /tmp/lan.pcap ] && break; sleep 0.2; done\n",
    );
    // The capture runs inside the guest, on the bridge all three nodes hang on, from before
    // the first IKE packet.
    for (n, nbma, overlay) in nodes {
        let nhrp = if n == "hub" {
            "nhrp = { role = \"nhs\", holdtime = 60 }\n".to_string()
        } else {
            format!("nhs = \"{HUB_OVERLAY}\"\nnhrp = {{ role = \"nhc\", holdtime = 60 }}\n")
        };
        let mut conf = node_config(nbma, overlay, &nhrp, n);
        if n != "hub" {
            conf += &format!("\n[[peer]]\ntunnel = \"mgre0\"\noverlay = \"{HUB_OVERLAY}\"\nnbma = \"{HUB}\"\n");
        }
        std::fs::write(shared.join(format!("{n}.toml")), conf)?;
        script += &format!(
            "ip netns add {n}\nip netns exec {n} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1\n\
             ip -n {n} link add eth0 type veth peer name p-{n} netns lan\nip -n lan link set p-{n} master br0 up\n\
             ip -n {n} addr add {nbma}/24 dev eth0\nip -n {n} link set eth0 up\nip -n {n} link set lo up\n{forward}\
             sed -e 's|/tmp/charon.log|/tmp/charon-{n}.log|' -e 's|^  plugins {{|  plugins {{\\n    vici {{\\n      socket = unix:///tmp/{n}.vici\\n    }}|' /tmp/strongswan.conf > /tmp/strongswan-{n}.conf\n\
             ip netns exec {n} unshare -m sh -c 'mount -t tmpfs none /run; STRONGSWAN_CONF=/tmp/strongswan-{n}.conf exec /usr/lib/ipsec/charon' > /tmp/charon-{n}.out 2>&1 < /dev/null &\n\
             for i in $(seq 100); do [ -S /tmp/{n}.vici ] && break; sleep 0.1; done\n[ -S /tmp/{n}.vici ]\n\
             {bin} -n {n} -I {n} up --config {cfg}\n\
             setsid {bin} -n {n} -I {n} daemon > /tmp/daemon-{n}.log 2>&1 < /dev/null &\n",
            cfg = shared.join(format!("{n}.toml")).display(),
            // The hub routes spoke-to-spoke traffic back into the tunnel, without redirects.
            forward = if n == "hub" {
                "ip netns exec hub sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0\n"
            } else {
                ""
            },
        );
    }
    // The charon configuration the nodes derive theirs from (no charon of its own here).
    let base = CHARON.split("STRONGSWAN_CONF=").next().unwrap_or_default();
    g.ok(&format!("{base}\n{script}"))?;

    // Each spoke's SA with the hub, then its registration.
    for s in ["s1", "s2"] {
        wait(g, &format!("{s}'s SA with the hub"), 90, &format!("{bin} -I {s} -n {s} show ipsec | grep -q '{HUB} .*INSTALLED'"))?;
    }
    wait(g, "both registrations on the hub", 60, &format!("[ $({bin} -I hub -n hub show peers -j | grep -o '\"kind\":\"dynamic\"' | wc -l) -ge 2 ]"))?;
    g.ok(&format!("ip netns exec s1 ping -c {PINGS} -i 0.3 -W 3 {HUB_OVERLAY} | grep -q ' {PINGS} received'"))?;
    // `gre show dmvpn` says which peers have their SA: the hub both spokes, s1 the hub.
    let hub_rows = g.ok(&format!("{bin} -I hub -n hub show dmvpn"))?;
    ensure!(hub_rows.lines().filter(|l| l.contains("registered") && l.contains("ipsec")).count() == 2, "the hub's dmvpn table:\n{hub_rows}");
    let s1_rows = g.ok(&format!("{bin} -I s1 -n s1 show dmvpn"))?;
    ensure!(s1_rows.lines().any(|l| l.contains(HUB) && l.contains("static") && l.contains("ipsec")), "s1's dmvpn table:\n{s1_rows}");
    // Spoke to spoke: through the hub first; the resolution asks for the spokes' own SA, and
    // once it is up the shortcut takes the traffic.
    g.ok(&format!("ip netns exec s1 ping -c {PINGS} -i 0.3 -W 3 203.0.113.2 | grep -q ' {PINGS} received'"))?;
    wait(
        g,
        "an SA between the spokes",
        90,
        &format!("ip netns exec s1 ping -c 1 -W 2 203.0.113.2 > /dev/null; {bin} -I s1 -n s1 show ipsec | grep -q '198.51.100.33 .*INSTALLED'"),
    )?;
    wait(
        g,
        "s1's peer entry for s2",
        60,
        &format!("ip netns exec s1 ping -c 1 -W 2 203.0.113.2 > /dev/null; {bin} -I s1 -n s1 show peers -j | grep -q '\"203.0.113.2\"'"),
    )?;
    g.ok(&format!("ip netns exec s1 ping -c {PINGS} -i 0.3 -W 3 203.0.113.2 | grep -q ' {PINGS} received'"))?;
    // The spokes' SA goes (charon terminates it): s1's peer entry for s2 goes with it, and the
    // traffic is back through the hub until NHRP finds the SA again.
    g.ok("swanctl --terminate --ike gre-s1-mgre0-198.51.100.33 --uri unix:///tmp/s1.vici > /dev/null; swanctl --terminate --ike gre-s2-mgre0-198.51.100.17 --uri unix:///tmp/s2.vici > /dev/null || true")?;
    // Both spokes learn of it from charon's events, at once: the replies from s2 go through
    // the hub too.
    wait(g, "s1's peer entry for s2 gone with the SA", 5, &format!("! {bin} -I s1 -n s1 show peers -j | grep -q '\"203.0.113.2\"'"))?;
    wait(g, "s2's peer entry for s1 gone with the SA", 5, &format!("! {bin} -I s2 -n s2 show peers -j | grep -q '\"203.0.113.1\"'"))?;
    g.ok(&format!("ip netns exec s1 ping -c {PINGS} -i 0.3 -W 3 203.0.113.2 | grep -q ' {PINGS} received'"))?;
    let text = g.ok("sleep 1\npkill -INT -x tshark || true\nsleep 2\ntshark -r /tmp/lan.pcap 2>/dev/null")?;
    let leaked: Vec<&str> = text.lines().filter(|l| !(l.contains(" ESP ") || l.contains("ISAKMP") || l.contains(" ARP "))).collect();
    ensure!(leaked.is_empty(), "clear text between the nodes: {:?}", &leaked[..leaked.len().min(10)]);
    ensure!(text.lines().any(|l| l.contains("198.51.100.17 → 198.51.100.33 ESP")), "no ESP straight from spoke to spoke:\n{text}");
    Ok(())
}

/// Runs `check` in the guest every half second until it succeeds, for at most `secs`.
fn wait(g: &mut Guest, what: &str, secs: u64, check: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if g.run_timeout(check, Duration::from_secs(30))?.status == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(500));
    }
}
