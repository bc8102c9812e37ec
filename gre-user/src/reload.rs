//! `gre reload`: the programs of a running instance replaced by this binary's, keeping every map
//! and without a packet lost. The new object is loaded against the pinned maps, and each pinned
//! link is moved to its new program with `bpf_link_update`, which swaps the program atomically
//! for the packets on that hook; the multicast tail call is swapped in its slot the same way.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::MapInfo,
    programs::{SchedClassifier, Xdp, links::PinnedLink, tc::SchedClassifierLink, xdp::XdpLink},
};
use gre_common::maps::programs;
use log::info;

use crate::{
    EBPF_OBJECT,
    instance::{self, load, program},
    maps::Maps,
};

/// Which program a pinned link (`tag@interface`) runs.
fn program_of(tag: &str) -> Option<&'static str> {
    match tag {
        "decap" => Some(programs::DECAP),
        "lan" => Some(programs::LAN),
        "napi" => Some(programs::NAPI_PASS),
        "encap" | "segments" => Some(programs::ENCAP),
        _ => None,
    }
}

fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> =
        fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    Ok(names)
}

/// The maps of the new object must have the shape of the pinned ones (type, key and value
/// sizes, capacity): the new programs will use those. Loaded once on its own to find out.
fn check_shapes(instance_dir: &Path, pinned: &[String], limits: crate::config::Limits) -> Result<()> {
    let mut fresh = instance::object_loader(&limits).load(EBPF_OBJECT).context("loading the eBPF object")?;
    let scratch = instance_dir.join("reload-check");
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = (|| -> Result<()> {
        for name in pinned {
            let map = fresh.map_mut(name).ok_or_else(|| anyhow!("this binary's datapath has no map {name}: reload is not possible, use down and up"))?;
            let path = scratch.join(name);
            map.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            let (new, old) = (MapInfo::from_pin(&path)?, MapInfo::from_pin(instance_dir.join("maps").join(name))?);
            let shape = |m: &MapInfo| (m.map_type().ok(), m.key_size(), m.value_size(), m.max_entries());
            if shape(&new) != shape(&old) {
                bail!("map {name} has changed shape ({:?} → {:?}): reload is not possible, use down and up", shape(&old), shape(&new));
            }
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Replaces the programs of `instance`; returns how many links were moved.
///
/// # Errors
/// The instance is not up, its maps have another shape than this binary's, or a program does
/// not load (nothing has changed then) or a link cannot be moved.
pub fn reload(instance: &str) -> Result<usize> {
    let dir = instance::running_dir(instance)?;
    let maps_dir = dir.join("maps");
    let pinned = names_in(&maps_dir)?;
    // The capacities the instance came up with (`[limits]`).
    let limits = instance::pinned_limits(&maps_dir)?;
    check_shapes(&dir, &pinned, limits)?;

    let paths: Vec<_> = pinned.iter().map(|n| (n.as_str(), maps_dir.join(n))).collect();
    let mut loader = instance::object_loader(&limits);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).context("loading the eBPF object against the pinned maps")?;
    // Maps this binary adds to an instance an older one brought up: pinned now, fresh.
    for name in gre_common::maps::names::PINNED.iter().filter(|n| !pinned.iter().any(|p| p == *n)) {
        let map = ebpf.map(name).ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
        map.pin(maps_dir.join(name)).with_context(|| format!("pinning the new map {name}"))?;
        info!("instance {instance}: new map {name}");
    }
    // Every program is loaded (verified) before anything is switched.
    for name in [programs::DECAP, programs::LAN, programs::NAPI_PASS] {
        let p: &mut Xdp = program(&mut ebpf, name)?;
        load(|| p.load()).with_context(|| format!("loading {name}"))?;
    }
    let encap: &mut SchedClassifier = program(&mut ebpf, programs::ENCAP)?;
    load(|| encap.load()).context("loading the encapsulation program")?;

    // The tail call first: the new encapsulation program may call it as soon as it runs.
    let mut maps = Maps::open_pinned(&maps_dir)?;
    maps.install_tail_calls(&mut ebpf)?;
    let links_dir = dir.join("links");
    let mut moved = 0;
    for file in names_in(&links_dir)? {
        let Some(name) = file.split_once('@').and_then(|(tag, _)| program_of(tag)) else { continue };
        let path = links_dir.join(&file);
        let link = aya::programs::links::FdLink::from(PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?);
        if name == programs::ENCAP {
            let p: &mut SchedClassifier = program(&mut ebpf, name)?;
            let id = p.attach_to_link(SchedClassifierLink::try_from(link)?).with_context(|| format!("moving {file}"))?;
            // Taken out and closed: the pin keeps the link, so the program's drop cannot detach it.
            drop(p.take_link(id)?);
        } else {
            let p: &mut Xdp = program(&mut ebpf, name)?;
            let id = p.attach_to_link(XdpLink::try_from(link)?).with_context(|| format!("moving {file}"))?;
            drop(p.take_link(id)?);
        }
        moved += 1;
    }
    // The pins of the programs now point at the new ones; the old go when nothing holds them.
    let progs_dir = dir.join("progs");
    for name in [programs::DECAP, programs::LAN, programs::NAPI_PASS, programs::ENCAP, programs::REPLICATE] {
        let path = progs_dir.join(name);
        let _ = fs::remove_file(&path);
        let p = ebpf.program_mut(name).ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        p.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
    }
    info!("instance {instance}: {moved} links moved to the new programs; maps kept");
    Ok(moved)
}
