use anyhow::{Context as _, anyhow};

/// Builds the eBPF object (gre-ebpf's `gre` binary for bpfel-unknown-none) with the nightly
/// toolchain and bpf-linker, so `include_bytes_aligned!` can embed it.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages.into_iter().find(|p| p.name.as_str() == "gre-ebpf").ok_or_else(|| anyhow!("gre-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf([aya_build::Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }], aya_build::Toolchain::default())
}
