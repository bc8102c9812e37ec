//! `cargo xtask bench`: the datapath's cost and throughput, each against a baseline measured in
//! the same run. Prints tables and writes every figure with the machine's description to
//! `target/bench.json`. `--only cost|pipeline` runs one part; `--quick` is the smoke run of `cargo xtask test`: the same paths and
//! checks with fewer frames; no figure fails anything.

mod cost;
mod pipeline;

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the benchmarks load eBPF programs into namespaces of their own: run them as root (cargo xtask bench)");
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    // One CPU for the whole run: no migration between trials, and the pipelines' softirqs run
    // where their frames are made.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;

    let effort = if quick { pipeline::Effort { frames: 20_000, trials: 3 } } else { pipeline::Effort { frames: 500_000, trials: 5 } };
    let mut report = serde_json::Map::new();
    if wanted("cost") {
        println!("== program cost (BPF_PROG_TEST_RUN)");
        report.insert("program_cost".into(), cost::run());
    }
    if wanted("pipeline") {
        println!("\n== pipeline throughput (live frames across veth pairs)");
        let mut bench = pipeline::Bench::new()?;
        report.insert("pipeline".into(), pipeline::run(&mut bench, &effort)?);
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()));
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    report.insert(
        "machine".into(),
        serde_json::json!({ "cpu": cpu, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "kernel": kernel }),
    );
    report.insert("quick".into(), quick.into());
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nreport: {}", path.canonicalize().unwrap_or(path).display());
    Ok(())
}
