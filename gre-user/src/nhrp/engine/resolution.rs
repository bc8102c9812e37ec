//! Resolution: asking our NHS for an address (and taking the shortcut a Traffic Indication asked
//! for), answering for ourselves and the LANs behind us, and — on a server — forwarding a request
//! to the registered client it names, answering from the table, or passing it on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    Action, Engine, HOP_COUNT_OFFSET, Tables, UNIQUE_PREFIX, code, nat_cies, nat_nbma_of, nsap, octets,
    pending::Purpose,
    proto_addr,
    wire::{Cie, ExtBody, Extension, Packet, Payload, error_code, ext, flags::resolution as f, kind},
};

/// The widest shortcut taken (FRR refuses wider than /8 too).
const WIDEST_SHORTCUT: u8 = 8;

impl Engine {
    /// A client wants `target` resolved (the datapath asked): a Resolution Request to the
    /// preferred NHS that answers, sent again until answered.
    pub fn resolve(&mut self, target: IpAddr, now: u64) -> Vec<Action> {
        self.resolve_for(target, false, now)
    }

    fn resolve_for(&mut self, target: IpAddr, shortcut: bool, now: u64) -> Vec<Action> {
        if target.is_ipv4() != self.settings.overlay.is_ipv4() || target == self.settings.overlay {
            return vec![];
        }
        let Some(nhs) = self.client.best() else { return vec![] };
        // One request per target in flight; a Traffic Indication makes it a shortcut.
        if let Some((_, r)) = self.pending.find(|p| matches!(p, Purpose::Resolution { target: t, .. } if *t == target)) {
            if let Purpose::Resolution { shortcut: s, .. } = &mut r.purpose {
                *s |= shortcut;
            }
            return vec![];
        }
        let id = self.id();
        let cie = Cie { prefix_len: UNIQUE_PREFIX, mtu: self.settings.mtu, holding_time: self.settings.holdtime, ..Cie::default() };
        let p = self.request(kind::RESOLUTION_REQUEST, f::Q | f::NAT, id, target, vec![cie], Some(self.own_nat()));
        let a = Self::send(nhs.nbma, &p);
        let Action::Send { packet, .. } = &a else { return vec![] };
        if !self.pending.add(
            id,
            Purpose::Resolution { target, shortcut },
            nhs.nbma,
            kind::RESOLUTION_REQUEST,
            packet.clone(),
            now,
            self.settings.limits.pending,
        ) {
            return self.full("the table of pending resolutions", now).into_iter().collect();
        }
        vec![a]
    }

    /// Our NAT extension's content: our post-NAT NBMA address, when an NHS told us one.
    fn own_nat(&self) -> Vec<Cie> {
        self.client
            .nat_nbma
            .map(|n| Cie { prefix_len: self.host_len(), mtu: self.settings.mtu, nbma: nsap(n), proto: octets(self.settings.overlay), ..Cie::default() })
            .into_iter()
            .collect()
    }

    pub(super) fn resolution_request(&mut self, from: IpAddr, p: &Packet, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        let Some(target) = proto_addr(&p.dst_proto) else { return vec![] };
        if target == self.settings.overlay {
            return self.answer_for_ourselves(from, p, self.host_len(), tables);
        }
        if self.settings.server {
            return self.hub_resolution(from, p, target, now, tables);
        }
        match (tables.local)(target) {
            Some(len) => self.answer_for_ourselves(from, p, len, tables),
            None => vec![],
        }
    }

    /// A resolution of our own address, or of a destination we are the exit for (a LAN behind
    /// us, announced with its route's prefix length): a hub forwarded it to us, as ours and
    /// Cisco's and FRR's phase 3 hubs do. We answer the requester directly, at the NBMA address
    /// the NHS saw it at (the NAT extension), and learn it the same way — only when the request
    /// came through an NHS of ours, or straight from where we know the requester to be.
    fn answer_for_ourselves(&mut self, from: IpAddr, p: &Packet, prefix_len: u8, tables: &Tables<'_>) -> Vec<Action> {
        let requester = proto_addr(&p.src_proto);
        let via_nhs = self.from_nhs(from);
        let known_there = requester.is_some_and(|r| (tables.peer)(r) == Some(from));
        if !via_nhs && !known_there && !self.settings.server {
            self.refused.untrusted_request += 1;
            return vec![];
        }
        let requester_nbma = if via_nhs { requester.and_then(|r| nat_nbma_of(p, r)).or_else(|| proto_addr(&p.src_nbma.bytes)).unwrap_or(from) } else { from };
        let mut actions = Vec::new();
        // (A server knows its clients from their registrations.)
        if let Some(requester) = requester
            && requester != self.settings.overlay
            && !self.settings.server
            && requester.is_ipv4() == self.settings.overlay.is_ipv4()
        {
            let hold = p.cies().first().map_or(self.settings.holdtime, |c| self.granted(c.holding_time));
            actions.push(Action::Peer { overlay: requester, nbma: requester_nbma, holdtime: hold, multicast: false });
        }
        let template = p.cies().first().cloned().unwrap_or_default();
        let cie = Cie { code: code::SUCCESS, prefix_len, preference: template.preference, ..self.own_cie() };
        let nat = nat_cies(p).map(|_| self.own_nat());
        let reply = self.reply(p, kind::RESOLUTION_REPLY, (p.flags & (f::Q | f::S | f::NAT)) | f::A | f::D, vec![cie], nat);
        actions.push(Self::send(requester_nbma, &reply));
        actions
    }

    /// A holding time as asked (0: ours), no longer than the limit.
    fn granted(&self, asked: u16) -> u16 {
        if asked == 0 { self.settings.holdtime } else { asked.min(self.settings.limits.holdtime.max(self.settings.holdtime)) }
    }

    /// The server's part: a request for a registered client goes on to that client, which
    /// answers the requester itself (and learns it); another known peer is answered from the
    /// table (not authoritatively); else the request goes one NHS on (toward the target's route,
    /// else up to our own NHS) and its reply is relayed back. A loop or a spent hop count is an
    /// Error Indication.
    fn hub_resolution(&mut self, from: IpAddr, p: &Packet, target: IpAddr, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        let transit = p.extension(ext::FORWARD_TRANSIT_NHS);
        let relayed = matches!(transit, Some(Extension { body: ExtBody::Cies(l), .. }) if !l.is_empty());
        if let Some(Extension { body: ExtBody::Cies(list), .. }) = transit
            && list.iter().any(|c| c.proto == octets(self.settings.overlay))
        {
            let at = p.extensions.iter().zip(p.extension_offsets()).find(|(e, _)| e.kind & 0x3fff == ext::FORWARD_TRANSIT_NHS).map_or(0, |(_, at)| at);
            return self.error(from, error_code::LOOP_DETECTED, at, p, now);
        }
        let requester = proto_addr(&p.src_proto);
        // Relayed requests come from an NHS: the requester is at its own NBMA address.
        let requester_nbma = if relayed { proto_addr(&p.src_nbma.bytes).unwrap_or(from) } else { from };
        let template = p.cies().first().cloned().unwrap_or_default();
        let registered = self.server.registrations.get(&target).copied();
        if let Some(b) = registered {
            if let Some(r) = requester {
                let cap = self.settings.limits.holders;
                self.server.told(target, r, requester_nbma, cap);
            }
            if p.hop_count > 1 && b.nbma != from {
                let mut fwd = self.pass_on(p, ext::FORWARD_TRANSIT_NHS);
                // Behind NAT, the requester is not where it says: the target is told where.
                if let Some(r) = requester
                    && requester_nbma != proto_addr(&p.src_nbma.bytes).unwrap_or(requester_nbma)
                    && nat_nbma_of(&fwd, r).is_none()
                    && let Some(Extension { body: ExtBody::Cies(list), .. }) = fwd.extensions.iter_mut().find(|e| e.kind & 0x3fff == ext::NAT_ADDRESS)
                {
                    list.push(Cie { prefix_len: self.host_len(), nbma: nsap(requester_nbma), proto: octets(r), ..Cie::default() });
                }
                // The target answers the requester itself, or back through us (FRR routes
                // its answer by its own table): then we lead it on.
                let cap = self.settings.limits.relays;
                self.relays.add(&p.src_proto, p.request_id, from, b.nbma, now, cap);
                return vec![Self::send(b.nbma, &fwd)];
            }
            let remaining = u16::try_from(b.expires.saturating_sub(now)).unwrap_or(u16::MAX);
            let cie = Cie {
                code: code::SUCCESS,
                prefix_len: self.host_len(),
                holding_time: remaining,
                mtu: b.mtu,
                nbma: nsap(b.nbma),
                proto: p.dst_proto.clone(),
                ..template
            };
            let reply = self.reply(p, kind::RESOLUTION_REPLY, (p.flags & (f::Q | f::S | f::NAT)) | f::A, vec![cie], None);
            return vec![Self::send(from, &reply)];
        }
        if let Some(nbma) = (tables.peer)(target) {
            let cie = Cie {
                code: code::SUCCESS,
                prefix_len: self.host_len(),
                holding_time: self.settings.holdtime,
                mtu: self.settings.mtu,
                nbma: nsap(nbma),
                proto: p.dst_proto.clone(),
                ..template
            };
            // From the table, not from a registration this server holds: not authoritative.
            let reply = self.reply(p, kind::RESOLUTION_REPLY, p.flags & (f::Q | f::S | f::NAT), vec![cie], None);
            return vec![Self::send(from, &reply)];
        }
        if let Some(len) = (tables.local)(target) {
            return self.answer_for_ourselves(from, p, len, tables);
        }
        let upstream = self.client.best().map(|n| n.nbma);
        let next = (tables.route)(target).filter(|nh| *nh != target).and_then(|nh| (tables.peer)(nh)).or(upstream).filter(|n| *n != from);
        if let Some(next) = next {
            if p.hop_count <= 1 {
                return self.error(from, error_code::HOP_COUNT_EXCEEDED, HOP_COUNT_OFFSET, p, now);
            }
            let cap = self.settings.limits.relays;
            if !self.relays.add(&p.src_proto, p.request_id, from, next, now, cap) {
                return self.full("the table of relayed requests", now).into_iter().collect();
            }
            return vec![Self::send(next, &self.pass_on(p, ext::FORWARD_TRANSIT_NHS))];
        }
        let cie = Cie { code: code::NO_BINDING, prefix_len: self.host_len(), proto: p.dst_proto.clone(), ..template };
        let reply = self.reply(p, kind::RESOLUTION_REPLY, p.flags & (f::Q | f::S | f::NAT), vec![cie], None);
        vec![Self::send(from, &reply)]
    }

    /// A Resolution Reply: relayed back if we forwarded its request; else taken only for a
    /// request of ours that waits, from the NHS it went to (or from the station that answers
    /// for itself, bound to the address it sent from), for the address we asked, with a prefix
    /// no wider than /8 nor than the route it replaces.
    pub(super) fn resolution_reply(&mut self, from: IpAddr, p: &Packet, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        if let Some(back_to) = self.relays.take(&p.src_proto, p.request_id, from) {
            if p.hop_count <= 1 {
                return self.error(from, error_code::HOP_COUNT_EXCEEDED, HOP_COUNT_OFFSET, p, now);
            }
            let mut back = self.pass_on(p, ext::REVERSE_TRANSIT_NHS);
            // Behind NAT, the target is not where it says: the requester is told where.
            if let Some(c) = p.cies().first()
                && let Some(proto) = proto_addr(&c.proto)
                && let Some(b) = self.server.registrations.get(&proto).copied()
                && b.nbma != b.claimed
                && nat_nbma_of(&back, proto).is_none()
                && let Some(Extension { body: ExtBody::Cies(list), .. }) = back.extensions.iter_mut().find(|e| e.kind & 0x3fff == ext::NAT_ADDRESS)
            {
                list.push(Cie { prefix_len: self.host_len(), nbma: nsap(b.nbma), proto: c.proto.clone(), ..Cie::default() });
            }
            return vec![Self::send(back_to, &back)];
        }
        let Some(r) = self.pending.get(p.request_id) else {
            self.refused.unsolicited_reply += 1;
            return vec![];
        };
        let (Purpose::Resolution { target, shortcut }, asked) = (r.purpose, r.to) else {
            self.refused.unsolicited_reply += 1;
            return vec![];
        };
        if proto_addr(&p.dst_proto) != Some(target) || p.src_proto != octets(self.settings.overlay) {
            self.refused.reply_mismatch += 1;
            return vec![];
        }
        let Some(cie) = p.cies().first() else { return vec![] };
        let proto = if cie.proto.is_empty() { Some(target) } else { proto_addr(&cie.proto) };
        // The binding is for the target, or for a router on the tunnel answering for a LAN.
        let Some(proto) = proto.filter(|a| *a == target || self.settings.subnet.contains(a)) else {
            self.refused.reply_mismatch += 1;
            return vec![];
        };
        let nbma = if from == asked {
            nat_nbma_of(p, proto).or_else(|| proto_addr(&cie.nbma.bytes))
        } else {
            // Not from the NHS we asked: the answering station itself, which the NHS forwarded
            // our request to. It answers for itself only, and is where it sent from.
            let responder = match p.extension(ext::RESPONDER_ADDRESS) {
                Some(Extension { body: ExtBody::Cies(l), .. }) => l.first().and_then(|c| proto_addr(&c.proto)),
                _ => None,
            };
            if responder != Some(proto) {
                self.refused.reply_from_stranger += 1;
                return vec![];
            }
            Some(from)
        };
        let host = self.host_len();
        let mut len = if cie.prefix_len == 0 || cie.prefix_len >= host { host } else { cie.prefix_len };
        if len < WIDEST_SHORTCUT {
            self.refused.reply_mismatch += 1;
            return vec![];
        }
        // Never wider than the route it replaces.
        len = len.max((tables.route_len)(target).unwrap_or(0).min(host));
        self.pending.remove(p.request_id);
        if cie.code != code::SUCCESS {
            return vec![];
        }
        let Some(nbma) = nbma.filter(|n| n.is_ipv4() == self.settings.nbma.is_ipv4()) else { return vec![] };
        let hold = self.granted(cie.holding_time);
        let mut actions = vec![Action::Peer { overlay: proto, nbma, holdtime: hold, multicast: false }];
        if shortcut {
            let prefix = ipnet::IpNet::new(target, len).map_or_else(|_| ipnet::IpNet::from(target), |n| n.trunc());
            actions.push(Action::Shortcut { target, prefix, via: proto });
        }
        actions
    }

    /// The NHS relayed our traffic: resolve its destination (the offending packet's) and take
    /// the shortcut once the answer comes. Only from an NHS of ours.
    pub(super) fn traffic_indication(&mut self, from: IpAddr, p: &Packet, now: u64) -> Vec<Action> {
        if !self.from_nhs(from) {
            self.refused.untrusted_indication += 1;
            return vec![];
        }
        let Payload::Raw(original) = &p.payload else { return vec![] };
        let dst = match original.first().map(|b| b >> 4) {
            Some(4) => original.get(16..20).and_then(|d| <[u8; 4]>::try_from(d).ok()).map(IpAddr::from),
            Some(6) => original.get(24..40).and_then(|d| <[u8; 16]>::try_from(d).ok()).map(IpAddr::from),
            _ => None,
        };
        dst.map_or_else(Vec::new, |d| self.resolve_for(d, true, now))
    }

    /// The NHS relayed traffic from `source` (one of its peers, at `source_nbma`) to `target`: a
    /// Traffic Indication tells the source, carrying the head of the offending packet.
    pub fn indicate(&mut self, source: IpAddr, source_nbma: IpAddr, target: IpAddr) -> Vec<Action> {
        let original = match (source, target) {
            (IpAddr::V4(s), IpAddr::V4(t)) => ipv4_head(s, t),
            (IpAddr::V6(s), IpAddr::V6(t)) => ipv6_head(s, t),
            _ => return vec![],
        };
        let id = self.id();
        let mut p = self.request(kind::TRAFFIC_INDICATION, 0, id, source, vec![], None);
        p.payload = Payload::Raw(original);
        vec![Self::send(source_nbma, &p)]
    }
}

/// The head of an IPv4 packet from `s` to `t`, as a Traffic Indication carries it.
fn ipv4_head(s: Ipv4Addr, t: Ipv4Addr) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&20u16.to_be_bytes());
    h[8] = 64;
    h[12..16].copy_from_slice(&s.octets());
    h[16..20].copy_from_slice(&t.octets());
    let c = gre_common::gre::internet_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn ipv6_head(s: Ipv6Addr, t: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[6] = 59; // no next header
    h[7] = 64;
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&t.octets());
    h
}
