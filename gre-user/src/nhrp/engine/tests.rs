use std::net::IpAddr;

use super::*;
use crate::nhrp::wire::{flags, kind};

const HUB_NBMA: [u8; 4] = [198, 51, 100, 10];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn hub() -> Engine {
    Engine::new(Settings {
        holdtime: 60,
        auth: Some(b"secret".to_vec()),
        first_id: 1000,
        ..Settings::new(true, ip("203.0.113.254"), net("203.0.113.0/24"), HUB_NBMA.into())
    })
}

fn spoke(last: u8, nbma: u8) -> Engine {
    Engine::new(Settings {
        nhs: vec![Nhs { overlay: ip("203.0.113.254"), nbma: HUB_NBMA.into(), priority: 0 }],
        holdtime: 60,
        auth: Some(b"secret".to_vec()),
        first_id: u32::from(last) << 20,
        ..Settings::new(false, [203, 0, 113, last].into(), net("203.0.113.0/24"), [198, 51, 100, nbma].into())
    })
}

fn sent(actions: &[Action]) -> (IpAddr, Packet) {
    all_sent(actions).into_iter().next().unwrap_or_else(|| panic!("nothing sent: {actions:?}"))
}

fn all_sent(actions: &[Action]) -> Vec<(IpAddr, Packet)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, packet, .. } => Some((*to, Packet::decode(packet).expect("we send what we decode"))),
            _ => None,
        })
        .collect()
}

fn sent_kind(actions: &[Action], k: u8) -> Vec<(IpAddr, Packet)> {
    all_sent(actions).into_iter().filter(|(_, p)| p.kind == k).collect()
}

fn peers(actions: &[Action]) -> Vec<(IpAddr, IpAddr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Peer { overlay, nbma, .. } => Some((*overlay, *nbma)),
            _ => None,
        })
        .collect()
}

fn responder(p: &Packet) -> Vec<Vec<u8>> {
    match p.extension(ext::RESPONDER_ADDRESS) {
        Some(Extension { body: ExtBody::Cies(l), .. }) => l.iter().map(|c| c.proto.clone()).collect(),
        _ => vec![],
    }
}

/// Registers spoke `s` (at `seen`, its NBMA address after any NAT) with hub `h`.
fn register(h: &mut Engine, s: &mut Engine, seen: IpAddr, now: u64) -> Vec<Action> {
    let (to, request) = sent(&s.tick(now));
    assert_eq!((to, request.kind), (IpAddr::from(HUB_NBMA), kind::REGISTRATION_REQUEST));
    let actions = h.receive(seen, &request, now, &Tables::NONE);
    let (_, reply) = sent(&actions);
    s.receive(HUB_NBMA.into(), &reply, now, &Tables::NONE);
    actions
}

#[test]
fn a_spoke_registers_as_cisco_and_frr_do_and_the_hub_installs_it() {
    let (mut h, mut s) = (hub(), spoke(1, 17));
    let (to, request) = sent(&s.tick(1000));
    assert_eq!(to, IpAddr::from(HUB_NBMA));
    // U is 0x8000 (RFC 2332 §5.2.3), with Cisco's NAT bit; a unique CIE has prefix 0xff.
    assert_eq!(request.flags, 0x8002);
    assert_eq!((request.kind, request.cies()[0].holding_time, request.cies()[0].prefix_len), (kind::REGISTRATION_REQUEST, 60, 0xff));
    // The NAT extension names the NHS as we address it.
    let nat = nat_cies(&request).unwrap();
    assert_eq!((nat[0].nbma.bytes.clone(), nat[0].proto.clone()), (HUB_NBMA.to_vec(), vec![203, 0, 113, 254]));
    // The spoke is behind NAT: the hub sees another NBMA address, and uses that one.
    let natted = ip("198.51.100.99");
    let actions = h.receive(natted, &request, 1000, &Tables::NONE);
    assert!(actions.contains(&Action::Peer { overlay: ip("203.0.113.1"), nbma: natted, holdtime: 60, multicast: true }));
    let (to, reply) = sent(&actions);
    assert_eq!((to, reply.kind, reply.request_id, reply.flags), (natted, kind::REGISTRATION_REPLY, request.request_id, 0x8002));
    // The reply is addressed from the hub: its own address as destination, its binding as responder.
    assert_eq!((reply.src_proto.clone(), reply.dst_proto.clone()), (vec![203, 0, 113, 1], vec![203, 0, 113, 254]));
    assert_eq!(responder(&reply), vec![vec![203, 0, 113, 254]]);
    // And what the hub saw of the spoke, as FRR's hub adds it.
    let nat = nat_cies(&reply).unwrap();
    assert_eq!((nat.len(), nat[1].nbma.bytes.clone(), nat[1].proto.clone()), (2, vec![198, 51, 100, 99], vec![203, 0, 113, 1]));
    let b = h.registrations()[&ip("203.0.113.1")];
    assert_eq!((b.nbma, b.claimed, b.unique), (natted, ip("198.51.100.17"), true));
    assert!(!s.nhs_up());
    s.receive(HUB_NBMA.into(), &reply, 1000, &Tables::NONE);
    assert!(s.nhs_up());
    assert_eq!(s.nat_nbma(), Some(natted), "the spoke learns its address behind NAT");
    // Re-registration after a third of the holding time, not before, with a new request ID.
    assert!(s.tick(1010).is_empty());
    let (_, again) = sent(&s.tick(1020));
    assert_ne!(again.request_id, request.request_id);
}

#[test]
fn uniqueness_belongs_to_the_binding_there_is() {
    let mut h = hub();
    let (_, unique) = sent(&spoke(1, 17).tick(0));
    assert!(!peers(&h.receive(ip("198.51.100.17"), &unique, 0, &Tables::NONE)).is_empty());
    // Another NBMA address claims 203.0.113.1, with the U flag or without: refused with code 14.
    let mut plain = unique.clone();
    plain.flags &= !flags::registration::U;
    for claim in [&unique, &plain] {
        let actions = h.receive(ip("198.51.100.50"), claim, 10, &Tables::NONE);
        assert!(peers(&actions).is_empty(), "{actions:?}");
        assert_eq!(sent(&actions).1.cies()[0].code, code::UNIQUE_ADDRESS_REGISTERED);
    }
    assert_eq!(h.registrations()[&ip("203.0.113.1")].nbma, ip("198.51.100.17"));
    assert_eq!(h.refused.unique_taken, 2);
    // A binding registered without U may move.
    let mut h = hub();
    h.receive(ip("198.51.100.17"), &plain, 0, &Tables::NONE);
    let actions = h.receive(ip("198.51.100.50"), &unique, 10, &Tables::NONE);
    assert_eq!(peers(&actions), vec![(ip("203.0.113.1"), ip("198.51.100.50"))]);
    assert!(h.registrations()[&ip("203.0.113.1")].unique, "and it is unique now");
}

#[test]
fn registrations_outside_the_subnet_or_of_prefixes_are_refused_and_holding_times_capped() {
    let mut h = hub();
    let code_of = |h: &mut Engine, p: &Packet, from: &str| {
        let actions = h.receive(ip(from), p, 0, &Tables::NONE);
        (sent(&actions).1.cies()[0].code, peers(&actions).len())
    };
    let mut outside = spoke(1, 17);
    outside.settings.overlay = ip("10.1.1.1");
    let (_, p) = sent(&outside.tick(0));
    assert_eq!(code_of(&mut h, &p, "198.51.100.17"), (code::ADMINISTRATIVELY_PROHIBITED, 0));
    // The hub's own address is not for a client to take.
    let mut thief = spoke(254, 18);
    thief.settings.overlay = ip("203.0.113.254");
    let (_, p) = sent(&thief.tick(0));
    assert_eq!(code_of(&mut h, &p, "198.51.100.18"), (code::ADMINISTRATIVELY_PROHIBITED, 0));
    // A prefix registration (a /24) is not installed.
    let (_, mut p) = sent(&spoke(2, 19).tick(0));
    if let Payload::Cies(c) = &mut p.payload {
        c[0].prefix_len = 24;
    }
    assert_eq!(code_of(&mut h, &p, "198.51.100.19"), (code::ADMINISTRATIVELY_PROHIBITED, 0));
    assert_eq!(h.refused.not_registrable, 3);
    // Host prefixes in every spelling are; a holding time of 18 hours is cut to the cap.
    for (len, last) in [(0u8, 3u8), (32, 4), (0xff, 5)] {
        let (_, mut p) = sent(&spoke(last, 20 + last).tick(0));
        if let Payload::Cies(c) = &mut p.payload {
            c[0].prefix_len = len;
            c[0].holding_time = 64_800;
        }
        let actions = h.receive([198, 51, 100, 20 + last].into(), &p, 0, &Tables::NONE);
        assert_eq!(sent(&actions).1.cies()[0].holding_time, 7200);
        assert!(actions.iter().any(|a| matches!(a, Action::Peer { holdtime: 7200, .. })), "{actions:?}");
    }
}

#[test]
fn registration_tables_are_bounded_and_a_full_one_is_reported() {
    let mut h = hub();
    h.settings.limits = Limits { registrations: 3, per_nbma: 2, ..Limits::default() };
    let reg = |h: &mut Engine, last: u8, from: u8, now: u64| {
        let (_, p) = sent(&spoke(last, from).tick(0));
        h.receive([198, 51, 100, from].into(), &p, now, &Tables::NONE)
    };
    // Two from one address, a third from there is refused; re-registering is not a new entry.
    assert_eq!(sent(&reg(&mut h, 1, 17, 0)).1.cies()[0].code, code::SUCCESS);
    assert_eq!(sent(&reg(&mut h, 2, 17, 0)).1.cies()[0].code, code::SUCCESS);
    let actions = reg(&mut h, 3, 17, 0);
    assert_eq!(sent(&actions).1.cies()[0].code, code::INSUFFICIENT_RESOURCES);
    assert!(actions.iter().any(|a| matches!(a, Action::Warn(w) if w.contains("full"))), "reported");
    assert_eq!(sent(&reg(&mut h, 1, 17, 1)).1.cies()[0].code, code::SUCCESS);
    // The table holds three in all; the report comes once a minute, the counter counts all.
    assert_eq!(sent(&reg(&mut h, 3, 18, 2)).1.cies()[0].code, code::SUCCESS);
    let actions = reg(&mut h, 4, 19, 3);
    assert_eq!(sent(&actions).1.cies()[0].code, code::INSUFFICIENT_RESOURCES);
    assert!(!actions.iter().any(|a| matches!(a, Action::Warn(_))));
    assert_eq!((h.refused.table_full, h.registrations().len()), (2, 3));
    // When one expires there is room again.
    h.tick(61);
    assert_eq!(sent(&reg(&mut h, 4, 19, 62)).1.cies()[0].code, code::SUCCESS);
}

#[test]
fn authentication_is_enforced() {
    let mut h = hub();
    // A wrong password: nothing installed, an Error Indication (once a second at most)
    // that carries the offending packet and points at its authentication extension.
    let mut intruder = spoke(9, 90);
    intruder.settings.auth = Some(b"guess".to_vec());
    let (_, bad) = sent(&intruder.tick(0));
    let actions = h.receive(ip("198.51.100.90"), &bad, 0, &Tables::NONE);
    assert!(peers(&actions).is_empty());
    let (to, e) = sent(&actions);
    assert_eq!((to, e.kind, e.request_id >> 16), (ip("198.51.100.90"), kind::ERROR_INDICATION, u32::from(error_code::AUTHENTICATION_FAILURE)));
    let offset = (e.request_id & 0xffff) as usize;
    let bad_wire = bad.encode(false).unwrap();
    assert_eq!(u16::from_be_bytes([bad_wire[offset], bad_wire[offset + 1]]), wire::COMPULSORY | ext::AUTHENTICATION);
    assert_eq!(e.payload, Payload::Raw(bad_wire));
    assert_eq!(e.dst_proto, vec![203, 0, 113, 9]);
    assert!(all_sent(&h.receive(ip("198.51.100.90"), &bad, 0, &Tables::NONE)).is_empty(), "rate limited");
    // An Error Indication is never answered, even one that fails authentication.
    assert!(all_sent(&intruder.receive(to, &e, 0, &Tables::NONE)).is_empty());
}

#[test]
fn unrecognized_compulsory_extensions_are_refused_optional_ones_skipped() {
    let mut h = hub();
    let (_, mut request) = sent(&spoke(1, 17).tick(0));
    // A Vendor-Private extension of a vendor not ours: read past when optional...
    let vendor = Extension { compulsory: false, kind: ext::VENDOR_PRIVATE, body: ExtBody::Raw(vec![0x00, 0x00, 0x0c, 1, 2, 3]) };
    request.extensions.insert(0, vendor.clone());
    let actions = h.receive(ip("198.51.100.17"), &request, 0, &Tables::NONE);
    assert_eq!(sent(&actions).1.kind, kind::REGISTRATION_REPLY);
    // ... refused when compulsory, with the offset of that extension.
    request.extensions[0] = Extension { compulsory: true, ..vendor };
    let actions = h.receive(ip("198.51.100.17"), &request, 1, &Tables::NONE);
    assert!(peers(&actions).is_empty());
    let (_, e) = sent(&actions);
    assert_eq!(e.request_id >> 16, u32::from(error_code::UNRECOGNIZED_EXTENSION));
    let wire = request.encode(true).unwrap();
    let at = (e.request_id & 0xffff) as usize;
    assert_eq!(&wire[at..at + 2], &(wire::COMPULSORY | ext::VENDOR_PRIVATE).to_be_bytes());
}

#[test]
fn unanswered_requests_go_again_with_the_same_id_and_a_doubling_wait() {
    let mut s = spoke(1, 17);
    let (_, first) = sent(&s.tick(0));
    let mut at = Vec::new();
    for now in 1..200 {
        for (_, p) in all_sent(&s.tick(now)) {
            assert_eq!(p.request_id, first.request_id, "the same request, sent again");
            at.push(now);
        }
    }
    // 1, 2, 4 … 64 s between attempts, then every 64 s (a registration is never given up).
    assert_eq!(at, vec![1, 3, 7, 15, 31, 63, 127, 191]);
    // Its NHS counts as down after three unanswered attempts, not after the holding time.
    let (mut h, mut s) = (hub(), spoke(1, 17));
    register(&mut h, &mut s, ip("198.51.100.17"), 0);
    assert!(s.nhs_up());
    let (_, renewal) = sent(&s.tick(20));
    let down = (21..40).find(|t| {
        s.tick(*t);
        !s.nhs_up()
    });
    assert_eq!(down, Some(27), "down 7 s after the unanswered renewal");
    // It answers again: up.
    let (_, reply) = sent(&h.receive(ip("198.51.100.17"), &renewal, 30, &Tables::NONE));
    s.receive(HUB_NBMA.into(), &reply, 30, &Tables::NONE);
    assert!(s.nhs_up());
    // Resolutions are given up after the 64 s wait.
    let (_, request) = sent(&s.resolve(ip("203.0.113.2"), 100));
    let resent: Vec<u64> =
        (101..300).filter(|t| sent_kind(&s.tick(*t), kind::RESOLUTION_REQUEST).iter().any(|(_, p)| p.request_id == request.request_id)).collect();
    assert_eq!(resent, vec![101, 103, 107, 115, 131, 163]);
    assert_eq!(s.pending(), 0, "given up");
}

#[test]
fn a_spoke_registers_with_every_nhs_and_resolves_through_the_best_that_answers() {
    let hub2 = ip("198.51.100.20");
    let mut s = spoke(1, 17);
    s.settings.nhs =
        vec![Nhs { overlay: ip("203.0.113.253"), nbma: hub2, priority: 2 }, Nhs { overlay: ip("203.0.113.254"), nbma: HUB_NBMA.into(), priority: 1 }];
    let mut s = Engine::new(s.settings);
    let mut h1 = hub();
    let mut h2 = Engine::new(Settings { overlay: ip("203.0.113.253"), nbma: hub2, ..hub().settings });
    let requests = all_sent(&s.tick(0));
    assert_eq!(requests.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![hub2, HUB_NBMA.into()]);
    for ((to, r), h) in requests.iter().zip([&mut h2, &mut h1]) {
        assert_eq!(r.dst_proto, if *to == hub2 { vec![203, 0, 113, 253] } else { vec![203, 0, 113, 254] });
        let (_, reply) = sent(&h.receive(ip("198.51.100.17"), r, 0, &Tables::NONE));
        s.receive(*to, &reply, 0, &Tables::NONE);
    }
    assert!(s.nhs_links().iter().all(|l| l.up));
    // Priority 1 first.
    let (to, unanswered) = sent(&s.resolve(ip("203.0.113.2"), 1));
    assert_eq!(to, IpAddr::from(HUB_NBMA));
    // Hub 1 dies: its renewal goes unanswered, and resolutions go to hub 2 — the one waiting
    // on hub 1 too, with its ID.
    let renewals = all_sent(&s.tick(20));
    let (_, to2) = renewals.iter().find(|(to, _)| *to == hub2).unwrap();
    let (_, reply) = sent(&h2.receive(ip("198.51.100.17"), to2, 20, &Tables::NONE));
    s.receive(hub2, &reply, 20, &Tables::NONE);
    let mut moved = Vec::new();
    for t in 21..28 {
        moved.extend(sent_kind(&s.tick(t), kind::RESOLUTION_REQUEST).into_iter().filter(|(to, _)| *to == hub2).map(|(_, p)| p.request_id));
    }
    assert_eq!(s.nhs_links().iter().map(|l| l.up).collect::<Vec<_>>(), vec![true, false]);
    assert_eq!(moved, vec![unanswered.request_id]);
    assert!(s.nhs_up());
    assert_eq!(sent(&s.resolve(ip("203.0.113.3"), 28)).0, hub2);
}

/// Spoke 1 resolves spoke 2 through the hub: the hub forwards the request to spoke 2 (as FRR's
/// and Cisco's phase 3 hubs do), which learns spoke 1 and answers it directly.
#[test]
fn the_hub_forwards_a_resolution_to_the_registered_target_which_answers_directly() {
    let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    register(&mut h, &mut s2, ip("198.51.100.33"), 0);
    let (to, request) = sent(&s1.resolve(ip("203.0.113.2"), 1));
    assert_eq!((to, request.kind, request.flags & flags::resolution::Q), (IpAddr::from(HUB_NBMA), kind::RESOLUTION_REQUEST, flags::resolution::Q));
    let (to, fwd) = sent(&h.receive(ip("198.51.100.17"), &request, 1, &Tables::NONE));
    assert_eq!((to, fwd.kind, fwd.request_id, fwd.hop_count), (ip("198.51.100.33"), kind::RESOLUTION_REQUEST, request.request_id, 254));
    let actions = s2.receive(HUB_NBMA.into(), &fwd, 1, &Tables::NONE);
    assert_eq!(peers(&actions), vec![(ip("203.0.113.1"), ip("198.51.100.17"))]);
    let (to, reply) = sent(&actions);
    assert_eq!((to, reply.kind, reply.flags & flags::resolution::A), (ip("198.51.100.17"), kind::RESOLUTION_REPLY, flags::resolution::A));
    assert_eq!(responder(&reply), vec![vec![203, 0, 113, 2]]);
    assert_eq!(peers(&s1.receive(ip("198.51.100.33"), &reply, 1, &Tables::NONE)), vec![(ip("203.0.113.2"), ip("198.51.100.33"))]);
    // Had spoke 2 answered through the hub (FRR routes its answer by its own table), the hub
    // leads it on; from anyone else, not.
    assert!(h.receive(ip("198.51.100.66"), &reply, 1, &Tables::NONE).is_empty());
    let (to, back) = sent(&h.receive(ip("198.51.100.33"), &reply, 1, &Tables::NONE));
    assert_eq!((to, back.kind, back.request_id), (ip("198.51.100.17"), kind::RESOLUTION_REPLY, reply.request_id));
    // Answered: a second copy of the reply is not taken.
    assert!(s1.receive(ip("198.51.100.33"), &reply, 1, &Tables::NONE).is_empty());
    assert_eq!(s1.refused.unsolicited_reply, 1);
    // A peer the hub holds without a registration (a static one) is answered from the table,
    // not authoritatively; an unknown one negatively, and nothing is installed.
    let table = |o: IpAddr| (o == ip("203.0.113.7")).then(|| ip("198.51.100.77"));
    let tables = Tables { peer: &table, ..Tables::NONE };
    let (_, request) = sent(&s1.resolve(ip("203.0.113.7"), 2));
    let (to, reply) = sent(&h.receive(ip("198.51.100.17"), &request, 2, &tables));
    assert_eq!((to, reply.flags & flags::resolution::A, reply.cies()[0].nbma.bytes.clone()), (ip("198.51.100.17"), 0, vec![198, 51, 100, 77]));
    assert_eq!(peers(&s1.receive(HUB_NBMA.into(), &reply, 2, &Tables::NONE)), vec![(ip("203.0.113.7"), ip("198.51.100.77"))]);
    let (_, request) = sent(&s1.resolve(ip("203.0.113.9"), 3));
    let (_, reply) = sent(&h.receive(ip("198.51.100.17"), &request, 3, &tables));
    assert_eq!(reply.cies()[0].code, code::NO_BINDING);
    assert!(s1.receive(HUB_NBMA.into(), &reply, 3, &Tables::NONE).is_empty());
    // A registered target with no hop left to forward to: answered from its registration,
    // with the MTU it registered and the holding time it has left.
    let (_, mut request) = sent(&s1.resolve(ip("203.0.113.2"), 40));
    request.hop_count = 1;
    let (_, reply) = sent(&h.receive(ip("198.51.100.17"), &request, 40, &Tables::NONE));
    assert_eq!((reply.cies()[0].holding_time, reply.cies()[0].mtu, reply.flags & flags::resolution::A), (20, 1400, flags::resolution::A));
}

/// NAT on the underlay: each spoke's NHS sees another address than the spoke has. The hub
/// tells each side where the other really is (the NAT extension), so the shortcut is built
/// between post-NAT addresses.
#[test]
fn resolution_across_nat_uses_the_addresses_the_hub_saw() {
    let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
    let (nat1, nat2) = (ip("203.0.113.101"), ip("203.0.113.102"));
    register(&mut h, &mut s1, nat1, 0);
    register(&mut h, &mut s2, nat2, 0);
    assert_eq!((s1.nat_nbma(), s2.nat_nbma()), (Some(nat1), Some(nat2)));
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 1));
    // Spoke 1 says where it is behind NAT; the hub forwards to spoke 2's post-NAT address.
    assert_eq!(nat_nbma_of(&request, ip("203.0.113.1")), Some(nat1));
    let (to, fwd) = sent(&h.receive(nat1, &request, 1, &Tables::NONE));
    assert_eq!(to, nat2);
    // Spoke 2 answers spoke 1 at its post-NAT address, and says where it is itself.
    let actions = s2.receive(HUB_NBMA.into(), &fwd, 1, &Tables::NONE);
    assert_eq!(peers(&actions), vec![(ip("203.0.113.1"), nat1)]);
    let (to, reply) = sent(&actions);
    assert_eq!((to, nat_nbma_of(&reply, ip("203.0.113.2"))), (nat1, Some(nat2)));
    // Spoke 1 takes the address the reply came from.
    assert_eq!(peers(&s1.receive(nat2, &reply, 1, &Tables::NONE)), vec![(ip("203.0.113.2"), nat2)]);
    // A request without spoke 1's own NAT record (an older client): the hub adds what it saw.
    let (_, mut request) = sent(&s1.resolve(ip("203.0.113.2"), 5));
    request.extensions.iter_mut().filter(|e| e.kind == ext::NAT_ADDRESS).for_each(|e| e.body = ExtBody::Cies(vec![]));
    let (_, fwd) = sent(&h.receive(nat1, &request, 5, &Tables::NONE));
    assert_eq!(nat_nbma_of(&fwd, ip("203.0.113.1")), Some(nat1));
}

/// What a forged or stray Resolution Reply can do: nothing.
#[test]
fn forged_resolution_replies_install_nothing() {
    let (mut h, mut s1) = (hub(), spoke(1, 17));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 1));
    let honest = |id: u32, prefix_len: u8, nbma: [u8; 4]| {
        let cie = Cie { prefix_len, holding_time: 60, nbma: Address::nsap(&nbma), proto: vec![203, 0, 113, 2], ..Cie::default() };
        let p = Packet { kind: kind::RESOLUTION_REPLY, request_id: id, payload: Payload::Cies(vec![cie]), ..request.clone() };
        Packet::decode(&p.encode(true).unwrap()).unwrap()
    };
    let id = request.request_id;
    let mut cases = vec![
        ("an unknown request ID", IpAddr::from(HUB_NBMA), honest(id ^ 0x5555, 32, [198, 51, 100, 66])),
        ("0.0.0.0/0 from the hub", HUB_NBMA.into(), honest(id, 0xff, [198, 51, 100, 66])),
        ("a /4 from the hub", HUB_NBMA.into(), honest(id, 4, [198, 51, 100, 66])),
        ("from a stranger that answers for someone else", ip("198.51.100.66"), honest(id, 32, [198, 51, 100, 66])),
    ];
    // 0xff is the host here, so the second case is made a /0 by hand.
    if let Payload::Cies(c) = &mut cases[1].2.payload {
        c[0].prefix_len = 0;
        c[0].proto = vec![0, 0, 0, 0];
    }
    let mut other = honest(id, 32, [198, 51, 100, 66]);
    other.dst_proto = vec![203, 0, 113, 3];
    cases.push(("for another address than asked", HUB_NBMA.into(), other));
    for (what, from, reply) in cases {
        let actions = s1.receive(from, &reply, 1, &Tables::NONE);
        assert!(actions.is_empty(), "{what}: {actions:?}");
    }
    assert_eq!((s1.refused.unsolicited_reply, s1.refused.reply_from_stranger, s1.refused.reply_mismatch), (1, 1, 3));
    // Still pending: the true answer is taken.
    assert_eq!(peers(&s1.receive(HUB_NBMA.into(), &honest(id, 32, [198, 51, 100, 33]), 1, &Tables::NONE)), vec![(ip("203.0.113.2"), ip("198.51.100.33"))]);
    // Request IDs start where the settings say (random in the daemon), not at 1.
    assert!(request.request_id > 1 << 20);
}

/// A shortcut is never wider than the route it replaces (nor than /8).
#[test]
fn shortcuts_are_no_wider_than_the_route_they_replace() {
    let (mut h, mut s1) = (hub(), spoke(1, 17));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    let (_, indication) = sent(&h.indicate(ip("203.0.113.1"), ip("198.51.100.17"), ip("198.51.100.210")));
    let (_, request) = sent(&s1.receive(HUB_NBMA.into(), &indication, 1, &Tables::NONE));
    let cie = Cie { prefix_len: 16, holding_time: 60, nbma: Address::nsap(&[198, 51, 100, 33]), proto: vec![203, 0, 113, 2], ..Cie::default() };
    let reply = Packet { kind: kind::RESOLUTION_REPLY, payload: Payload::Cies(vec![cie]), ..request.clone() };
    let route = |_: IpAddr| Some(24);
    let actions = s1.receive(HUB_NBMA.into(), &reply, 1, &Tables { route_len: &route, ..Tables::NONE });
    assert!(actions.contains(&Action::Shortcut { target: ip("198.51.100.210"), prefix: net("198.51.100.0/24"), via: ip("203.0.113.2") }), "{actions:?}");
}

#[test]
fn a_spoke_binds_a_requester_only_through_its_nhs_or_where_it_knows_it() {
    let (mut s1, mut s2) = (spoke(1, 17), spoke(2, 33));
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    // Straight from a stranger: no binding, no answer.
    assert!(s2.receive(ip("198.51.100.66"), &request, 0, &Tables::NONE).is_empty());
    assert_eq!(s2.refused.untrusted_request, 1);
    // From where spoke 2 knows spoke 1 to be: answered there.
    let known = |o: IpAddr| (o == ip("203.0.113.1")).then(|| ip("198.51.100.17"));
    let (to, _) = sent(&s2.receive(ip("198.51.100.17"), &request, 0, &Tables { peer: &known, ..Tables::NONE }));
    assert_eq!(to, ip("198.51.100.17"));
    // Through the NHS: answered at the address the request gives.
    let actions = s2.receive(HUB_NBMA.into(), &request, 0, &Tables::NONE);
    assert_eq!((peers(&actions), sent(&actions).0), (vec![(ip("203.0.113.1"), ip("198.51.100.17"))], ip("198.51.100.17")));
}

#[test]
fn traffic_indications_only_from_an_nhs_and_one_resolution_per_target() {
    let (mut h, mut s1) = (hub(), spoke(1, 17));
    let (_, indication) = sent(&h.indicate(ip("203.0.113.1"), ip("198.51.100.17"), ip("203.0.113.2")));
    assert!(s1.receive(ip("198.51.100.66"), &indication, 0, &Tables::NONE).is_empty());
    assert_eq!(s1.refused.untrusted_indication, 1);
    // A storm of them: one request in flight.
    let mut requests = 0;
    for t in 0..100 {
        requests += sent_kind(&s1.receive(HUB_NBMA.into(), &indication, t / 50, &Tables::NONE), kind::RESOLUTION_REQUEST).len();
    }
    assert_eq!((requests, s1.pending()), (1, 1));
}

#[test]
fn pending_resolutions_are_bounded() {
    let mut s = spoke(1, 17);
    s.settings.limits.pending = 100;
    let mut warned = 0;
    // A LAN host scans the overlay: each destination a resolution.
    for i in 0..5000u32 {
        let target = IpAddr::from((u32::from_be_bytes([10, 0, 0, 0]) + i).to_be_bytes());
        let actions = s.resolve(target, 0);
        warned += actions.iter().filter(|a| matches!(a, Action::Warn(_))).count();
    }
    assert_eq!((s.pending(), warned, s.refused.table_full), (100, 1, 4900));
    // They go after their last wait; the table takes new ones again.
    for t in 1..=128 {
        s.tick(t);
    }
    assert_eq!(s.pending(), 0);
    assert_eq!(sent(&s.resolve(ip("203.0.113.2"), 130)).1.kind, kind::RESOLUTION_REQUEST);
}

fn purges(actions: &[Action]) -> Vec<(IpAddr, Packet)> {
    sent_kind(actions, kind::PURGE_REQUEST)
}

#[test]
fn a_spoke_that_leaves_is_purged_from_those_who_resolved_it_until_they_answer() {
    let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    register(&mut h, &mut s2, ip("198.51.100.33"), 0);
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    h.receive(ip("198.51.100.17"), &request, 0, &Tables::NONE);
    // Spoke 2 leaves: it withdraws its registration (no reply wanted).
    let (to, withdraw) = sent(&s2.withdraw());
    assert_eq!((to, withdraw.kind, withdraw.flags & flags::purge::N), (IpAddr::from(HUB_NBMA), kind::PURGE_REQUEST, flags::purge::N));
    // Only from where it registered.
    let forged = h.receive(ip("198.51.100.66"), &withdraw, 1, &Tables::NONE);
    assert!(!forged.iter().any(|a| matches!(a, Action::Forget { .. })) && purges(&forged).is_empty(), "{forged:?}");
    let actions = h.receive(ip("198.51.100.33"), &withdraw, 1, &Tables::NONE);
    assert!(actions.contains(&Action::Forget { overlay: ip("203.0.113.2") }));
    assert!(sent_kind(&actions, kind::PURGE_REPLY).is_empty(), "N: no reply");
    // The hub told spoke 1 where spoke 2 was: spoke 1 is purged, again until it replies.
    let p = purges(&actions);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0, p[0].1.dst_proto.clone(), p[0].1.cies()[0].proto.clone()), (ip("198.51.100.17"), vec![203, 0, 113, 1], vec![203, 0, 113, 2]));
    let again = purges(&h.tick(2));
    assert_eq!(again.iter().map(|(_, q)| q.request_id).collect::<Vec<_>>(), vec![p[0].1.request_id]);
    let answer = s1.receive(HUB_NBMA.into(), &p[0].1, 2, &Tables::NONE);
    assert!(answer.contains(&Action::Withdraw { prefix: net("203.0.113.2/32") }), "{answer:?}");
    let (to, reply) = sent(&answer);
    assert_eq!((to, reply.kind, reply.request_id), (IpAddr::from(HUB_NBMA), kind::PURGE_REPLY, p[0].1.request_id));
    h.receive(ip("198.51.100.17"), &reply, 2, &Tables::NONE);
    assert!((3..200).all(|t| purges(&h.tick(t)).is_empty()), "answered: not sent again");
}

#[test]
fn a_purge_removes_only_what_its_sender_owns() {
    let mut s1 = spoke(1, 17);
    let cie = |proto: [u8; 4], len: u8| Cie { prefix_len: len, proto: proto.to_vec(), ..Cie::default() };
    let purge = |cies: Vec<Cie>| {
        let e = spoke(9, 99);
        e.request(kind::PURGE_REQUEST, 0, 7, ip("203.0.113.1"), cies, None)
    };
    let known = |o: IpAddr| (o == ip("203.0.113.2")).then(|| ip("198.51.100.33"));
    let tables = Tables { peer: &known, ..Tables::NONE };
    // A stranger purging spoke 2: ignored, not answered.
    let actions = s1.receive(ip("198.51.100.66"), &purge(vec![cie([203, 0, 113, 2], 32)]), 0, &tables);
    assert!(!actions.iter().any(|a| matches!(a, Action::Forget { .. } | Action::Withdraw { .. })) && all_sent(&actions).is_empty(), "{actions:?}");
    assert_eq!(s1.refused.untrusted_purge, 1);
    // Spoke 2 purging itself: forgotten, answered.
    let actions = s1.receive(ip("198.51.100.33"), &purge(vec![cie([203, 0, 113, 2], 32)]), 0, &tables);
    assert!(actions.contains(&Action::Forget { overlay: ip("203.0.113.2") }));
    assert_eq!(sent(&actions).1.kind, kind::PURGE_REPLY);
    // The NHS purging a prefix: withdrawn as a prefix.
    let actions = s1.receive(HUB_NBMA.into(), &purge(vec![cie([198, 51, 100, 208], 28)]), 0, &tables);
    assert!(actions.contains(&Action::Withdraw { prefix: net("198.51.100.208/28") }), "{actions:?}");
}

/// Two hubs: hub 1 (198.51.100.10, 203.0.113.254) has spoke 1; hub 2 (198.51.100.20,
/// 203.0.113.3) is registered with hub 1 and has spoke 2; hub 1 routes spoke 2 via hub 2.
#[test]
fn requests_are_forwarded_hop_by_hop_and_replies_relayed_back() {
    let mut h1 = hub();
    let mut h2 = Engine::new(Settings { server: true, ..spoke(3, 20).settings });
    let mut s1 = spoke(1, 17);
    let (hub1, hub2) = (IpAddr::from(HUB_NBMA), ip("198.51.100.20"));
    let h1_peer = |o: IpAddr| match o.to_string().as_str() {
        "203.0.113.1" => Some(ip("198.51.100.17")),
        "203.0.113.3" => Some(hub2),
        _ => None,
    };
    let h1_route = |o: IpAddr| (o == ip("203.0.113.2")).then(|| ip("203.0.113.3"));
    let h2_peer = |o: IpAddr| (o == ip("203.0.113.2")).then(|| ip("198.51.100.33"));
    let h1_tables = Tables { peer: &h1_peer, route: &h1_route, ..Tables::NONE };
    let h2_tables = Tables { peer: &h2_peer, ..Tables::NONE };
    // Down the hierarchy: spoke 1 → hub 1 → (route) hub 2, which answers; back the same way.
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    let (to, down) = sent(&h1.receive(ip("198.51.100.17"), &request, 0, &h1_tables));
    assert_eq!((to, down.kind, down.hop_count, down.request_id), (hub2, kind::RESOLUTION_REQUEST, 254, request.request_id));
    let transit = |p: &Packet, t| match p.extension(t) {
        Some(Extension { body: ExtBody::Cies(l), .. }) => l.iter().map(|c| c.proto.clone()).collect::<Vec<_>>(),
        _ => vec![],
    };
    assert_eq!(transit(&down, ext::FORWARD_TRANSIT_NHS), vec![vec![203, 0, 113, 254]]);
    let (to, reply) = sent(&h2.receive(hub1, &down, 0, &h2_tables));
    assert_eq!((to, reply.kind), (hub1, kind::RESOLUTION_REPLY));
    // The reply is relayed only from where the request went.
    assert!(sent_kind(&h1.receive(ip("198.51.100.66"), &reply, 0, &h1_tables), kind::RESOLUTION_REPLY).is_empty());
    let (to, back) = sent(&h1.receive(hub2, &reply, 0, &h1_tables));
    assert_eq!(to, ip("198.51.100.17"));
    assert_eq!(transit(&back, ext::REVERSE_TRANSIT_NHS), vec![vec![203, 0, 113, 254]]);
    assert_eq!(responder(&back), vec![vec![203, 0, 113, 3]], "hub 2 answered");
    assert_eq!(peers(&s1.receive(hub1, &back, 0, &Tables::NONE)), vec![(ip("203.0.113.2"), ip("198.51.100.33"))]);
    // Up the hierarchy: hub 2 knows no route to spoke 1 and asks its own NHS.
    let mut s2 = spoke(2, 33);
    s2.settings.nhs = vec![Nhs { overlay: ip("203.0.113.3"), nbma: hub2, priority: 0 }];
    let mut s2 = Engine::new(s2.settings);
    let (_, request) = sent(&s2.resolve(ip("203.0.113.1"), 0));
    let (to, fwd) = sent(&h2.receive(ip("198.51.100.33"), &request, 0, &h2_tables));
    assert_eq!(to, hub1);
    let (to, reply) = sent(&h1.receive(hub2, &fwd, 0, &h1_tables));
    assert_eq!((to, reply.cies()[0].code), (hub2, code::SUCCESS));
    let (to, back) = sent(&h2.receive(hub1, &reply, 0, &Tables::NONE));
    assert_eq!(to, ip("198.51.100.33"));
    assert_eq!(peers(&s2.receive(hub2, &back, 0, &Tables::NONE)), vec![(ip("203.0.113.1"), ip("198.51.100.17"))]);
    // A request that comes back to an NHS it already crossed is a loop; a spent hop count
    // stops it too.
    let (to, e) = sent(&h1.receive(hub2, &down, 5, &h1_tables));
    assert_eq!((to, e.kind, e.request_id >> 16), (hub2, kind::ERROR_INDICATION, u32::from(error_code::LOOP_DETECTED)));
    let mut spent = request.clone();
    spent.hop_count = 1;
    let (to, e) = sent(&h2.receive(ip("198.51.100.33"), &spent, 5, &h2_tables));
    assert_eq!((to, e.request_id), (ip("198.51.100.33"), (u32::from(error_code::HOP_COUNT_EXCEEDED) << 16) | 9));
}

/// Phase 3 toward a LAN behind spoke 2: the hub forwards the request by its route, spoke 2
/// answers for its LAN's prefix, and spoke 1's shortcut covers that prefix.
#[test]
fn shortcuts_cover_the_lan_behind_a_spoke() {
    let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
    let lan_host = ip("198.51.100.210");
    let (_, indication) = sent(&h.indicate(ip("198.51.100.194"), ip("198.51.100.17"), lan_host));
    let (_, request) = sent(&s1.receive(HUB_NBMA.into(), &indication, 0, &Tables::NONE));
    assert_eq!(request.dst_proto, vec![198, 51, 100, 210]);
    let h_peer = |o: IpAddr| (o == ip("203.0.113.2")).then(|| ip("198.51.100.33"));
    let h_route = |o: IpAddr| (o == lan_host).then(|| ip("203.0.113.2"));
    let (to, fwd) = sent(&h.receive(ip("198.51.100.17"), &request, 0, &Tables { peer: &h_peer, route: &h_route, ..Tables::NONE }));
    assert_eq!(to, ip("198.51.100.33"));
    let lan = |t: IpAddr| net("198.51.100.208/28").contains(&t).then_some(28);
    let (to, reply) = sent(&s2.receive(HUB_NBMA.into(), &fwd, 0, &Tables { local: &lan, ..Tables::NONE }));
    assert_eq!(to, ip("198.51.100.17"), "straight to the requester");
    assert_eq!((reply.cies()[0].prefix_len, reply.cies()[0].proto.clone()), (28, vec![203, 0, 113, 2]));
    let actions = s1.receive(ip("198.51.100.33"), &reply, 0, &Tables::NONE);
    assert!(actions.contains(&Action::Peer { overlay: ip("203.0.113.2"), nbma: ip("198.51.100.33"), holdtime: 60, multicast: false }));
    assert!(actions.contains(&Action::Shortcut { target: lan_host, prefix: net("198.51.100.208/28"), via: ip("203.0.113.2") }), "{actions:?}");
}

#[test]
fn over_ipv6_nbma() {
    let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, last]);
    let mut h = hub();
    h.settings.nbma = v6(0x10);
    let mut s1 = spoke(1, 17);
    s1.settings.nbma = v6(0x17);
    s1.settings.nhs = vec![Nhs { overlay: ip("203.0.113.254"), nbma: v6(0x10), priority: 0 }];
    let mut s1 = Engine::new(s1.settings);
    let (to, request) = sent(&s1.tick(0));
    assert_eq!((to, request.afn, request.src_nbma.bytes.len()), (v6(0x10), wire::AFN_IPV6, 16));
    let actions = h.receive(v6(0x17), &request, 0, &Tables::NONE);
    assert!(actions.contains(&Action::Peer { overlay: ip("203.0.113.1"), nbma: v6(0x17), holdtime: 60, multicast: true }));
    let (_, reply) = sent(&actions);
    s1.receive(v6(0x10), &reply, 0, &Tables::NONE);
    assert!(s1.nhs_up());
    let table = |o: IpAddr| (o == ip("203.0.113.2")).then(|| v6(0x33));
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    let (_, reply) = sent(&h.receive(v6(0x17), &request, 0, &Tables { peer: &table, ..Tables::NONE }));
    assert_eq!(reply.cies()[0].nbma.bytes.len(), 16);
    assert_eq!(peers(&s1.receive(v6(0x10), &reply, 0, &Tables::NONE)), vec![(ip("203.0.113.2"), v6(0x33))]);
}

/// An IPv6 overlay: protocol type 0x86DD, /128 bindings, IPv6 Traffic Indications.
#[test]
fn over_an_ipv6_overlay() {
    let subnet = net("2001:db8:1::/64");
    let hub_at = ip("2001:db8:1::fe");
    let mut h = Engine::new(Settings { holdtime: 60, ..Settings::new(true, hub_at, subnet, HUB_NBMA.into()) });
    let mk = |last: &str, nbma: u8| {
        Engine::new(Settings {
            nhs: vec![Nhs { overlay: hub_at, nbma: HUB_NBMA.into(), priority: 0 }],
            holdtime: 60,
            ..Settings::new(false, ip(last), subnet, [198, 51, 100, nbma].into())
        })
    };
    let (mut s1, mut s2) = (mk("2001:db8:1::1", 17), mk("2001:db8:1::2", 33));
    let (_, request) = sent(&mk("2001:db8:1::1", 17).tick(0));
    assert_eq!((request.protocol_type, request.src_proto.len(), request.cies()[0].prefix_len), (0x86dd, 16, 0xff));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    register(&mut h, &mut s2, ip("198.51.100.33"), 0);
    assert_eq!(h.registrations().len(), 2);
    // An IPv4 packet is not this engine's.
    let (_, v4) = sent(&spoke(1, 17).tick(0));
    let mut v4 = v4;
    v4.extensions.retain(|e| e.kind != ext::AUTHENTICATION);
    assert!(h.receive(ip("198.51.100.17"), &v4, 0, &Tables::NONE).is_empty());
    // Phase 3: the hub relayed spoke 1's IPv6 traffic to spoke 2 and says so.
    let (_, indication) = sent(&h.indicate(ip("2001:db8:1::1"), ip("198.51.100.17"), ip("2001:db8:1::2")));
    let (_, request) = sent(&s1.receive(HUB_NBMA.into(), &indication, 1, &Tables::NONE));
    assert_eq!(request.dst_proto, ip_octets("2001:db8:1::2"));
    let (to, fwd) = sent(&h.receive(ip("198.51.100.17"), &request, 1, &Tables::NONE));
    assert_eq!(to, ip("198.51.100.33"));
    let (_, reply) = sent(&s2.receive(HUB_NBMA.into(), &fwd, 1, &Tables::NONE));
    assert_eq!(reply.cies()[0].prefix_len, 128);
    let actions = s1.receive(ip("198.51.100.33"), &reply, 1, &Tables::NONE);
    assert!(actions.contains(&Action::Shortcut { target: ip("2001:db8:1::2"), prefix: net("2001:db8:1::2/128"), via: ip("2001:db8:1::2") }), "{actions:?}");
}

fn ip_octets(s: &str) -> Vec<u8> {
    octets(ip(s))
}

/// A phase 3 hub of another make forwards the request to its target, which answers the
/// requester directly; a hub asked for its own address answers too.
#[test]
fn the_target_answers_for_itself() {
    let (mut s1, mut s2) = (spoke(1, 17), spoke(2, 33));
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    let actions = s2.receive(HUB_NBMA.into(), &request, 0, &Tables::NONE);
    assert!(actions.contains(&Action::Peer { overlay: ip("203.0.113.1"), nbma: ip("198.51.100.17"), holdtime: 60, multicast: false }));
    let (to, reply) = sent(&actions);
    assert_eq!((to, reply.kind), (ip("198.51.100.17"), kind::RESOLUTION_REPLY));
    assert_eq!(peers(&s1.receive(ip("198.51.100.33"), &reply, 0, &Tables::NONE)), vec![(ip("203.0.113.2"), ip("198.51.100.33"))]);
    let mut h = hub();
    let (_, request) = sent(&s1.resolve(ip("203.0.113.254"), 0));
    let (_, reply) = sent(&h.receive(ip("198.51.100.17"), &request, 0, &Tables::NONE));
    assert_eq!((reply.cies()[0].code, reply.cies()[0].nbma.bytes.clone()), (code::SUCCESS, HUB_NBMA.to_vec()));
    assert!(peers(&h.receive(ip("198.51.100.17"), &request, 0, &Tables::NONE)).is_empty(), "registrations stay as they are");
}

#[test]
fn a_spoke_that_expires_is_purged_from_who_was_told() {
    let (mut h, mut s1, mut s2) = (hub(), spoke(1, 17), spoke(2, 33));
    register(&mut h, &mut s1, ip("198.51.100.17"), 0);
    register(&mut h, &mut s2, ip("198.51.100.33"), 0);
    let (_, request) = sent(&s1.resolve(ip("203.0.113.2"), 0));
    h.receive(ip("198.51.100.17"), &request, 0, &Tables::NONE);
    // Spoke 1 re-registers in time; spoke 2 does not.
    for t in [20, 40] {
        let (_, r) = sent(&s1.tick(t));
        h.receive(ip("198.51.100.17"), &r, t, &Tables::NONE);
    }
    assert!(purges(&h.tick(59)).is_empty());
    let actions = h.tick(60);
    assert!(actions.contains(&Action::Forget { overlay: ip("203.0.113.2") }));
    assert_eq!(purges(&actions).iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![ip("198.51.100.17")]);
}
