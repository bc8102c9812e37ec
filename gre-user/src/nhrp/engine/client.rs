//! The client role: registering with every configured NHS, knowing which of them answer, and
//! what NAT made of our NBMA address.

use std::net::IpAddr;

use serde::Serialize;

use super::{
    Action, Engine, Nhs, UNIQUE_PREFIX, code,
    pending::Purpose,
    wire::{Cie, Packet, flags, kind},
};

/// Unanswered registrations after which an NHS counts as down (1 + 2 + 4 s of silence after
/// the request; the registration period is a third of the holding time).
const DOWN_AFTER: u32 = 3;
/// A refused registration is tried again after this many seconds.
const REFUSED_RETRY: u64 = 10;

/// Our registration with one NHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NhsLink {
    #[serde(serialize_with = "nhs_fields")]
    pub nhs: Nhs,
    /// The registration in flight, if any.
    pub pending: Option<u32>,
    pub last_request: Option<u64>,
    pub last_reply: Option<u64>,
    /// Registrations in a row that timed out.
    pub timeouts: u32,
    /// Registered, and answering.
    pub up: bool,
    /// When the state last changed.
    pub since: u64,
    next_at: u64,
}

fn nhs_fields<S: serde::Serializer>(n: &Nhs, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct as _;
    let mut st = s.serialize_struct("nhs", 3)?;
    st.serialize_field("overlay", &n.overlay)?;
    st.serialize_field("nbma", &n.nbma)?;
    st.serialize_field("priority", &n.priority)?;
    st.end()
}

#[derive(Debug, Default)]
pub struct Client {
    pub links: Vec<NhsLink>,
    /// Our NBMA address as an NHS saw it (its NAT extension), when it is not ours.
    pub nat_nbma: Option<IpAddr>,
}

impl Client {
    pub fn new(nhs: &[Nhs]) -> Self {
        let links = nhs
            .iter()
            .map(|n| NhsLink { nhs: *n, pending: None, last_request: None, last_reply: None, timeouts: 0, up: false, since: 0, next_at: 0 })
            .collect();
        Self { links, nat_nbma: None }
    }

    /// The NHS to resolve through: the preferred one (lowest priority, then the first
    /// configured) among those that answer, else the preferred one of all.
    pub fn best(&self) -> Option<Nhs> {
        let pick = |up_only: bool| self.links.iter().filter(|l| l.up || !up_only).min_by_key(|l| l.nhs.priority).map(|l| l.nhs);
        pick(true).or_else(|| pick(false))
    }
}

impl Engine {
    /// Registrations due: with each NHS that has none in flight, every third of the holding time.
    pub(super) fn register(&mut self, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        for i in 0..self.client.links.len() {
            let link = self.client.links[i];
            if link.pending.is_some() || now < link.next_at {
                continue;
            }
            let id = self.id();
            let nhs = link.nhs;
            let cie = Cie { prefix_len: UNIQUE_PREFIX, mtu: self.settings.mtu, holding_time: self.settings.holdtime, ..Cie::default() };
            // Cisco's NAT detection: the NHS as we address it; it answers with what it saw of us.
            let nat =
                Cie { prefix_len: self.host_len(), mtu: self.settings.mtu, nbma: super::nsap(nhs.nbma), proto: super::octets(nhs.overlay), ..Cie::default() };
            let p = self.request(kind::REGISTRATION_REQUEST, flags::registration::U | flags::registration::NAT, id, nhs.overlay, vec![cie], Some(vec![nat]));
            let a = Self::send(nhs.nbma, &p);
            if let Action::Send { packet, .. } = &a {
                self.pending.add(id, Purpose::Registration { nhs: i }, nhs.nbma, kind::REGISTRATION_REQUEST, packet.clone(), now, usize::MAX);
            }
            let l = &mut self.client.links[i];
            l.pending = Some(id);
            l.last_request = Some(now);
            actions.push(a);
        }
        actions
    }

    /// A registration that went unanswered once more: the NHS is down after a few.
    pub(super) fn registration_timed_out(&mut self, nhs: usize, now: u64) -> Vec<Action> {
        let Some(l) = self.client.links.get_mut(nhs) else { return vec![] };
        l.timeouts += 1;
        if !l.up || l.timeouts < DOWN_AFTER {
            return vec![];
        }
        l.up = false;
        l.since = now;
        let dead = l.nhs;
        let mut actions = vec![Action::Warn(format!("NHS {} ({}) does not answer: down", dead.overlay, dead.nbma))];
        // What waits on it goes to the NHS that takes over.
        if let Some(next) = self.client.best().filter(|b| b.nbma != dead.nbma) {
            for (kind, packet) in self.pending.reroute(dead.nbma, next.nbma, now) {
                actions.push(Action::Send { to: next.nbma, kind, packet });
            }
        }
        actions
    }

    /// A Registration Reply: from the NHS we asked, for the registration in flight.
    pub(super) fn registered(&mut self, from: IpAddr, p: &Packet, now: u64) -> Vec<Action> {
        let Some(i) = self.client.links.iter().position(|l| l.pending == Some(p.request_id) && l.nhs.nbma == from) else {
            self.refused.unsolicited_reply += 1;
            return vec![];
        };
        self.pending.remove(p.request_id);
        let period = u64::from((self.settings.holdtime / 3).max(1));
        let refusal = p.cies().iter().find(|c| c.code != code::SUCCESS).map(|c| c.code);
        let mut actions = Vec::new();
        let l = &mut self.client.links[i];
        l.pending = None;
        l.timeouts = 0;
        l.last_reply = Some(now);
        if let Some(c) = refusal {
            l.next_at = now + REFUSED_RETRY;
            if l.up {
                l.up = false;
                l.since = now;
            }
            return vec![Action::Warn(format!("the NHS at {from} refused our registration: code {c}"))];
        }
        l.next_at = now + period;
        if !l.up {
            l.up = true;
            l.since = now;
        }
        // What the NHS saw of our NBMA address (Cisco's and FRR's NAT extension: the CIE for
        // our protocol address).
        let overlay = self.settings.overlay;
        let seen = super::nat_nbma_of(p, overlay).filter(|n| *n != self.settings.nbma);
        if seen != self.client.nat_nbma {
            if let Some(n) = seen {
                actions.push(Action::Warn(format!("behind NAT: the NHS at {from} sees us at {n}")));
            }
            self.client.nat_nbma = seen;
        }
        actions
    }

    /// The daemon stops for good: we withdraw our registrations (a Purge Request for our own
    /// address, no reply wanted), so the NHSs and those they told forget us now, not at expiry.
    pub fn withdraw(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for i in 0..self.client.links.len() {
            let l = self.client.links[i];
            if l.last_reply.is_none() {
                continue;
            }
            let id = self.id();
            let p = self.request(kind::PURGE_REQUEST, flags::purge::N, id, l.nhs.overlay, vec![self.own_cie()], None);
            actions.push(Self::send(l.nhs.nbma, &p));
        }
        actions
    }
}
