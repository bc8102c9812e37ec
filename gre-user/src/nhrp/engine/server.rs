//! The server role: registrations (uniqueness, the tunnel's subnet, bounded tables, NAT), who
//! was told of each, and purges — of a registration by its owner, and of what an NHS told us.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;

use super::{
    Action, Engine, Tables, UNIQUE_PREFIX, code, nat_cies, nsap, octets,
    pending::Purpose,
    proto_addr,
    wire::{Cie, Packet, flags, kind},
};

/// A registration the server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// Where the registration came from (after any NAT): where the client is reached.
    pub nbma: IpAddr,
    /// The NBMA address the client said it has (differs from `nbma` behind NAT).
    pub claimed: IpAddr,
    /// Registered with the U flag: no other NBMA address may take it.
    pub unique: bool,
    pub expires: u64,
    pub since: u64,
    pub mtu: u16,
}

#[derive(Debug, Default)]
pub struct Server {
    pub registrations: HashMap<IpAddr, Binding>,
    /// Registrations per NBMA address.
    per_nbma: HashMap<IpAddr, usize>,
    /// Who holds a registered client's binding because we told it: target → (overlay, NBMA)
    /// of each requester. They are purged when the registration goes or moves.
    told: HashMap<IpAddr, Vec<(IpAddr, IpAddr)>>,
}

impl Server {
    fn insert(&mut self, overlay: IpAddr, b: Binding) {
        if let Some(old) = self.registrations.insert(overlay, b) {
            self.release(old.nbma);
        }
        *self.per_nbma.entry(b.nbma).or_default() += 1;
    }

    fn remove(&mut self, overlay: IpAddr) -> Option<Binding> {
        let b = self.registrations.remove(&overlay)?;
        self.release(b.nbma);
        Some(b)
    }

    fn release(&mut self, nbma: IpAddr) {
        if let Some(n) = self.per_nbma.get_mut(&nbma) {
            *n -= 1;
            if *n == 0 {
                self.per_nbma.remove(&nbma);
            }
        }
    }

    /// Remembers that `requester` (at `nbma`) learned `target`'s binding from us.
    pub fn told(&mut self, target: IpAddr, requester: IpAddr, nbma: IpAddr, cap: usize) {
        let holders = self.told.entry(target).or_default();
        if holders.contains(&(requester, nbma)) {
            return;
        }
        if holders.len() >= cap {
            holders.remove(0);
        }
        holders.push((requester, nbma));
    }
}

impl Engine {
    /// Takes up a registration a previous daemon held (from the peer table), as if it had just
    /// been renewed with what is left of its holding time.
    pub fn restore_registration(&mut self, overlay: IpAddr, b: Binding) {
        self.server.insert(overlay, b);
    }

    /// Who was told of which registration: (target, requester, requester's NBMA address).
    #[must_use]
    pub fn told(&self) -> Vec<(IpAddr, IpAddr, IpAddr)> {
        self.server.told.iter().flat_map(|(t, holders)| holders.iter().map(|(o, n)| (*t, *o, *n))).collect()
    }

    /// Takes up what a previous daemon told (see [`Engine::told`]).
    pub fn restore_told(&mut self, target: IpAddr, requester: IpAddr, nbma: IpAddr) {
        let cap = self.settings.limits.holders;
        self.server.told(target, requester, nbma, cap);
    }

    /// The operator clears a registration (`gre nhrp clear ADDRESS`): it goes, and those told
    /// of it are purged; the client registers again at its next renewal.
    pub fn clear(&mut self, overlay: IpAddr, now: u64) -> Vec<Action> {
        if self.server.remove(overlay).is_none() {
            return vec![];
        }
        self.purge_holders(overlay, now)
    }

    /// Clears every registration (`gre nhrp clear cache`).
    pub fn clear_all(&mut self, now: u64) -> Vec<Action> {
        let all: Vec<IpAddr> = self.server.registrations.keys().copied().collect();
        all.into_iter().flat_map(|o| self.clear(o, now)).collect()
    }

    /// How many stations were told of `target`'s registration.
    #[must_use]
    pub fn told_of(&self, target: IpAddr) -> Vec<(IpAddr, IpAddr)> {
        self.server.told.get(&target).cloned().unwrap_or_default()
    }

    /// The registrations held, by overlay address.
    #[must_use]
    pub const fn registrations(&self) -> &HashMap<IpAddr, Binding> {
        &self.server.registrations
    }

    /// The hub takes a registration: the client's address behind the NBMA address it came from,
    /// for the holding time it asked (capped). Refused: an address outside the tunnel's subnet,
    /// a prefix, an address registered uniquely from elsewhere, a full table.
    pub(super) fn registration(&mut self, from: IpAddr, p: &Packet, now: u64) -> Vec<Action> {
        let src = proto_addr(&p.src_proto);
        let unique = p.flags & flags::registration::U != 0;
        let claimed = proto_addr(&p.src_nbma.bytes).unwrap_or(from);
        let mut actions = Vec::new();
        let cies = if p.cies().is_empty() { vec![Cie::default()] } else { p.cies().to_vec() };
        let mut answered = Vec::new();
        for c in cies {
            let hold = if c.holding_time == 0 { self.settings.holdtime } else { c.holding_time.min(self.settings.limits.holdtime.max(self.settings.holdtime)) };
            let overlay = if c.proto.is_empty() { src } else { proto_addr(&c.proto) };
            let result = self.register_one(overlay, &c, unique, from, claimed, hold, now, &mut actions);
            answered.push(Cie { code: result, holding_time: hold, ..c });
        }
        // Cisco's NAT extension: what the client said it is, and (behind NAT) what we saw.
        let nat = nat_cies(p).map(|list| {
            let mut list = list.to_vec();
            if claimed != from {
                list.push(Cie { prefix_len: self.host_len(), mtu: self.settings.mtu, nbma: nsap(from), proto: p.src_proto.clone(), ..Cie::default() });
            }
            list
        });
        let mut reply = self.reply(p, kind::REGISTRATION_REPLY, p.flags & (flags::registration::U | flags::registration::NAT), answered, nat);
        // The reply names us as its destination: a client that registers with a "dynamic" NHS
        // (FRR's `nhs dynamic nbma …`) learns our address from it.
        reply.dst_proto = octets(self.settings.overlay);
        actions.push(Self::send(from, &reply));
        actions
    }

    #[allow(clippy::too_many_arguments)]
    fn register_one(
        &mut self,
        overlay: Option<IpAddr>,
        c: &Cie,
        unique: bool,
        from: IpAddr,
        claimed: IpAddr,
        hold: u16,
        now: u64,
        actions: &mut Vec<Action>,
    ) -> u8 {
        let host = self.host_len();
        let Some(overlay) = overlay.filter(|o| self.settings.subnet.contains(o) && *o != self.settings.overlay) else {
            self.refused.not_registrable += 1;
            return code::ADMINISTRATIVELY_PROHIBITED;
        };
        // Only host bindings are installed (0 and 0xff mean the host, RFC 2332 §5.2.1).
        if !matches!(c.prefix_len, 0 | UNIQUE_PREFIX) && c.prefix_len != host {
            self.refused.not_registrable += 1;
            return code::ADMINISTRATIVELY_PROHIBITED;
        }
        let existing = self.server.registrations.get(&overlay).copied();
        let moved = existing.is_some_and(|b| b.nbma != from);
        // Uniqueness belongs to the binding there is: a later claim, with U or without, is refused.
        if moved && existing.is_some_and(|b| b.unique) {
            self.refused.unique_taken += 1;
            return code::UNIQUE_ADDRESS_REGISTERED;
        }
        let limits = self.settings.limits;
        let from_there = self.server.per_nbma.get(&from).copied().unwrap_or(0);
        if (existing.is_none() && self.server.registrations.len() >= limits.registrations) || (existing.is_none() || moved) && from_there >= limits.per_nbma {
            actions.extend(self.full("the registration table", now));
            return code::INSUFFICIENT_RESOURCES;
        }
        if moved {
            actions.extend(self.purge_holders(overlay, now));
        }
        let since = existing.filter(|_| !moved).map_or(now, |b| b.since);
        self.server.insert(overlay, Binding { nbma: from, claimed, unique, expires: now + u64::from(hold), since, mtu: c.mtu });
        actions.push(Action::Peer { overlay, nbma: from, holdtime: hold, multicast: true });
        code::SUCCESS
    }

    /// Registrations past their holding time go, and those we told of them are purged.
    pub(super) fn expire_registrations(&mut self, now: u64) -> Vec<Action> {
        let expired: Vec<IpAddr> = self.server.registrations.iter().filter(|(_, b)| b.expires <= now).map(|(o, _)| *o).collect();
        let mut actions = Vec::new();
        for overlay in expired {
            self.server.remove(overlay);
            actions.push(Action::Forget { overlay });
            actions.extend(self.purge_holders(overlay, now));
        }
        actions
    }

    /// Purge Requests to every station we gave `target`'s binding to, sent again until answered.
    pub(super) fn purge_holders(&mut self, target: IpAddr, now: u64) -> Vec<Action> {
        let Some(holders) = self.server.told.remove(&target) else { return vec![] };
        let mut actions = Vec::new();
        for (overlay, nbma) in holders {
            let id = self.id();
            let cie = Cie { prefix_len: self.host_len(), proto: octets(target), ..Cie::default() };
            let a = Self::send(nbma, &self.request(kind::PURGE_REQUEST, 0, id, overlay, vec![cie], None));
            if let Action::Send { packet, .. } = &a {
                let cap = self.settings.limits.pending;
                self.pending.add(id, Purpose::Purge { target }, nbma, kind::PURGE_REQUEST, packet.clone(), now, cap);
            }
            actions.push(a);
        }
        actions
    }

    /// A Purge Request: each CIE is honoured only from who owns it — a client withdrawing its
    /// own registration (from the NBMA address that registered it), an NHS of ours withdrawing
    /// what it told us (the CIE's prefix), or a peer withdrawing itself. A Purge Reply follows
    /// when N is clear and something was honoured.
    pub(super) fn purge(&mut self, from: IpAddr, p: &Packet, now: u64, tables: &Tables<'_>) -> Vec<Action> {
        let host = self.host_len();
        let from_nhs = self.from_nhs(from);
        let mut actions = Vec::new();
        let mut honoured = false;
        for c in p.cies() {
            let Some(addr) = (if c.proto.is_empty() { proto_addr(&p.src_proto) } else { proto_addr(&c.proto) }) else { continue };
            let len = if c.prefix_len == 0 || c.prefix_len >= host { host } else { c.prefix_len };
            let ok = match self.server.registrations.get(&addr) {
                Some(b) if b.nbma == from => {
                    self.server.remove(addr);
                    actions.push(Action::Forget { overlay: addr });
                    actions.extend(self.purge_holders(addr, now));
                    true
                }
                Some(_) => false,
                None if from_nhs && len >= 8 => ipnet::IpNet::new(addr, len).is_ok_and(|prefix| {
                    actions.push(Action::Withdraw { prefix: prefix.trunc() });
                    true
                }),
                None if (tables.peer)(addr) == Some(from) => {
                    actions.push(Action::Forget { overlay: addr });
                    true
                }
                None => false,
            };
            honoured |= ok;
            if !ok {
                self.refused.untrusted_purge += 1;
                actions.push(Action::Warn(format!("ignored a purge of {addr} from {from}, which does not own it")));
            }
        }
        if honoured && p.flags & flags::purge::N == 0 {
            let reply = self.reply(p, kind::PURGE_REPLY, p.flags, p.cies().to_vec(), None);
            actions.push(Self::send(from, &reply));
        }
        actions
    }
}
