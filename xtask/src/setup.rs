//! `cargo xtask setup`: each step checks first and installs only what is missing, saying so.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

/// The LLVM major that bpf-linker is built against; rustc nightly must use the same.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Debian packages: LLVM for bpf-linker's build, a C++ compiler for libFuzzer (cargo-fuzz), and
/// the tools the tests, the demo and the benchmarks run (setpriv is util-linux's).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "g++",
    "iproute2",
    "procps",
    "util-linux",
    "ethtool",
    "iputils-ping",
    "tcpdump",
    "tshark",
    "python3-scapy",
    "iperf3",
];

pub fn run() -> Result<()> {
    let start = Instant::now();
    nightly_rust_src()?;
    debian_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    eprintln!("setup: everything is in place ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]));
    match installed {
        None => {
            eprintln!("setup: installing the nightly toolchain with rust-src");
            status(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]))?;
        }
        Some(list) if !list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("setup: adding rust-src to the nightly toolchain");
            status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        }
        Some(_) => eprintln!("setup: nightly with rust-src: present"),
    }
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context("running rustc +nightly -vV")?;
    let llvm = vv.lines().find_map(|l| l.strip_prefix("LLVM version: ")).unwrap_or("?");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!("rustc nightly uses LLVM {llvm}, but bpf-linker is built against LLVM {LLVM_MAJOR}: their majors must match");
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", p])).as_deref() != Some("installed"))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages: present");
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-q"]))?;
    status(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))
}

const CARGO_FUZZ_VERSION: &str = "0.13";

/// cargo-fuzz, for the fuzz targets of the NHRP codec.
fn cargo_fuzz() -> Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some_and(|v| v.contains(&format!(" {CARGO_FUZZ_VERSION}."))) {
        eprintln!("setup: cargo-fuzz {CARGO_FUZZ_VERSION}: present");
        return Ok(());
    }
    eprintln!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", &format!("^{CARGO_FUZZ_VERSION}")]))
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.as_deref().is_some_and(|v| v.contains(&format!(" {BPF_LINKER_VERSION}."))) {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)");
    status(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", &format!("^{BPF_LINKER_VERSION}")])
            .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}")),
    )
}
