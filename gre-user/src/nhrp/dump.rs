//! `gre nhrp dump`: the NHRP messages of a capture (pcap or pcapng) or of live traffic on an
//! interface, one line each or as JSON: what an operator reads when a hub and a spoke disagree.
//! NHRP is found inside GRE (protocol type 0x2001) or straight over IP (protocol 54), over IPv4
//! or IPv6, in Ethernet (one VLAN tag), Linux cooked (v1, v2) or raw IP captures.

use std::{fs::File, io::Read as _, net::IpAddr, path::Path};

use anyhow::{Context as _, Result, bail};
use gre_common::gre;
use pcap_file::{
    DataLink, TsResolution,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader, blocks::interface_description::InterfaceDescriptionOption},
};
use serde::Serialize;

use super::wire::{self, Packet, PacketView};

/// NHRP straight over IP (RFC 2332 §3's "NHRP over IP", protocol 54), as some captures have it.
const IPPROTO_NHRP: u8 = 54;

/// One NHRP message found in a capture.
#[derive(Debug)]
pub struct Message {
    /// 1-based frame number, as tshark counts.
    pub frame: usize,
    pub time: f64,
    pub outer_src: IpAddr,
    pub outer_dst: IpAddr,
    pub gre_key: Option<u32>,
    /// The NHRP bytes as captured (up to the end of the frame).
    pub wire: Vec<u8>,
    pub packet: Result<Packet, wire::Error>,
}

impl Message {
    /// True if the NHRP checksum over the captured bytes is right.
    #[must_use]
    pub fn checksum_ok(&self) -> bool {
        Packet::checksum_ok(&self.wire)
    }
}

/// Reads every NHRP message of a capture file.
///
/// # Errors
/// The file cannot be read or is neither pcap nor pcapng.
pub fn read(path: &Path) -> Result<Vec<Message>> {
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).with_context(|| format!("reading {}", path.display()))?;
    let file = File::open(path)?;
    let mut frames: Vec<(DataLink, f64, Vec<u8>)> = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file).with_context(|| format!("{}: not a pcapng file", path.display()))?;
        // Link type and seconds per timestamp unit, by interface, as their blocks come.
        let mut links: Vec<(DataLink, f64)> = Vec::new();
        while let Some(block) = r.next_block() {
            let Ok(block) = block else { break };
            match block {
                Block::InterfaceDescription(i) => {
                    // if_tsresol: 10^-n seconds, or 2^-n with the top bit set; microseconds if absent.
                    let unit = i.options.iter().find_map(|o| match o {
                        InterfaceDescriptionOption::IfTsResol(r) if r & 0x80 == 0 => Some(10f64.powi(-i32::from(*r))),
                        InterfaceDescriptionOption::IfTsResol(r) => Some(2f64.powi(-i32::from(r & 0x7f))),
                        _ => None,
                    });
                    links.push((i.linktype, unit.unwrap_or(1e-6)));
                }
                Block::EnhancedPacket(p) => {
                    let (link, unit) = links.get(p.interface_id as usize).copied().unwrap_or((DataLink::ETHERNET, 1e-6));
                    // The library reads the raw timestamp as nanoseconds.
                    #[expect(clippy::cast_precision_loss, reason = "a display timestamp")]
                    let t = p.timestamp.as_nanos() as f64 * unit;
                    frames.push((link, t, p.data.into_owned()));
                }
                Block::SimplePacket(p) => {
                    frames.push((links.first().map_or(DataLink::ETHERNET, |l| l.0), 0.0, p.data.into_owned()));
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(file).with_context(|| format!("{}: not a pcap or pcapng file", path.display()))?;
        let header = r.header();
        let frac = if header.ts_resolution == TsResolution::NanoSecond { 1e-9 } else { 1e-6 };
        // Raw records: captures made by fuzzers or cut short claim lengths the checked reader
        // refuses; what was captured is still worth decoding.
        while let Some(p) = r.next_raw_packet() {
            let Ok(p) = p else { break };
            frames.push((header.datalink, f64::from(p.ts_sec) + f64::from(p.ts_frac) * frac, p.data.into_owned()));
        }
    }
    if frames.is_empty() {
        bail!("{}: no frames", path.display());
    }
    let start = frames[0].1;
    Ok(frames
        .into_iter()
        .enumerate()
        .filter_map(|(i, (link, t, data))| {
            let (outer_src, outer_dst, gre_key, nhrp) = find_nhrp(link, &data)?;
            Some(Message { frame: i + 1, time: t - start, outer_src, outer_dst, gre_key, wire: nhrp.to_vec(), packet: Packet::decode(nhrp) })
        })
        .collect())
}

/// Decodes NHRP live on `iface`, in both directions, calling `each` for every message until
/// `count` messages (if given) or an error from `each`.
///
/// A packet socket (cooked: network-layer packets, whatever the link) sees what the kernel
/// sees. On an interface where this datapath is attached, received NHRP is taken in XDP before
/// packet sockets see it, so there the dump shows what the node sends; the router or switch
/// port in between shows both directions.
///
/// # Errors
/// The interface does not exist, the socket cannot be opened (needs CAP_NET_RAW), or `each` fails.
pub fn live(iface: &str, count: Option<usize>, mut each: impl FnMut(&Message) -> Result<()>) -> Result<()> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface:?}");
    }
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(all)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a packet socket");
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = all;
    sll.sll_ifindex = i32::try_from(ifindex)?;
    let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?;
    // SAFETY: binding our socket to a valid sockaddr_ll of the size given.
    if unsafe { libc::bind(std::os::fd::AsRawFd::as_raw_fd(&sock), (&raw const sll).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 65536];
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        // SAFETY: reading into our own buffer of the length given.
        let n = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(&sock), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("reading packets");
        }
        let frame = &buf[..usize::try_from(n)?];
        let Some((outer_src, outer_dst, gre_key, nhrp)) = find_nhrp(DataLink::RAW, frame) else { continue };
        seen += 1;
        let m = Message { frame: seen, time: start.elapsed().as_secs_f64(), outer_src, outer_dst, gre_key, wire: nhrp.to_vec(), packet: Packet::decode(nhrp) };
        each(&m)?;
    }
    Ok(())
}

/// The outer addresses, the GRE key and the NHRP bytes of a frame, if it carries NHRP.
fn find_nhrp(link: DataLink, frame: &[u8]) -> Option<(IpAddr, IpAddr, Option<u32>, &[u8])> {
    let (ethertype, l3) = match link {
        DataLink::ETHERNET => {
            let mut t = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut at = gre::ETH_HLEN;
            if t == gre::ETH_P_8021Q || t == gre::ETH_P_8021AD {
                t = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
                at += gre::VLAN_HLEN;
            }
            (t, at)
        }
        DataLink::LINUX_SLL => (u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]), 16),
        // `tcpdump -i any`: protocol first, 20-byte header.
        DataLink::LINUX_SLL2 => (u16::from_be_bytes([*frame.first()?, *frame.get(1)?]), 20),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => (if frame.first()? >> 4 == 6 { gre::ETH_P_IPV6 } else { gre::ETH_P_IPV4 }, 0),
        _ => return None,
    };
    let ip = frame.get(l3..)?;
    let (src, dst, proto, payload): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        gre::ETH_P_IPV4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (src.into(), dst.into(), *ip.get(9)?, ip.get(ihl..)?)
        }
        gre::ETH_P_IPV6 => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), *ip.get(6)?, ip.get(gre::IPV6_HLEN..)?)
        }
        _ => return None,
    };
    if proto == IPPROTO_NHRP {
        return Some((src, dst, None, payload));
    }
    if proto != gre::IPPROTO_GRE {
        return None;
    }
    let (h, len) = gre::Header::decode(payload).ok()?;
    (h.protocol == wire::GRE_PROTOCOL).then(|| (src, dst, h.key, &payload[len..]))
}

/// The flag letters set in a packet, as RFC 2332 names them for its type.
fn flag_words(p: &Packet) -> String {
    use wire::{
        flags::{purge, registration as reg, resolution as res},
        kind as k,
    };
    let table: &[(u16, &str)] = match p.kind {
        k::RESOLUTION_REQUEST | k::RESOLUTION_REPLY => &[(res::Q, "Q"), (res::A, "A"), (res::D, "D"), (res::U, "U"), (res::S, "S"), (res::NAT, "NAT")],
        k::REGISTRATION_REQUEST | k::REGISTRATION_REPLY => &[(reg::U, "U"), (reg::NAT, "NAT")],
        k::PURGE_REQUEST | k::PURGE_REPLY => &[(purge::N, "N")],
        _ => &[],
    };
    table.iter().filter(|(bit, _)| p.flags & bit != 0).map(|(_, w)| *w).collect::<Vec<_>>().join(",")
}

/// One line for people.
#[must_use]
pub fn line(m: &Message) -> String {
    let key = m.gre_key.map_or_else(String::new, |k| format!(" key {k}"));
    let head = format!("{:>4} {:>9.6} {} > {}{key}", m.frame, m.time, m.outer_src, m.outer_dst);
    match &m.packet {
        Err(e) => format!("{head} NHRP malformed: {e}"),
        Ok(p) => {
            let mut s = format!(
                "{head} NHRP {} id {} {} ({}) > {} hops {}",
                wire::kind::name(p.kind),
                p.request_id,
                wire::show_address(&p.src_proto),
                wire::show_address(&p.src_nbma.bytes),
                wire::show_address(&p.dst_proto),
                p.hop_count
            );
            let fl = flag_words(p);
            if !fl.is_empty() {
                s += &format!(" [{fl}]");
            }
            for c in p.cies() {
                s += &format!(
                    " cie(code {} {}/{} nbma {} hold {} mtu {})",
                    c.code,
                    wire::show_address(&c.proto),
                    c.prefix_len,
                    wire::show_address(&c.nbma.bytes),
                    c.holding_time,
                    c.mtu
                );
            }
            let exts: Vec<&str> = p.extensions.iter().filter(|e| e.kind & 0x3fff != wire::ext::END).map(|e| wire::ext::name(e.kind & 0x3fff)).collect();
            if !exts.is_empty() {
                s += &format!(" ext {}", exts.join(","));
            }
            if !m.checksum_ok() {
                s += " BAD CHECKSUM";
            }
            s
        }
    }
}

/// Every field, for scripts.
#[derive(Debug, Serialize)]
pub struct MessageView {
    pub frame: usize,
    pub time: f64,
    pub outer_src: String,
    pub outer_dst: String,
    pub gre_key: Option<u32>,
    pub checksum_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nhrp: Option<PacketView>,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        Self {
            frame: m.frame,
            time: m.time,
            outer_src: m.outer_src.to_string(),
            outer_dst: m.outer_dst.to_string(),
            gre_key: m.gre_key,
            checksum_ok: m.checksum_ok(),
            error: m.packet.as_ref().err().map(ToString::to_string),
            nhrp: m.packet.as_ref().ok().map(PacketView::from),
        }
    }
}
