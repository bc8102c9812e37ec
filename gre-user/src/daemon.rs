//! `gre daemon`: the parts of a tunnel that need a running process. It sends Cisco-style
//! keepalives and keeps each tunnel's up/down state (in the pinned TUNNEL_STATE map, for
//! `gre show`), and it decapsulates GRE that arrived in fragments: XDP passes fragments to the
//! kernel, which reassembles them but has no GRE module to give them to; a raw socket gets them
//! here, and they go into the tunnel netdev like any other packet. The datapath itself never
//! depends on this process.

use std::{
    collections::HashMap,
    io::ErrorKind,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use gre_common::{
    addr, gre,
    maps::{Tunnel, tunnel_flags, tunnel_state},
};
use log::{info, warn};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
};

use crate::{instance, maps::Maps, reassembled};

/// Runs until SIGINT or SIGTERM; with `purge_on_exit` NHRP clients withdraw their
/// registrations then (the node leaves for good), else everything stays for the next daemon.
///
/// # Errors
/// The instance is not up, another daemon runs for it, or a socket cannot be opened.
pub async fn run(instance: &str, metrics: Option<std::net::SocketAddr>, purge_on_exit: bool) -> Result<()> {
    let _lock = crate::runtime::lock(instance)?;
    let dir = instance::running_dir(instance)?;
    let mut maps = Maps::open_pinned(&dir.join("maps"))?;
    let sender = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).context("opening a raw IPv4 socket for keepalives")?;
    let receiver = raw_gre_socket(Domain::IPV4)?;
    let receiver6 = raw_gre_socket(Domain::IPV6)?;
    // The IPv6 socket gets the payload only: ask for the destination address alongside.
    let on: libc::c_int = 1;
    // SAFETY: setting an int socket option on our own socket.
    if unsafe { libc::setsockopt(receiver6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, (&raw const on).cast(), 4) } != 0 {
        return Err(std::io::Error::last_os_error()).context("IPV6_RECVPKTINFO");
    }
    // And the traffic class, for RFC 6040.
    // SAFETY: as above.
    if unsafe { libc::setsockopt(receiver6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, (&raw const on).cast(), 4) } != 0 {
        return Err(std::io::Error::last_os_error()).context("IPV6_RECVTCLASS");
    }
    let mut path_mtu = crate::pmtu::PathMtu::new(&receiver, &receiver6)?;
    // SAFETY: the sockets are moved in and owned by the AsyncFds for as long as they are registered.
    let fib_watch = unsafe { AsyncFd::register(crate::fib_watch::FibWatch::new()?) }.map_err(|e| e.into_parts().1).context("registering the netlink socket")?;
    // Readable: GRE that arrived in fragments; error: ICMP about our GRE (path MTU).
    let errors = Interest::READABLE | Interest::ERROR;
    let receiver = unsafe { AsyncFd::register_with_interest(receiver, errors) }.map_err(|e| e.into_parts().1).context("registering the raw GRE socket")?;
    // SAFETY: as above.
    let receiver6 =
        unsafe { AsyncFd::register_with_interest(receiver6, errors) }.map_err(|e| e.into_parts().1).context("registering the raw GRE/IPv6 socket")?;
    let injector = packet_socket()?;
    let mut keepalives = Keepalives::default();
    let mut nhrp = crate::nhrp::agent::Agent::new(&mut maps, crate::runtime::path(instance, "nhrp")).await?;
    // Protected tunnels' SAs, driven through charon beside the loop.
    let ipsec = std::sync::Arc::new(std::sync::Mutex::new(crate::ipsec::Status::default()));
    let (want, wants) = tokio::sync::mpsc::channel(64);
    let sa_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let link = crate::ipsec::Link { status: ipsec.clone(), want, changed: sa_changed.clone() };
    nhrp.set_ipsec(link.clone());
    let ipsec_task = tokio::spawn(crate::ipsec::run(instance.to_string(), crate::ipsec::load(instance)?, link, wants));
    let log_socket = crate::logs::serve(instance)?;
    let (control_socket, mut asked) = crate::control::serve(instance)?;
    let metrics = match metrics {
        Some(listen) => Some(crate::metrics::serve(instance, listen).await?),
        None => None,
    };
    // The datapath's ring buffers (NHRP it punted, resolutions and indications it asks for)
    // wake the loop when they have something; the clock once a second, for the timers.
    let [events_fd, punt_fd] = maps.ring_fds();
    // SAFETY: the descriptors belong to `maps`, which outlives these registrations (both end
    // with this function, the registrations first: declared after it).
    let events_ring =
        unsafe { AsyncFd::register_with_interest(Ring(events_fd), Interest::READABLE) }.map_err(|e| e.into_parts().1).context("watching the event ring")?;
    // SAFETY: as above.
    let punt_ring =
        unsafe { AsyncFd::register_with_interest(Ring(punt_fd), Interest::READABLE) }.map_err(|e| e.into_parts().1).context("watching the NHRP ring")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The kernel's routes are read again when netlink says they changed, not on a timer.
    let mut routes_changed = false;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    info!("daemon for instance {instance} running");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = crate::clock::monotonic_secs();
                nhrp.drain(&mut maps, &sender, now);
                path_mtu.expire(&mut maps).await;
                keepalives.tick(&mut maps, &sender)?;
                nhrp.tick(&mut maps, &sender, now)?;
                if std::mem::take(&mut routes_changed) {
                    nhrp.refresh_kernel_routes(&mut maps).await;
                }
                nhrp.keep_neighbours(&mut maps).await;
                nhrp.export_routes(&maps).await;
            }
            // A protected peer whose SA went leaves the datapath now, not at the next tick.
            () = sa_changed.notified() => nhrp.sa_changed(&mut maps),
            ready = events_ring.readable() => {
                // Cleared first: a record committed while draining wakes the loop again.
                ready?.clear_ready();
                nhrp.drain(&mut maps, &sender, crate::clock::monotonic_secs());
            }
            ready = punt_ring.readable() => {
                ready?.clear_ready();
                nhrp.drain(&mut maps, &sender, crate::clock::monotonic_secs());
            }
            ready = receiver.ready(Interest::ERROR) => {
                ready?.clear_ready_matching(tokio::io::Ready::ERROR);
                path_mtu.drain(&mut maps, receiver.get_ref()).await;
            }
            ready = receiver6.ready(Interest::ERROR) => {
                ready?.clear_ready_matching(tokio::io::Ready::ERROR);
                path_mtu.drain(&mut maps, receiver6.get_ref()).await;
            }
            ready = receiver.readable() => {
                let mut guard = ready?;
                let mut punted = Vec::new();
                drain(&mut maps, guard.get_inner(), &injector, &mut punted);
                guard.clear_ready();
                nhrp.receive_all(&mut maps, &sender, punted, crate::clock::monotonic_secs());
            }
            ready = fib_watch.readable() => {
                let mut guard = ready?;
                routes_changed |= guard.get_inner().drain(&mut maps);
                guard.clear_ready();
            }
            ready = receiver6.readable() => {
                let mut guard = ready?;
                let mut punted = Vec::new();
                drain6(&mut maps, guard.get_inner(), &injector, &mut punted);
                guard.clear_ready();
                nhrp.receive_all(&mut maps, &sender, punted, crate::clock::monotonic_secs());
            }
            Some(a) = asked.recv() => {
                let answer = match &a.request {
                    crate::control::Request::LogLevel { level } => match crate::logs::set_level(level) {
                        Ok(()) => {
                            info!("log level now {level}");
                            serde_json::json!({ "level": level })
                        }
                        Err(e) => serde_json::json!({ "error": e }),
                    },
                    crate::control::Request::Ipsec => {
                        serde_json::to_value(&*ipsec.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).unwrap_or_default()
                    }
                    request => nhrp.answer(&mut maps, &sender, request, crate::clock::monotonic_secs()),
                };
                let _ = a.answer.send(answer);
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    if let Some(task) = metrics {
        task.abort();
    }
    ipsec_task.abort();
    nhrp.shutdown(&mut maps, &sender, crate::clock::monotonic_secs(), purge_on_exit);
    // Nobody watches the tunnels any more.
    for (id, _) in maps.tunnels()? {
        let mut s = maps.state(id)?;
        if s.state != tunnel_state::UNKNOWN {
            s.state = tunnel_state::UNKNOWN;
            s.since = unix_now();
            maps.set_state(id, &s)?;
        }
    }
    info!("daemon for instance {instance} stopped");
    log_socket.abort();
    control_socket.abort();
    let _ = std::fs::remove_file(crate::logs::socket_path(instance));
    let _ = std::fs::remove_file(crate::control::socket_path(instance));
    Ok(())
}

/// A ring buffer's descriptor (owned by the map), to wait on.
struct Ring(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Ring {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

fn raw_gre_socket(domain: Domain) -> Result<Socket> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(i32::from(gre::IPPROTO_GRE)))).context("opening a raw GRE socket")?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn unix_now() -> u64 {
    crate::clock::unix_secs()
}

/// Keepalive bookkeeping of one tunnel.
struct Watch {
    next_send: Instant,
    /// `keepalives_returned` when last read.
    returned: u64,
    /// When one last came back (or when watching started).
    last_seen: Instant,
    answered_once: bool,
}

#[derive(Default)]
struct Keepalives {
    watches: HashMap<u32, Watch>,
}

impl Keepalives {
    fn tick(&mut self, maps: &mut Maps, sender: &Socket) -> Result<()> {
        let now = Instant::now();
        for (id, t) in maps.tunnels()? {
            if t.keepalive_period == 0 {
                continue;
            }
            let period = Duration::from_secs(u64::from(t.keepalive_period));
            let returned = maps.tunnel_stats(id)?.keepalives_returned;
            let w = self.watches.entry(id).or_insert(Watch { next_send: now, returned, last_seen: now, answered_once: false });
            let mut s = maps.state(id)?;
            if now >= w.next_send {
                if let Err(e) = send_keepalive(sender, &t) {
                    warn!("tunnel {id}: sending a keepalive: {e:#}");
                }
                s.keepalives_sent += 1;
                w.next_send = now + period;
            }
            if returned > w.returned {
                w.returned = returned;
                w.last_seen = now;
                w.answered_once = true;
            }
            // Up while answers come; down after `retries` periods without one (IOS semantics).
            let silent = now.duration_since(w.last_seen);
            let wanted = if w.answered_once && silent <= period * u32::from(t.keepalive_retries) {
                tunnel_state::UP
            } else if silent > period * u32::from(t.keepalive_retries) {
                tunnel_state::DOWN
            } else {
                s.state
            };
            if wanted != s.state {
                info!("tunnel {id} ({} -> {}): {}", crate::maps::show_addr(&t.local), crate::maps::show_addr(&t.remote), tunnel_state::NAMES[wanted as usize]);
                s.state = wanted;
                s.transitions += 1;
                s.since = unix_now();
            }
            maps.set_state(id, &s)?;
        }
        Ok(())
    }
}

/// A Cisco keepalive: GRE to the remote carrying a GRE packet from the remote to us with
/// protocol type 0. The remote decapsulates it and forwards (or, with this datapath, reflects)
/// the inner packet back; our XDP counts it as `keepalives_returned`.
fn keepalive_packet(t: &Tunnel) -> Option<Vec<u8>> {
    let local = addr::to_v4(&t.local)?;
    let remote = addr::to_v4(&t.remote)?;
    let inner_gre = gre::Header { protocol: gre::PROTO_KEEPALIVE, key: (t.flags & tunnel_flags::IKEY != 0).then_some(t.ikey), ..gre::Header::default() };
    let outer_gre = gre::Header { protocol: gre::PROTO_IPV4, key: (t.flags & tunnel_flags::OKEY != 0).then_some(t.okey), ..gre::Header::default() };
    let inner_len = gre::IPV4_HLEN + inner_gre.len();
    let total = gre::IPV4_HLEN + outer_gre.len() + inner_len;
    let mut p = vec![0u8; total];
    let ttl = if t.ttl == 0 { 255 } else { t.ttl };
    write_ipv4(&mut p[..gre::IPV4_HLEN], local, remote, total, ttl);
    let mut at = gre::IPV4_HLEN;
    at += outer_gre.encode(&mut p[at..]).ok()?;
    write_ipv4(&mut p[at..at + gre::IPV4_HLEN], remote, local, inner_len, 255);
    at += gre::IPV4_HLEN;
    inner_gre.encode(&mut p[at..]).ok()?;
    Some(p)
}

fn write_ipv4(h: &mut [u8], src: [u8; 4], dst: [u8; 4], total: usize, ttl: u8) {
    h[0] = 0x45;
    h[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    h[8] = ttl;
    h[9] = gre::IPPROTO_GRE;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let c = gre::internet_checksum(&h[..gre::IPV4_HLEN]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

fn send_keepalive(sender: &Socket, t: &Tunnel) -> Result<()> {
    let p = keepalive_packet(t).context("keepalives need IPv4 endpoints")?;
    let remote = IpAddr::V4(Ipv4Addr::from(addr::to_v4(&t.remote).unwrap_or_default()));
    sender.send_to(&p, &SocketAddr::new(remote, 0).into()).context("sendto")?;
    Ok(())
}

/// An ICMP error about a packet we sent, reported by a receive (its details wait on the error
/// queue, which the path MTU reads).
fn icmp_error(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|c| [libc::EMSGSIZE, libc::EHOSTUNREACH, libc::ENETUNREACH, libc::ECONNREFUSED, libc::EPROTO].contains(&c))
}

/// Reads every reassembled GRE packet waiting on the raw socket.
fn drain(maps: &mut Maps, receiver: &Socket, injector: &OwnedFd, nhrp: &mut Vec<reassembled::Nhrp>) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 65536];
    loop {
        match receiver.recv(&mut buf) {
            Ok(n) => {
                // SAFETY: recv initialised the first n bytes.
                let packet: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
                match receive_v4(maps, packet, injector) {
                    Ok(n) => nhrp.extend(n),
                    Err(e) => warn!("reassembled GRE: {e:#}"),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // An ICMP error about a packet we sent (its details wait on the error queue).
            Err(e) if icmp_error(&e) => {}
            Err(e) => {
                warn!("reading the raw GRE socket: {e}");
                return;
            }
        }
    }
}

/// Reads every reassembled GRE/IPv6 packet waiting on the raw IPv6 socket: the payload, the
/// source from the socket address, the destination from IPV6_PKTINFO.
fn drain6(maps: &mut Maps, receiver: &Socket, injector: &OwnedFd, nhrp: &mut Vec<reassembled::Nhrp>) {
    // Control messages are read as cmsghdr structs: the buffer must be aligned for them.
    #[repr(C, align(8))]
    struct Control([u8; 128]);
    let mut buf = vec![0u8; 65536];
    let mut control = Control([0; 128]);
    loop {
        // SAFETY: all-zero is a valid sockaddr_in6 / msghdr to fill in.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut from).cast();
        msg.msg_namelen = u32::try_from(std::mem::size_of::<libc::sockaddr_in6>()).unwrap_or_default();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len();
        // SAFETY: every pointer in `msg` is valid for the lengths given.
        let n = unsafe { libc::recvmsg(receiver.as_raw_fd(), &raw mut msg, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if icmp_error(&e) {
                continue;
            }
            if e.kind() != ErrorKind::WouldBlock {
                warn!("reading the raw GRE/IPv6 socket: {e}");
            }
            return;
        }
        let (Some(local), tclass) = received_on(&msg) else { continue };
        let body = &buf[..usize::try_from(n).unwrap_or(0)];
        let outer = reassembled::Outer { local, remote: from.sin6_addr.s6_addr, ecn: tclass & gre::ECN_MASK };
        match reassembled::receive(maps, &outer, body, injector) {
            Ok(n) => nhrp.extend(n),
            Err(e) => warn!("reassembled GRE/IPv6: {e:#}"),
        }
    }
}

/// The destination address (IPV6_PKTINFO) and traffic class (IPV6_TCLASS) of a received IPv6
/// packet, from its control messages.
fn received_on(msg: &libc::msghdr) -> (Option<[u8; 16]>, u8) {
    let (mut local, mut tclass) = (None, 0);
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info = libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>().read_unaligned();
                local = Some(info.ipi6_addr.s6_addr);
            }
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_TCLASS {
                #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a traffic class byte")]
                {
                    tclass = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned() as u8;
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (local, tclass)
}

/// A reassembled GRE/IPv4 packet (the raw IPv4 socket includes the IP header).
fn receive_v4(maps: &mut Maps, packet: &[u8], injector: &OwnedFd) -> Result<Option<reassembled::Nhrp>> {
    let ihl = usize::from(packet.first().context("empty")? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2).context("short")?, *packet.get(3).context("short")?]));
    let ip = packet.get(..ihl).context("short IPv4 header")?;
    let body = packet.get(ihl..total.min(packet.len())).context("short packet")?;
    let outer = reassembled::Outer {
        local: addr::from_v4([ip[16], ip[17], ip[18], ip[19]]),
        remote: addr::from_v4([ip[12], ip[13], ip[14], ip[15]]),
        ecn: ip[1] & gre::ECN_MASK,
    };
    reassembled::receive(maps, &outer, body, injector)
}

fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a packet socket");
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_gre_in_gre_back_to_us() {
        let t = Tunnel {
            local: addr::from_v4([198, 51, 100, 1]),
            remote: addr::from_v4([198, 51, 100, 65]),
            ikey: 7,
            okey: 8,
            flags: tunnel_flags::IKEY | tunnel_flags::OKEY,
            ..Tunnel::default()
        };
        let p = keepalive_packet(&t).unwrap();
        assert_eq!(p.len(), 20 + 8 + 20 + 8);
        assert_eq!((&p[12..16], &p[16..20], p[9], p[8]), (&[198, 51, 100, 1][..], &[198, 51, 100, 65][..], 47, 255));
        assert_eq!(gre::internet_checksum(&p[..20]), 0, "outer header checksum");
        assert_eq!(gre::Header::decode(&p[20..]).unwrap().0, gre::Header { protocol: 0x0800, key: Some(8), ..gre::Header::default() });
        // The inner packet goes from the remote back to us, with our input key.
        assert_eq!((&p[40..44], &p[44..48]), (&[198, 51, 100, 65][..], &[198, 51, 100, 1][..]));
        assert_eq!(gre::internet_checksum(&p[28..48]), 0, "inner header checksum");
        assert_eq!(gre::Header::decode(&p[48..]).unwrap().0, gre::Header { protocol: 0, key: Some(7), ..gre::Header::default() });
    }
}
