//! The fixture of the BPF_PROG_TEST_RUN tests: the eBPF object loaded in a private network
//! namespace, tunnels on veth pairs made there, and packet builders. Expected packets are built
//! independently of the datapath: with etherparse, with scapy, or GRE written out by hand from
//! RFC 2784/2890.

use std::process::Command;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    test_helpers::NetNsGuard,
};
use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, PacketBuilder};
use gre_common::maps::{Tunnel, TunnelStats, programs, tunnel_flags};
use gre_user::maps::{Maps, store_addr};

use crate::privilege;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const LOCAL: [u8; 4] = [198, 51, 100, 1];
pub const KEYED_REMOTE: [u8; 4] = [198, 51, 100, 2];
pub const PLAIN_REMOTE: [u8; 4] = [198, 51, 100, 3];
pub const KEY: u32 = 42;
pub const WIRE_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const WIRE_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A veth pair made in the test's namespace: the tunnel netdev and its injection end.
#[derive(Clone, Copy)]
pub struct Netdev {
    pub index: u32,
    pub mac: [u8; 6],
    pub inject_index: u32,
    pub inject_mac: [u8; 6],
}

pub fn link_info(name: &str) -> (u32, [u8; 6]) {
    let out = Command::new("ip").args(["-j", "link", "show", name]).output().expect("ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let index = u32::try_from(v[0]["ifindex"].as_u64().expect("ifindex")).unwrap();
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(v[0]["address"].as_str().expect("address").split(':')) {
        *m = u8::from_str_radix(part, 16).unwrap();
    }
    (index, mac)
}

/// Runs `ip`/`sysctl` commands in the fixture's namespace.
///
/// # Panics
/// When one fails.
pub fn net(cmds: &[&str]) {
    for cmd in cmds {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        crate::topology::sh(&args).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    }
}

pub fn veth(name: &str) -> Netdev {
    let peer = format!("{name}-dp");
    let st = Command::new("ip").args(["link", "add", name, "type", "veth", "peer", "name", &peer]).status().expect("ip");
    assert!(st.success(), "creating veth {name}");
    let (index, mac) = link_info(name);
    let (inject_index, inject_mac) = link_info(&peer);
    Netdev { index, mac, inject_index, inject_mac }
}

/// Two tunnels from the same local address: id 0 keyed (key 42, TTL inherited), id 1 without a
/// key (TTL 64). Each test gets its own network namespace and its own copy of the maps.
pub struct Fixture {
    _ns: NetNsGuard,
    pub ebpf: Ebpf,
    pub maps: Maps,
    pub keyed: Netdev,
    pub plain: Netdev,
    /// Tunnels added with [`Fixture::add`], by id.
    pub extra: Vec<Netdev>,
}

impl Fixture {
    #[expect(clippy::new_without_default, reason = "it creates a namespace and loads programs: not a default")]
    pub fn new() -> Self {
        let ns = NetNsGuard::new().expect("test namespace");
        let keyed = veth("t0");
        let plain = veth("t1");
        let mut ebpf = EbpfLoader::new().load(gre_user::EBPF_OBJECT).expect("load object");
        let mut maps = Maps::from_ebpf(&mut ebpf, None).expect("maps");
        maps.install_tail_calls(&mut ebpf).expect("tail calls");
        for (id, dev, remote, key, ttl) in [(0, keyed, KEYED_REMOTE, Some(KEY), 0), (1, plain, PLAIN_REMOTE, None, 64)] {
            let flags = if key.is_some() { tunnel_flags::IKEY | tunnel_flags::OKEY } else { 0 };
            let t = Tunnel {
                local: store_addr(LOCAL.into()),
                remote: store_addr(remote.into()),
                ikey: key.unwrap_or(0),
                okey: key.unwrap_or(0),
                flags,
                ttl,
                netdev_ifindex: dev.index,
                inject_ifindex: dev.inject_index,
                underlay_ifindex: dev.index,
                mtu: 1472,
                netdev_mac: dev.mac,
                inject_mac: dev.inject_mac,
                ..Tunnel::default()
            };
            maps.install_tunnel(id, &t).expect("install tunnel");
        }
        let decap: &mut Xdp = ebpf.program_mut(programs::DECAP).unwrap().try_into().unwrap();
        gre_user::instance::load(|| decap.load()).expect("verifier accepts decap");
        let encap: &mut SchedClassifier = ebpf.program_mut(programs::ENCAP).unwrap().try_into().unwrap();
        gre_user::instance::load(|| encap.load()).expect("verifier accepts encap");
        let lan: &mut Xdp = ebpf.program_mut(programs::LAN).unwrap().try_into().unwrap();
        gre_user::instance::load(|| lan.load()).expect("verifier accepts the LAN program");
        Self { _ns: ns, ebpf, maps, keyed, plain, extra: Vec::new() }
    }

    /// Adds tunnel `t` (addresses, keys, flags, TTL, TOS as given) on a veth pair of its own;
    /// returns its id (2, 3, …) and netdev.
    pub fn add(&mut self, t: Tunnel) -> (u32, Netdev) {
        let id = 2 + u32::try_from(self.extra.len()).unwrap();
        let dev = veth(&format!("t{id}"));
        let t = Tunnel {
            netdev_ifindex: dev.index,
            inject_ifindex: dev.inject_index,
            underlay_ifindex: dev.index,
            mtu: if t.mtu == 0 { 1472 } else { t.mtu },
            netdev_mac: dev.mac,
            inject_mac: dev.inject_mac,
            ..t
        };
        self.maps.install_tunnel(id, &t).expect("install tunnel");
        self.extra.push(dev);
        (id, dev)
    }

    pub fn decap(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self.ebpf.program_mut(programs::DECAP).unwrap().try_into().unwrap();
        run(|opts| prog.test_run(opts), input, None)
    }

    /// The LAN program on `input` as if it arrived on interface `ifindex`.
    pub fn lan(&mut self, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let prog: &mut Xdp = self.ebpf.program_mut(programs::LAN).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data_end equal to the input's length.
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&u32::try_from(input.len()).unwrap().to_ne_bytes());
        md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        run(|opts| prog.test_run(opts), input, Some(&md))
    }

    pub fn encap(&mut self, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        self.encap_gso(input, ifindex, 0)
    }

    /// [`Fixture::encap`] of a packet that claims to be GSO with segments of `gso_size`.
    pub fn encap_gso(&mut self, input: &[u8], ifindex: u32, gso_size: u32) -> (u32, Vec<u8>) {
        // struct __sk_buff up to and including `gso_size`: `ifindex` (offset 40) is the device
        // the packet leaves; `gso_size` (offset 176) makes it a GSO packet.
        let mut ctx = [0u8; 180];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        let prog: &mut SchedClassifier = self.ebpf.program_mut(programs::ENCAP).unwrap().try_into().unwrap();
        run(|opts| prog.test_run(opts), input, Some(&ctx))
    }

    pub fn stats(&self, id: u32) -> TunnelStats {
        self.maps.tunnel_stats(id).expect("stats")
    }

    pub fn drops(&self) -> Vec<u64> {
        self.maps.drops().expect("drops").into_iter().map(|(_, n)| n).collect()
    }
}

pub fn run(f: impl FnOnce(TestRunOptions<'_>) -> Result<aya::programs::TestRunResult, ProgramError>, input: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = ctx;
    let r = f(opts).expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// An inner IPv4/UDP packet (L3 and up).
pub fn inner_v4(ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ipv4([203, 0, 113, 2], [203, 0, 113, 1], ttl).udp(4000, 5000);
    let payload = b"overlay payload, IPv4";
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// An inner IPv6/UDP packet (L3 and up).
pub fn inner_v6(hop_limit: u8) -> Vec<u8> {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    src[15] = 2;
    let mut dst = src;
    dst[15] = 1;
    let b = PacketBuilder::ipv6(src, dst, hop_limit).udp(4000, 5000);
    let mut v = Vec::new();
    b.write(&mut v, b"overlay payload, IPv6").unwrap();
    v
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ether_type: EtherType) -> Vec<u8> {
    Ethernet2Header { destination: dst, source: src, ether_type }.to_bytes().to_vec()
}

/// Outer Ethernet + IPv4 (GRE) around `gre` (header and payload), as a remote would send it.
pub fn outer(src: [u8; 4], dst: [u8; 4], gre: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(u16::try_from(gre.len()).unwrap(), 64, IpNumber::GRE, src, dst).unwrap();
    ip.identification = 0x1234;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = eth(WIRE_DST, WIRE_SRC, EtherType::IPV4);
    v.extend_from_slice(&ip.to_bytes());
    v.extend_from_slice(gre);
    v
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// GRE header with the K bit and `key`, RFC 2890 layout.
pub fn gre_keyed(proto: u16, key: u32) -> Vec<u8> {
    cat(&[&[0x20, 0x00], &proto.to_be_bytes(), &key.to_be_bytes()])
}

pub fn gre_plain(proto: u16) -> Vec<u8> {
    cat(&[&[0x00, 0x00], &proto.to_be_bytes()])
}

/// A fixture, or `None` when the test is to be skipped (no root, outside CI).
#[must_use]
pub fn setup(test: &str) -> Option<Fixture> {
    privilege::require_root(test).then(Fixture::new)
}

/// Bytes built by scapy (Debian's python3-scapy) from a Python expression, e.g.
/// `Ether()/IP()/GRE()/Raw(b"x")`: an encoder that shares no code with ours.
///
/// # Panics
/// When python3 or scapy is missing or the expression fails.
#[must_use]
pub fn scapy(expr: &str) -> Vec<u8> {
    let script = format!("import sys\nfrom scapy.all import *\np = {expr}\nsys.stdout.write(bytes(p).hex())\n");
    let out = Command::new("/usr/bin/python3").args(["-c", &script]).output().expect("running python3 (cargo xtask setup installs python3-scapy)");
    assert!(out.status.success(), "scapy {expr}: {}", String::from_utf8_lossy(&out.stderr));
    let hex = String::from_utf8(out.stdout).unwrap();
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// Bytes as a Python expression, for scapy: `bytes.fromhex('…')`.
pub fn hex_bytes(b: &[u8]) -> String {
    let hex = b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        use std::fmt::Write as _;
        let _ = write!(s, "{x:02x}");
        s
    });
    format!("bytes.fromhex('{hex}')")
}

/// A MAC address from its text form.
///
/// # Panics
/// When `s` is not six hex bytes separated by colons.
#[must_use]
pub fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, part) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    m
}

/// A MAC address as scapy writes it.
#[must_use]
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
