//! `gre tunnel add` and `gre tunnel del`: whole tunnels added to and removed from a running
//! instance, with the same building blocks as `gre up`.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink};
use gre_common::maps::programs;
use log::info;
use rtnetlink::Handle;

use crate::{
    change, config,
    instance::running_dir,
    loader::{Undo, create_tunnel, pin_link},
    maps::Maps,
    netdev, showconf,
};

/// `gre tunnel add`: the tunnels of `file` (and its routes and peers) added to a running
/// instance, on interfaces it already has. Checked against the running configuration first;
/// a tunnel that fails half-way is taken back whole.
///
/// # Errors
/// The file is invalid alone or together with what runs, names an interface the instance does
/// not have, or a step fails.
pub async fn add_tunnels(instance: &str, path: &Path) -> Result<Vec<String>> {
    let dir = running_dir(instance)?;
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = config::parse(path, &text)?;
    let running_text = showconf::showconf(instance).await?;
    let running = config::parse(Path::new("running configuration"), &running_text).map_err(|e| anyhow!("{e}"))?;
    for i in &new.interfaces {
        if !running.interfaces.iter().any(|r| r.name.get_ref() == i.name.get_ref() && r.role == i.role) {
            bail!("interface {} is not one of the instance's: interfaces change by `gre down` and `gre up`", i.name.get_ref());
        }
    }
    // Together with what runs, the file must still be a valid configuration (names, matches,
    // network ids…).
    let mut merged: toml::Table = running_text.parse().context("reading the running configuration")?;
    let file: toml::Table = text.parse().context("reading the file")?;
    for key in ["tunnel", "route", "peer"] {
        if let Some(toml::Value::Array(items)) = file.get(key) {
            match merged.entry(key.to_string()).or_insert_with(|| toml::Value::Array(Vec::new())) {
                toml::Value::Array(list) => list.extend(items.iter().cloned()),
                _ => bail!("the running configuration's {key} is not a list"),
            }
        }
    }
    let all = config::parse(Path::new("the running configuration with the file"), &toml::to_string(&merged)?).map_err(|e| anyhow!("{}", e.message))?;

    let handle = netdev::connect()?;
    let mut maps = Maps::open_pinned(&dir.join("maps"))?;
    let mut added = Vec::new();
    for t in all.tunnels.iter().filter(|t| !running.tunnels.iter().any(|r| r.name == t.name)) {
        let mut undo = Undo { handle: handle.clone(), links: Vec::new(), neighbours: Vec::new(), protected: Vec::new(), dir: None };
        let id = maps.free_tunnel_id()?;
        let result = attach_tunnel(&handle, &mut undo, &mut maps, &dir, id, t).await;
        if let Err(e) = result {
            let _ = maps.uninstall_tunnel(id);
            for tag in ["napi", "encap", "segments"] {
                let _ = fs::remove_file(dir.join("links").join(format!("{tag}@{}", t.name)));
            }
            undo.run().await;
            return Err(e.context(format!("adding tunnel {}", t.name)));
        }
        added.push(t.name.clone());
    }
    for r in &new.routes {
        change::route_add(instance, r.prefix, &new.tunnels[r.tunnel].name, r.via).await?;
    }
    for p in &new.peers {
        change::peer_add(instance, &new.tunnels[p.tunnel].name, p.overlay, p.nbma, p.multicast).await?;
    }
    Ok(added)
}

/// Creates tunnel `t` as `id` and attaches the pinned programs to its netdev.
async fn attach_tunnel(handle: &Handle, undo: &mut Undo, maps: &mut Maps, dir: &Path, id: u32, t: &config::Tunnel) -> Result<()> {
    let (kernel, inject) = create_tunnel(handle, undo, maps, id, t).await?;
    let (progs, links) = (dir.join("progs"), dir.join("links"));
    let mut napi = Xdp::from_pin(progs.join(programs::NAPI_PASS), aya_obj::programs::XdpAttachType::Interface).context("opening the NAPI program")?;
    let link = napi.attach_to_if_index(kernel, XdpMode::Driver).with_context(|| format!("attaching XDP to {}", t.name))?;
    pin_link(FdLink::try_from(napi.take_link(link)?)?, &links.join(format!("napi@{}", t.name)))?;
    let mut encap = SchedClassifier::from_pin(progs.join(programs::ENCAP)).context("opening the encapsulation program")?;
    let link = encap.attach(&t.name, TcAttachType::Egress).with_context(|| format!("attaching TC egress to {}", t.name))?;
    pin_link(FdLink::try_from(encap.take_link(link)?)?, &links.join(format!("encap@{}", t.name)))?;
    if t.ocsum || t.oseq {
        // Segments of GSO packets come back here, each to get its own checksum or number.
        let link = encap.attach(&t.inject_name(), TcAttachType::Ingress).with_context(|| format!("attaching TC ingress to {}", t.inject_name()))?;
        pin_link(FdLink::try_from(encap.take_link(link)?)?, &links.join(format!("segments@{}", t.name)))?;
    }
    netdev::up(handle, inject).await?;
    netdev::up(handle, kernel).await?;
    Ok(())
}

/// `gre tunnel del`: removes tunnel `name` from a running instance — its routes and peers, its
/// map entries, its links and its netdev; the other tunnels go on undisturbed.
///
/// # Errors
/// There is no such tunnel, or a step fails.
pub async fn del_tunnel(instance: &str, name: &str) -> Result<()> {
    let dir = running_dir(instance)?;
    let mut maps = Maps::open_pinned(&dir.join("maps"))?;
    let (id, t) = maps.tunnels()?.into_iter().find(|(_, t)| netdev::ifname(t.netdev_ifindex) == name).with_context(|| format!("no tunnel named {name:?}"))?;
    for (prefix, tid, _) in maps.routes() {
        if tid == id {
            maps.remove_route(prefix);
        }
    }
    for (tid, overlay, _) in maps.peers() {
        if tid == id {
            maps.remove_peer(id, overlay);
        }
    }
    maps.uninstall_tunnel(id)?;
    for tag in ["napi", "encap"] {
        let pin = dir.join("links").join(format!("{tag}@{name}"));
        if pin.exists() {
            fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
        }
    }
    // The veth pair goes, and the kernel's routes through it with it.
    netdev::delete(&netdev::connect()?, t.netdev_ifindex).await?;
    if t.flags & gre_common::maps::tunnel_flags::PROTECTED != 0 {
        crate::protection::release(crate::maps::show_addr(&t.local), crate::maps::show_addr(&t.remote))?;
    }
    info!("tunnel {name} removed");
    Ok(())
}
