//! The NHRP state machine of one multipoint tunnel and one protocol family: what to send and what
//! to install, given what arrived. Pure (sans-IO): the daemon feeds it packets and the ticks of a
//! monotonic clock and carries out its actions, which keeps the protocol testable without sockets.
//!
//! Split by role as FRR's nhrpd is: [`client`] registers with the NHSs, [`server`] takes
//! registrations, [`resolution`] asks and answers for addresses and takes shortcuts, [`relay`]
//! passes requests and replies between NHSs, and [`pending`] is the one table of requests that
//! wait for an answer, with their deadlines.

mod client;
mod pending;
mod relay;
mod resolution;
mod server;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use self::{client::Client, pending::Pending, relay::Relays, server::Server};
pub use self::{client::NhsLink, server::Binding};
use super::wire::{self, Address, Cie, ExtBody, Extension, Packet, Payload, error_code, ext, kind};

/// RFC 2332 §5.2.0.1 CIE codes used here.
pub mod code {
    pub const SUCCESS: u8 = 0;
    pub const ADMINISTRATIVELY_PROHIBITED: u8 = 4;
    pub const INSUFFICIENT_RESOURCES: u8 = 5;
    pub const NO_BINDING: u8 = 12;
    pub const BINDING_NON_UNIQUE: u8 = 13;
    /// Registration: the address is registered already, uniquely, from another NBMA address.
    pub const UNIQUE_ADDRESS_REGISTERED: u8 = 14;
}

/// What the engine asks the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send NHRP (of packet type `kind`, for the counters) to an NBMA address, over the tunnel's GRE.
    Send { to: IpAddr, kind: u8, packet: Vec<u8> },
    /// Install (or refresh) a dynamic peer.
    Peer { overlay: IpAddr, nbma: IpAddr, holdtime: u16, multicast: bool },
    /// Remove a peer.
    Forget { overlay: IpAddr },
    /// A purge from an NHS of ours: the dynamic peers and shortcuts inside `prefix` go.
    Withdraw { prefix: ipnet::IpNet },
    /// Route `prefix` (the resolved destination's) straight to the peer `via`: a phase 3
    /// shortcut. `target` is the destination that was resolved.
    Shortcut { target: IpAddr, prefix: ipnet::IpNet, via: IpAddr },
    /// Tell the operator: a peer reported an error, refused what we sent, or a table is full.
    Warn(String),
}

/// A next-hop server a client registers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nhs {
    pub overlay: IpAddr,
    pub nbma: IpAddr,
    /// Lower is preferred for resolutions (as FRR's and Cisco's `nhs … priority`).
    pub priority: u8,
}

/// Bounds on what other stations can make this engine hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registrations a server holds in all.
    pub registrations: usize,
    /// Registrations from one NBMA address (a NAT device hides few GRE spokes: GRE has no ports).
    pub per_nbma: usize,
    /// Our requests waiting for a reply (resolutions, purges).
    pub pending: usize,
    /// Requests forwarded for others, waiting for their reply.
    pub relays: usize,
    /// Stations remembered as told of one registration (to purge them when it goes).
    pub holders: usize,
    /// The longest holding time granted or accepted, in seconds.
    pub holdtime: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self { registrations: 65_536, per_nbma: 4, pending: 4096, relays: 4096, holders: 64, holdtime: 7200 }
    }
}

/// The tunnel's NHRP identity and settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A next-hop server (hub): takes registrations, answers resolutions, forwards those it
    /// cannot answer.
    pub server: bool,
    /// Our overlay (protocol) address: its family is the engine's (protocol type 0x0800 or 0x86DD).
    pub overlay: IpAddr,
    /// The tunnel's subnet: a client registers only an address inside it.
    pub subnet: ipnet::IpNet,
    /// Our NBMA address: NHRP's address family follows it.
    pub nbma: IpAddr,
    /// The NHSs we register with: a spoke's hubs, or a regional hub's own hubs.
    pub nhs: Vec<Nhs>,
    pub holdtime: u16,
    pub auth: Option<Vec<u8>>,
    /// The MTU to announce in CIEs.
    pub mtu: u16,
    pub limits: Limits,
    /// The first request ID (random, so that an off-path sender cannot guess the next one).
    pub first_id: u32,
}

impl Settings {
    /// Settings of a station with the default limits and holding time, no NHS and no password.
    #[must_use]
    pub fn new(server: bool, overlay: IpAddr, subnet: ipnet::IpNet, nbma: IpAddr) -> Self {
        Self { server, overlay, subnet, nbma, nhs: vec![], holdtime: 7200, auth: None, mtu: 1400, limits: Limits::default(), first_id: 1 }
    }
}

/// What the engine may look up in the daemon's tables.
pub struct Tables<'a> {
    /// The peer table: overlay → NBMA (complete entries only).
    pub peer: &'a dyn Fn(IpAddr) -> Option<IpAddr>,
    /// The overlay routes: destination → next-hop overlay address (routes with a next hop only).
    pub route: &'a dyn Fn(IpAddr) -> Option<IpAddr>,
    /// The prefix length of the overlay route that carries a destination now (what a shortcut
    /// would replace).
    pub route_len: &'a dyn Fn(IpAddr) -> Option<u8>,
    /// Destinations this station is the exit for (its kernel routes them elsewhere than into
    /// the tunnel, by a route more specific than the default): the route's prefix length.
    pub local: &'a dyn Fn(IpAddr) -> Option<u8>,
}

impl Tables<'static> {
    /// Empty tables: nothing known.
    pub const NONE: Self = Self { peer: &|_| None, route: &|_| None, route_len: &|_| None, local: &|_| None };
}

/// What was refused from other stations, by reason (shown by `gre show` and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Refused {
    /// A reply to no request of ours (or to one that has timed out).
    pub unsolicited_reply: u64,
    /// A reply from a station the request did not go to, that does not answer for itself.
    pub reply_from_stranger: u64,
    /// A reply for another address than asked, or with a prefix wider than /8.
    pub reply_mismatch: u64,
    /// A resolution request that neither came through an NHS nor from the requester itself.
    pub untrusted_request: u64,
    /// A purge of what the sender does not own.
    pub untrusted_purge: u64,
    /// A Traffic Indication from a station that is not our NHS.
    pub untrusted_indication: u64,
    /// A registration refused: the address is registered uniquely elsewhere.
    pub unique_taken: u64,
    /// A registration refused: an address outside the tunnel's subnet, or a prefix.
    pub not_registrable: u64,
    /// A request refused or not sent because a table is full.
    pub table_full: u64,
}

pub struct Engine {
    pub settings: Settings,
    next_id: u32,
    client: Client,
    server: Server,
    pending: Pending,
    relays: Relays,
    /// When we last sent an Error Indication to each address: at most one a second.
    errors_sent: HashMap<IpAddr, u64>,
    /// When a full table was last reported: once a minute.
    full_reported: Option<u64>,
    pub refused: Refused,
}

/// Offset of the hop count in the fixed header, for Error Indications.
const HOP_COUNT_OFFSET: usize = 9;
/// The CIE prefix length of a unique binding (RFC 2332 §5.2.1).
const UNIQUE_PREFIX: u8 = 0xff;
/// Error Indications remembered per second (one per destination).
const ERRORS_PER_SECOND: usize = 1024;

impl Engine {
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        let client = Client::new(&settings.nhs);
        Self {
            next_id: settings.first_id,
            settings,
            client,
            server: Server::default(),
            pending: Pending::default(),
            relays: Relays::default(),
            errors_sent: HashMap::new(),
            full_reported: None,
            refused: Refused::default(),
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// The prefix length of one address of the engine's family.
    const fn host_len(&self) -> u8 {
        if self.settings.overlay.is_ipv4() { 32 } else { 128 }
    }

    fn protocol_type(&self) -> u16 {
        if self.settings.overlay.is_ipv4() { 0x0800 } else { 0x86dd }
    }

    /// True for an NBMA address of one of our NHSs.
    fn from_nhs(&self, from: IpAddr) -> bool {
        self.settings.nhs.iter().any(|n| n.nbma == from)
    }

    /// This station as a CIE (transit records, responder address).
    fn own_cie(&self) -> Cie {
        Cie {
            prefix_len: self.host_len(),
            mtu: self.settings.mtu,
            holding_time: self.settings.holdtime,
            nbma: nsap(self.settings.nbma),
            proto: octets(self.settings.overlay),
            ..Cie::default()
        }
    }

    /// Our authentication extension, if configured. Cisco's form: a 4-byte SPI of 1 (cleartext
    /// password), then the password.
    fn auth_extension(&self) -> Option<Extension> {
        let auth = self.settings.auth.as_ref()?;
        let mut body = vec![0, 0, 0, 1];
        body.extend_from_slice(auth);
        Some(Extension { compulsory: true, kind: ext::AUTHENTICATION, body: ExtBody::Raw(body) })
    }

    /// The common skeleton of a request we originate: our NBMA and overlay addresses, the
    /// Responder Address and transit extensions (empty), authentication, and the NAT extension
    /// with `nat` in it.
    fn request(&self, kind: u8, flags: u16, request_id: u32, dst: IpAddr, cies: Vec<Cie>, nat: Option<Vec<Cie>>) -> Packet {
        let mut extensions = vec![
            Extension { compulsory: true, kind: ext::RESPONDER_ADDRESS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::FORWARD_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::REVERSE_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
        ];
        extensions.extend(self.auth_extension());
        if let Some(nat) = nat {
            extensions.push(Extension { compulsory: false, kind: ext::NAT_ADDRESS, body: ExtBody::Cies(nat) });
        }
        extensions.push(end());
        Packet {
            afn: if self.settings.nbma.is_ipv4() { wire::AFN_IPV4 } else { wire::AFN_IPV6 },
            protocol_type: self.protocol_type(),
            protocol_snap: [0; 5],
            hop_count: 255,
            checksum: 0,
            version: wire::VERSION,
            kind,
            src_nbma: nsap(self.settings.nbma),
            src_nbma_sub: Address::default(),
            flags,
            request_id,
            src_proto: octets(self.settings.overlay),
            dst_proto: octets(dst),
            payload: Payload::Cies(cies),
            extensions,
            trailer: vec![],
            empty_extension_area: false,
        }
    }

    /// A reply to `p`: its header and extensions, in their order, as the responder fills them —
    /// Responder Address ours, authentication ours (it is hop by hop), the NAT extension given
    /// by `nat` (None: as it came), the others as they came.
    fn reply(&self, p: &Packet, kind: u8, flags: u16, cies: Vec<Cie>, nat: Option<Vec<Cie>>) -> Packet {
        let mut extensions = Vec::new();
        for e in &p.extensions {
            match e.kind & 0x3fff {
                ext::RESPONDER_ADDRESS => extensions.push(Extension { body: ExtBody::Cies(vec![self.own_cie()]), ..e.clone() }),
                ext::AUTHENTICATION => extensions.extend(self.auth_extension()),
                ext::NAT_ADDRESS => extensions.push(Extension { body: nat.clone().map_or_else(|| e.body.clone(), ExtBody::Cies), ..e.clone() }),
                ext::END => break,
                _ => extensions.push(e.clone()),
            }
        }
        if !p.extensions.is_empty() {
            extensions.push(end());
        }
        Packet { kind, hop_count: 255, flags, payload: Payload::Cies(cies), extensions, trailer: vec![], empty_extension_area: false, ..p.clone() }
    }

    fn send(to: IpAddr, p: &Packet) -> Action {
        Action::Send { to, kind: p.kind, packet: p.encode(true).unwrap_or_default() }
    }

    /// A full table, reported once a minute (and always counted).
    fn full(&mut self, what: &str, now: u64) -> Option<Action> {
        self.refused.table_full += 1;
        if self.full_reported.is_some_and(|t| now < t + 60) {
            return None;
        }
        self.full_reported = Some(now);
        Some(Action::Warn(format!("{what} is full: refusing more (reported once a minute)")))
    }

    /// An Error Indication about `bad` to where it came from; never about an Error Indication,
    /// and at most one a second to one address.
    fn error(&mut self, to: IpAddr, code: u16, offset: usize, bad: &Packet, now: u64) -> Vec<Action> {
        if bad.kind == kind::ERROR_INDICATION || self.errors_sent.get(&to).is_some_and(|t| *t >= now) || self.errors_sent.len() >= ERRORS_PER_SECOND {
            return vec![];
        }
        self.errors_sent.insert(to, now);
        let offset = u16::try_from(offset).unwrap_or(0);
        let mut e = self.request(kind::ERROR_INDICATION, 0, (u32::from(code) << 16) | u32::from(offset), self.settings.overlay, vec![], None);
        e.dst_proto.clone_from(&bad.src_proto);
        e.payload = Payload::Raw(bad.encode(false).unwrap_or_default());
        // RFC 2332 §5.2.7 allows no extensions here (so no authentication either: a receiver
        // only logs these).
        e.extensions.clear();
        vec![Action::Warn(format!("sent Error Indication to {to}: {} about a {}", error_code::name(code), kind::name(bad.kind))), Self::send(to, &e)]
    }

    fn authenticated(&self, p: &Packet) -> bool {
        let Some(ours) = &self.settings.auth else { return true };
        matches!(p.extension(ext::AUTHENTICATION), Some(Extension { body: ExtBody::Raw(b), .. }) if b.get(4..) == Some(ours.as_slice()))
    }

    /// Called every second with the monotonic clock's seconds: registrations expire (and who
    /// learned them from us is told), unanswered requests are sent again or given up,
    /// forwarded requests time out, and we (re-)register with each NHS.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = self.expire_registrations(now);
        self.relays.expire(now);
        self.errors_sent.retain(|_, t| *t + 1 >= now);
        actions.extend(self.retransmit(now));
        actions.extend(self.register(now));
        actions
    }

    /// Handles a packet that arrived from `from` (the outer source: the true NBMA address).
    pub fn receive(&mut self, from: IpAddr, p: &Packet, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        if p.kind == kind::ERROR_INDICATION {
            // Never answered (RFC 2332 §5.2.7); the operator hears of it.
            let code = u16::try_from(p.request_id >> 16).unwrap_or(u16::MAX);
            return vec![Action::Warn(format!("Error Indication from {from}: {} (offset {})", error_code::name(code), p.request_id & 0xffff))];
        }
        if let Some((_, at)) = p.unrecognized_compulsory() {
            return self.error(from, error_code::UNRECOGNIZED_EXTENSION, at, p, now);
        }
        if !self.authenticated(p) {
            let at = p.extensions.iter().zip(p.extension_offsets()).find(|(e, _)| e.kind & 0x3fff == ext::AUTHENTICATION).map_or(0, |(_, at)| at);
            return self.error(from, error_code::AUTHENTICATION_FAILURE, at, p, now);
        }
        if p.protocol_type != self.protocol_type() {
            return vec![];
        }
        let server = self.settings.server;
        match p.kind {
            kind::REGISTRATION_REQUEST if server => self.registration(from, p, now),
            kind::REGISTRATION_REPLY => self.registered(from, p, now),
            kind::RESOLUTION_REQUEST => self.resolution_request(from, p, now, tables),
            kind::RESOLUTION_REPLY => self.resolution_reply(from, p, now, tables),
            kind::TRAFFIC_INDICATION => self.traffic_indication(from, p, now),
            kind::PURGE_REQUEST => self.purge(from, p, now, tables),
            kind::PURGE_REPLY => {
                self.pending.answered(p.request_id, from);
                vec![]
            }
            _ => vec![],
        }
    }

    /// The NHSs and the state of our registration with each.
    #[must_use]
    pub fn nhs_links(&self) -> &[NhsLink] {
        &self.client.links
    }

    /// The NHS to send through: the preferred one that answers (else the preferred one).
    #[must_use]
    pub fn preferred_nhs(&self) -> Option<Nhs> {
        self.client.best()
    }

    /// True while at least one NHS answers our registrations.
    #[must_use]
    pub fn nhs_up(&self) -> bool {
        self.client.links.iter().any(|l| l.up)
    }

    /// Our NBMA address as the NHS sees it, when a NAT device changes it.
    #[must_use]
    pub const fn nat_nbma(&self) -> Option<IpAddr> {
        self.client.nat_nbma
    }

    /// How many resolutions and purges of ours wait for an answer (registrations are in
    /// [`Engine::nhs_links`]).
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len() - self.client.links.iter().filter(|l| l.pending.is_some()).count()
    }
}

impl Engine {
    /// Requests past their deadline go again (a registration's silence counts against its NHS).
    fn retransmit(&mut self, now: u64) -> Vec<Action> {
        let due = self.pending.due(now);
        let mut actions = Vec::new();
        for (to, kind, packet, purpose) in due.again {
            actions.push(Action::Send { to, kind, packet });
            if let pending::Purpose::Registration { nhs } = purpose {
                actions.extend(self.registration_timed_out(nhs, now));
            }
        }
        for r in due.given_up {
            if let pending::Purpose::Purge { target } = r.purpose {
                actions.push(Action::Warn(format!("{} did not answer our purge of {target}", r.to)));
            }
        }
        actions
    }
}

fn end() -> Extension {
    Extension { compulsory: true, kind: ext::END, body: ExtBody::Raw(vec![]) }
}

/// An NBMA address as NHRP carries it (NSAP format, 4 or 16 bytes).
fn nsap(a: IpAddr) -> Address {
    Address::nsap(&octets(a))
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn proto_addr(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// The CIEs of the NAT extension, if the packet has one.
fn nat_cies(p: &Packet) -> Option<&[Cie]> {
    match p.extension(ext::NAT_ADDRESS) {
        Some(Extension { body: ExtBody::Cies(c), .. }) => Some(c),
        _ => None,
    }
}

/// The NBMA address the NAT extension gives for protocol address `proto` (what the NHS saw).
fn nat_nbma_of(p: &Packet, proto: IpAddr) -> Option<IpAddr> {
    nat_cies(p)?.iter().filter(|c| proto_addr(&c.proto) == Some(proto)).find_map(|c| proto_addr(&c.nbma.bytes))
}
