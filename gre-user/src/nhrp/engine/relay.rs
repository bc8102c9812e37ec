//! Requests passed on between NHSs (RFC 2332 §5.3.4): our record appended to the transit
//! extension, authentication replaced (it is hop by hop), and replies led back the way their
//! request came — only from where the request went, only while it is fresh.

use std::{collections::HashMap, net::IpAddr};

use super::{
    Engine, end,
    wire::{ExtBody, Extension, Packet},
};

/// Seconds a forwarded request waits for its reply.
const RELAY_TIMEOUT: u64 = 10;

#[derive(Debug, Clone, Copy)]
struct Relay {
    back_to: IpAddr,
    sent_to: IpAddr,
    until: u64,
}

/// Requests forwarded toward another NHS: (requester's address, request id) → relay.
#[derive(Debug, Default)]
pub struct Relays {
    by_request: HashMap<(Vec<u8>, u32), Relay>,
}

impl Relays {
    /// Records a forwarded request; false when `cap` wait already.
    pub fn add(&mut self, requester: &[u8], id: u32, back_to: IpAddr, sent_to: IpAddr, now: u64, cap: usize) -> bool {
        if self.by_request.len() >= cap {
            return false;
        }
        self.by_request.insert((requester.to_vec(), id), Relay { back_to, sent_to, until: now + RELAY_TIMEOUT });
        true
    }

    /// Where the reply to `requester`'s request `id` goes back to, if it comes from where the
    /// request went.
    pub fn take(&mut self, requester: &[u8], id: u32, from: IpAddr) -> Option<IpAddr> {
        let key = (requester.to_vec(), id);
        let r = self.by_request.get(&key)?;
        (r.sent_to == from).then(|| self.by_request.remove(&key).map(|r| r.back_to)).flatten()
    }

    pub fn expire(&mut self, now: u64) {
        self.by_request.retain(|_, r| r.until > now);
    }
}

impl Engine {
    /// A packet passed on by this NHS: hop count spent, our record appended to the transit
    /// extension `transit`, authentication replaced by ours.
    pub(super) fn pass_on(&self, p: &Packet, transit: u16) -> Packet {
        let mut out = p.clone();
        out.hop_count = p.hop_count.saturating_sub(1);
        out.extensions.retain(|e| e.kind & 0x3fff != super::ext::AUTHENTICATION);
        match out.extensions.iter_mut().find(|e| e.kind & 0x3fff == transit) {
            Some(Extension { body: ExtBody::Cies(list), .. }) => list.push(self.own_cie()),
            Some(e) => e.body = ExtBody::Cies(vec![self.own_cie()]),
            None => out.extensions.insert(0, Extension { compulsory: true, kind: transit, body: ExtBody::Cies(vec![self.own_cie()]) }),
        }
        if let Some(auth) = self.auth_extension() {
            let at = out.extensions.iter().position(|e| e.kind & 0x3fff == super::ext::END).unwrap_or(out.extensions.len());
            out.extensions.insert(at, auth);
        }
        if out.extension(super::ext::END).is_none() {
            out.extensions.push(end());
        }
        out
    }
}
