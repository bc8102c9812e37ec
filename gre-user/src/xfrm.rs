//! The kernel's IPsec policies (xfrm) over NETLINK_XFRM. An unprotected tunnel's GRE goes past
//! xfrm, so a tunnel that a policy would protect (or block) must not come up as if it were
//! protected; a protected tunnel's GRE goes through xfrm, behind a block policy of ours below
//! every other for it, so that what no SA protects is dropped, never sent or taken in clear.
//! No crate of the field speaks NETLINK_XFRM; this is one dump, one add and one delete.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use rtnetlink::sys;

const XFRM_MSG_NEWPOLICY: u16 = 19;
const XFRM_MSG_DELPOLICY: u16 = 20;
const XFRM_MSG_GETPOLICY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct xfrm_userpolicy_info` (linux/xfrm.h): selector 56, lifetimes 64 + 32, then
/// priority, index, dir, action, flags, share; 168 bytes with padding.
const POLICY_INFO_LEN: usize = 168;
const XFRM_POLICY_IN: u8 = 0;
const XFRM_POLICY_OUT: u8 = 1;
const XFRM_POLICY_BLOCK: u8 = 1;
const IPPROTO_GRE: u8 = 47;
/// The priority of our block policies: the lowest there is but a few (the kernel prefers the
/// lowest value), so any policy charon installs for the same GRE wins over it.
pub const BLOCK_PRIORITY: u32 = 0xffff_fff0;

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
    pub priority: u32,
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
    let priority = u32::from_ne_bytes(b[152..156].try_into().ok()?);
    Some(Policy { src, dst, proto, dir, action, priority })
}

/// Refuses tunnels whose GRE an xfrm policy selects: the datapath would send in clear text
/// what the policy protects (or blocks), and take in clear text what it requires protected.
///
/// # Errors
/// Such a policy exists (the message names it and the tunnel), or the policies cannot be read.
pub fn refuse_bypassed(tunnels: &[crate::config::Tunnel]) -> Result<()> {
    let policies = policies()?;
    for t in tunnels.iter().filter(|t| t.protection.is_none()) {
        for p in policies.iter().filter(|p| p.action != "allow") {
            let (src, dst) = if p.dir == "out" { (t.local, t.remote) } else { (t.remote, t.local) };
            if p.selects_gre(src, dst) {
                bail!(
                    "tunnel {}: the xfrm policy `src {} dst {} proto {} dir {}` would {} its GRE, but this datapath sends and receives GRE past xfrm: \
                     remove the policy (or narrow it to other traffic), or give the tunnel `protection`",
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

/// The selectors of a protected tunnel's block policies, (src, dst, dir, half): GRE between its
/// local address and its remote, or any remote of the family (multipoint: an unspecified remote,
/// of either family), out and in.
///
/// xfrm takes two policies with the same selector and direction for one (the priority is not
/// part of it), and charon replaces what it finds: a block policy for charon's own selector would
/// be gone with charon's SA. Ours therefore split the selector in two halves by the top bit of
/// the GRE key's low word (xfrm's "destination port" for GRE, see `xfrm_flowi_dport`), which
/// together cover all GRE, keyed or not, and are never charon's.
#[must_use]
pub fn block_selectors(local: IpAddr, remote: IpAddr) -> Vec<(ipnet::IpNet, ipnet::IpNet, u8, u16)> {
    let host = |a: IpAddr| ipnet::IpNet::from(a);
    let remote = match (remote.is_unspecified(), local) {
        (true, IpAddr::V4(_)) => ipnet::IpNet::from(ipnet::Ipv4Net::default()),
        (true, IpAddr::V6(_)) => ipnet::IpNet::from(ipnet::Ipv6Net::default()),
        (false, _) => host(remote),
    };
    let mut out = Vec::with_capacity(4);
    for half in [0, 0x8000] {
        out.push((host(local), remote, XFRM_POLICY_OUT, half));
        out.push((remote, host(local), XFRM_POLICY_IN, half));
    }
    out
}

/// Blocks GRE between `local` and `remote` both ways, below every other policy for it.
///
/// # Errors
/// The kernel refuses.
pub fn block(local: IpAddr, remote: IpAddr) -> Result<()> {
    block_selectors(local, remote).into_iter().try_for_each(|(src, dst, dir, half)| add_block(src, dst, dir, half))
}

/// Removes what [`block`] installed.
///
/// # Errors
/// The kernel refuses.
pub fn unblock(local: IpAddr, remote: IpAddr) -> Result<()> {
    block_selectors(local, remote).into_iter().try_for_each(|(src, dst, dir, half)| delete_block(src, dst, dir, half))
}

/// Installs (or replaces) a block policy for GRE from `src` to `dst` in direction `dir`.
///
/// # Errors
/// The kernel refuses it (no xfrm: protection needs it).
fn add_block(src: ipnet::IpNet, dst: ipnet::IpNet, dir: u8, half: u16) -> Result<()> {
    let mut info = [0u8; POLICY_INFO_LEN];
    selector(&mut info[..56], src, dst, half);
    // Lifetimes: no limits (XFRM_INF), as ip-xfrm sets them.
    for i in 0..4 {
        info[56 + 8 * i..64 + 8 * i].copy_from_slice(&u64::MAX.to_ne_bytes());
    }
    info[152..156].copy_from_slice(&BLOCK_PRIORITY.to_ne_bytes());
    info[160] = dir;
    info[161] = XFRM_POLICY_BLOCK;
    #[expect(clippy::cast_possible_truncation, reason = "netlink flags fit in 16 bits")]
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    request(XFRM_MSG_NEWPOLICY, flags, &info).with_context(|| format!("installing the block policy `src {src} dst {dst} proto gre dir {}`", dir_name(dir)))
}

/// Removes the block policy [`add_block`] installed; one already gone is no error.
///
/// # Errors
/// The kernel refuses otherwise.
fn delete_block(src: ipnet::IpNet, dst: ipnet::IpNet, dir: u8, half: u16) -> Result<()> {
    // struct xfrm_userpolicy_id: selector, index, dir (64 bytes with padding).
    let mut id = [0u8; 64];
    selector(&mut id[..56], src, dst, half);
    id[60] = dir;
    #[expect(clippy::cast_possible_truncation, reason = "netlink flags fit in 16 bits")]
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    match request(XFRM_MSG_DELPOLICY, flags, &id) {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)) => Ok(()),
        r => r.with_context(|| format!("removing the block policy `src {src} dst {dst} proto gre dir {}`", dir_name(dir))),
    }
}

const fn dir_name(dir: u8) -> &'static str {
    if dir == XFRM_POLICY_IN { "in" } else { "out" }
}

/// `struct xfrm_selector` for GRE from `src` to `dst` whose key's low word has the top bit `half`.
fn selector(b: &mut [u8], src: ipnet::IpNet, dst: ipnet::IpNet, half: u16) {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            let mut o = [0u8; 16];
            o[..4].copy_from_slice(&v.octets());
            o
        }
        IpAddr::V6(v) => v.octets(),
    };
    b[0..16].copy_from_slice(&bytes(dst.addr()));
    b[16..32].copy_from_slice(&bytes(src.addr()));
    b[32..34].copy_from_slice(&half.to_be_bytes());
    b[34..36].copy_from_slice(&0x8000u16.to_be_bytes());
    #[expect(clippy::cast_possible_truncation, reason = "address families fit in 16 bits")]
    let family = if src.addr().is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u16;
    b[40..42].copy_from_slice(&family.to_ne_bytes());
    b[42] = dst.prefix_len();
    b[43] = src.prefix_len();
    b[44] = IPPROTO_GRE;
}

/// Sends one request and waits for its acknowledgement.
fn request(kind: u16, flags: u16, body: &[u8]) -> Result<()> {
    let socket = sys::Socket::new(sys::protocols::NETLINK_XFRM).context("opening a NETLINK_XFRM socket (the kernel needs xfrm for protected tunnels)")?;
    let len = u32::try_from(16 + body.len())?;
    let mut req = Vec::with_capacity(16 + body.len());
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&kind.to_ne_bytes());
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(body);
    socket.send(&req, 0)?;
    let (buf, _) = socket.recv_from_full()?;
    if buf.len() >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
        let code = i32::from_ne_bytes(buf[16..20].try_into()?);
        if code != 0 {
            return Err(std::io::Error::from_raw_os_error(-code).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str, dst: &str, proto: u8, dir: &'static str) -> Policy {
        Policy { src: src.parse().unwrap(), dst: dst.parse().unwrap(), proto, dir, action: "protect", priority: 0 }
    }

    #[test]
    fn block_policies_cover_all_gre_in_two_halves() {
        let (l, r): (IpAddr, IpAddr) = ("198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
        let s = block_selectors(l, r);
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|(src, dst, _, _)| [src, dst].iter().all(|n| n.prefix_len() == 32)));
        for dir in [XFRM_POLICY_OUT, XFRM_POLICY_IN] {
            let mut halves: Vec<u16> = s.iter().filter(|x| x.2 == dir).map(|x| x.3).collect();
            halves.sort_unstable();
            assert_eq!(halves, [0, 0x8000]);
        }
        let mut b = [0u8; 56];
        selector(&mut b, s[0].0, s[0].1, 0x8000);
        assert_eq!((&b[32..36], b[44], b[42], b[43]), (&[0x80, 0, 0x80, 0][..], 47, 32, 32));
        // Multipoint: any remote of the local address's family.
        let any = block_selectors(l, "::".parse().unwrap());
        assert_eq!(any[0].1, "0.0.0.0/0".parse::<ipnet::IpNet>().unwrap());
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
