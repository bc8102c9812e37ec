//! `cargo xtask setup`: each step checks first and installs only what is missing, saying so.

use std::{process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

/// The LLVM major that bpf-linker is built against; rustc nightly must use the same.
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";
/// Debian packages: LLVM for bpf-linker's build, a C++ compiler for libFuzzer (cargo-fuzz), the
/// tools the tests, the demo and the benchmarks run (setpriv is util-linux's), and the peers and
/// daemons the VM tier runs (the guests see the host's file system, so they are installed here).
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
    // The VM tier: QEMU, the guests' initramfs (busybox) and module loading (kmod, also on the
    // host: the guest runs the host's modprobe against its own kernel's modules).
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "python3",
    // Independent peers: Open vSwitch's userspace GRE (on the host, in a test's namespace) and
    // FRR's nhrpd (in a guest), with the iptables NFLOG rule FRR's phase 3 hub needs, and nft
    // for the NAT namespaces of the NHRP tests.
    "openvswitch-switch",
    "frr",
    "iptables",
    "nftables",
    // IPsec: strongSwan's charon with its vici socket and swanctl, run in the guests (the
    // host's kernel has no ESP); the standard plugins bring GCM and the elliptic curves.
    "strongswan-charon",
    "strongswan-swanctl",
    "libstrongswan-standard-plugins",
    // The unit's checks (systemd-analyze) and the time steps of the NHRP clock test.
    "systemd",
    "faketime",
];

pub fn run() -> Result<()> {
    let start = Instant::now();
    nightly_rust_src()?;
    debian_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    vm_kernels()?;
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
    // The daemons among them (ovs-vswitchd, FRR) are started by the tests in namespaces of their
    // own; none may start system-wide when installed, so a policy refuses every service start
    // for the install unless the machine already has a policy of its own.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed =
        status(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"));
    if ours {
        std::fs::remove_file(policy)?;
    }
    installed
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

/// Debian kernels for the VM tier, by suite: bookworm's 6.1 is the peers' kernel (ip_gre, ip6_gre,
/// gretap); backports' 6.12 runs our datapath (TCX, ESP).
const KERNELS: &[&str] = &["bookworm", "bookworm-backports"];

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Fetches each kernel package with `apt-get download` (never installed on this host), unpacks
/// `vmlinuz` and the modules into target/vm/kernels/NAME and indexes the modules (depmod) so the
/// guest's modprobe finds them. Each suite is read through a private sources list, so neither the
/// system's apt configuration nor the freshness of its package lists matters.
fn vm_kernels() -> Result<()> {
    for name in KERNELS {
        let dir = root().join("target/vm/kernels").join(name);
        if dir.join("version").exists() && dir.join("vmlinuz").exists() {
            eprintln!("setup: {name} kernel: present");
            continue;
        }
        let apt = AptSources::new(name)?;
        let meta = format!("linux-image-amd64/{name}");
        let depends = output(apt.cmd("apt-cache").args(["depends", &meta])).with_context(|| format!("apt-cache depends {meta}"))?;
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
            .with_context(|| format!("{meta} names no kernel package:\n{depends}"))?
            .to_string();
        eprintln!("setup: fetching {package} for the {name} guests");
        let work = root().join("target/vm/download").join(name);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        status(apt.cmd("apt-get").args(["download", "-q", &package]).current_dir(&work))?;
        let deb = std::fs::read_dir(&work)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let unpacked = work.join("root");
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let version = package.strip_prefix("linux-image-").unwrap_or(&package).trim_end_matches("-unsigned").to_string();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib/modules"))?;
        std::fs::rename(unpacked.join("boot").join(format!("vmlinuz-{version}")), dir.join("vmlinuz")).context("the package has no vmlinuz")?;
        std::fs::rename(unpacked.join("lib/modules").join(&version), dir.join("lib/modules").join(&version)).context("the package has no modules")?;
        status(Command::new("depmod").arg("-b").arg(&dir).arg(&version))?;
        std::fs::write(dir.join("version"), format!("{version}\n"))?;
        let _ = std::fs::remove_dir_all(&work);
        eprintln!("setup: {name} kernel {version}: in {}", dir.display());
    }
    Ok(())
}

/// apt commands on one suite of the Debian mirror through files of our own (sources list, package
/// lists, cache).
struct AptSources {
    options: Vec<String>,
}

impl AptSources {
    fn new(suite: &str) -> Result<Self> {
        let dir = root().join("target/vm/apt").join(suite);
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let list = dir.join("sources.list");
        std::fs::write(&list, format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"))?;
        let options = vec![
            format!("Dir::Etc::sourcelist={}", list.display()),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
        ];
        let apt = Self { options };
        status(apt.cmd("apt-get").args(["update", "-q"]))?;
        Ok(apt)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        cmd
    }
}
