//! BPF_PROG_TEST_RUN fixtures for the fast paths: decapsulation straight to a LAN port and
//! encapsulation straight from one, each falling back to the kernel path whenever something is
//! not known or not plain.

use etherparse::EtherType;
use gre_common::maps::TunnelStats;
use gre_tests::fixture::*;

const HOST_MAC: &str = "02:00:00:00:00:66";
const PEER_MAC: &str = "02:00:00:00:00:02";

fn inner(dst: &str, ttl: u8, len: usize) -> Vec<u8> {
    inner_from("203.0.113.130", dst, ttl, len)
}

fn inner_from(src: &str, dst: &str, ttl: u8, len: usize) -> Vec<u8> {
    scapy(&format!("IP(src='{src}', dst='{dst}', ttl={ttl})/UDP(sport=7, dport=9)/Raw(b'z'*{len})"))
}

/// `packet` with `f` applied to its bytes.
fn patched(mut packet: Vec<u8>, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    f(&mut packet);
    packet
}

/// A LAN port `lan0` with a host 203.0.113.66 behind it, forwarding on the tunnel netdev t0.
fn lan_port(f: &mut Fixture) -> Netdev {
    let lan = veth("lan0");
    net(&[
        "ip addr add 203.0.113.65/26 dev lan0",
        "ip link set lan0-dp up",
        "ip link set lan0 up",
        &format!("ip neigh replace 203.0.113.66 lladdr {HOST_MAC} dev lan0 nud permanent"),
        "sysctl -q -w net.ipv4.conf.t0.forwarding=1",
        "ip link set t0-dp up",
        "ip link set t0 up",
    ]);
    f.maps.add_port(lan.index, lan.mac).expect("port");
    lan
}

#[test]
fn decap_straight_to_a_lan_port() {
    let Some(mut f) = setup("decap_straight_to_a_lan_port") else { return };
    let lan = lan_port(&mut f);
    let wire =
        |inner: &[u8]| scapy(&format!("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=42, proto=0x0800)/Raw({})", hex_bytes(inner)));
    let (action, out) = f.decap(&wire(&inner("203.0.113.66", 9, 100)));
    assert_eq!(action, XDP_REDIRECT);
    // Routed as the kernel would: the host's MAC from the neighbour table, TTL 9 -> 8.
    let expected = [eth(mac(HOST_MAC), lan.mac, EtherType::IPV4), inner("203.0.113.66", 8, 100)].concat();
    assert_eq!(out, expected);
    let s = f.stats(0);
    assert_eq!((s.rx_packets, s.fast_rx), (1, 1));

    // Everything that is not a plain forward goes to the tunnel netdev, for the kernel.
    net(&["ip link set lan0 mtu 1280"]);
    for (what, packet) in [
        ("TTL about to expire", inner("203.0.113.66", 1, 100)),
        ("local destination", inner("203.0.113.65", 9, 100)),
        ("too big for the egress port", inner("203.0.113.66", 9, 1300)),
        ("no route", inner("198.51.100.200", 9, 100)),
        // What ip_rcv or ip_forward refuses is theirs to refuse (and count).
        ("martian source 127.0.0.1", inner_from("127.0.0.1", "203.0.113.66", 9, 100)),
        ("martian source 0.0.0.0", inner_from("0.0.0.0", "203.0.113.66", 9, 100)),
        ("multicast source", inner_from("224.0.0.5", "203.0.113.66", 9, 100)),
        ("limited broadcast source", inner_from("255.255.255.255", "203.0.113.66", 9, 100)),
        ("our own tunnel endpoint as the source", inner_from("198.51.100.1", "203.0.113.66", 9, 100)),
        ("IHL 4", patched(inner("203.0.113.66", 9, 100), |p| p[0] = 0x44)),
        (
            "IPv4 options",
            scapy("IP(src='203.0.113.130', dst='203.0.113.66', ttl=9, options=IPOption(b'\\x01\\x01\\x01\\x00'))/UDP(sport=7, dport=9)/Raw(b'z'*100)"),
        ),
        ("bad header checksum", patched(inner("203.0.113.66", 9, 100), |p| p[10] ^= 0x55)),
        (
            "total length beyond the bytes carried",
            patched(inner("203.0.113.66", 9, 100), |p| {
                let t = u16::from_be_bytes([p[2], p[3]]) + 8;
                p[2..4].copy_from_slice(&t.to_be_bytes());
            }),
        ),
    ] {
        let (action, out) = f.decap(&wire(&packet));
        assert_eq!(action, XDP_REDIRECT, "{what}");
        assert_eq!(out, [eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV4), packet].concat(), "{what}: the kernel path");
    }
    assert_eq!(f.stats(0).fast_rx, 1);
    assert_eq!(f.stats(0).rx_packets, 14);
}

/// IPv6 inside: a plain forward goes straight to the LAN port (hop limit decremented); what
/// ip6_forward refuses or answers itself — link-local, loopback, unspecified or multicast
/// addresses, a payload length other than what was carried — goes the kernel path.
#[test]
fn decap_of_ipv6_straight_to_a_lan_port_and_what_stays_with_the_kernel() {
    let Some(mut f) = setup("decap_of_ipv6_straight_to_a_lan_port_and_what_stays_with_the_kernel") else { return };
    let lan = lan_port(&mut f);
    net(&[
        "sysctl -q -w net.ipv6.conf.all.forwarding=1",
        "ip addr add 2001:db8:100::65/64 dev lan0 nodad",
        &format!("ip neigh replace 2001:db8:100::66 lladdr {HOST_MAC} dev lan0 nud permanent"),
    ]);
    let wire =
        |inner: &[u8]| scapy(&format!("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=42, proto=0x86dd)/Raw({})", hex_bytes(inner)));
    let six = |src: &str, dst: &str, hlim: u8| scapy(&format!("IPv6(src='{src}', dst='{dst}', hlim={hlim})/UDP(sport=7, dport=9)/Raw(b'v'*100)"));
    let (action, out) = f.decap(&wire(&six("2001:db8:200::2", "2001:db8:100::66", 9)));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out, [eth(mac(HOST_MAC), lan.mac, EtherType::IPV6), six("2001:db8:200::2", "2001:db8:100::66", 8)].concat());
    for (what, packet) in [
        ("link-local source", six("fe80::2", "2001:db8:100::66", 9)),
        ("link-local destination", six("2001:db8:200::2", "fe80::66", 9)),
        ("loopback source", six("::1", "2001:db8:100::66", 9)),
        ("unspecified source", six("::", "2001:db8:100::66", 9)),
        ("multicast source", six("ff02::1", "2001:db8:100::66", 9)),
        ("multicast destination", six("2001:db8:200::2", "ff0e::1", 9)),
        ("hop limit about to expire", six("2001:db8:200::2", "2001:db8:100::66", 1)),
        (
            "payload length beyond the bytes carried",
            patched(six("2001:db8:200::2", "2001:db8:100::66", 9), |p| {
                let l = u16::from_be_bytes([p[4], p[5]]) + 8;
                p[4..6].copy_from_slice(&l.to_be_bytes());
            }),
        ),
    ] {
        let (action, out) = f.decap(&wire(&packet));
        assert_eq!(action, XDP_REDIRECT, "{what}");
        assert_eq!(out, [eth(f.keyed.mac, f.keyed.inject_mac, EtherType::IPV6), packet].concat(), "{what}: the kernel path");
    }
    assert_eq!(f.stats(0).fast_rx, 1);
}

/// Over an IPv6 underlay (ip6gre), an inner packet from our own tunnel endpoint is martian to
/// ip6_forward: the kernel path, while one from elsewhere goes straight to the LAN port.
#[test]
fn decap_over_ipv6_leaves_our_own_endpoint_as_source_to_the_kernel() {
    let Some(mut f) = setup("decap_over_ipv6_leaves_our_own_endpoint_as_source_to_the_kernel") else { return };
    lan_port(&mut f);
    let (id, dev) = f.add(gre_common::maps::Tunnel {
        local: gre_user::maps::store_addr("2001:db8::1".parse().unwrap()),
        remote: gre_user::maps::store_addr("2001:db8::2".parse().unwrap()),
        flags: gre_common::maps::tunnel_flags::OUTER_V6,
        ..gre_common::maps::Tunnel::default()
    });
    net(&[
        "sysctl -q -w net.ipv6.conf.all.forwarding=1",
        &format!("ip link set t{id} up"),
        &format!("ip link set t{id}-dp up"),
        "ip addr add 2001:db8:100::65/64 dev lan0 nodad",
        &format!("ip neigh replace 2001:db8:100::66 lladdr {HOST_MAC} dev lan0 nud permanent"),
    ]);
    let wire = |inner: &[u8]| scapy(&format!("Ether()/IPv6(src='2001:db8::2', dst='2001:db8::1', nh=47)/GRE(proto=0x86dd)/Raw({})", hex_bytes(inner)));
    let six = |src: &str| scapy(&format!("IPv6(src='{src}', dst='2001:db8:100::66', hlim=9)/UDP(sport=7, dport=9)/Raw(b'w'*100)"));
    let (action, out) = f.decap(&wire(&six("2001:db8:200::2")));
    assert_eq!((action, out[..6].to_vec()), (XDP_REDIRECT, mac(HOST_MAC).to_vec()), "straight to the LAN host");
    let own = six("2001:db8::1");
    let (action, out) = f.decap(&wire(&own));
    assert_eq!((action, out), (XDP_REDIRECT, [eth(dev.mac, dev.inject_mac, EtherType::IPV6), own].concat()), "the kernel path");
    assert_eq!(f.stats(id).fast_rx, 1);
}

/// The fast path's cache of FIB answers never lets through what the kernel would no longer
/// forward: after the egress port's MTU comes down, a large packet goes the kernel path (which
/// sends ICMP), even once smaller packets have refreshed the cached answer.
#[test]
fn cached_answers_follow_a_smaller_egress_mtu() {
    let Some(mut f) = setup("cached_answers_follow_a_smaller_egress_mtu") else { return };
    lan_port(&mut f);
    let wire =
        |inner: &[u8]| scapy(&format!("Ether()/IP(src='198.51.100.2', dst='198.51.100.1')/GRE(key_present=1, key=42, proto=0x0800)/Raw({})", hex_bytes(inner)));
    let (big, small) = (wire(&inner("203.0.113.66", 9, 1300)), wire(&inner("203.0.113.66", 9, 100)));
    let to_lan = |f: &mut Fixture, frame: &[u8]| {
        let (action, out) = f.decap(frame);
        assert_eq!(action, XDP_REDIRECT);
        out[..6] == mac(HOST_MAC)
    };
    assert!(to_lan(&mut f, &big), "fits the LAN port's 1500");
    net(&["ip link set lan0 mtu 1280"]);
    // Past the cache's lifetime, a small packet asks the FIB again.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert!(to_lan(&mut f, &small));
    assert!(!to_lan(&mut f, &big), "too big for the port now: the kernel path");
    assert_eq!(f.stats(0).fast_rx, 2);
}

/// A packet from the LAN host to a destination behind the tunnel.
fn from_host(dst: &str, ttl: u8, len: usize) -> Vec<u8> {
    scapy(&format!("IP(src='203.0.113.66', dst='{dst}', ttl={ttl})/UDP(sport=7, dport=9)/Raw(b'y'*{len})"))
}

#[test]
fn encap_straight_from_a_lan_port() {
    let Some(mut f) = setup("encap_straight_from_a_lan_port") else { return };
    let lan = lan_port(&mut f);
    // The underlay: t0 addressed, the remote's MAC known.
    net(&["ip addr add 198.51.100.1/24 dev t0", &format!("ip neigh replace 198.51.100.2 lladdr {PEER_MAC} dev t0 nud permanent")]);
    f.maps.add_port(f.keyed.index, f.keyed.mac).expect("port");
    // The overlay route, in the kernel (through the tunnel netdev, as `gre up` puts it) and in
    // the fast path's table; beside it one of our own addresses in that prefix and a more
    // specific route to the LAN.
    net(&[
        "sysctl -q -w net.ipv4.conf.lan0.forwarding=1",
        "ip route add 203.0.113.128/26 dev t0",
        "ip addr add 203.0.113.140/32 dev lo",
        "ip route add 203.0.113.150/32 dev lan0",
    ]);
    f.maps.add_route("203.0.113.128/26".parse().unwrap(), 0, None).expect("route");
    let frame = |packet: &[u8]| [eth(lan.mac, mac(HOST_MAC), EtherType::IPV4), packet.to_vec()].concat();

    let (action, out) = f.lan(&frame(&from_host("203.0.113.130", 9, 100)), lan.index);
    assert_eq!(action, XDP_REDIRECT);
    // Routed (TTL 9 -> 8) and encapsulated as the TC path would (key 42, TTL inherited, DF).
    let expected = scapy(&format!(
        "Ether(dst='{PEER_MAC}', src='{}')/IP(src='198.51.100.1', dst='198.51.100.2', ttl=8, id=0, flags='DF')/GRE(key_present=1, key=42, proto=0x0800)/Raw({})",
        mac_str(f.keyed.mac),
        hex_bytes(&from_host("203.0.113.130", 8, 100))
    ));
    assert_eq!(out, expected);
    let s = f.stats(0);
    assert_eq!((s.tx_packets, s.fast_tx, s.tx_bytes), (1, 1, from_host("203.0.113.130", 8, 100).len() as u64));

    // Anything not known or not plain passes to the kernel untouched.
    for (what, packet) in [
        ("no overlay route", from_host("198.51.100.200", 9, 100)),
        ("TTL about to expire", from_host("203.0.113.130", 1, 100)),
        ("too big for the tunnel (MTU 1472)", from_host("203.0.113.130", 9, 1460)),
        ("one of our own addresses", from_host("203.0.113.140", 9, 100)),
        ("a more specific route elsewhere", from_host("203.0.113.150", 9, 100)),
    ] {
        let input = frame(&packet);
        let (action, out) = f.lan(&input, lan.index);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(out, input, "{what}");
    }
    // Frames the kernel would not route: for another host's MAC, broadcast, multicast.
    for dst in ["02:00:00:00:00:77", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb"] {
        let input = [eth(mac(dst), mac(HOST_MAC), EtherType::IPV4), from_host("203.0.113.130", 9, 100)].concat();
        assert_eq!(f.lan(&input, lan.index), (XDP_PASS, input), "to {dst}");
    }
    // Forwarding off on the LAN port: the kernel would not forward, nor may the fast path.
    net(&["sysctl -q -w net.ipv4.conf.lan0.forwarding=0"]);
    // What gre daemon does when the kernel announces the change (no daemon in a fixture).
    f.maps.mark_fib_changed().expect("mark");
    let input = frame(&from_host("203.0.113.130", 9, 100));
    assert_eq!(f.lan(&input, lan.index), (XDP_PASS, input), "forwarding off");
    net(&["sysctl -q -w net.ipv4.conf.lan0.forwarding=1"]);
    net(&["ip neigh del 198.51.100.2 dev t0"]);
    let input = frame(&from_host("203.0.113.130", 9, 100));
    assert_eq!(f.lan(&input, lan.index), (XDP_PASS, input), "unresolved underlay next hop");
    assert_eq!(f.stats(0).fast_tx, 1);
    assert_eq!(f.stats(0).drops, TunnelStats::default().drops);
}
