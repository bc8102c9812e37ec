//! `cargo xtask bench`: the datapath's cost and throughput, each against a baseline measured in
//! the same run. Prints tables and writes every figure with the machine's description to
//! `target/bench.json`. `--only cost|pipeline|scale|nhrp|goodput|ipsec` runs one part; `--quick` is the smoke run of `cargo xtask test`: the same paths and
//! checks with fewer frames; no figure fails anything.

mod cost;
mod goodput;
mod ipsec;
mod nhrp;
mod pipeline;

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the benchmarks load eBPF programs into namespaces of their own: run them as root (cargo xtask bench)");
    }
    // Interrupted: take down what this run made (its namespaces and instances share a prefix)
    // before leaving, as the labs would have on their way out.
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        let me = std::process::id();
        let listed =
            std::process::Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for ns in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if ["gre-bench", "gre-goodput", "gre-bench-ipsec"].iter().any(|tag| ns.starts_with(&format!("{tag}-{me}-"))) {
                let _ = gre_tests::gre::run(ns, ns, &["down"]);
                let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        std::process::exit(130);
    })?;
    let quick = std::env::args().any(|a| a == "--quick");
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let ncpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // One CPU for the whole run: no migration between trials, and the pipelines' softirqs run
    // where their frames are made.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;

    let effort = if quick { pipeline::Effort { frames: 100_000, trials: 3 } } else { pipeline::Effort { frames: 250_000, trials: 11 } };
    let mut report = serde_json::Map::new();
    if wanted("cost") {
        println!("== program cost (BPF_PROG_TEST_RUN)");
        report.insert("program_cost".into(), cost::run());
    }
    if wanted("pipeline") || wanted("scale") {
        let mut bench = pipeline::Bench::new((1 << 20, 1 << 17))?;
        if wanted("pipeline") {
            println!("\n== pipeline throughput (live frames across veth pairs)");
            report.insert("pipeline".into(), pipeline::run(&mut bench, &effort)?);
        }
        if wanted("scale") {
            println!("\n== scale (live frames; random destinations)");
            let (peers, routes): (&[u32], &[u32]) = if quick { (&[1, 1000], &[1, 1000]) } else { (&[1, 1000, 100_000, 1_000_000], &[1, 1000, 100_000]) };
            report.insert("scale".into(), pipeline::run_scale(&mut bench, &effort, peers, routes)?);
        }
    }

    if wanted("nhrp") {
        println!("\n== NHRP: the hub's daemon idle with 10 000 spokes, and legitimate registrations under a flood");
        report.insert("nhrp".into(), nhrp::run(quick)?);
    }

    if wanted("goodput") {
        // Sender and receiver each get a CPU, as on a gateway.
        let mut all = nix::sched::CpuSet::new();
        for cpu in 0..ncpus {
            all.set(cpu)?;
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all)?;
        println!("\n== TCP goodput");
        report.insert("goodput".into(), goodput::run(if quick { 1 } else { 5 })?);
        println!("(the kernel's own GRE device is the other alternative; it cannot be measured where the kernel has no ip_gre module)");
    }
    if wanted("ipsec") {
        println!("\n== TCP goodput, protected against unprotected (in a guest: this kernel has no ESP)");
        report.insert("ipsec".into(), if quick { ipsec::run(2, 1)? } else { ipsec::run(10, 3)? });
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()));
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    report.insert("machine".into(), serde_json::json!({ "cpu": cpu, "cpus": ncpus, "kernel": kernel }));
    report.insert("quick".into(), quick.into());
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nreport: {}", path.canonicalize().unwrap_or(path).display());
    Ok(())
}
