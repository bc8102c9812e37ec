//! `gre up` over a running instance: the file's routes and static peers are made the running
//! ones (what is new is added, what is gone removed, through the runtime changes) and the
//! programs are reloaded from this binary. Tunnels and interfaces cannot change in place: a file
//! that changes them is refused before anything is touched.

use anyhow::{Result, bail};
use log::info;

use crate::{
    change,
    config::{self, Config},
    reload, showconf,
};

/// What `gre up` changed on a running instance.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converged {
    pub routes_added: usize,
    pub routes_removed: usize,
    pub peers_added: usize,
    pub peers_removed: usize,
    pub links_reloaded: usize,
}

/// Makes the running instance what `cfg` says.
///
/// # Errors
/// The tunnels or interfaces differ (nothing changes then), or a change fails.
pub async fn converge(cfg: &Config, instance: &str) -> Result<Converged> {
    crate::xfrm::refuse_bypassed(&cfg.tunnels)?;
    let text = showconf::showconf(instance).await?;
    let running = config::parse(std::path::Path::new("running configuration"), &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let names = |c: &Config| c.interfaces.iter().map(|i| (i.name.get_ref().clone(), i.role == config::Role::Lan)).collect::<Vec<_>>();
    let (mut want, mut have) = (names(cfg), names(&running));
    want.sort();
    have.sort();
    if want != have {
        let list: Vec<&str> = have.iter().map(|(n, _)| n.as_str()).collect();
        bail!("the interfaces differ from the running ones ({}): take the instance down and up to change them", list.join(", "));
    }
    if cfg.limits != running.limits {
        let (r, c) = (running.limits, cfg.limits);
        bail!(
            "limits differ from the running ones (peers {} → {}, routes {} → {}): take the instance down and up to change them",
            r.peers,
            c.peers,
            r.routes,
            c.routes
        );
    }
    if cfg.tunnels != running.tunnels {
        // Name each tunnel that differs and, when it runs, the settings that differ.
        let mut what = Vec::new();
        for t in &cfg.tunnels {
            match running.tunnels.iter().find(|r| r.name == t.name) {
                None => what.push(format!("{} is new", t.name)),
                Some(r) if r != t => {
                    let (a, b) = (format!("{r:?}"), format!("{t:?}"));
                    let fields: Vec<String> = b.split(", ").filter(|f| !a.split(", ").any(|g| g == *f)).map(String::from).collect();
                    what.push(format!("{}: {}", t.name, fields.join(", ")));
                }
                Some(_) => {}
            }
        }
        what.extend(running.tunnels.iter().filter(|r| !cfg.tunnels.iter().any(|t| t.name == r.name)).map(|r| format!("{} is gone", r.name)));
        bail!("tunnel settings differ from the running ones ({}): take the instance down and up to change tunnels", what.join("; "));
    }
    let mut done = Converged::default();
    let tunnel_name = |c: &Config, i: usize| c.tunnels[i].name.clone();
    for r in running.routes.iter().filter(|r| !cfg.routes.contains(r)) {
        change::route_del(instance, r.prefix).await?;
        done.routes_removed += 1;
    }
    for r in cfg.routes.iter().filter(|r| !running.routes.contains(r)) {
        change::route_add(instance, r.prefix, &tunnel_name(cfg, r.tunnel), r.via).await?;
        done.routes_added += 1;
    }
    for p in running.peers.iter().filter(|p| !cfg.peers.contains(p)) {
        change::peer_del(instance, &tunnel_name(&running, p.tunnel), p.overlay)?;
        done.peers_removed += 1;
    }
    for p in cfg.peers.iter().filter(|p| !running.peers.contains(p)) {
        change::peer_add(instance, &tunnel_name(cfg, p.tunnel), p.overlay, p.nbma, p.multicast).await?;
        done.peers_added += 1;
    }
    done.links_reloaded = reload::reload(instance)?;
    info!("instance {instance}: {done:?}");
    Ok(done)
}
