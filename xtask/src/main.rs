//! Developer tasks: `cargo xtask setup|build|build-and-load|demo|test|fuzz|man|bench`.

mod setup;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing (toolchain parts, bpf-linker, test tools), and nothing else.
    Setup,
    /// Build the eBPF object and the `gre` binary.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then load and attach the datapath with `gre up`.
    BuildAndLoad {
        /// Underlay interface for every tunnel of the config.
        #[arg(long, value_name = "IF")]
        iface: String,
        /// Configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, default_value = "default")]
        instance: String,
        /// Network namespace to load into.
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run two sites joined by a GRE tunnel in network namespaces.
    Demo,
    /// Set up, build, and run every test, then each fuzz target for a short while.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Regenerate the man pages and shell completions in docs/ from the `gre` command line.
    Man,
    /// Measure the datapath against baselines of the same run: program cost, pipeline
    /// throughput with live frames, scale with peers and routes, TCP goodput (prints tables,
    /// writes target/bench.json).
    Bench {
        /// One part only: cost, pipeline, scale, nhrp, goodput or ipsec.
        #[arg(long)]
        only: Option<String>,
    },
    /// Fuzz the NHRP decoder (cargo-fuzz, libFuzzer) from the seed corpus.
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// Seconds each fuzz target runs as part of `cargo xtask test`: a smoke run that proves the
/// target builds and holds on its seeds and what it finds in that time.
const TEST_FUZZ_SECONDS: u64 = 20;

fn main() -> Result<()> {
    // Ctrl-C reaches the child tasks too; xtask waits for them to clean up and report.
    ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build(release).map(|_| ()),
        Task::BuildAndLoad { iface, config, instance, netns, release } => {
            let gre = build(release)?;
            let mut cmd = Command::new(gre);
            if let Some(ns) = netns {
                cmd.args(["-n", &ns]);
            }
            cmd.args(["-I", &instance, "up", "-c"]).arg(&config).args(["--iface", &iface]);
            run(&mut cmd)
        }
        Task::Demo => {
            setup::run()?;
            let gre = build(false)?;
            run(cargo().args(["run", "--quiet", "-p", "gre-tests", "--bin", "gre-demo"]).env("GRE_BIN", gre))
        }
        Task::Test { args } => {
            setup::run()?;
            let gre = build(false)?;
            test(cargo().args(["test", "--no-fail-fast"]).arg("--").args(&args).env("GRE_BIN", gre))?;
            fuzz(TEST_FUZZ_SECONDS)?;
            // A smoke run: the benchmarks run, on the success paths (they check it), with fewer
            // frames; no number fails anything.
            bench(&["--quick"])
        }
        Task::Bench { only } => {
            setup::run()?;
            build(false)?;
            let only: Vec<&str> = only.as_deref().map(|o| vec!["--only", o]).unwrap_or_default();
            bench(&only)
        }
        Task::Man => {
            let gre = build(false)?;
            run(Command::new(gre).args(["gen-docs", "--out"]).arg(root().join("docs")))?;
            eprintln!("wrote docs/man and docs/completions");
            Ok(())
        }
        Task::Fuzz { seconds } => {
            setup::run()?;
            fuzz(seconds)
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Builds gre-user (its build script builds the eBPF object) and returns the `gre` binary.
fn build(release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "gre-user", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let gre = root().join("target").join(if release { "release" } else { "debug" }).join("gre");
    let gre = gre.canonicalize().with_context(|| format!("{} was not built", gre.display()))?;
    eprintln!("built {}", gre.display());
    Ok(gre)
}

/// Runs `cargo test`, echoing its output, and closes with the totals of every test binary.
fn test(cmd: &mut Command) -> Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed: {status}");
    }
    Ok(())
}

/// Runs the benchmarks (root: they load programs into a namespace of their own).
fn bench(args: &[&str]) -> Result<()> {
    run(cargo().args(["run", "--quiet", "-p", "gre-tests", "--bin", "gre-bench", "--"]).args(args))
}

/// Runs the fuzz target on nightly. New inputs libFuzzer finds go to a scratch corpus, so the
/// seeds in the repository change only by hand; a crash leaves its input in fuzz/artifacts.
fn fuzz(seconds: u64) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("gre-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("creating the scratch corpus")?;
    let result = run(Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "fuzz", "run", "nhrp_decode"])
        .arg(&scratch)
        .arg(root().join("fuzz/corpus/nhrp_decode"))
        .args(["--", &format!("-max_total_time={seconds}")]));
    let _ = std::fs::remove_dir_all(&scratch);
    result.context("fuzzing nhrp_decode")?;
    eprintln!("fuzz: nhrp_decode held for {seconds} s");
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{} failed: {status}", cmd.get_program().display());
    }
    Ok(())
}
