//! Real NHRP captures (Cisco IOS and a dual-hub DMVPN spoke, from tcpdump's test suite) through
//! our codec: `gre nhrp dump -j` must show the fields tshark's NHRP dissector shows, and what
//! the codec decodes must encode back to the captured bytes.

use std::{path::PathBuf, process::Command};

use gre_user::nhrp::{dump, wire};
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data").join(name)
}

const CAPTURES: [&str; 4] = ["nhrp-NHRP_registration.pcap", "nhrp-ios_nhrp.pcap", "nhrp-nhrp.pcapng", "nhrp-pb_nhrp_1.pcap"];

/// tshark's fields per frame number.
fn tshark(file: &PathBuf) -> Vec<Value> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(["-Y", "nhrp", "-T", "json"]);
    for f in [
        "frame.number",
        "nhrp.hdr.op.type",
        "nhrp.hdr.hopcnt",
        "nhrp.hdr.pktsz",
        "nhrp.hdr.extoff",
        "nhrp.reqid",
        "nhrp.flags",
        "nhrp.src.nbma.addr",
        "nhrp.src.prot.addr",
        "nhrp.dst.prot.addr",
        "nhrp.code",
        "nhrp.prefix",
        "nhrp.mtu",
        "nhrp.htime",
        "nhrp.ext.type",
        "nhrp.hdr.chksum.status",
        "_ws.malformed",
    ] {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark (cargo xtask setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("tshark json")
}

fn ours(file: &PathBuf) -> Vec<Value> {
    let out = Command::new(gre_tests::gre::bin()).args(["nhrp", "dump", "-j"]).arg(file).output().expect("gre nhrp dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn field(p: &Value, f: &str) -> Vec<String> {
    p["_source"]["layers"][f].as_array().map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn dump_shows_what_tshark_shows() {
    let mut messages = 0;
    for name in CAPTURES {
        let file = data(name);
        let theirs = tshark(&file);
        let ours = ours(&file);
        assert_eq!(ours.len(), theirs.len(), "{name}: one line per NHRP message");
        for (o, t) in ours.iter().zip(&theirs) {
            let frame = field(t, "frame.number")[0].parse::<u64>().unwrap();
            assert_eq!(o["frame"], frame, "{name}");
            let what = format!("{name} frame {frame}");
            if !field(t, "_ws.malformed").is_empty() {
                assert!(o["error"].is_string(), "{what}: tshark finds it malformed, so must we: {o}");
                continue;
            }
            let n = &o["nhrp"];
            assert_eq!(n["type_code"].to_string(), field(t, "nhrp.hdr.op.type")[0], "{what}: type");
            assert_eq!(n["hop_count"].to_string(), field(t, "nhrp.hdr.hopcnt")[0], "{what}: hop count");
            assert_eq!(format!("0x{:08x}", n["request_id"].as_u64().unwrap()), field(t, "nhrp.reqid")[0], "{what}: request id");
            assert_eq!(format!("0x{:04x}", n["flags"].as_u64().unwrap()), field(t, "nhrp.flags")[0], "{what}: flags");
            assert_eq!(n["src_nbma"].as_str().unwrap(), field(t, "nhrp.src.nbma.addr")[0], "{what}: source NBMA");
            assert_eq!(n["src_proto"].as_str().unwrap(), field(t, "nhrp.src.prot.addr")[0], "{what}: source protocol address");
            assert_eq!(n["dst_proto"].as_str().unwrap(), field(t, "nhrp.dst.prot.addr")[0], "{what}: destination protocol address");
            // CIEs: those of the mandatory part, then those of the extensions, in order.
            let mut cies: Vec<&Value> = n["cies"].as_array().unwrap().iter().collect();
            for e in n["extensions"].as_array().unwrap() {
                cies.extend(e["cies"].as_array().into_iter().flatten());
            }
            let list = |k: &str| cies.iter().map(|c| c[k].to_string()).collect::<Vec<_>>();
            assert_eq!(list("holding_time"), field(t, "nhrp.htime"), "{what}: holding times");
            assert_eq!(list("code"), field(t, "nhrp.code"), "{what}: CIE codes");
            assert_eq!(list("prefix_len"), field(t, "nhrp.prefix"), "{what}: prefix lengths");
            assert_eq!(list("mtu"), field(t, "nhrp.mtu"), "{what}: MTUs");
            let exts: Vec<String> = n["extensions"].as_array().unwrap().iter().map(|e| format!("0x{:04x}", e["type_code"].as_u64().unwrap())).collect();
            assert_eq!(exts, field(t, "nhrp.ext.type"), "{what}: extensions");
            assert_eq!(o["checksum_ok"], field(t, "nhrp.hdr.chksum.status")[0] == "1", "{what}: checksum");
            messages += 1;
        }
    }
    assert!(messages >= 30, "{messages} well-formed messages compared");
}

#[test]
fn what_the_codec_decodes_encodes_back_to_the_captured_bytes() {
    let mut checked = 0;
    for name in CAPTURES {
        for m in dump::read(&data(name)).expect("capture") {
            let Ok(p) = &m.packet else { continue };
            let size = usize::from(u16::from_be_bytes([m.wire[10], m.wire[11]]));
            assert_eq!(p.encode(false).expect("encode"), m.wire[..size], "{name} frame {}", m.frame);
            // And with a freshly computed checksum, the same bytes again: the captured ones are right.
            assert_eq!(p.encode(true).expect("encode"), m.wire[..size], "{name} frame {}", m.frame);
            checked += 1;
        }
    }
    assert!(checked >= 30);
}

#[test]
fn malformed_captures_are_reported_not_fatal() {
    let messages = dump::read(&data("nhrp-pb_nhrp_1.pcap")).expect("capture");
    assert_eq!(messages.len(), 1);
    assert!(matches!(messages[0].packet, Err(wire::Error::Truncated { .. })), "{:?}", messages[0].packet);
}

/// Real requests into our NHRP engine: each Registration Request a Cisco spoke sent in a capture
/// goes to a hub engine set up as the capture's hub was (its addresses, the spoke's password),
/// and what the engine answers is compared, field by field, with the Registration Reply the
/// Cisco hub sent.
#[test]
fn our_hub_answers_captured_registrations_as_the_cisco_hub_did() {
    use gre_user::nhrp::engine::{Action, Engine, Settings, Tables};
    let none = Tables::NONE;
    let mut compared = 0;
    for name in ["nhrp-NHRP_registration.pcap", "nhrp-nhrp.pcapng"] {
        let messages = dump::read(&data(name)).expect("capture");
        for (i, m) in messages.iter().enumerate() {
            let Ok(request) = &m.packet else { continue };
            if request.kind != wire::kind::REGISTRATION_REQUEST {
                continue;
            }
            // The hub's answer in the capture: the next reply with this request's id.
            let Some(theirs) = messages[i + 1..].iter().find_map(|r| {
                r.packet.as_ref().ok().filter(|p| p.kind == wire::kind::REGISTRATION_REPLY && p.request_id == request.request_id && r.outer_src == m.outer_dst)
            }) else {
                continue;
            };
            let auth = request.extensions.iter().find(|e| e.kind == wire::ext::AUTHENTICATION).and_then(|e| match &e.body {
                wire::ExtBody::Raw(b) => b.get(4..).map(<[u8]>::to_vec),
                wire::ExtBody::Cies(_) => None,
            });
            let hub = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&request.dst_proto[..]).unwrap());
            // The captures do not show the tunnel's mask: a /16 around the hub holds its spokes.
            let subnet = ipnet::IpNet::new(hub.into(), 16).unwrap().trunc();
            let mut engine = Engine::new(Settings { auth, mtu: theirs.cies()[0].mtu, ..Settings::new(true, hub.into(), subnet, m.outer_dst) });
            let actions = engine.receive(m.outer_src, request, 1000, &none);
            let ours = actions
                .iter()
                .find_map(|a| match a {
                    Action::Send { to, packet, .. } if *to == m.outer_src => Some(wire::Packet::decode(packet).expect("we decode what we send")),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{name} frame {}: no reply: {actions:?}", m.frame));
            let what = format!("{name} frame {}", m.frame);
            // The mandatory part: who answers whom, for which request, with what binding.
            assert_eq!(ours.kind, theirs.kind, "{what}: type");
            assert_eq!(ours.request_id, theirs.request_id, "{what}: request id");
            assert_eq!((&ours.src_nbma, &ours.src_proto, &ours.dst_proto), (&theirs.src_nbma, &theirs.src_proto, &theirs.dst_proto), "{what}: addresses");
            assert_eq!((ours.afn, ours.protocol_type, ours.version), (theirs.afn, theirs.protocol_type, theirs.version), "{what}: address family");
            assert_eq!(ours.cies().len(), theirs.cies().len(), "{what}: CIEs");
            for (o, t) in ours.cies().iter().zip(theirs.cies()) {
                assert_eq!(
                    (o.code, o.prefix_len, o.holding_time, o.mtu),
                    (t.code, t.prefix_len, t.holding_time, t.mtu),
                    "{what}: CIE code, prefix, holding time, MTU"
                );
                assert_eq!((&o.nbma, &o.proto), (&t.nbma, &t.proto), "{what}: CIE addresses");
            }
            // The extensions the request carried come back, in its order (Authentication with
            // the password, Forward/Reverse Transit, Responder Address, NAT).
            let kinds = |p: &wire::Packet| p.extensions.iter().map(|e| e.kind).collect::<Vec<_>>();
            assert_eq!(kinds(&ours), kinds(theirs), "{what}: extensions");
            let auth_of = |p: &wire::Packet| p.extensions.iter().find(|e| e.kind == wire::ext::AUTHENTICATION).map(|e| e.body.clone());
            assert_eq!(auth_of(&ours), auth_of(theirs), "{what}: authentication");
            // Flags, Responder Address and NAT extensions compared as well.
            let cies_of = |p: &wire::Packet, k: u16| {
                p.extensions.iter().find(|e| e.kind == k).map(|e| match &e.body {
                    wire::ExtBody::Cies(c) => c.len(),
                    wire::ExtBody::Raw(b) => usize::from(!b.is_empty()),
                })
            };
            // The responder's binding, as Cisco fills it: code, prefix, MTU, holding time, addresses.
            let responder = |p: &wire::Packet| match p.extension(wire::ext::RESPONDER_ADDRESS).map(|e| &e.body) {
                Some(wire::ExtBody::Cies(c)) => c.iter().map(|c| (c.code, c.prefix_len, c.mtu, c.holding_time, c.nbma.clone(), c.proto.clone())).collect(),
                _ => vec![],
            };
            // The meaning of the flags: the request is unique (U), so the same address from
            // another NBMA address must be refused with code 14, as Cisco and FRR refuse it.
            let moved: std::net::IpAddr = "198.51.100.99".parse().unwrap();
            let claim = engine.receive(moved, request, 1001, &none);
            let refused = claim.iter().any(|a| match a {
                Action::Send { to, packet, .. } if *to == moved => wire::Packet::decode(packet).is_ok_and(|p| p.cies().first().is_some_and(|c| c.code == 14)),
                _ => false,
            });
            let differences: Vec<&str> = [
                (ours.flags != theirs.flags, "flags"),
                (!refused, "uniqueness"),
                (responder(&ours) != responder(theirs), "responder address"),
                (cies_of(&ours, wire::ext::NAT_ADDRESS) != cies_of(theirs, wire::ext::NAT_ADDRESS), "nat address"),
            ]
            .into_iter()
            .filter_map(|(differs, name)| differs.then_some(name))
            .collect();
            assert_eq!(differences, Vec::<&str>::new(), "{what}: flags ours {:#06x} theirs {:#06x}", ours.flags, theirs.flags);
            compared += 1;
        }
    }
    assert!(compared >= 4, "{compared} registrations compared");
}
