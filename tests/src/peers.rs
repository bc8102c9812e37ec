//! Independent peers on our underlay: a Linux guest (Debian's kernel, its own GRE devices) whose NIC
//! shares a link with a namespace running our datapath, and traffic between the two.
//!
//! ```text
//!   namespace "ours"                  namespace "sw"                guest (QEMU)
//!   eth0 198.51.100.1/24  ══veth══  up0 ─ vmbr0 ─ vmtap0  ═══════  eth0 198.51.100.2/24
//!        2001:db8:1::1/64                   │                            2001:db8:1::2/64
//!   namespace SHORT (add_ours)              │
//!   eth0 ADDR/24          ══veth══  up-SHORT┘
//! ```

use std::{net::SocketAddr, thread, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    topology::{Lab, sh},
    traffic::{self, Transfer},
    vm::{Guest, Kernel, guest_files},
};

pub const OURS: &str = "198.51.100.1";
pub const GUEST: &str = "198.51.100.2";
pub const OURS6: &str = "2001:db8:1::1";
pub const GUEST6: &str = "2001:db8:1::2";

/// Our namespace and a Linux guest on one underlay link. The guest goes first when dropped (its
/// taps are in the lab's namespace).
pub struct LinuxPeer {
    pub guest: Guest,
    pub lab: Lab,
    pub ours: String,
    /// The namespace of the bridge: capture on `up0` here, which sees both directions before any
    /// XDP program (a capture on our eth0 misses what XDP takes).
    pub sw: String,
}

impl LinuxPeer {
    /// Boots the guest and wires it to namespace `ours`; both ends addressed, nothing else.
    ///
    /// # Errors
    /// A step fails (what was made is removed).
    pub fn new(tag: &str, kernel: &Kernel) -> Result<Self> {
        let mut lab = Lab::new(tag);
        let ours = lab.add_ns("ours")?;
        let sw = lab.add_ns("sw")?;
        sh(&["ip", "netns", "exec", &sw, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        let guest = Guest::boot(tag, &sw, kernel, 1)?;
        sh(&["ip", "-n", &ours, "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", &sw])?;
        guest.plug(0, "up0")?;
        sh(&["ip", "-n", &ours, "addr", "add", &format!("{OURS}/24"), "dev", "eth0"])?;
        sh(&["ip", "-n", &ours, "addr", "add", &format!("{OURS6}/64"), "dev", "eth0", "nodad"])?;
        sh(&["ip", "-n", &ours, "link", "set", "eth0", "up"])?;
        // A gateway: it forwards on the underlay (our gretap's ARP needs it, see README); IPv6
        // forwarding only there, or every tunnel netdev would join ff02::2 and send MLD.
        sh(&["ip", "netns", "exec", &ours, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1", "net.ipv6.conf.eth0.forwarding=1"])?;
        // Complete checksums on the wire (the guest's NIC takes no offloads either).
        sh(&["ip", "netns", "exec", &ours, "ethtool", "-K", "eth0", "tx", "off"])?;
        let mut peer = Self { guest, lab, ours, sw };
        peer.guest.ok(&format!(
            "ip addr add {GUEST}/24 dev eth0\nip addr add {GUEST6}/64 dev eth0 nodad\nip link set eth0 up\n\
             sysctl -qw net.ipv6.conf.default.router_solicitations=0 net.ipv6.conf.all.router_solicitations=0\n\
             modprobe -a ip_gre ip6_gre\nping -c 1 -W 5 {OURS} > /dev/null"
        ))?;
        Ok(peer)
    }

    /// Another namespace of ours on the same underlay link: `eth0` with `addr`/24 (IPv4 only),
    /// on the bridge through the port `up-SHORT` of namespace `sw`, for tests with several of
    /// our nodes beside the guest (NHRP spokes and hubs). Returns the namespace and that port
    /// (capture there to see all this node sends and receives).
    ///
    /// # Errors
    /// A step fails, or the guest does not answer a ping from the new namespace.
    pub fn add_ours(&mut self, short: &str, addr: &str) -> Result<(String, String)> {
        let port = format!("up-{short}");
        if port.len() > 15 {
            bail!("{short}: the bridge port name {port} is too long for an interface name");
        }
        let ns = self.lab.add_ns(short)?;
        sh(&["ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &self.sw])?;
        self.guest.plug(0, &port)?;
        sh(&["ip", "-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        // Complete checksums on the wire, as from `ours`.
        sh(&["ip", "netns", "exec", &ns, "ethtool", "-K", "eth0", "tx", "off"])?;
        sh(&["ip", "netns", "exec", &ns, "ping", "-c", "1", "-W", "5", GUEST])?;
        Ok((ns, port))
    }

    /// `ping -c COUNT` from the guest; fails unless every reply came back.
    ///
    /// # Errors
    /// A reply is missing.
    pub fn guest_ping(&mut self, dst: &str, count: u32) -> Result<()> {
        let out = self.guest.run_timeout(&format!("ping -c {count} -i 0.2 -W 2 {dst}"), Duration::from_mins(1))?;
        if !out.stdout.contains(&format!("{count} packets transmitted, {count} received")) {
            bail!("ping {dst} from the guest:\n{}{}", out.stdout, out.stderr);
        }
        Ok(())
    }

    /// `len` bytes of TCP from our namespace to a listener in the guest at `server`: (what we
    /// sent, what the guest received), each with its SHA-256.
    ///
    /// # Errors
    /// The transfer fails or takes more than two minutes.
    pub fn tcp_to_guest(&mut self, server: SocketAddr, len: u64) -> Result<(Transfer, Transfer)> {
        let dir = self.guest.shared();
        let (ready, result) = (dir.join("tcp.ready"), dir.join("tcp.out"));
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&result);
        let tcp = guest_files().join("tcp.py");
        self.guest.ok(&format!("setsid python3 {} recv {} {} {} > {} 2>&1 &", tcp.display(), server.ip(), server.port(), ready.display(), result.display()))?;
        traffic::wait_for("the guest's TCP listener", 30, || ready.exists());
        let sent = traffic::tcp_send(&self.ours, server, len)?;
        let mut got = String::new();
        for _ in 0..1200 {
            got = std::fs::read_to_string(&result).unwrap_or_default();
            if got.ends_with('\n') {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok((sent, parse_transfer(&got).with_context(|| format!("the guest's receiver printed {got:?}"))?))
    }

    /// `len` bytes of TCP from the guest to a listener in our namespace at `server`: (what the
    /// guest sent, what we received).
    ///
    /// # Errors
    /// The transfer fails or takes more than two minutes.
    pub fn tcp_from_guest(&mut self, server: SocketAddr, len: u64) -> Result<(Transfer, Transfer)> {
        let receiver = traffic::tcp_listen(&self.ours, server)?;
        let tcp = guest_files().join("tcp.py");
        let out = self.guest.ok_timeout(&format!("python3 {} send {} {} {len}", tcp.display(), server.ip(), server.port()), Duration::from_mins(2))?;
        let sent = parse_transfer(&out).with_context(|| format!("the guest's sender printed {out:?}"))?;
        let got = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
        Ok((sent, got))
    }

    /// A counter of the guest's interface `dev` (`/sys/class/net/DEV/statistics/NAME`).
    ///
    /// # Errors
    /// The interface or counter does not exist.
    pub fn guest_counter(&mut self, dev: &str, name: &str) -> Result<u64> {
        let out = self.guest.ok(&format!("cat /sys/class/net/{dev}/statistics/{name}"))?;
        out.trim().parse().with_context(|| format!("{dev} {name}: {out:?}"))
    }
}

fn parse_transfer(line: &str) -> Result<Transfer> {
    let mut parts = line.split_whitespace();
    let bytes = parts.next().context("no byte count")?.parse()?;
    let hex = parts.next().context("no SHA-256")?;
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).context("short SHA-256")?, 16)?;
    }
    Ok(Transfer { bytes, sha256 })
}
