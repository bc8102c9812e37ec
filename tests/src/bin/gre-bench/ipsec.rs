//! Part 5 — TCP goodput through a protected tunnel against the same tunnel unprotected, in the
//! same run. This host's kernel has no ESP, so both ends run in one bookworm-backports (6.12)
//! guest, as namespaces on a veth pair, each with our datapath (and, protected, its own charon):
//!
//! ```text
//!   [guest: a] eth0 ── eth0 [b]      tun0 203.0.113.1 ⇄ 203.0.113.2, key 5
//! ```
//!
//! Under TCG every figure is an emulated CPU's, far below a real one's; the ratio between the
//! two cases, measured alike, is what this part is for. Each case: `trials` iperf3 runs of
//! `seconds`, the median and the spread (min–max).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use gre_tests::{
    gre,
    topology::Lab,
    vm::{Guest, Kernel},
};
use serde_json::{Value, json};

const A: &str = "198.51.100.1";
const B: &str = "198.51.100.2";
const PSK: &str = "a pre-shared key for the benchmark";

fn config(local: &str, remote: &str, overlay: &str, node: &str, protected: bool) -> String {
    let mut c = format!(
        "[[interface]]\nname = \"eth0\"\n\n[[tunnel]]\nname = \"tun0\"\ninterface = \"eth0\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nkey = 5\naddress = [\"{overlay}/30\"]\n"
    );
    if protected {
        c += &format!(
            "\n[tunnel.protection]\npsk = \"{PSK}\"\nproposals = [\"aes256-sha256-modp2048\"]\nesp_proposals = [\"aes256gcm16\"]\nvici = \"/tmp/{node}.vici\"\n"
        );
    }
    c
}

/// iperf3 goodput from a to b over the tunnel, in bit/s, `trials` times.
fn iperf(g: &mut Guest, seconds: u32, trials: u32) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..trials {
        let text = g.ok_timeout(
            &format!(
                "ip netns exec b iperf3 --server --one-off --bind 203.0.113.2 > /dev/null 2>&1 &\nsleep 1\n\
                 ip netns exec a iperf3 --client 203.0.113.2 --time {seconds} --json"
            ),
            Duration::from_secs(u64::from(seconds) + 60),
        )?;
        let v: Value = serde_json::from_str(&text).context("iperf3's report")?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no received rate in iperf3's report")?;
        out.push(bps);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(seconds: u32, trials: u32) -> Result<Value> {
    let kernel = Kernel::backports()?;
    let mut lab = Lab::new("gre-bench-ipsec");
    let host = lab.add_ns("host")?;
    let mut g = Guest::boot("bench", &host, &kernel, 0)?;
    let bin = gre::bin();
    let bin = bin.display();
    let shared = g.shared();
    g.ok(&format!(
        "modprobe -a esp4 xfrm_user veth\nip netns add a\nip netns add b\nip -n a link add eth0 type veth peer name eth0 netns b\n\
         ip -n a addr add {A}/24 dev eth0\nip -n b addr add {B}/24 dev eth0\nfor n in a b; do ip -n $n link set eth0 up; ip -n $n link set lo up; ip netns exec $n ethtool -K eth0 tx off > /dev/null; done\n\
         for n in a b; do\n\
           printf 'charon {{\\n load_modular = yes\\n install_routes = no\\n plugins {{\\n  include /etc/strongswan.d/charon/*.conf\\n  vici {{\\n   socket = unix:///tmp/%s.vici\\n  }}\\n }}\\n}}\\n' $n > /tmp/strongswan-$n.conf\n\
           ip netns exec $n unshare -m sh -c \"mount -t tmpfs none /run; STRONGSWAN_CONF=/tmp/strongswan-$n.conf exec /usr/lib/ipsec/charon\" > /dev/null 2>&1 < /dev/null &\n\
         done\nfor i in $(seq 100); do [ -S /tmp/a.vici ] && [ -S /tmp/b.vici ] && break; sleep 0.1; done"
    ))?;
    let mut case = |protected: bool| -> Result<Vec<f64>> {
        for (n, local, remote, overlay) in [("a", A, B, "203.0.113.1"), ("b", B, A, "203.0.113.2")] {
            let cfg = shared.join(format!("{n}-{protected}.toml"));
            std::fs::write(&cfg, config(local, remote, overlay, n, protected))?;
            g.ok(&format!("{bin} -n {n} -I {n} up --config {}\nsetsid {bin} -n {n} -I {n} daemon > /tmp/daemon-{n}.log 2>&1 < /dev/null &", cfg.display()))?;
        }
        if protected {
            let deadline = Instant::now() + Duration::from_secs(90);
            while g.run_timeout(&format!("{bin} -n a -I a show ipsec | grep -q INSTALLED"), Duration::from_secs(30))?.status != 0 {
                if Instant::now() > deadline {
                    bail!("no SA within 90 s:\n{}", g.ok("tail -20 /tmp/daemon-a.log").unwrap_or_default());
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        g.ok("ip netns exec a ping -c 3 -W 3 203.0.113.2 > /dev/null")?;
        let rates = iperf(&mut g, seconds, trials)?;
        for n in ["a", "b"] {
            g.ok(&format!("pkill -f '{bin} -n {n} -I {n} daemon' || true\nsleep 0.5\n{bin} -n {n} -I {n} down"))?;
        }
        Ok(rates)
    };
    let plain = case(false)?;
    let protected = case(true)?;
    let ratio = median(&protected) / median(&plain);
    println!("{:<44} {:>10} {:>22}", "TCP goodput a → b in a 6.12 guest (TCG)", "Mbit/s", "spread (min–max)");
    for (name, v) in [("tunnel, unprotected", &plain), ("tunnel, protected (ESP aes256gcm16)", &protected)] {
        println!("{name:<44} {:>10.1} {:>10.1} – {:<10.1}", median(v) / 1e6, v[0] / 1e6, v[v.len() - 1] / 1e6);
    }
    println!("protected / unprotected: {ratio:.2} ({trials} runs of {seconds} s each; an emulated CPU: the ratio, not the figures)");
    Ok(json!({
        "seconds": seconds,
        "trials": trials,
        "unprotected_bps": plain,
        "protected_bps": protected,
        "protected_vs_unprotected": ratio,
        "guest": "bookworm-backports 6.12 under TCG, one vCPU",
    }))
}
