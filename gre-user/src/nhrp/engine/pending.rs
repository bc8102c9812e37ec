//! Requests of ours that wait for an answer, with their deadlines: sent again with the same
//! request ID (RFC 2332 §5.2.0.1) after 1 s, then 2, 4 … up to 64 s, as FRR does; given up after
//! the 64 s wait, except registrations, which go on every 64 s until their NHS answers.

use std::{collections::HashMap, net::IpAddr};

/// The first wait for an answer, and the longest.
const FIRST_WAIT: u64 = 1;
const LONGEST_WAIT: u64 = 64;

/// What a request was for, to know what its answer (or its silence) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A registration with our NHS number `nhs`.
    Registration { nhs: usize },
    /// A resolution of `target`; `shortcut` when a Traffic Indication asked for it.
    Resolution { target: IpAddr, shortcut: bool },
    /// A purge of `target`'s binding from a station we told of it.
    Purge { target: IpAddr },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub purpose: Purpose,
    /// Where it went (the NBMA address), and what it was (bytes, to send again as they were).
    pub to: IpAddr,
    pub kind: u8,
    pub packet: Vec<u8>,
    retry_at: u64,
    wait: u64,
}

/// What the clock made of the table.
#[derive(Debug, Default)]
pub struct Due {
    /// Sent again: (to, kind, bytes, purpose).
    pub again: Vec<(IpAddr, u8, Vec<u8>, Purpose)>,
    /// Given up, unanswered.
    pub given_up: Vec<Request>,
}

#[derive(Debug, Default)]
pub struct Pending {
    by_id: HashMap<u32, Request>,
}

impl Pending {
    /// Records a request just sent; false (nothing recorded) when `cap` requests wait already.
    pub fn add(&mut self, id: u32, purpose: Purpose, to: IpAddr, kind: u8, packet: Vec<u8>, now: u64, cap: usize) -> bool {
        if self.by_id.len() >= cap && !matches!(purpose, Purpose::Registration { .. }) {
            return false;
        }
        self.by_id.insert(id, Request { purpose, to, kind, packet, retry_at: now + FIRST_WAIT, wait: FIRST_WAIT });
        true
    }

    pub fn get(&self, id: u32) -> Option<&Request> {
        self.by_id.get(&id)
    }

    pub fn remove(&mut self, id: u32) -> Option<Request> {
        self.by_id.remove(&id)
    }

    /// An answer from `from` to request `id`: the request is done if it went there.
    pub fn answered(&mut self, id: u32, from: IpAddr) -> Option<Request> {
        (self.by_id.get(&id)?.to == from).then(|| self.by_id.remove(&id)).flatten()
    }

    /// The request waiting for `purpose`, if any.
    pub fn find(&mut self, mut f: impl FnMut(&Purpose) -> bool) -> Option<(u32, &mut Request)> {
        self.by_id.iter_mut().find(|(_, r)| f(&r.purpose)).map(|(id, r)| (*id, r))
    }

    /// Resolutions that went to `dead` go to `to` instead, now: the same request (ID and bytes;
    /// its destination is the target, not the NHS), its wait started over.
    pub fn reroute(&mut self, dead: IpAddr, to: IpAddr, now: u64) -> Vec<(u8, Vec<u8>)> {
        self.by_id
            .values_mut()
            .filter(|r| r.to == dead && matches!(r.purpose, Purpose::Resolution { .. }))
            .map(|r| {
                r.to = to;
                r.wait = FIRST_WAIT;
                r.retry_at = now + FIRST_WAIT;
                (r.kind, r.packet.clone())
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Requests past their deadline: sent again with a doubled wait, or given up.
    pub fn due(&mut self, now: u64) -> Due {
        let mut due = Due::default();
        let mut gone = Vec::new();
        for (id, r) in &mut self.by_id {
            if now < r.retry_at {
                continue;
            }
            let registration = matches!(r.purpose, Purpose::Registration { .. });
            if r.wait >= LONGEST_WAIT && !registration {
                gone.push(*id);
                continue;
            }
            r.wait = (r.wait * 2).min(LONGEST_WAIT);
            r.retry_at = now + r.wait;
            due.again.push((r.to, r.kind, r.packet.clone(), r.purpose));
        }
        due.given_up = gone.into_iter().filter_map(|id| self.by_id.remove(&id)).collect();
        due
    }
}
