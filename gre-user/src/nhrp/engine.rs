//! The NHRP state machine of one multipoint tunnel: what to send and what to install, given what
//! arrived. Pure: the daemon feeds it packets and clock ticks and carries out its actions, which
//! keeps the protocol testable without sockets.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use super::wire::{self, Address, Cie, ExtBody, Extension, Packet, Payload, ext, flags, kind};

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
    /// Route `overlay` (a host route) straight to its peer: a phase 3 shortcut.
    Shortcut { overlay: IpAddr },
}

/// The tunnel's NHRP identity and settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub nhs_role: bool,
    /// Our overlay (protocol) and NBMA addresses.
    pub overlay: Ipv4Addr,
    pub nbma: Ipv4Addr,
    /// Spokes: the NHS's overlay and NBMA addresses.
    pub nhs: Option<(Ipv4Addr, Ipv4Addr)>,
    pub holdtime: u16,
    pub auth: Option<Vec<u8>>,
    /// The MTU to announce in CIEs.
    pub mtu: u16,
}

/// State of a spoke's registration with its NHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NhsState {
    pub last_request: Option<u64>,
    pub last_reply: Option<u64>,
    pub pending_id: Option<u32>,
}

/// A registration the hub holds, for uniqueness checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registration {
    nbma: IpAddr,
    expires: u64,
}

pub struct Engine {
    pub settings: Settings,
    pub nhs: NhsState,
    next_id: u32,
    registrations: HashMap<IpAddr, Registration>,
    /// Resolution requests sent: request id → (target, asked for by a Traffic Indication).
    resolving: HashMap<u32, (IpAddr, bool)>,
}

impl Engine {
    #[must_use]
    pub fn new(settings: Settings) -> Self {
        Self { settings, nhs: NhsState::default(), next_id: 1, registrations: HashMap::new(), resolving: HashMap::new() }
    }

    fn id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// The common skeleton of what we send: IPv4 over IPv4, our NBMA and overlay addresses.
    fn packet(&self, kind: u8, flags: u16, request_id: u32, dst: Ipv4Addr, cies: Vec<Cie>) -> Packet {
        let mut extensions = vec![
            Extension { compulsory: true, kind: ext::RESPONDER_ADDRESS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::FORWARD_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
            Extension { compulsory: true, kind: ext::REVERSE_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
        ];
        if let Some(auth) = &self.settings.auth {
            // Cisco's form: a 4-byte SPI of 1 (cleartext password), then the password.
            let mut body = vec![0, 0, 0, 1];
            body.extend_from_slice(auth);
            extensions.push(Extension { compulsory: true, kind: ext::AUTHENTICATION, body: ExtBody::Raw(body) });
        }
        extensions.push(Extension { compulsory: true, kind: ext::END, body: ExtBody::Raw(vec![]) });
        Packet {
            afn: wire::AFN_IPV4,
            protocol_type: 0x0800,
            protocol_snap: [0; 5],
            hop_count: 255,
            checksum: 0,
            version: wire::VERSION,
            kind,
            src_nbma: Address::nsap(&self.settings.nbma.octets()),
            src_nbma_sub: Address::default(),
            flags,
            request_id,
            src_proto: self.settings.overlay.octets().to_vec(),
            dst_proto: dst.octets().to_vec(),
            payload: Payload::Cies(cies),
            extensions,
            trailer: vec![],
        }
    }

    fn send(to: IpAddr, p: &Packet) -> Action {
        Action::Send { to, kind: p.kind, packet: p.encode(true).unwrap_or_default() }
    }

    /// Called every second with the Unix time: a spoke (re-)registers every holdtime/3.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let Some((nhs_overlay, nhs_nbma)) = self.settings.nhs.filter(|_| !self.settings.nhs_role) else { return vec![] };
        let period = u64::from((self.settings.holdtime / 3).max(1));
        let pending_retry = self.nhs.pending_id.is_some() && self.nhs.last_request.is_some_and(|t| now >= t + 2);
        if self.nhs.last_request.is_some_and(|t| now < t + period) && !pending_retry {
            return vec![];
        }
        let id = self.id();
        self.nhs.last_request = Some(now);
        self.nhs.pending_id = Some(id);
        let cie = Cie { prefix_len: 32, mtu: self.settings.mtu, holding_time: self.settings.holdtime, ..Cie::default() };
        let p = self.packet(kind::REGISTRATION_REQUEST, flags::A_OR_U, id, nhs_overlay, vec![cie]);
        vec![Self::send(nhs_nbma.into(), &p)]
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
        vec![Self::send(nhs_nbma.into(), &p)]
    }

    /// Handles a packet that arrived from `from` (the outer source: the true NBMA address).
    /// `peers` says what the peer table holds: overlay → NBMA.
    pub fn receive(&mut self, from: IpAddr, p: &Packet, now: u64, peers: &dyn Fn(IpAddr) -> Option<IpAddr>) -> Vec<Action> {
        if !self.authenticated(p) {
            return vec![];
        }
        let src = proto_addr(&p.src_proto);
        match (p.kind, self.settings.nhs_role) {
            (kind::REGISTRATION_REQUEST, true) => self.registration(from, p, now),
            (kind::REGISTRATION_REPLY, false) => {
                if self.nhs.pending_id == Some(p.request_id) && p.cies().iter().all(|c| c.code == code::SUCCESS) {
                    self.nhs.pending_id = None;
                    self.nhs.last_reply = Some(now);
                }
                vec![]
            }
            (kind::RESOLUTION_REQUEST, true) => self.resolution(from, p, peers),
            (kind::RESOLUTION_REPLY, false) => {
                let Some((target, shortcut)) = self.resolving.remove(&p.request_id) else { return vec![] };
                let mut actions = Vec::new();
                for c in p.cies().iter().filter(|c| c.code == code::SUCCESS && !c.nbma.bytes.is_empty()) {
                    let Some(nbma) = proto_addr(&c.nbma.bytes) else { continue };
                    let overlay = proto_addr(&c.proto).unwrap_or(target);
                    actions.push(Action::Peer { overlay, nbma, holdtime: c.holding_time, multicast: false });
                    if shortcut {
                        actions.push(Action::Shortcut { overlay });
                    }
                }
                actions
            }
            (kind::TRAFFIC_INDICATION, false) => {
                // The NHS relayed our traffic: resolve its destination (the offending packet's)
                // and take the shortcut once the answer comes.
                let Payload::Raw(original) = &p.payload else { return vec![] };
                match (original.first().map(|b| b >> 4), original.get(16..20)) {
                    (Some(4), Some(dst)) => self.resolve_for(Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]), true),
                    _ => vec![],
                }
            }
            (kind::PURGE_REQUEST, _) => {
                let mut actions: Vec<Action> = p.cies().iter().filter_map(|c| proto_addr(&c.proto)).map(|overlay| Action::Forget { overlay }).collect();
                if p.flags & flags::N == 0 {
                    let reply = Packet { kind: kind::PURGE_REPLY, hop_count: 255, ..p.clone() };
                    actions.push(Self::send(from, &reply));
                }
                let _ = src;
                actions
            }
            _ => vec![],
        }
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
        p.extensions.iter().any(|e| e.kind & 0x3fff == ext::AUTHENTICATION && matches!(&e.body, ExtBody::Raw(b) if b.get(4..) == Some(ours.as_slice())))
    }

    /// The hub takes a registration: the spoke's overlay address behind the NBMA address it
    /// came from, for the holding time it asked; uniqueness enforced when requested.
    fn registration(&mut self, from: IpAddr, p: &Packet, now: u64) -> Vec<Action> {
        let Some(overlay) = proto_addr(&p.src_proto) else { return vec![] };
        let unique = p.flags & flags::A_OR_U != 0;
        let mut reply_cies = Vec::new();
        let mut actions = Vec::new();
        let cies = if p.cies().is_empty() { vec![Cie { holding_time: self.settings.holdtime, ..Cie::default() }] } else { p.cies().to_vec() };
        for c in cies {
            let hold = if c.holding_time == 0 { self.settings.holdtime } else { c.holding_time };
            let taken = self.registrations.get(&overlay).is_some_and(|r| r.expires > now && r.nbma != from);
            let result = if unique && taken { code::UNIQUE_ADDRESS_REGISTERED } else { code::SUCCESS };
            if result == code::SUCCESS {
                self.registrations.insert(overlay, Registration { nbma: from, expires: now + u64::from(hold) });
                actions.push(Action::Peer { overlay, nbma: from, holdtime: hold, multicast: true });
            }
            reply_cies.push(Cie { code: result, holding_time: hold, ..c });
        }
        let reply = Packet { kind: kind::REGISTRATION_REPLY, hop_count: 255, payload: Payload::Cies(reply_cies), ..p.clone() };
        actions.push(Self::send(from, &reply));
        actions
    }

    /// The hub answers a resolution from its peer table.
    fn resolution(&self, from: IpAddr, p: &Packet, peers: &dyn Fn(IpAddr) -> Option<IpAddr>) -> Vec<Action> {
        let Some(target) = proto_addr(&p.dst_proto) else { return vec![] };
        let template = p.cies().first().cloned().unwrap_or_default();
        let cie = match peers(target) {
            Some(IpAddr::V4(nbma)) => Cie {
                code: code::SUCCESS,
                prefix_len: 32,
                holding_time: self.settings.holdtime,
                nbma: Address::nsap(&nbma.octets()),
                proto: p.dst_proto.clone(),
                ..template
            },
            _ => Cie { code: code::NO_BINDING, prefix_len: 32, proto: p.dst_proto.clone(), ..template },
        };
        let reply = Packet { kind: kind::RESOLUTION_REPLY, hop_count: 255, flags: p.flags | flags::A_OR_U, payload: Payload::Cies(vec![cie]), ..p.clone() };
        vec![Self::send(from, &reply)]
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
            nhs_role: true,
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
            nhs_role: false,
            overlay: [203, 0, 113, last].into(),
            nbma: [198, 51, 100, nbma].into(),
            nhs: Some(([203, 0, 113, 254].into(), [198, 51, 100, 10].into())),
            holdtime: 60,
            auth: Some(b"secret".to_vec()),
            mtu: 1400,
        })
    }

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
        let actions = h.receive(natted, &request, 1000, &|_| None);
        assert!(actions.contains(&Action::Peer { overlay: [203, 0, 113, 1].into(), nbma: natted, holdtime: 60, multicast: true }));
        let (to, reply) = sent(&actions);
        assert_eq!((to, reply.kind, reply.request_id), (natted, kind::REGISTRATION_REPLY, request.request_id));
        assert!(!s.nhs_up(1000));
        assert!(s.receive(to, &reply, 1000, &|_| None).is_empty());
        assert!(s.nhs_up(1000));
        // Re-registration after a third of the holding time, not before.
        assert!(s.tick(1010).is_empty());
        assert_eq!(sent(&s.tick(1020)).1.kind, kind::REGISTRATION_REQUEST);
    }

    #[test]
    fn uniqueness_and_authentication_are_enforced() {
        let mut h = hub();
        let (_, request) = sent(&spoke(1, 17).tick(0));
        h.receive([198, 51, 100, 17].into(), &request, 0, &|_| None);
        // Another NBMA address claims 203.0.113.1 with the U flag: refused.
        let actions = h.receive([198, 51, 100, 50].into(), &request, 10, &|_| None);
        assert!(!actions.iter().any(|a| matches!(a, Action::Peer { .. })));
        assert_eq!(sent(&actions).1.cies()[0].code, code::UNIQUE_ADDRESS_REGISTERED);
        // A wrong password: ignored.
        let mut intruder = spoke(9, 90);
        intruder.settings.auth = Some(b"guess".to_vec());
        let (_, bad) = sent(&intruder.tick(0));
        assert!(h.receive([198, 51, 100, 90].into(), &bad, 0, &|_| None).is_empty());
    }

    #[test]
    fn resolution_through_the_hub() {
        let mut h = hub();
        let mut s = spoke(1, 17);
        let (to, request) = sent(&s.resolve([203, 0, 113, 2].into()));
        assert_eq!((to, request.kind), (IpAddr::from([198, 51, 100, 10]), kind::RESOLUTION_REQUEST));
        let table = |o: IpAddr| (o == IpAddr::from([203, 0, 113, 2])).then(|| IpAddr::from([198, 51, 100, 33]));
        let (to, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &table));
        assert_eq!((to, reply.kind), (IpAddr::from([198, 51, 100, 17]), kind::RESOLUTION_REPLY));
        let actions = s.receive(to, &reply, 0, &|_| None);
        assert_eq!(actions, vec![Action::Peer { overlay: [203, 0, 113, 2].into(), nbma: [198, 51, 100, 33].into(), holdtime: 60, multicast: false }]);
        // Phase 3: the hub relayed spoke 1's traffic to 203.0.113.2 and tells it so; spoke 1
        // resolves the destination and asks for a shortcut.
        let (to, indication) = sent(&h.indicate([203, 0, 113, 1].into(), [198, 51, 100, 17].into(), [203, 0, 113, 2].into()));
        assert_eq!((to, indication.kind), (IpAddr::from([198, 51, 100, 17]), kind::TRAFFIC_INDICATION));
        let (_, request) = sent(&s.receive([198, 51, 100, 10].into(), &indication, 0, &|_| None));
        assert_eq!(request.dst_proto, vec![203, 0, 113, 2]);
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &table));
        let actions = s.receive([198, 51, 100, 10].into(), &reply, 0, &|_| None);
        assert!(actions.contains(&Action::Shortcut { overlay: [203, 0, 113, 2].into() }), "{actions:?}");
        // Unknown target: a negative answer installs nothing.
        let (_, request) = sent(&s.resolve([203, 0, 113, 3].into()));
        let (_, reply) = sent(&h.receive([198, 51, 100, 17].into(), &request, 0, &table));
        assert_eq!(reply.cies()[0].code, code::NO_BINDING);
        assert!(s.receive([198, 51, 100, 10].into(), &reply, 0, &|_| None).is_empty());
    }
}
