//! The NHRP state machine of one multipoint tunnel: what to send and what to install, given what
//! arrived. Pure: the daemon feeds it packets and clock ticks and carries out its actions, which
//! keeps the protocol testable without sockets.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use super::wire::{self, Address, Cie, ExtBody, Extension, Packet, Payload, error_code, ext, flags, kind};

/// RFC 2332 §5.2.0.1 CIE codes used here.
pub mod code {
    pub const SUCCESS: u8 = 0;
    pub const ADMINISTRATIVELY_PROHIBITED: u8 = 4;
    pub const NO_BINDING: u8 = 12;
    /// Registration: the address is registered already, with another NBMA address (U flag).
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
    /// Route `prefix` (the resolved destination's) straight to the peer `via`: a phase 3
    /// shortcut. `target` is the destination that was resolved.
    Shortcut { target: IpAddr, prefix: ipnet::IpNet, via: IpAddr },
    /// Tell the operator: a peer reported an error, or refused what we sent.
    Warn(String),
}

/// The tunnel's NHRP identity and settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A next-hop server (hub): takes registrations, answers resolutions, forwards those it
    /// cannot answer.
    pub server: bool,
    /// Our overlay (protocol) and NBMA addresses.
    pub overlay: Ipv4Addr,
    /// IPv4 or IPv6: NHRP's address family follows it (the overlay stays IPv4).
    pub nbma: IpAddr,
    /// The NHS we register with, overlay and NBMA: a spoke's hub, or a regional hub's own hub.
    pub nhs: Option<(Ipv4Addr, IpAddr)>,
    pub holdtime: u16,
    pub auth: Option<Vec<u8>>,
    /// The MTU to announce in CIEs.
    pub mtu: u16,
}

/// What the engine may look up in the daemon's tables.
pub struct Tables<'a> {
    /// The peer table: overlay → NBMA (complete entries only).
    pub peer: &'a dyn Fn(IpAddr) -> Option<IpAddr>,
    /// The overlay routes: destination → next-hop overlay address (routes with a next hop only).
    pub route: &'a dyn Fn(IpAddr) -> Option<IpAddr>,
    /// Destinations this station is the exit for (its kernel routes them elsewhere than into
    /// the tunnel, by a route more specific than the default): the route's prefix length.
    pub local: &'a dyn Fn(IpAddr) -> Option<u8>,
}

/// State of our registration with our NHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NhsState {
    pub last_request: Option<u64>,
    pub last_reply: Option<u64>,
    pub pending_id: Option<u32>,
}

/// A registration the hub holds, for uniqueness checks and purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registration {
    nbma: IpAddr,
    expires: u64,
}

/// A request this NHS forwarded: where its reply goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Relay {
    back_to: IpAddr,
    until: u64,
}

/// Seconds a forwarded request waits for its reply.
const RELAY_TIMEOUT: u64 = 10;
/// Offset of the hop count in the fixed header, for Error Indications.
const HOP_COUNT_OFFSET: usize = 9;

pub struct Engine {
    pub settings: Settings,
    pub nhs: NhsState,
    next_id: u32,
    registrations: HashMap<IpAddr, Registration>,
    /// Resolution requests sent: request id → (target, asked for by a Traffic Indication).
    resolving: HashMap<u32, (IpAddr, bool)>,
    /// Who holds a registered client in its cache because we told it: target → (overlay, NBMA)
    /// of each requester. They are purged when the registration goes or moves.
    told: HashMap<IpAddr, Vec<(IpAddr, IpAddr)>>,
    /// Requests forwarded toward another NHS: (requester's overlay, request id) → relay.
    relayed: HashMap<(Vec<u8>, u32), Relay>,
    /// When we last sent an Error Indication to each address: at most one a second.
    errors_sent: HashMap<IpAddr, u64>,
}

impl Engine {
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            nhs: NhsState::default(),
            next_id: 1,
            registrations: HashMap::new(),
            resolving: HashMap::new(),
            told: HashMap::new(),
            relayed: HashMap::new(),
            errors_sent: HashMap::new(),
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// This station as a CIE (transit records, responder address).
    fn own_cie(&self) -> Cie {
        Cie {
            prefix_len: 32,
            mtu: self.settings.mtu,
            holding_time: self.settings.holdtime,
            nbma: nsap(self.settings.nbma),
            proto: self.settings.overlay.octets().to_vec(),
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

    /// The common skeleton of what we send: IPv4 over IPv4, our NBMA and overlay addresses.
    fn packet(&self, kind: u8, flags: u16, request_id: u32, dst: Ipv4Addr, cies: Vec<Cie>) -> Packet {
        let mut extensions = vec![
            Extension { compulsory: true, kind: ext::RESPONDER_ADDRESS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::FORWARD_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::REVERSE_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
        ];
        extensions.extend(self.auth_extension());
        extensions.push(Extension { compulsory: true, kind: ext::END, body: ExtBody::Raw(vec![]) });
        Packet {
            afn: if self.settings.nbma.is_ipv4() { wire::AFN_IPV4 } else { wire::AFN_IPV6 },
            protocol_type: 0x0800,
            protocol_snap: [0; 5],
            hop_count: 255,
            checksum: 0,
            version: wire::VERSION,
            kind,
            src_nbma: nsap(self.settings.nbma),
            src_nbma_sub: Address::default(),
            flags,
            request_id,
            src_proto: self.settings.overlay.octets().to_vec(),
            dst_proto: dst.octets().to_vec(),
            payload: Payload::Cies(cies),
            extensions,
            trailer: vec![],
            empty_extension_area: false,
        }
    }

    /// A packet passed on by this NHS: hop count spent, our record appended to the transit
    /// extension `transit`, authentication replaced by ours (it is hop by hop).
    fn pass_on(&self, p: &Packet, transit: u16) -> Packet {
        let mut out = p.clone();
        out.hop_count = p.hop_count.saturating_sub(1);
        out.extensions.retain(|e| e.kind & 0x3fff != ext::AUTHENTICATION);
        match out.extensions.iter_mut().find(|e| e.kind & 0x3fff == transit) {
            Some(Extension { body: ExtBody::Cies(list), .. }) => list.push(self.own_cie()),
            Some(e) => e.body = ExtBody::Cies(vec![self.own_cie()]),
            None => out.extensions.insert(0, Extension { compulsory: true, kind: transit, body: ExtBody::Cies(vec![self.own_cie()]) }),
        }
        if let Some(auth) = self.auth_extension() {
            let at = out.extensions.iter().position(|e| e.kind & 0x3fff == ext::END).unwrap_or(out.extensions.len());
            out.extensions.insert(at, auth);
        }
        if out.extension(ext::END).is_none() {
            out.extensions.push(Extension { compulsory: true, kind: ext::END, body: ExtBody::Raw(vec![]) });
        }
        out
    }

    fn send(to: IpAddr, p: &Packet) -> Action {
        Action::Send { to, kind: p.kind, packet: p.encode(true).unwrap_or_default() }
    }

    /// An Error Indication about `bad` to where it came from; never about an Error Indication,
    /// and at most one a second to one address.
    fn error(&mut self, to: IpAddr, code: u16, offset: usize, bad: &Packet, now: u64) -> Vec<Action> {
        if bad.kind == kind::ERROR_INDICATION || self.errors_sent.get(&to).is_some_and(|t| *t >= now) {
            return vec![];
        }
        self.errors_sent.insert(to, now);
        let offset = u16::try_from(offset).unwrap_or(0);
        let mut e = self.packet(kind::ERROR_INDICATION, 0, (u32::from(code) << 16) | u32::from(offset), Ipv4Addr::UNSPECIFIED, vec![]);
        e.dst_proto.clone_from(&bad.src_proto);
        e.payload = Payload::Raw(bad.encode(false).unwrap_or_default());
        // RFC 2332 §5.2.7 allows no extensions here (so no authentication either: a receiver
        // only logs these).
        e.extensions.clear();
        vec![Action::Warn(format!("sent Error Indication to {to}: {} about a {}", error_code::name(code), kind::name(bad.kind))), Self::send(to, &e)]
    }

    /// Called every second with the Unix time: registrations expire (and who learned them from
    /// us is told), forwarded requests time out, and we (re-)register every holdtime/3.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let expired: Vec<IpAddr> = self.registrations.iter().filter(|(_, r)| r.expires <= now).map(|(o, _)| *o).collect();
        for overlay in expired {
            self.registrations.remove(&overlay);
            actions.push(Action::Forget { overlay });
            actions.extend(self.purge_holders(overlay));
        }
        self.relayed.retain(|_, r| r.until > now);
        self.errors_sent.retain(|_, t| *t + 1 >= now);
        let Some((nhs_overlay, nhs_nbma)) = self.settings.nhs else { return actions };
        let period = u64::from((self.settings.holdtime / 3).max(1));
        let pending_retry = self.nhs.pending_id.is_some() && self.nhs.last_request.is_some_and(|t| now >= t + 2);
        if self.nhs.last_request.is_some_and(|t| now < t + period) && !pending_retry {
            return actions;
        }
        let id = self.id();
        self.nhs.last_request = Some(now);
        self.nhs.pending_id = Some(id);
        let cie = Cie { prefix_len: 32, mtu: self.settings.mtu, holding_time: self.settings.holdtime, ..Cie::default() };
        let p = self.packet(kind::REGISTRATION_REQUEST, flags::A_OR_U, id, nhs_overlay, vec![cie]);
        actions.push(Self::send(nhs_nbma, &p));
        actions
    }

    /// The daemon stops: we withdraw our registration (a Purge Request for our own address, no
    /// reply wanted), so the NHS and those it told forget us now rather than at expiry.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let Some((nhs_overlay, nhs_nbma)) = self.settings.nhs else { return vec![] };
        if self.nhs.last_reply.is_none() {
            return vec![];
        }
        let id = self.id();
        let p = self.packet(kind::PURGE_REQUEST, flags::N, id, nhs_overlay, vec![self.own_cie()]);
        vec![Self::send(nhs_nbma, &p)]
    }

    /// True while the NHS answers (a reply within the last holdtime).
    #[must_use]
    pub fn nhs_up(&self, now: u64) -> bool {
        self.nhs.last_reply.is_some_and(|t| now <= t + u64::from(self.settings.holdtime))
    }

    /// A spoke wants `target` resolved (the datapath asked): a Resolution Request to the NHS.
    pub fn resolve(&mut self, target: Ipv4Addr) -> Vec<Action> {
        self.resolve_for(target, false)
    }

    fn resolve_for(&mut self, target: Ipv4Addr, shortcut: bool) -> Vec<Action> {
        let Some((_, nhs_nbma)) = self.settings.nhs else { return vec![] };
        let id = self.id();
        self.resolving.insert(id, (target.into(), shortcut));
        let cie = Cie { prefix_len: 32, mtu: self.settings.mtu, holding_time: self.settings.holdtime, ..Cie::default() };
        let p = self.packet(kind::RESOLUTION_REQUEST, flags::Q | flags::CISCO_NAT, id, target, vec![cie]);
        vec![Self::send(nhs_nbma, &p)]
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
        let server = self.settings.server;
        match p.kind {
            kind::REGISTRATION_REQUEST if server => self.registration(from, p, now),
            kind::REGISTRATION_REPLY => {
                if self.nhs.pending_id != Some(p.request_id) {
                    return vec![];
                }
                match p.cies().iter().find(|c| c.code != code::SUCCESS) {
                    None => {
                        self.nhs.pending_id = None;
                        self.nhs.last_reply = Some(now);
                        vec![]
                    }
                    Some(c) => vec![Action::Warn(format!("the NHS at {from} refused our registration: code {}", c.code))],
                }
            }
            kind::RESOLUTION_REQUEST if p.dst_proto == self.settings.overlay.octets() => self.answer_for_ourselves(from, p, 32),
            kind::RESOLUTION_REQUEST if !server && let Some(len) = proto_addr(&p.dst_proto).and_then(|t| (tables.local)(t)) => {
                self.answer_for_ourselves(from, p, len)
            }
            kind::RESOLUTION_REQUEST if server => self.resolution(from, p, now, tables),
            kind::RESOLUTION_REPLY => {
                if let Some(relay) = self.relayed.remove(&(p.src_proto.clone(), p.request_id)) {
                    // A reply to a request we forwarded: back the way it came.
                    if p.hop_count <= 1 {
                        return self.error(from, error_code::HOP_COUNT_EXCEEDED, HOP_COUNT_OFFSET, p, now);
                    }
                    return vec![Self::send(relay.back_to, &self.pass_on(p, ext::REVERSE_TRANSIT_NHS))];
                }
                let Some((target, shortcut)) = self.resolving.remove(&p.request_id) else { return vec![] };
                let mut actions = Vec::new();
                for c in p.cies().iter().filter(|c| c.code == code::SUCCESS && !c.nbma.bytes.is_empty()) {
                    let Some(nbma) = proto_addr(&c.nbma.bytes) else { continue };
                    let overlay = proto_addr(&c.proto).unwrap_or(target);
                    actions.push(Action::Peer { overlay, nbma, holdtime: c.holding_time, multicast: false });
                    if shortcut {
                        // The CIE's prefix length covers the destination (a LAN behind the peer).
                        let width = if target.is_ipv4() { 32 } else { 128 };
                        let prefix = ipnet::IpNet::new(target, c.prefix_len.min(width)).map_or_else(|_| ipnet::IpNet::from(target), |n| n.trunc());
                        actions.push(Action::Shortcut { target, prefix, via: overlay });
                    }
                }
                actions
            }
            kind::TRAFFIC_INDICATION if self.settings.nhs.is_some() => {
                // The NHS relayed our traffic: resolve its destination (the offending packet's)
                // and take the shortcut once the answer comes.
                let Payload::Raw(original) = &p.payload else { return vec![] };
                match (original.first().map(|b| b >> 4), original.get(16..20)) {
                    (Some(4), Some(dst)) => self.resolve_for(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]), true),
                    _ => vec![],
                }
            }
            kind::PURGE_REQUEST => self.purge(from, p),
            _ => vec![],
        }
    }

    /// A Purge Request: forget what it names. On a hub, a client withdrawing its own
    /// registration (only from the NBMA address that registered it) also has those that
    /// learned it from us told.
    fn purge(&mut self, from: IpAddr, p: &Packet) -> Vec<Action> {
        let mut actions = Vec::new();
        for overlay in p.cies().iter().filter_map(|c| proto_addr(&c.proto)) {
            match self.registrations.get(&overlay) {
                Some(r) if r.nbma == from => {
                    self.registrations.remove(&overlay);
                    actions.push(Action::Forget { overlay });
                    actions.extend(self.purge_holders(overlay));
                }
                Some(_) => actions.push(Action::Warn(format!("ignored a purge of {overlay} from {from}, which did not register it"))),
                None => actions.push(Action::Forget { overlay }),
            }
        }
        if p.flags & flags::N == 0 {
            let reply = Packet { kind: kind::PURGE_REPLY, hop_count: 255, ..p.clone() };
            actions.push(Self::send(from, &reply));
        }
        actions
    }

    /// Purge Requests to every station we gave `target`'s binding to.
    fn purge_holders(&mut self, target: IpAddr) -> Vec<Action> {
        let Some(holders) = self.told.remove(&target) else { return vec![] };
        let IpAddr::V4(t) = target else { return vec![] };
        let mut actions = Vec::new();
        for (overlay, nbma) in holders {
            let IpAddr::V4(o) = overlay else { continue };
            let id = self.id();
            let cie = Cie { prefix_len: 32, proto: t.octets().to_vec(), ..Cie::default() };
            actions.push(Self::send(nbma, &self.packet(kind::PURGE_REQUEST, 0, id, o, vec![cie])));
        }
        actions
    }

    /// The NHS relayed traffic from `source` (one of its peers, at `source_nbma`) to `target`: a
    /// Traffic Indication tells the source, carrying the head of the offending packet.
    pub fn indicate(&mut self, source: Ipv4Addr, source_nbma: IpAddr, target: Ipv4Addr) -> Vec<Action> {
        let mut original = vec![0u8; 20];
        original[0] = 0x45;
        original[2..4].copy_from_slice(&20u16.to_be_bytes());
        original[8] = 64;
        original[12..16].copy_from_slice(&source.octets());
        original[16..20].copy_from_slice(&target.octets());
        let c = gre_common::gre::internet_checksum(&original);
        original[10..12].copy_from_slice(&c.to_be_bytes());
        let id = self.id();
        let mut p = self.packet(kind::TRAFFIC_INDICATION, 0, id, source, vec![]);
        p.payload = Payload::Raw(original);
        vec![Self::send(source_nbma, &p)]
    }

    fn authenticated(&self, p: &Packet) -> bool {
        let Some(ours) = &self.settings.auth else { return true };
        matches!(p.extension(ext::AUTHENTICATION), Some(Extension { body: ExtBody::Raw(b), .. }) if b.get(4..) == Some(ours.as_slice()))
    }

    /// The hub takes a registration: the spoke's overlay address behind the NBMA address it
    /// came from, for the holding time it asked; uniqueness enforced when requested. A client
    /// that comes back from another NBMA address has those who knew the old one told.
    fn registration(&mut self, from: IpAddr, p: &Packet, now: u64) -> Vec<Action> {
        let Some(overlay) = proto_addr(&p.src_proto) else { return vec![] };
        let unique = p.flags & flags::A_OR_U != 0;
        let mut reply_cies = Vec::new();
        let mut actions = Vec::new();
        let cies = if p.cies().is_empty() { vec![Cie { holding_time: self.settings.holdtime, ..Cie::default() }] } else { p.cies().to_vec() };
        for c in cies {
            let hold = if c.holding_time == 0 { self.settings.holdtime } else { c.holding_time };
            let moved = self.registrations.get(&overlay).is_some_and(|r| r.nbma != from);
            let result = if unique && moved { code::UNIQUE_ADDRESS_REGISTERED } else { code::SUCCESS };
            if result == code::SUCCESS {
                if moved {
                    actions.extend(self.purge_holders(overlay));
                }
                self.registrations.insert(overlay, Registration { nbma: from, expires: now + u64::from(hold) });
                actions.push(Action::Peer { overlay, nbma: from, holdtime: hold, multicast: true });
            }
            reply_cies.push(Cie { code: result, holding_time: hold, ..c });
        }
        let reply = Packet { kind: kind::REGISTRATION_REPLY, hop_count: 255, payload: Payload::Cies(reply_cies), ..p.clone() };
        actions.push(Self::send(from, &reply));
        actions
    }

    /// A resolution of our own address, or of a destination we are the exit for (a LAN behind
    /// us, announced with its route's prefix length): a hub forwarded it to us, as ours do by
    /// route and Cisco's and FRR's phase 3 hubs do too. We answer the requester directly at the
    /// NBMA address it gave, which builds the direct path, and learn it the same way.
    fn answer_for_ourselves(&mut self, from: IpAddr, p: &Packet, prefix_len: u8) -> Vec<Action> {
        let requester_nbma = proto_addr(&p.src_nbma.bytes).unwrap_or(from);
        let mut actions = Vec::new();
        // (A hub knows its clients from their registrations.)
        if let Some(requester) = proto_addr(&p.src_proto)
            && requester != IpAddr::V4(self.settings.overlay)
            && !self.settings.server
        {
            let hold = p.cies().first().map_or(self.settings.holdtime, |c| if c.holding_time == 0 { self.settings.holdtime } else { c.holding_time });
            actions.push(Action::Peer { overlay: requester, nbma: requester_nbma, holdtime: hold, multicast: false });
        }
        let template = p.cies().first().cloned().unwrap_or_default();
        let cie = Cie { code: code::SUCCESS, prefix_len, preference: template.preference, ..self.own_cie() };
        let mut reply = Packet { kind: kind::RESOLUTION_REPLY, hop_count: 255, flags: p.flags | flags::A_OR_U, payload: Payload::Cies(vec![cie]), ..p.clone() };
        if let Some(e) = reply.extensions.iter_mut().find(|e| e.kind & 0x3fff == ext::RESPONDER_ADDRESS) {
            e.body = ExtBody::Cies(vec![self.own_cie()]);
        }
        actions.push(Self::send(requester_nbma, &reply));
        actions
    }

    /// The hub answers a resolution from its peer table, or forwards it one NHS on (toward the
    /// target's route, else up to its own NHS) and relays the reply back; a loop or a spent hop
    /// count is an Error Indication.
    fn resolution(&mut self, from: IpAddr, p: &Packet, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        let Some(target) = proto_addr(&p.dst_proto) else { return vec![] };
        let transit = p.extension(ext::FORWARD_TRANSIT_NHS);
        if let Some(Extension { body: ExtBody::Cies(list), .. }) = transit
            && list.iter().any(|c| c.proto == self.settings.overlay.octets())
        {
            let at = p.extensions.iter().zip(p.extension_offsets()).find(|(e, _)| e.kind & 0x3fff == ext::FORWARD_TRANSIT_NHS).map_or(0, |(_, at)| at);
            return self.error(from, error_code::LOOP_DETECTED, at, p, now);
        }
        let template = p.cies().first().cloned().unwrap_or_default();
        if let Some(nbma) = (tables.peer)(target) {
            if self.registrations.contains_key(&target)
                && let Some(requester) = proto_addr(&p.src_proto)
            {
                // Relayed requests come from an NHS: the requester is at its own NBMA address.
                let relayed = matches!(transit, Some(Extension { body: ExtBody::Cies(l), .. }) if !l.is_empty());
                let at = if relayed { proto_addr(&p.src_nbma.bytes).unwrap_or(from) } else { from };
                let holders = self.told.entry(target).or_default();
                if !holders.contains(&(requester, at)) {
                    holders.push((requester, at));
                }
            }
            let cie =
                Cie { code: code::SUCCESS, prefix_len: 32, holding_time: self.settings.holdtime, nbma: nsap(nbma), proto: p.dst_proto.clone(), ..template };
            let mut reply =
                Packet { kind: kind::RESOLUTION_REPLY, hop_count: 255, flags: p.flags | flags::A_OR_U, payload: Payload::Cies(vec![cie]), ..p.clone() };
            if let Some(e) = reply.extensions.iter_mut().find(|e| e.kind & 0x3fff == ext::RESPONDER_ADDRESS) {
                e.body = ExtBody::Cies(vec![self.own_cie()]);
            }
            return vec![Self::send(from, &reply)];
        }
        if let Some(len) = (tables.local)(target) {
            return self.answer_for_ourselves(from, p, len);
        }
        let upstream = self.settings.nhs.map(|(_, n)| n);
        let next = (tables.route)(target).filter(|nh| *nh != target).and_then(|nh| (tables.peer)(nh)).or(upstream).filter(|n| *n != from);
        if let Some(next) = next {
            if p.hop_count <= 1 {
                return self.error(from, error_code::HOP_COUNT_EXCEEDED, HOP_COUNT_OFFSET, p, now);
            }
            self.relayed.insert((p.src_proto.clone(), p.request_id), Relay { back_to: from, until: now + RELAY_TIMEOUT });
            return vec![Self::send(next, &self.pass_on(p, ext::FORWARD_TRANSIT_NHS))];
        }
        let cie = Cie { code: code::NO_BINDING, prefix_len: 32, proto: p.dst_proto.clone(), ..template };
        let reply = Packet { kind: kind::RESOLUTION_REPLY, hop_count: 255, flags: p.flags | flags::A_OR_U, payload: Payload::Cies(vec![cie]), ..p.clone() };
        vec![Self::send(from, &reply)]
    }
}

/// An NBMA address as NHRP carries it (NSAP format, 4 or 16 bytes).
fn nsap(a: IpAddr) -> Address {
    match a {
        IpAddr::V4(v4) => Address::nsap(&v4.octets()),
        IpAddr::V6(v6) => Address::nsap(&v6.octets()),
    }
}

fn proto_addr(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Engine {
        Engine::new(Settings {
            server: true,
            overlay: [203, 0, 113, 254].into(),
            nbma: [198, 51, 100, 10].into(),
            nhs: None,
            holdtime: 60,
            auth: Some(b"secret".to_vec()),
            mtu: 1400,
        })
    }

    fn spoke(last: u8, nbma: u8) -> Engine {
        Engine::new(Settings {
            server: false,
            overlay: [203, 0, 113, last].into(),
            nbma: [198, 51, 100, nbma].into(),
            nhs: Some(([203, 0, 113, 254].into(), [198, 51, 100, 10].into())),
            holdtime: 60,
            auth: Some(b"secret".to_vec()),
            mtu: 1400,
        })
    }

    const NONE: Tables<'static> = Tables { peer: &|_| None, route: &|_| None, local: &|_| None };

    fn sent(actions: &[Action]) -> (IpAddr, Packet) {
        match actions.iter().find(|a| matches!(a, Action::Send { .. })) {
            Some(Action::Send { to, packet, .. }) => (*to, Packet::decode(packet).expect("we send what we decode")),
            _ => panic!("nothing sent: {actions:?}"),
        }
    }

    #[test]
    fn a_spoke_registers_and_the_hub_installs_it() {
        let (mut h, mut s) = (hub(), spoke(1, 17));
        let (to, request) = sent(&s.tick(1000));
        assert_eq!(to, IpAddr::from([198, 51, 100, 10]));
        assert_eq!((request.kind, request.cies()[0].holding_time), (kind::REGISTRATION_REQUEST, 60));
        // The spoke is behind NAT: the hub sees another NBMA address, and uses that one.
        let natted = IpAddr::from([198, 51, 100, 99]);
        let actions = h.receive(natted, &request, 1000, &NONE);
        assert!(actions.contains(&Action::Peer { overlay: [203, 0, 113, 1].into(), nbma: natted, holdtime: 60, multicast: true }));
        let (to, reply) = sent(&actions);
        assert_eq!((to, reply.kind, reply.request_id), (natted, kind::REGISTRATION_REPLY, request.request_id));
        assert!(!s.nhs_up(1000));
        assert!(s.receive(to, &reply, 1000, &NONE).is_empty());
        assert!(s.nhs_up(1000));
        // Re-registration after a third of the holding time, not before.
        assert!(s.tick(1010).is_empty());
        assert_eq!(sent(&s.tick(1020)).1.kind, kind::REGISTRATION_REQUEST);
    }

    #[test]
    fn uniqueness_and_authentication_are_enforced() {
        let mut h = hub();
        let (_, request) = sent(&spoke(1, 17).tick(0));
        h.receive([198, 51, 100, 17].into(), &request, 0, &NONE);
        // Another NBMA address claims 203.0.113.1 with the U flag: refused.
        let actions = h.receive([198, 51, 100, 50].into(), &request, 10, &NONE);
        assert!(!actions.iter().any(|a| matches!(a, Action::Peer { .. })));
        assert_eq!(sent(&actions).1.cies()[0].code, code::UNIQUE_ADDRESS_REGISTERED);
        // A wrong password: nothing installed, an Error Indication (once a second at most)
        // that carries the offending packet and points at its authentication extension.
        let mut intruder = spoke(9, 90);
        intruder.settings.auth = Some(b"guess".to_vec());
        let (_, bad) = sent(&intruder.tick(0));
        let actions = h.receive([198, 51, 100, 90].into(), &bad, 0, &NONE);
        assert!(!actions.iter().any(|a| matches!(a, Action::Peer { .. })));
        let (to, e) = sent(&actions);
        assert_eq!((to, e.kind, e.request_id >> 16), (IpAddr::from([198, 51, 100, 90]), kind::ERROR_INDICATION, u32::from(error_code::AUTHENTICATION_FAILURE)));
        let offset = (e.request_id & 0xffff) as usize;
        let bad_wire = bad.encode(false).unwrap();
        assert_eq!(u16::from_be_bytes([bad_wire[offset], bad_wire[offset + 1]]), wire::COMPULSORY | ext::AUTHENTICATION);
        assert_eq!(e.payload, Payload::Raw(bad_wire));
        assert_eq!(e.dst_proto, vec![203, 0, 113, 9]);
        assert!(!h.receive([198, 51, 100, 90].into(), &bad, 0, &NONE).iter().any(|a| matches!(a, Action::Send { .. })), "rate limited");
        // An Error Indication is never answered, even one that fails authentication.
        assert!(!intruder.receive(to, &e, 0, &NONE).iter().any(|a| matches!(a, Action::Send { .. })));
    }

    #[test]
    fn unrecognized_compulsory_extensions_are_refused_optional_ones_skipped() {
        let mut h = hub();
        let (_, mut request) = sent(&spoke(1, 17).tick(0));
        // A Vendor-Private extension of a vendor not ours: read past when optional...
        let vendor = Extension { compulsory: false, kind: ext::VENDOR_PRIVATE, body: ExtBody::Raw(vec![0x00, 0x00, 0x0c, 1, 2, 3]) };
        request.extensions.insert(0, vendor.clone());
        let actions = h.receive([198, 51, 100, 17].into(), &request, 0, &NONE);
        assert_eq!(sent(&actions).1.kind, kind::REGISTRATION_REPLY);
        // ... refused when compulsory, with the offset of that extension.
        request.extensions[0] = Extension { compulsory: true, ..vendor };
        let actions = h.receive([198, 51, 100, 17].into(), &request, 1, &NONE);
        assert!(!actions.iter().any(|a| matches!(a, Action::Peer { .. })));
        let (_, e) = sent(&actions);
        assert_eq!(e.request_id >> 16, u32::from(error_code::UNRECOGNIZED_EXTENSION));
        let wire = request.encode(true).unwrap();
        let at = (e.request_id & 0xffff) as usize;
        assert_eq!(&wire[at..at + 2], &(wire::COMPULSORY | ext::VENDOR_PRIVATE).to_be_bytes());
    }

    /// Spoke 1 and spoke 2 know each other through the hub; the hub remembers it told spoke 1.
    fn resolved(h: &mut Engine, s1: &mut Engine) {
        for (i, nbma) in [(1u8, 17u8), (2, 33)] {
            let (_, r) = sent(&spoke(i, nbma).tick(0));
            h.receive([198, 51, 100, nbma].into(), &r, 0, &NONE);
        }
        let table = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([198, 51, 100, 33]));
        let (_, request) = sent(&s1.resolve([203, 0, 113, 2].into()));
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &table, route: &|_| None, local: &|_| None }));
        assert!(s1.receive([198, 51, 100, 10].into(), &reply, 0, &NONE).iter().any(|a| matches!(a, Action::Peer { .. })));
    }

    fn purges(actions: &[Action]) -> Vec<(IpAddr, Packet)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, packet, kind: kind::PURGE_REQUEST } => Some((*to, Packet::decode(packet).unwrap())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_spoke_that_leaves_is_purged_from_those_who_resolved_it() {
        let (mut h, mut s1) = (hub(), spoke(1, 17));
        resolved(&mut h, &mut s1);
        // Spoke 2 stops: it withdraws its registration (no reply wanted).
        let mut s2 = spoke(2, 33);
        let (_, r) = sent(&s2.tick(0));
        let (_, ok) = sent(&h.receive([198, 51, 100, 33].into(), &r, 0, &NONE));
        s2.receive([198, 51, 100, 10].into(), &ok, 0, &NONE);
        let (to, withdraw) = sent(&s2.shutdown());
        assert_eq!((to, withdraw.kind, withdraw.flags & flags::N), (IpAddr::from([198, 51, 100, 10]), kind::PURGE_REQUEST, flags::N));
        // Only from where it registered.
        let forged = h.receive([198, 51, 100, 66].into(), &withdraw, 1, &NONE);
        assert!(!forged.iter().any(|a| matches!(a, Action::Forget { .. })) && purges(&forged).is_empty(), "{forged:?}");
        let actions = h.receive([198, 51, 100, 33].into(), &withdraw, 1, &NONE);
        assert!(actions.contains(&Action::Forget { overlay: [203, 0, 113, 2].into() }));
        assert!(!actions.iter().any(|a| matches!(a, Action::Send { kind: kind::PURGE_REPLY, .. })), "N: no reply");
        // The hub told spoke 1 where spoke 2 was: spoke 1 is purged, and replies.
        let p = purges(&actions);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].0, p[0].1.dst_proto.clone(), p[0].1.cies()[0].proto.clone()),
            (IpAddr::from([198, 51, 100, 17]), vec![203, 0, 113, 1], vec![203, 0, 113, 2])
        );
        let answer = s1.receive([198, 51, 100, 10].into(), &p[0].1, 1, &NONE);
        assert!(answer.contains(&Action::Forget { overlay: [203, 0, 113, 2].into() }));
        assert_eq!(sent(&answer).1.kind, kind::PURGE_REPLY);
        // Told once: nothing more to purge.
        assert!(purges(&h.tick(1000)).is_empty());
    }

    #[test]
    fn a_spoke_that_moves_or_expires_is_purged() {
        let (mut h, mut s1) = (hub(), spoke(1, 17));
        resolved(&mut h, &mut s1);
        // Spoke 2 re-registers from a new NBMA address without the uniqueness flag: accepted,
        // and spoke 1 purged of the old address.
        let (_, mut r) = sent(&spoke(2, 34).tick(10));
        r.flags &= !flags::A_OR_U;
        let actions = h.receive([198, 51, 100, 34].into(), &r, 10, &NONE);
        assert!(actions.iter().any(|a| matches!(a, Action::Peer { nbma, .. } if *nbma == IpAddr::from([198, 51, 100, 34]))));
        assert_eq!(purges(&actions).len(), 1);
        // Resolved again (the old address's claim is refused now), then expired: purged again,
        // and forgotten on the hub.
        resolved(&mut h, &mut s1);
        assert!(purges(&h.tick(69)).is_empty());
        let actions = h.tick(70);
        assert!(actions.contains(&Action::Forget { overlay: [203, 0, 113, 2].into() }));
        assert_eq!(purges(&actions).iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![IpAddr::from([198, 51, 100, 17])]);
    }

    /// Two hubs: hub 1 (198.51.100.10, 203.0.113.254) has spoke 1; hub 2 (198.51.100.20,
    /// 203.0.113.3) is registered with hub 1 and has spoke 2; hub 1 routes spoke 2 via hub 2.
    #[test]
    fn requests_are_forwarded_hop_by_hop_and_replies_relayed_back() {
        let mut h1 = hub();
        let mut h2 = Engine::new(Settings { server: true, nhs: Some(([203, 0, 113, 254].into(), [198, 51, 100, 10].into())), ..spoke(3, 20).settings });
        let mut s1 = spoke(1, 17);
        let (hub1, hub2) = (IpAddr::from([198, 51, 100, 10]), IpAddr::from([198, 51, 100, 20]));
        // Hub 1's view: spoke 1 and hub 2 registered, spoke 2 behind hub 2.
        let h1_peer = |o: IpAddr| match o.to_string().as_str() {
            "203.0.113.1" => Some(IpAddr::from([198, 51, 100, 17])),
            "203.0.113.3" => Some(hub2),
            _ => None,
        };
        let h1_route = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([203, 0, 113, 3]));
        let h2_peer = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([198, 51, 100, 33]));
        // Down the hierarchy: spoke 1 → hub 1 → (route) hub 2, which answers; back the same way.
        let (_, request) = sent(&s1.resolve([203, 0, 113, 2].into()));
        let (to, down) = sent(&h1.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &h1_peer, route: &h1_route, local: &|_| None }));
        let fwd = down.clone();
        assert_eq!((to, fwd.kind, fwd.hop_count, fwd.request_id), (hub2, kind::RESOLUTION_REQUEST, 254, request.request_id));
        let transit = |p: &Packet, t| match p.extension(t) {
            Some(Extension { body: ExtBody::Cies(l), .. }) => l.iter().map(|c| c.proto.clone()).collect::<Vec<_>>(),
            _ => vec![],
        };
        assert_eq!(transit(&fwd, ext::FORWARD_TRANSIT_NHS), vec![vec![203, 0, 113, 254]]);
        let (to, reply) = sent(&h2.receive(hub1, &fwd, 0, &Tables { peer: &h2_peer, route: &|_| None, local: &|_| None }));
        assert_eq!((to, reply.kind), (hub1, kind::RESOLUTION_REPLY));
        let (to, back) = sent(&h1.receive(hub2, &reply, 0, &Tables { peer: &h1_peer, route: &h1_route, local: &|_| None }));
        assert_eq!(to, IpAddr::from([198, 51, 100, 17]));
        assert_eq!(transit(&back, ext::REVERSE_TRANSIT_NHS), vec![vec![203, 0, 113, 254]]);
        assert_eq!(transit(&back, ext::RESPONDER_ADDRESS), vec![vec![203, 0, 113, 3]], "hub 2 answered");
        let actions = s1.receive(hub1, &back, 0, &NONE);
        assert_eq!(actions, vec![Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: [198, 51, 100, 33].into(), holdtime: 60, multicast: false }]);
        // Up the hierarchy: hub 2 knows no route to spoke 1 and asks its own NHS.
        let mut s2 = spoke(2, 33);
        s2.settings.nhs = Some(([203, 0, 113, 3].into(), [198, 51, 100, 20].into()));
        let (_, request) = sent(&s2.resolve([203, 0, 113, 1].into()));
        let (to, fwd) = sent(&h2.receive([198, 51, 100, 33].into(), &request, 0, &Tables { peer: &h2_peer, route: &|_| None, local: &|_| None }));
        assert_eq!(to, hub1);
        let (to, reply) = sent(&h1.receive(hub2, &fwd, 0, &Tables { peer: &h1_peer, route: &h1_route, local: &|_| None }));
        assert_eq!((to, reply.cies()[0].code), (hub2, code::SUCCESS));
        let (to, back) = sent(&h2.receive(hub1, &reply, 0, &NONE));
        assert_eq!(to, IpAddr::from([198, 51, 100, 33]));
        assert!(s2.receive(hub2, &back, 0, &NONE).iter().any(|a| matches!(a, Action::Peer { nbma, .. } if *nbma == IpAddr::from([198, 51, 100, 17]))));
        // A request that comes back to an NHS it already crossed is a loop; a spent hop count
        // stops it too.
        let h1_tables = Tables { peer: &h1_peer, route: &h1_route, local: &|_| None };
        let (to, e) = sent(&h1.receive(hub2, &down, 5, &h1_tables));
        assert_eq!((to, e.kind, e.request_id >> 16), (hub2, kind::ERROR_INDICATION, u32::from(error_code::LOOP_DETECTED)));
        let mut spent = request.clone();
        spent.hop_count = 1;
        let (to, e) = sent(&h2.receive([198, 51, 100, 33].into(), &spent, 5, &Tables { peer: &h2_peer, route: &|_| None, local: &|_| None }));
        assert_eq!((to, e.request_id), (IpAddr::from([198, 51, 100, 33]), (u32::from(error_code::HOP_COUNT_EXCEEDED) << 16) | 9));
    }

    #[test]
    fn resolution_through_the_hub() {
        let mut h = hub();
        let mut s = spoke(1, 17);
        let (to, request) = sent(&s.resolve([203, 0, 113, 2].into()));
        assert_eq!((to, request.kind), (IpAddr::from([198, 51, 100, 10]), kind::RESOLUTION_REQUEST));
        let table = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([198, 51, 100, 33]));
        let (to, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &table, route: &|_| None, local: &|_| None }));
        assert_eq!((to, reply.kind), (IpAddr::from([198, 51, 100, 17]), kind::RESOLUTION_REPLY));
        let actions = s.receive(to, &reply, 0, &NONE);
        assert_eq!(actions, vec![Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: [198, 51, 100, 33].into(), holdtime: 60, multicast: false }]);
        // Phase 3: the hub relayed spoke 1's traffic to 203.0.113.2 and tells it so; spoke 1
        // resolves the destination and asks for a shortcut.
        let (to, indication) = sent(&h.indicate([203, 0, 113, 1].into(), [198, 51, 100, 17].into(), [203, 0, 113, 2].into()));
        assert_eq!((to, indication.kind), (IpAddr::from([198, 51, 100, 17]), kind::TRAFFIC_INDICATION));
        let (_, request) = sent(&s.receive([198, 51, 100, 10].into(), &indication, 0, &NONE));
        assert_eq!(request.dst_proto, vec![203, 0, 113, 2]);
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &table, route: &|_| None, local: &|_| None }));
        let actions = s.receive([198, 51, 100, 10].into(), &reply, 0, &NONE);
        assert!(
            actions.contains(&Action::Shortcut { target: [203, 0, 113, 2].into(), prefix: "203.0.113.2/32".parse().unwrap(), via: [203, 0, 113, 2].into() }),
            "{actions:?}"
        );
        // Unknown target: a negative answer installs nothing.
        let (_, request) = sent(&s.resolve([203, 0, 113, 3].into()));
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &table, route: &|_| None, local: &|_| None }));
        assert_eq!(reply.cies()[0].code, code::NO_BINDING);
        assert!(s.receive([198, 51, 100, 10].into(), &reply, 0, &NONE).is_empty());
    }

    #[test]
    fn over_ipv6_nbma() {
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]);
        let mut h = hub();
        h.settings.nbma = v6(0x10);
        let mut s = spoke(1, 17);
        s.settings.nbma = v6(0x17);
        s.settings.nhs = Some(([203, 0, 113, 254].into(), v6(0x10)));
        let (to, request) = sent(&s.tick(0));
        assert_eq!((to, request.afn, request.src_nbma.bytes.len()), (v6(0x10), wire::AFN_IPV6, 16));
        let actions = h.receive(v6(0x17), &request, 0, &NONE);
        assert!(actions.contains(&Action::Peer { overlay: [203, 0, 113, 1].into(), nbma: v6(0x17), holdtime: 60, multicast: true }));
        let (_, reply) = sent(&actions);
        s.receive(v6(0x10), &reply, 0, &NONE);
        assert!(s.nhs_up(0));
        let table = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| v6(0x33));
        let (_, request) = sent(&s.resolve([203, 0, 113, 2].into()));
        let (_, reply) = sent(&h.receive(v6(0x17), &request, 0, &Tables { peer: &table, route: &|_| None, local: &|_| None }));
        assert_eq!(reply.cies()[0].nbma.bytes.len(), 16);
        assert_eq!(
            s.receive(v6(0x10), &reply, 0, &NONE),
            vec![Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: v6(0x33), holdtime: 60, multicast: false }]
        );
    }

    /// A phase 3 hub of another make forwards the request to its target, which answers the
    /// requester directly; a hub asked for its own address answers too.
    #[test]
    fn the_target_answers_for_itself() {
        let (mut s1, mut s2) = (spoke(1, 17), spoke(2, 33));
        let (_, request) = sent(&s1.resolve([203, 0, 113, 2].into()));
        // As forwarded by the hub: it arrives from the hub's NBMA address.
        let actions = s2.receive([198, 51, 100, 10].into(), &request, 0, &NONE);
        assert!(actions.contains(&Action::Peer { overlay: [203, 0, 113, 1].into(), nbma: [198, 51, 100, 17].into(), holdtime: 60, multicast: false }));
        let (to, reply) = sent(&actions);
        assert_eq!((to, reply.kind), (IpAddr::from([198, 51, 100, 17]), kind::RESOLUTION_REPLY));
        let learned = s1.receive([198, 51, 100, 33].into(), &reply, 0, &NONE);
        assert_eq!(learned, vec![Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: [198, 51, 100, 33].into(), holdtime: 60, multicast: false }]);
        let mut h = hub();
        let (_, request) = sent(&s1.resolve([203, 0, 113, 254].into()));
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &NONE));
        assert_eq!((reply.cies()[0].code, reply.cies()[0].nbma.bytes.clone()), (code::SUCCESS, vec![198, 51, 100, 10]));
        assert!(!h.receive([198, 51, 100, 17].into(), &request, 0, &NONE).iter().any(|a| matches!(a, Action::Peer { .. })), "registrations stay as they are");
    }

    /// Phase 3 toward a LAN behind spoke 2: the hub forwards the request by its route, spoke 2
    /// answers for its LAN's prefix, and spoke 1's shortcut covers that prefix.
    #[test]
    fn shortcuts_cover_the_lan_behind_a_spoke() {
        let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
        let lan_host = IpAddr::from([198, 51, 100, 210]);
        let (_, indication) = sent(&h.indicate([198, 51, 100, 194].into(), [198, 51, 100, 17].into(), [198, 51, 100, 210].into()));
        let (_, request) = sent(&s1.receive([198, 51, 100, 10].into(), &indication, 0, &NONE));
        assert_eq!(request.dst_proto, vec![198, 51, 100, 210]);
        let h_peer = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([198, 51, 100, 33]));
        let h_route = |o: IpAddr| (o == lan_host).then(|| IpAddr::from([203, 0, 113, 2]));
        let (to, fwd) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &Tables { peer: &h_peer, route: &h_route, local: &|_| None }));
        assert_eq!(to, IpAddr::from([198, 51, 100, 33]));
        let lan = |t: IpAddr| "198.51.100.208/28".parse::<ipnet::IpNet>().unwrap().contains(&t).then_some(28);
        let (to, reply) = sent(&s2.receive([198, 51, 100, 10].into(), &fwd, 0, &Tables { peer: &|_| None, route: &|_| None, local: &lan }));
        assert_eq!(to, IpAddr::from([198, 51, 100, 17]), "straight to the requester");
        assert_eq!((reply.cies()[0].prefix_len, reply.cies()[0].proto.clone()), (28, vec![203, 0, 113, 2]));
        let actions = s1.receive([198, 51, 100, 33].into(), &reply, 0, &NONE);
        assert!(actions.contains(&Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: [198, 51, 100, 33].into(), holdtime: 60, multicast: false }));
        assert!(
            actions.contains(&Action::Shortcut { target: lan_host, prefix: "198.51.100.208/28".parse().unwrap(), via: [203, 0, 113, 2].into() }),
            "{actions:?}"
        );
    }
}
