//! The kernel's IPsec policies (xfrm), read over NETLINK_XFRM: the datapath sends and receives
//! GRE past xfrm, so a tunnel that a policy would protect (or block) must not come up as if it
//! were protected. No crate of the field reads xfrm policies; this is one dump and one struct.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use rtnetlink::sys;

const XFRM_MSG_NEWPOLICY: u16 = 19;
const XFRM_MSG_GETPOLICY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct xfrm_userpolicy_info` (linux/xfrm.h): selector 56, lifetimes 64 + 32, then
/// priority, index, dir, action, flags, share; 168 bytes with padding.
const POLICY_INFO_LEN: usize = 168;
const XFRM_POLICY_IN: u8 = 0;
const XFRM_POLICY_OUT: u8 = 1;
const IPPROTO_GRE: u8 = 47;

/// An IPsec policy's selector and what it does, as far as GRE is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub src: ipnet::IpNet,
    pub dst: ipnet::IpNet,
    /// 0: every protocol.
    pub proto: u8,
    /// "in" or "out".
    pub dir: &'static str,
    /// "protect" (allow with templates: ESP/AH), "allow" or "block".
    pub action: &'static str,
}

impl Policy {
    /// Whether GRE from `src` to `dst` is selected (an unspecified address: a multipoint
    /// tunnel's remote, any peer).
    #[must_use]
    pub fn selects_gre(&self, src: IpAddr, dst: IpAddr) -> bool {
        let covers = |net: &ipnet::IpNet, a: IpAddr| a.is_unspecified() && net.addr().is_ipv4() == a.is_ipv4() || net.contains(&a);
        (self.proto == 0 || self.proto == IPPROTO_GRE) && covers(&self.src, src) && covers(&self.dst, dst)
    }
}

/// The input and output policies of this network namespace (forward policies do not see
/// locally sent GRE). Empty when the kernel has no xfrm.
///
/// # Errors
/// The netlink socket cannot be used.
pub fn policies() -> Result<Vec<Policy>> {
    let socket = match sys::Socket::new(sys::protocols::NETLINK_XFRM) {
        Ok(s) => s,
        // A kernel without xfrm has no policies to bypass.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("opening a NETLINK_XFRM socket"),
    };
    // A dump request: header and a 4-byte family (AF_UNSPEC), as `ip xfrm policy` sends.
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&XFRM_MSG_GETPOLICY.to_ne_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "netlink flags fit in 16 bits")]
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0; 4]);
    socket.send(&req, 0).context("asking the kernel for its xfrm policies")?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = socket.recv_from_full().context("reading xfrm policies")?;
        let n = buf.len();
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into()?) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into()?);
            if len < 16 || at + len > n {
                bail!("a malformed netlink message among the xfrm policies");
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into()?);
                    if code == 0 {
                        return Ok(out);
                    }
                    return Err(std::io::Error::from_raw_os_error(-code)).context("reading xfrm policies");
                }
                XFRM_MSG_NEWPOLICY => out.extend(policy(&buf[at + 16..at + len])),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// One `xfrm_userpolicy_info` with its attributes; `None` for directions and families we do
/// not send GRE through.
fn policy(b: &[u8]) -> Option<Policy> {
    if b.len() < POLICY_INFO_LEN {
        return None;
    }
    let family = u16::from_ne_bytes([b[40], b[41]]);
    let (prefixlen_d, prefixlen_s, proto) = (b[42], b[43], b[44]);
    let addr = |a: &[u8]| -> Option<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&a[..4]).ok()?)),
            libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(&a[..16]).ok()?)),
            _ => None,
        }
    };
    let net = |a: IpAddr, len: u8| ipnet::IpNet::new(a, len).ok().map(|n| n.trunc());
    let dst = net(addr(&b[0..16])?, prefixlen_d)?;
    let src = net(addr(&b[16..32])?, prefixlen_s)?;
    let dir = match b[160] {
        XFRM_POLICY_IN => "in",
        XFRM_POLICY_OUT => "out",
        _ => return None,
    };
    // Templates (XFRMA_TMPL, 5) make an allowing policy a protecting one.
    let mut templates = false;
    let mut at = POLICY_INFO_LEN;
    while at + 4 <= b.len() {
        let len = usize::from(u16::from_ne_bytes([b[at], b[at + 1]]));
        let kind = u16::from_ne_bytes([b[at + 2], b[at + 3]]) & 0x3fff;
        if len < 4 {
            break;
        }
        templates |= kind == 5 && len > 4;
        at += (len + 3) & !3;
    }
    let action = match (b[161], templates) {
        (0, true) => "protect",
        (0, false) => "allow",
        _ => "block",
    };
    Some(Policy { src, dst, proto, dir, action })
}

/// Refuses tunnels whose GRE an xfrm policy selects: the datapath would send in clear text
/// what the policy protects (or blocks), and take in clear text what it requires protected.
///
/// # Errors
/// Such a policy exists (the message names it and the tunnel), or the policies cannot be read.
pub fn refuse_bypassed(tunnels: &[crate::config::Tunnel]) -> Result<()> {
    let policies = policies()?;
    for t in tunnels {
        for p in policies.iter().filter(|p| p.action != "allow") {
            let (src, dst) = if p.dir == "out" { (t.local, t.remote) } else { (t.remote, t.local) };
            if p.selects_gre(src, dst) {
                bail!(
                    "tunnel {}: the xfrm policy `src {} dst {} proto {} dir {}` would {} its GRE, but this datapath sends and receives GRE past xfrm: \
                     remove the policy (or narrow it to other traffic) before `gre up`; IPsec protection of tunnels is not supported yet",
                    t.name,
                    p.src,
                    p.dst,
                    if p.proto == 0 { "any".to_string() } else { p.proto.to_string() },
                    p.dir,
                    if p.action == "protect" { "protect" } else { "block" },
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str, dst: &str, proto: u8, dir: &'static str) -> Policy {
        Policy { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto, dir, action: "protect" }
    }

    #[test]
    fn selectors_cover_gre_between_the_endpoints() {
        let (l, r): (IpAddr, IpAddr) = ("198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
        assert!(p("198.51.100.1/32", "198.51.100.2/32", 47, "out").selects_gre(l, r));
        assert!(p("0.0.0.0/0", "0.0.0.0/0", 0, "out").selects_gre(l, r), "every protocol");
        assert!(!p("198.51.100.1/32", "198.51.100.2/32", 50, "out").selects_gre(l, r), "ESP only");
        assert!(!p("198.51.100.1/32", "198.51.100.3/32", 47, "out").selects_gre(l, r), "another remote");
        // A multipoint tunnel: any peer of the family.
        assert!(p("198.51.100.1/32", "198.51.100.9/32", 47, "out").selects_gre(l, "0.0.0.0".parse().unwrap()));
        assert!(!p("2001:db8::1/128", "2001:db8::2/128", 47, "out").selects_gre(l, "0.0.0.0".parse().unwrap()));
    }
}
