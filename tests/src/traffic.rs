//! Traffic between namespaces: ping, and a TCP transfer whose content is verified end to end.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use sha2::{Digest as _, Sha256};

use crate::topology::ns_sh;

/// Runs `f` on a thread of its own inside namespace `ns` (setns changes one thread only).
///
/// # Errors
/// The namespace cannot be entered, or `f` fails.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("thread in {ns} panicked"))?
}

/// `ping -c COUNT` from `ns` to `dst`; fails unless every reply came back.
///
/// # Errors
/// Lost replies or ping failing.
pub fn ping(ns: &str, dst: &str, count: u32) -> Result<String> {
    let count = count.to_string();
    let out = ns_sh(ns, &["ping", "-c", &count, "-i", "0.2", "-W", "2", dst])?;
    let want = format!("{count} packets transmitted, {count} received");
    if !out.contains(&want) {
        bail!("ping {dst} from {ns}: expected {want:?}:\n{out}");
    }
    Ok(out)
}

/// `count` pings `interval` seconds apart; fails unless every reply came back.
///
/// # Errors
/// A reply is missing.
pub fn ping_fast(ns: &str, dst: &str, count: u32, interval: f64) -> Result<String> {
    let (count, interval) = (count.to_string(), interval.to_string());
    let out = ns_sh(ns, &["ping", "-c", &count, "-i", &interval, "-W", "2", dst])?;
    let want = format!("{count} packets transmitted, {count} received");
    if !out.contains(&want) {
        bail!("ping {dst} from {ns}: expected {want:?}:\n{out}");
    }
    Ok(out)
}

/// One ping of `size` payload bytes, with DF (`-M do`) or without (`-M dont`); fails unless the
/// reply came back.
///
/// # Errors
/// No reply, or ping failing.
pub fn ping_sized(ns: &str, dst: &str, size: u32, df: bool) -> Result<String> {
    let size = size.to_string();
    let out = ns_sh(ns, &["ping", "-c", "1", "-W", "2", "-M", if df { "do" } else { "dont" }, "-s", &size, dst])?;
    if !out.contains("1 received") {
        bail!("ping -s {size} {dst} from {ns}: no reply:\n{out}");
    }
    Ok(out)
}

/// What a TCP transfer moved.
#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Deterministic, incompressible-looking test data (xorshift64*).
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Sends `len` bytes over TCP from `client_ns` to a listener at `server` in `server_ns`, and
/// returns (what was sent, what was received), each with its SHA-256.
///
/// # Errors
/// Connecting, sending or receiving fails or takes longer than 60 s.
pub fn tcp_transfer(server_ns: &str, server: SocketAddr, client_ns: &str, len: u64) -> Result<(Transfer, Transfer)> {
    let receiver = tcp_listen(server_ns, server)?;
    let sent = tcp_send(client_ns, server, len)?;
    let got = receiver.join().map_err(|_| anyhow!("receiver panicked"))??;
    Ok((sent, got))
}

/// Listens on `server` in `ns` and returns once it does: the thread accepts one connection and
/// returns what it received, with its SHA-256.
///
/// # Errors
/// The listener does not start within 10 s.
pub fn tcp_listen(ns: &str, server: SocketAddr) -> Result<thread::JoinHandle<Result<Transfer>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let receiver = thread::spawn(move || {
        in_netns(&ns, move || {
            let listener = TcpListener::bind(server).with_context(|| format!("binding {server}"))?;
            let _ = ready_tx.send(());
            let (mut conn, _) = listener.accept().context("accepting")?;
            conn.set_read_timeout(Some(Duration::from_mins(1)))?;
            let (mut hash, mut bytes, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
            loop {
                let n = conn.read(&mut buf).context("receiving")?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                bytes += n as u64;
            }
            Ok(Transfer { bytes, sha256: hash.finalize().into() })
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).context("the receiver did not start")?;
    Ok(receiver)
}

/// Connects from `ns` to `server` and sends `len` bytes; what was sent, with its SHA-256.
///
/// # Errors
/// Connecting or sending fails, or takes longer than 60 s.
pub fn tcp_send(ns: &str, server: SocketAddr, len: u64) -> Result<Transfer> {
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(10)).with_context(|| format!("connecting to {server}"))?;
        conn.set_write_timeout(Some(Duration::from_mins(1)))?;
        let (mut hash, mut state, mut left, mut buf) = (Sha256::new(), 0x9e37_79b9_7f4a_7c15u64, len, vec![0u8; 1 << 16]);
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            fill(&mut buf[..n], &mut state);
            conn.write_all(&buf[..n]).context("sending")?;
            hash.update(&buf[..n]);
            left -= n as u64;
            if Instant::now() > deadline {
                bail!("sending {len} bytes took more than 60 s");
            }
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        Ok(Transfer { bytes: len, sha256: hash.finalize().into() })
    })
}

/// A multicast group of the documentation range (RFC 5771 MCAST-TEST-NET) and a port for it.
pub const GROUP: (Ipv4Addr, u16) = (Ipv4Addr::new(233, 252, 0, 1), 5405);

/// A UDP socket in `ns` that has joined [`GROUP`] on the interface with address `on`.
///
/// # Errors
/// The namespace cannot be entered or the socket calls fail.
pub fn group_member(ns: &str, on: Ipv4Addr) -> Result<UdpSocket> {
    in_netns(ns, move || {
        let s = UdpSocket::bind(GROUP)?;
        s.join_multicast_v4(&GROUP.0, &on)?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        Ok(s)
    })
}

/// Sends `count` datagrams `[b'm', n]` to [`GROUP`] from address `from` in `ns` (a route for
/// the group must lead into the tunnel), with IP TTL `ttl`.
///
/// # Errors
/// The namespace cannot be entered or the socket calls fail.
pub fn send_to_group(ns: &str, from: Ipv4Addr, ttl: u32, count: u8) -> Result<()> {
    in_netns(ns, move || {
        let s = UdpSocket::bind((from, 0))?;
        s.set_multicast_ttl_v4(ttl)?;
        for n in 0..count {
            s.send_to(&[b'm', n], GROUP)?;
        }
        Ok(())
    })
}

/// Receives the `count` datagrams [`send_to_group`] sent, in order.
///
/// # Errors
/// One is missing (1.5 s timeout), or differs.
pub fn receive_from_group(s: &UdpSocket, count: u8) -> Result<SocketAddr> {
    let mut buf = [0u8; 16];
    let mut from = None;
    for n in 0..count {
        let (len, f) = s.recv_from(&mut buf).with_context(|| format!("multicast datagram {n}"))?;
        if buf[..len] != [b'm', n] {
            bail!("multicast datagram {n}: got {:?}", &buf[..len]);
        }
        from = Some(f);
    }
    from.context("no datagram asked for")
}

/// Polls `ok` every 200 ms; panics naming `what` after `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path` from `addr` inside `ns` (HTTP/1.1, connection closed): the status line and body.
///
/// # Errors
/// The connection fails.
pub fn http_get(ns: &str, addr: &'static str, path: &'static str) -> Result<(String, String)> {
    in_netns(ns, move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
    })
}

/// The value of one series (`name{labels}` as exposed) in a Prometheus text exposition.
pub fn metric(body: &str, series: &str) -> Option<u64> {
    let line = body.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// A numbered UDP stream: `count` datagrams from `from` (inside `ns_from`) to `to` (a listener
/// inside `ns_to`), about `pps` a second. Returns the sequence numbers that never arrived.
///
/// # Errors
/// A socket cannot be opened or a namespace entered.
pub fn udp_stream(ns_from: &str, from: Ipv4Addr, ns_to: &str, to: SocketAddr, count: u32, pps: u32) -> Result<Vec<u32>> {
    let receiver = in_netns(ns_to, move || {
        let s = UdpSocket::bind(to)?;
        // A receive buffer that rides out any scheduling hiccup of this test (root may force it).
        let size: libc::c_int = 32 << 20;
        // SAFETY: setting an int option on our own socket.
        unsafe { libc::setsockopt(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const size).cast(), 4) };
        Ok(s)
    })?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let collector = thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut buf = [0u8; 64];
        while let Ok(n) = receiver.recv(&mut buf) {
            if n >= 4 {
                let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if let Some(slot) = seen.get_mut(i) {
                    *slot = true;
                }
            }
        }
        seen
    });
    let ns = ns_from.to_string();
    in_netns(&ns, move || {
        let s = UdpSocket::bind((from, 0))?;
        let start = Instant::now();
        for i in 0..count {
            s.send_to(&i.to_be_bytes(), to)?;
            // Paced: packet i leaves no earlier than i / pps seconds in.
            let due = Duration::from_secs_f64(f64::from(i) / f64::from(pps));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                thread::sleep(wait);
            }
        }
        Ok(())
    })?;
    let seen = collector.join().map_err(|_| anyhow!("the receiver panicked"))?;
    Ok((0..count).filter(|i| !seen[*i as usize]).collect())
}

/// A packet socket on `ifname` in namespace `ns` (made on a thread that enters it; it stays
/// there), non-blocking, for every protocol: to send frames as they are and to read what passes.
///
/// # Errors
/// The namespace or the interface is not there, or the socket cannot be made.
pub fn packet_socket(ns: &str, ifname: &str) -> Result<std::os::fd::OwnedFd> {
    let (ns, ifname) = (ns.to_string(), ifname.to_string());
    std::thread::spawn(move || -> Result<std::os::fd::OwnedFd> {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("namespace {ns}"))?;
        nix::sched::setns(std::os::fd::AsFd::as_fd(&f), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let proto = i32::from((libc::ETH_P_ALL as u16).to_be());
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto) };
        if fd < 0 {
            anyhow::bail!("packet socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just made.
        let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname.clone())?;
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET)?;
        sll.sll_protocol = u16::try_from(proto)?;
        sll.sll_ifindex = i32::try_from(index)?;
        // SAFETY: binding our socket to a filled sockaddr_ll of its size.
        if unsafe { libc::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), (&raw const sll).cast(), u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?) } != 0 {
            anyhow::bail!("binding to {ifname}: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the socket thread panicked"))?
}

/// An Ethernet frame carrying `payload` over GRE (with `key`, protocol `protocol`) in IPv4 or
/// IPv6 from `src` to `dst`, as a sender on the link would put it there.
///
/// # Panics
/// The addresses are of different families, or the payload does not fit one datagram.
#[must_use]
pub fn gre_frame(macs: ([u8; 6], [u8; 6]), (src, dst): (std::net::IpAddr, std::net::IpAddr), key: u32, protocol: u16, payload: &[u8]) -> Vec<u8> {
    let gre = [&[0x20, 0x00][..], &protocol.to_be_bytes(), &key.to_be_bytes(), payload].concat();
    let (ethertype, ip) = match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0];
            ip[2..4].copy_from_slice(&u16::try_from(20 + gre.len()).expect("one datagram").to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = gre_common::gre::internet_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            (0x0800u16, ip)
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&u16::try_from(gre.len()).expect("one datagram").to_be_bytes());
            ip.extend_from_slice(&[47, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            (0x86dd, ip)
        }
        _ => panic!("{src} and {dst} are of different families"),
    };
    [&macs.0[..], &macs.1, &ethertype.to_be_bytes(), &ip, &gre].concat()
}
