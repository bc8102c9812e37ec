//! Tunnel variants across real namespaces: GRE over an IPv6 underlay with checksums, sequence
//! numbers and inherited TOS; what tshark decodes of each variant on the wire.

use std::{net::SocketAddr, path::Path, thread, time::Duration};

use gre_tests::{
    capture::{Capture, first_of},
    gre, privilege,
    topology::{A_OVERLAY4, A_OVERLAY6, A_UNDERLAY, A_UNDERLAY6, B_OVERLAY4, B_OVERLAY6, B_UNDERLAY, B_UNDERLAY6, TwoSites, ns_sh},
    traffic,
};
use serde_json::Value;

fn tunnel(v: &Value) -> &Value {
    &v["tunnels"][0]
}

/// The first `count` packets of `filter` on the router's interface toward a while `traffic`
/// runs (XDP on a's own port would hide what it receives).
fn capture(sites: &TwoSites, filter: &str, count: usize, fields: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    Capture::first(&sites.wan, "a0", filter, count, fields, traffic)
}

#[test]
fn ip6gre_with_checksums_sequence_and_inherited_tos() {
    if !privilege::require_root("ip6gre_with_checksums_sequence_and_inherited_tos") {
        return;
    }
    let mut sites = TwoSites::new("g6").expect("topology");
    let options = "key = 7\ncsum = true\nseq = true\ntos = \"inherit\"\nflowlabel = 74565\n";
    let (ia, ib) = sites.tunnel_with(A_UNDERLAY6, B_UNDERLAY6, options).expect("gre up");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    // IPv6 40 + GRE 4 + checksum 4 + key 4 + sequence 4 = 56.
    let link = ns_sh(&a, &["ip", "link", "show", "gre0"]).unwrap();
    assert!(link.contains("mtu 1444"), "{link}");

    let packets = capture(
        &sites,
        "ip6 proto 47",
        8,
        &["ipv6.src", "ipv6.dst", "ipv6.tclass", "ipv6.flow", "gre.flags_and_version", "gre.key", "gre.checksum.status", "gre.sequence_number", "gre.proto"],
        || {
            for dst in [B_OVERLAY4, B_OVERLAY6] {
                // TOS 0xb8 (EF) on the inner packet is inherited by the outer traffic class.
                ns_sh(&a, &["ping", "-c", "2", "-i", "0.2", "-W", "2", "-Q", "0xb8", dst]).expect("ping");
            }
        },
    );
    assert_eq!(packets.len(), 8);
    let mut a_seqs = Vec::new();
    for p in &packets {
        assert_eq!(first_of(p, "_ws.malformed"), None, "{p}");
        let src = first_of(p, "ipv6.src").unwrap();
        assert!([A_UNDERLAY6, B_UNDERLAY6].contains(&src.as_str()), "{src}");
        assert_eq!(first_of(p, "gre.flags_and_version").as_deref(), Some("0xb000"), "C, K and S");
        assert_eq!(first_of(p, "gre.key").as_deref(), Some("0x00000007"));
        assert_eq!(first_of(p, "gre.checksum.status").as_deref(), Some("1"), "tshark verified our checksum: {p}");
        assert_eq!(first_of(p, "ipv6.tclass").as_deref(), Some("0x000000b8"), "inherited TOS");
        assert_eq!(first_of(p, "ipv6.flow").as_deref(), Some("0x012345"));
        if src == A_UNDERLAY6 {
            a_seqs.push(first_of(p, "gre.sequence_number").unwrap().parse::<u32>().unwrap());
        }
    }
    assert_eq!(a_seqs.len(), 4);
    assert!(a_seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive sequence numbers: {a_seqs:?}");

    traffic::ping(&b, A_OVERLAY4, 3).expect("ping b -> a");
    traffic::ping(&b, A_OVERLAY6, 3).expect("ping6 b -> a");
    // TCP: the tunnel netdev hands over one segment per packet (gso_max_segs 1), so every packet
    // gets its own checksum.
    let server: SocketAddr = format!("{B_OVERLAY4}:5003").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&b, server, &a, 10 << 20).expect("tcp over ip6gre");
    assert_eq!(sent, received);
    // 10 MiB in segments of at most 1444 - 40 bytes: over 7000 packets from a to b.
    for (ns, instance, data_dir) in [(&a, &ia, "tx_packets"), (&b, &ib, "rx_packets")] {
        let v = gre::show(ns, instance).unwrap();
        let t = tunnel(&v);
        // In-order receive drops what two sending CPUs put on the wire out of order (as the
        // kernel's iseq does); TCP recovers. Nothing else may be dropped.
        let dropped: u64 = t["drops"].as_object().unwrap().iter().filter(|(k, _)| *k != "sequence").map(|(_, d)| d.as_u64().unwrap()).sum();
        assert_eq!(dropped, 0, "{v}");
        assert_eq!((t["icsum"].as_bool(), t["oseq"].as_bool(), t["tos"].as_str()), (Some(true), Some(true), Some("inherit")), "{v}");
        assert_eq!(t["flowlabel"], 74565);
        assert!(t[data_dir].as_u64().unwrap() > 7000, "{v}");
    }
}

#[test]
fn tshark_decodes_ipv4_variants() {
    if !privilege::require_root("tshark_decodes_ipv4_variants") {
        return;
    }
    for (options, flags, tag) in [("csum = true\n", "0x8000", "gc"), ("seq = true\nkey = 99\n", "0x3000", "gq"), ("", "0x0000", "gp")] {
        let mut sites = TwoSites::new(tag).expect("topology");
        let (ia, _) = sites.tunnel_with(A_UNDERLAY, B_UNDERLAY, &format!("{options}ttl = 64\n")).expect("gre up");
        let pins = Path::new(gre_user::instance::PIN_ROOT).join(&ia);
        assert!(pins.exists(), "{} while the instance is up", pins.display());
        let a = sites.a.clone();
        let packets = capture(&sites, "ip proto 47", 4, &["ip.src", "ip.dst", "gre.flags_and_version", "gre.checksum.status", "gre.proto"], || {
            traffic::ping(&a, B_OVERLAY4, 2).expect("ping");
        });
        assert_eq!(packets.len(), 4, "{options}");
        for p in &packets {
            assert_eq!(first_of(p, "_ws.malformed"), None, "{p}");
            assert_eq!(first_of(p, "gre.flags_and_version").as_deref(), Some(flags), "{options}: {p}");
            assert_eq!(first_of(p, "gre.proto").as_deref(), Some("0x0800"));
            if flags == "0x8000" {
                assert_eq!(first_of(p, "gre.checksum.status").as_deref(), Some("1"), "{p}");
            }
        }
        drop(sites);
        assert!(!pins.exists(), "{} is removed with the instance", pins.display());
    }
}

#[test]
fn gretap_carries_arp_ping_and_tcp() {
    if !privilege::require_root("gretap_carries_arp_ping_and_tcp") {
        return;
    }
    let mut sites = TwoSites::new("gtap").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    for ns in [&a, &b] {
        ns_sh(ns, &["sysctl", "-q", "-w", "net.ipv4.conf.eth0.forwarding=1"]).unwrap();
    }
    let (ia, ib) = sites.tunnel_with(A_UNDERLAY, B_UNDERLAY, "mode = \"gretap\"\nkey = 5\n").expect("gre up");
    let link = ns_sh(&a, &["ip", "link", "show", "gre0"]).unwrap();
    // 1500 - IPv4 20 - GRE 8 - inner Ethernet 14; an Ethernet link with ARP.
    assert!(link.contains("mtu 1458") && !link.contains("NOARP"), "{link}");
    let managed = ns_sh(&a, &["ip", "neigh", "show", "dev", "eth0"]).unwrap();
    assert!(managed.contains("198.51.100.62") && managed.contains("managed"), "the next hop is kept resolved: {managed}");

    let packets = capture(&sites, "ip proto 47", 4, &["ip.src", "gre.proto", "gre.key", "eth.type", "arp.opcode"], || {
        // The first packets across are ARP, carried as Ethernet frames.
        traffic::ping(&a, B_OVERLAY4, 1).expect("ping");
    });
    assert!(packets.len() == 4);
    for p in &packets {
        assert_eq!(first_of(p, "_ws.malformed"), None, "{p}");
        assert_eq!(first_of(p, "gre.proto").as_deref(), Some("0x6558"));
        assert_eq!(first_of(p, "gre.key").as_deref(), Some("0x00000005"));
    }
    assert!(packets.iter().any(|p| first_of(p, "arp.opcode").is_some()), "ARP crossed the tunnel");
    traffic::ping(&b, A_OVERLAY4, 3).expect("ping b -> a");
    // A gretap is an Ethernet link: its IPv6 addresses go through DAD first.
    for ns in [&a, &b] {
        traffic::wait_for("DAD on the gretap's addresses", 10, || {
            ns_sh(ns, &["ip", "-6", "addr", "show", "dev", "gre0"]).is_ok_and(|o| !o.contains("tentative"))
        });
    }
    traffic::ping(&a, B_OVERLAY6, 3).expect("ping6 over gretap");
    let server: SocketAddr = format!("{B_OVERLAY4}:5004").parse().unwrap();
    let (sent, received) = traffic::tcp_transfer(&b, server, &a, 10 << 20).expect("tcp over gretap");
    assert_eq!(sent, received);
    for (ns, instance) in [(&a, &ia), (&b, &ib)] {
        let v = gre::show(ns, instance).unwrap();
        assert_eq!(tunnel(&v)["mode"], "gretap");
        let dropped = gre::counters::tunnel_drops(&v);
        assert_eq!(dropped, 0, "{v}");
    }
    sites.lab.gre_down(&a, &ia).expect("down");
    let after = ns_sh(&a, &["ip", "neigh", "show", "dev", "eth0"]).unwrap();
    assert!(!after.contains("managed"), "gre down removes the managed neighbour it made: {after}");
}

/// A VLAN device or a VLAN-aware bridge hands a gretap its frames with the tag beside them, for
/// hardware to insert: the tag belongs inside the carried frame, as with the kernel's gretap,
/// never on the outer one. (This host's kernel has neither VLAN devices nor VLAN filtering: a
/// test program in front of the encapsulation tags the frames the same way.)
#[test]
fn vlan_tags_beside_gretap_frames_go_inside() {
    if !privilege::require_root("vlan_tags_beside_gretap_frames_go_inside") {
        return;
    }
    let mut sites = TwoSites::new("gvl").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    for ns in [&a, &b] {
        ns_sh(ns, &["sysctl", "-q", "-w", "net.ipv4.conf.eth0.forwarding=1"]).unwrap();
    }
    let (ia, _) = sites.tunnel_with(A_UNDERLAY, B_UNDERLAY, "mode = \"gretap\"\nkey = 6\n").expect("gre up");
    // b cannot answer ARP on VLAN 100 (no VLAN device): its MAC is given.
    let b_mac = ns_sh(&b, &["cat", "/sys/class/net/gre0/address"]).unwrap();
    ns_sh(&a, &["ip", "neigh", "replace", B_OVERLAY4, "lladdr", b_mac.trim(), "dev", "gre0", "nud", "permanent"]).unwrap();
    let (a_ns, wan) = (a.clone(), sites.wan.clone());
    let packets = traffic::in_netns(&a, move || {
        let mut ebpf = aya::EbpfLoader::new().load(gre_user::EBPF_OBJECT)?;
        let tag: &mut aya::programs::SchedClassifier = ebpf.program_mut(gre_common::maps::programs::TEST_VLAN_TAG).expect("program").try_into()?;
        tag.load()?;
        tag.attach_with_options("gre0", aya::programs::TcAttachType::Egress, aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::first()))?;
        let from_a = format!("(ip proto 47 and src {A_UNDERLAY}) or (vlan and ip proto 47 and src {A_UNDERLAY})");
        let packets = Capture::first(&wan, "a0", &from_a, 4, &["frame.protocols", "vlan.id"], || {
            let _ = traffic::ping(&a_ns, B_OVERLAY4, 4);
        });
        drop(ebpf);
        Ok(packets)
    })
    .expect("the tagging program");
    assert_eq!(packets.len(), 4);
    for p in &packets {
        let protocols = first_of(p, "frame.protocols").unwrap_or_default();
        assert!(protocols.starts_with("eth:ethertype:ip:gre:eth:ethertype:vlan:ethertype:"), "the tag inside, none outside: {protocols}");
        assert_eq!(first_of(p, "vlan.id").as_deref(), Some("100"), "{p}");
    }
    let v = gre::show(&a, &ia).unwrap();
    let dropped = gre::counters::tunnel_drops(&v);
    assert_eq!(dropped, 0, "{v}");
}

#[test]
fn keepalives_track_the_tunnel_state() {
    if !privilege::require_root("keepalives_track_the_tunnel_state") {
        return;
    }
    let mut sites = TwoSites::new("gka").expect("topology");
    // b answers from XDP (XDP_TX out of its underlay port): the router's end needs NAPI.
    ns_sh(&sites.wan, &["ethtool", "-K", "b0", "gro", "on"]).unwrap();
    let (a, b) = (sites.a.clone(), sites.b.clone());
    let ca = TwoSites::site_config_with(A_UNDERLAY, B_UNDERLAY, "key = 3\nkeepalive = { period = 1, retries = 2 }\n", A_OVERLAY4, A_OVERLAY6);
    let cb = TwoSites::site_config(B_UNDERLAY, A_UNDERLAY, Some(3), B_OVERLAY4, B_OVERLAY6);
    let ia = sites.lab.gre_up(&a, "a", &ca).expect("gre up a");
    let ib = sites.lab.gre_up(&b, "b", &cb).expect("gre up b");
    let state = |ns: &str, i: &str| gre::show(ns, i).unwrap()["tunnels"][0].clone();
    assert_eq!(state(&a, &ia)["state"], "unknown", "no daemon yet");
    {
        let _daemon = gre::Daemon::start(&a, &ia);
        traffic::wait_for("the tunnel to come up", 10, || state(&a, &ia)["state"] == "up");
        let t = state(&a, &ia);
        assert_eq!(t["keepalive"], serde_json::json!([1, 2]));
        assert!(t["keepalives_returned"].as_u64().unwrap() >= 1, "{t}");
        assert!(state(&b, &ib)["keepalives_answered"].as_u64().unwrap() >= 1, "b sent them back from XDP");
        // The remote goes away: after 2 unanswered periods the tunnel is down.
        sites.lab.gre_down(&b, &ib).expect("down b");
        traffic::wait_for("the tunnel to go down", 10, || state(&a, &ia)["state"] == "down");
        let t = state(&a, &ia);
        assert!(t["keepalives_sent"].as_u64().unwrap() > t["keepalives_returned"].as_u64().unwrap(), "{t}");
    }
    assert_eq!(state(&a, &ia)["state"], "unknown", "a stopped daemon watches nothing");
}

#[test]
fn fragmented_gre_is_reassembled_and_delivered() {
    if !privilege::require_root("fragmented_gre_is_reassembled_and_delivered") {
        return;
    }
    let mut sites = TwoSites::new("gfr").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    // The router's port toward b has a smaller MTU than the tunnel needs: without DF, it
    // fragments a's GRE packets.
    ns_sh(&sites.wan, &["ip", "link", "set", "b0", "mtu", "1400"]).unwrap();
    let (_, ib) = sites.tunnel_with(A_UNDERLAY, B_UNDERLAY, "pmtudisc = false\n").expect("gre up");
    let datagram: Vec<u8> = (0..1420u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(udp_across(&a, &b, &datagram, 7000), None, "no daemon: the kernel reassembles, but nothing takes the GRE");
    let _daemon = gre::Daemon::start(&b, &ib);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(udp_across(&a, &b, &datagram, 7001).as_deref(), Some(&datagram[..]), "the daemon decapsulates the reassembled packet");
    let t = gre::show(&b, &ib).unwrap()["tunnels"][0].clone();
    assert_eq!(t["reassembled"], 1, "{t}");
    // Small packets still take the datapath.
    traffic::ping(&a, B_OVERLAY4, 2).expect("ping");
}

/// Fragments to a multipoint tunnel: the daemon finds it by its any-remote match, as the
/// datapath does, and counts what it delivers in `rx_packets`; on a strict one, fragments from
/// an address that is no peer's are a counted `unknown_peer` drop, not delivered.
#[test]
fn fragmented_gre_to_a_multipoint_tunnel_is_matched_checked_and_counted() {
    if !privilege::require_root("fragmented_gre_to_a_multipoint_tunnel_is_matched_checked_and_counted") {
        return;
    }
    let mut sites = TwoSites::new("gfm").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    ns_sh(&sites.wan, &["ip", "link", "set", "b0", "mtu", "1400"]).unwrap();
    let ca = TwoSites::site_config_with(A_UNDERLAY, B_UNDERLAY, "key = 5\npmtudisc = false\n", A_OVERLAY4, A_OVERLAY6);
    sites.lab.gre_up(&a, "a", &ca).expect("gre up a");
    let multipoint = |strict: bool, peer_nbma: &str| {
        format!(
            "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"gre0\"\ninterface = \"eth0\"\nlocal = \"{B_UNDERLAY}\"\nkey = 5\nstrict = {strict}\n\
             address = [\"{B_OVERLAY4}/30\"]\n\n[[peer]]\ntunnel = \"gre0\"\noverlay = \"{A_OVERLAY4}\"\nnbma = \"{peer_nbma}\"\n"
        )
    };
    let datagram: Vec<u8> = (0..1420u32).map(|i| (i * 11 % 251) as u8).collect();
    for (strict, peer_nbma, delivered) in [(false, A_UNDERLAY, true), (true, "198.51.100.9", false)] {
        let ib = sites.lab.gre_up(&b, "b", &multipoint(strict, peer_nbma)).expect("gre up b");
        let daemon = gre::Daemon::start(&b, &ib);
        thread::sleep(Duration::from_millis(500));
        let got = udp_across(&a, &b, &datagram, 7002);
        let t = gre::show(&b, &ib).unwrap()["tunnels"][0].clone();
        if delivered {
            assert_eq!(got.as_deref(), Some(&datagram[..]), "delivered through the multipoint tunnel");
            assert_eq!((t["reassembled"].as_u64(), t["rx_packets"].as_u64()), (Some(1), Some(1)), "{t}");
            assert_eq!(t["rx_bytes"], 20 + 8 + datagram.len(), "{t}");
        } else {
            assert_eq!(got, None, "a strict tunnel takes no fragments from strangers");
            assert_eq!((t["reassembled"].as_u64(), t["rx_packets"].as_u64(), t["drops"]["unknown_peer"].as_u64()), (Some(0), Some(0), Some(1)), "{t}");
        }
        daemon.kill();
        sites.lab.gre_down(&b, &ib).expect("gre down b");
    }
}

/// Sends one UDP datagram without DF from a's overlay address to b's; what b received, if
/// anything, within two seconds.
fn udp_across(a: &str, b: &str, data: &[u8], port: u16) -> Option<Vec<u8>> {
    use std::{net::UdpSocket, os::fd::AsRawFd as _};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = thread::spawn({
        let b = b.to_string();
        move || {
            traffic::in_netns(&b, move || {
                let s = UdpSocket::bind((B_OVERLAY4, port))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                ready_tx.send(()).ok();
                let mut buf = vec![0u8; 65536];
                Ok(s.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
            })
        }
    });
    ready_rx.recv().expect("receiver ready");
    let data = data.to_vec();
    traffic::in_netns(a, move || {
        let s = UdpSocket::bind((A_OVERLAY4, 0))?;
        let dont: libc::c_int = libc::IP_PMTUDISC_DONT;
        // SAFETY: setting an int socket option on our own socket.
        unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, (&raw const dont).cast(), 4) };
        s.send_to(&data, (B_OVERLAY4, port))?;
        Ok(())
    })
    .expect("send");
    receiver.join().expect("receiver").expect("receiver in b")
}

#[test]
fn fragmented_ip6gre_from_another_implementation_is_delivered() {
    if !privilege::require_root("fragmented_ip6gre_from_another_implementation_is_delivered") {
        return;
    }
    let mut sites = TwoSites::new("gf6").expect("topology");
    let (a, b) = (sites.a.clone(), sites.b.clone());
    let (_, ib) = sites.tunnel_with(A_UNDERLAY6, B_UNDERLAY6, "").expect("gre up");
    let _daemon = gre::Daemon::start(&b, &ib);
    thread::sleep(Duration::from_millis(500));
    // IPv6 routers never fragment: a sender does. scapy plays an ip6gre sender that fragments
    // the outer packet, as Linux's ip6gre does when its tunnel MTU exceeds the path's.
    let router: Value = serde_json::from_str(&ns_sh(&sites.wan, &["ip", "-j", "link", "show", "a0"]).unwrap()).unwrap();
    let router_mac = router[0]["address"].as_str().unwrap().to_string();
    let payload: Vec<u8> = (0..1200u32).map(|i| (i % 253) as u8).collect();
    let script = format!(
        "from scapy.all import *\n\
         inner = IP(src='{A_OVERLAY4}', dst='{B_OVERLAY4}', flags=0)/UDP(sport=5555, dport=7003)/Raw({})\n\
         pkt = IPv6(src='{A_UNDERLAY6}', dst='{B_UNDERLAY6}')/IPv6ExtHdrFragment()/GRE(proto=0x0800)/inner\n\
         sendp([Ether(dst='{router_mac}')/f for f in fragment6(pkt, 800)], iface='eth0', verbose=False)\n",
        gre_tests::fixture::hex_bytes(&payload)
    );
    let got = udp_receive(&b, 7003, || {
        ns_sh(&a, &["/usr/bin/python3", "-c", &script]).expect("scapy sends the fragments");
    });
    assert_eq!(got.as_deref(), Some(&payload[..]), "the reassembled packet reached b's overlay socket");
    assert_eq!(gre::show(&b, &ib).unwrap()["tunnels"][0]["reassembled"], 1);
}

/// Listens on b's overlay address, runs `send`, and returns the first datagram received within
/// two seconds.
fn udp_receive(b: &str, port: u16, send: impl FnOnce()) -> Option<Vec<u8>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = thread::spawn({
        let b = b.to_string();
        move || {
            traffic::in_netns(&b, move || {
                let s = std::net::UdpSocket::bind((B_OVERLAY4, port))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                ready_tx.send(()).ok();
                let mut buf = vec![0u8; 65536];
                Ok(s.recv(&mut buf).ok().map(|n| buf[..n].to_vec()))
            })
        }
    });
    ready_rx.recv().expect("receiver ready");
    send();
    receiver.join().expect("receiver").expect("receiver in b")
}
