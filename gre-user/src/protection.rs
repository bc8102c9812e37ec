//! The host side of a protected tunnel, set up by `gre up` before any GRE flows: the datapath
//! end of its netdev forwards (only that end: what the datapath encapsulates enters the kernel
//! there and ip_forward's output lookup applies xfrm), and block policies below charon's make
//! the kernel drop the tunnel's GRE whenever no SA protects it.

use std::{fs, net::IpAddr};

use anyhow::{Context as _, Result, bail};

use crate::{config, xfrm};

/// Prepares the kernel for tunnel `t`, whose netdev's datapath end is `inject`.
///
/// # Errors
/// A sysctl cannot be written, strict reverse-path filtering is on for every interface (it
/// would drop the tunnel's own GRE at the datapath end), or xfrm refuses the policies.
pub fn prepare(t: &config::Tunnel, inject: &str) -> Result<()> {
    let all = "/proc/sys/net/ipv4/conf/all/rp_filter";
    if fs::read_to_string(all).is_ok_and(|v| v.trim() == "1") {
        bail!(
            "tunnel {}: {all} is 1 (strict), which refuses the tunnel's own GRE where it enters the kernel's forwarding; \
             set it to 0 or 2 (loose) and the underlay's own rp_filter as you need",
            t.name
        );
    }
    // The datapath end receives GRE whose source is our own address: accept_local takes it,
    // forwarding sends it on, and no reverse-path check applies to it.
    for (key, value) in [("rp_filter", "0"), ("accept_local", "1"), ("forwarding", "1")] {
        let path = format!("/proc/sys/net/ipv4/conf/{inject}/{key}");
        fs::write(&path, value).with_context(|| format!("tunnel {}: writing {path}", t.name))?;
    }
    xfrm::block(t.local, t.remote).with_context(|| format!("tunnel {}: failing closed", t.name))
}

/// Removes what [`prepare`] left beyond the netdev (the sysctls go with it): the block policies.
///
/// # Errors
/// xfrm refuses.
pub fn release(local: IpAddr, remote: IpAddr) -> Result<()> {
    xfrm::unblock(local, remote)
}
