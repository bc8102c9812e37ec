//! `gre`: bring GRE datapaths up and down and look inside them.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use gre_user::{change, config, daemon, loader, netns, nhrp, show, stats};

#[derive(Parser)]
#[command(
    name = "gre",
    version,
    about = "GRE tunnels in eBPF: XDP decapsulation, TC encapsulation",
    long_about = "GRE and multipoint GRE (DMVPN with NHRP) tunnels in eBPF: XDP decapsulates, TC \
                  encapsulates, and the datapath keeps forwarding with no process running. `gre up` \
                  brings an instance up from a TOML file, `gre daemon` runs what needs a process \
                  (NHRP, keepalives, fragments), `gre show` and `gre stats` read the live maps.",
    after_long_help = "Files: an instance's programs, links and maps are pinned under \
                       /sys/fs/bpf/gre/<instance>/.\n\nSee also: ip(8), ip-tunnel(8), tcpdump(8)."
)]
struct Cli {
    /// Run in this network namespace (as `ip -n`).
    #[arg(short = 'n', long, global = true, value_name = "NETNS")]
    netns: Option<String>,
    /// Which datapath instance: its pins live in /sys/fs/bpf/gre/<instance>.
    #[arg(short = 'I', long, global = true, default_value = "default")]
    instance: String,
    /// More log detail: -v debug, -vv trace (RUST_LOG, if set, decides instead).
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the tunnel netdevs, load and attach the datapath, fill its maps, and exit. Over a
    /// running instance: make its routes and static peers the file's and reload the programs
    /// (tunnels and interfaces must be unchanged).
    Up {
        /// Configuration file (TOML).
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// Use this underlay interface for every tunnel instead of those in the file.
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
    },
    /// Remove the instance: its tunnel netdevs, programs, links and maps.
    Down,
    /// Replace the programs of a running instance with this binary's, keeping its maps and
    /// links: atomic per hook, no packet lost.
    Reload,
    /// Show tunnels, counters and drops of a running instance.
    Show {
        /// Only this part.
        #[arg(value_enum)]
        part: Option<show::Part>,
        /// With `peer`: its overlay or NBMA address.
        #[arg(required_if_eq("part", "peer"))]
        address: Option<std::net::IpAddr>,
        /// JSON on one line.
        #[arg(short = 'j', long)]
        json: bool,
        /// Pretty-printed JSON.
        #[arg(short = 'p', long)]
        pretty: bool,
    },
    /// The running configuration, as TOML that `gre up -c` takes again.
    Showconf,
    /// Add or remove tunnels of a running instance.
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// Add or remove static peers of multipoint tunnels of a running instance.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Add or remove overlay routes of a running instance.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Live rates: packets and bits per second in and out of each tunnel, drops per second.
    Stats {
        /// Keep printing, every interval, until interrupted.
        #[arg(short = 'w', long)]
        watch: bool,
        /// Seconds each reading covers.
        #[arg(long, default_value_t = 1.0, value_name = "S")]
        interval: f64,
        /// With --watch: stop after this many readings.
        #[arg(short = 'c', long, value_name = "N")]
        count: Option<u64>,
        /// JSON, one line per reading.
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Follow the datapath's slow-path events (resolutions asked, redirects wanted) as they
    /// happen; the daemon's own log is its standard error.
    Log {
        /// Stop after this many lines.
        #[arg(short = 'c', long, value_name = "N")]
        count: Option<usize>,
        /// Set the daemon's log level instead (an env-filter directive: `debug`, `info`,
        /// `info,gre_user::nhrp=trace` …).
        #[arg(long, value_name = "LEVEL")]
        level: Option<String>,
    },
    /// Run what needs a process: NHRP, keepalives and tunnel state, GRE that arrived in
    /// fragments. Stays in the foreground until SIGINT or SIGTERM; the datapath does not depend
    /// on it and keeps forwarding after it stops.
    Daemon {
        /// Bring the instance up from this file first, unless it is up already (what a service
        /// unit runs).
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
        /// Serve Prometheus metrics here (`GET /metrics`), instead of the config's `[metrics]`.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
        /// On exit, withdraw this node's NHRP registrations (it leaves for good). Without it a
        /// stop is a restart: registrations, bindings and shortcuts stay for the next daemon.
        #[arg(long)]
        purge_on_exit: bool,
    },
    /// NHRP tools.
    #[command(subcommand)]
    Nhrp(NhrpCommand),
    /// Write the man pages and shell completions generated from this definition (packaging:
    /// `cargo xtask man` keeps the copies in docs/ up to date).
    #[command(hide = true)]
    GenDocs {
        /// Directory to write `man/` and `completions/` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check a configuration file and print what it would set up; changes nothing.
    Check {
        #[arg(short = 'c', long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Add the tunnels of FILE (with their routes and peers): [[tunnel]] entries as in `gre up`,
    /// on interfaces the instance has (declared in FILE as there).
    Add {
        #[arg(short = 'c', long)]
        config: PathBuf,
    },
    /// Remove a tunnel, with its routes and peers.
    Del { name: String },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// A static peer: overlay address OVERLAY is at NBMA address NBMA.
    Add {
        tunnel: String,
        overlay: std::net::IpAddr,
        nbma: std::net::IpAddr,
        /// Replicate multicast to it (`ip nhrp map multicast`).
        #[arg(long)]
        multicast: bool,
    },
    /// Remove a peer (static, or one NHRP learned).
    Del { tunnel: String, overlay: std::net::IpAddr },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Route PREFIX into TUNNEL (in the kernel and in the datapath).
    Add {
        prefix: ipnet::IpNet,
        tunnel: String,
        /// Multipoint: the overlay next hop (by default the destination itself).
        #[arg(long)]
        via: Option<std::net::IpAddr>,
    },
    /// Remove a route.
    Del { prefix: ipnet::IpNet },
}

#[derive(Subcommand)]
enum NhrpCommand {
    /// Decode the NHRP messages of a capture (pcap or pcapng), or live on an interface, one
    /// line each.
    #[command(group = clap::ArgGroup::new("source").required(true))]
    Dump {
        /// The capture file.
        #[arg(group = "source")]
        file: Option<PathBuf>,
        /// Capture live on this interface (both directions) until interrupted.
        #[arg(short = 'i', long = "interface", value_name = "IFACE", group = "source")]
        iface: Option<String>,
        /// Stop after this many NHRP messages.
        #[arg(short = 'c', long, value_name = "COUNT")]
        count: Option<usize>,
        /// JSON on one line per message, with every field.
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Forget dynamic NHRP state in the running daemon: `cache` (every dynamic peer,
    /// registration and shortcut), `shortcuts`, or one peer's overlay ADDRESS.
    Clear {
        #[arg(default_value = "cache")]
        what: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    gre_user::logs::init(cli.verbose);
    // Before the runtime starts any thread: setns changes the calling thread only.
    if let Some(ns) = &cli.netns {
        netns::enter(ns)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    use gre_user::preflight::{self, Needs};
    match &cli.command {
        Command::Up { .. } | Command::Down | Command::Reload | Command::Tunnel(_) | Command::Peer(_) | Command::Route(_) => {
            preflight::check(Needs::Change)?;
        }
        Command::Daemon { .. } => preflight::check(Needs::Daemon)?,
        // What the daemon answers on its control socket needs no capability of the caller's.
        Command::Show { part: Some(show::Part::Dmvpn | show::Part::Peer | show::Part::Ipsec), .. } | Command::Log { level: Some(_), .. } => {}
        Command::Show { .. } | Command::Showconf | Command::Stats { .. } | Command::Log { .. } => preflight::check(Needs::Read)?,
        Command::Nhrp(_) | Command::Check { .. } | Command::GenDocs { .. } => {}
    }
    match cli.command {
        Command::Up { config, iface } => {
            let mut cfg = config::load(&config)?;
            if let Some(iface) = iface {
                cfg.override_interface(&iface);
            }
            if gre_user::instance::instance_dir(&cli.instance)?.exists() {
                let c = gre_user::converge::converge(&cfg, &cli.instance).await?;
                println!(
                    "instance {} was up: routes +{} -{}, peers +{} -{}, {} links reloaded",
                    cli.instance, c.routes_added, c.routes_removed, c.peers_added, c.peers_removed, c.links_reloaded
                );
            } else {
                loader::up(&cfg, &cli.instance).await?;
                log::info!("instance {} is up", cli.instance);
            }
        }
        Command::Reload => {
            let moved = gre_user::reload::reload(&cli.instance)?;
            println!("instance {}: {moved} links run the new programs", cli.instance);
        }
        Command::Down => {
            loader::down(&cli.instance).await?;
            log::info!("instance {} is down", cli.instance);
        }
        Command::Show { part: Some(show::Part::Ipsec), json, pretty, .. } => {
            let v = gre_user::control::ask(&cli.instance, &gre_user::control::Request::Ipsec).await?;
            if pretty {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if json {
                println!("{v}");
            } else {
                print!("{}", show::ipsec_table(&v));
            }
        }
        Command::Show { part: Some(part @ (show::Part::Dmvpn | show::Part::Peer)), address, json, pretty } => {
            let request = match (part, address) {
                (show::Part::Peer, Some(address)) => gre_user::control::Request::Peer { address },
                _ => gre_user::control::Request::Dmvpn,
            };
            let v = gre_user::control::ask(&cli.instance, &request).await?;
            if pretty || (part == show::Part::Peer && !json) {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if json {
                println!("{v}");
            } else {
                print!("{}", show::dmvpn_table(&v));
            }
        }
        Command::Show { part, json, pretty, .. } => {
            let r = show::report_of(&cli.instance, part)?;
            if pretty {
                println!("{}", serde_json::to_string_pretty(&show::json(&r, part)?)?);
            } else if json {
                println!("{}", show::json(&r, part)?);
            } else {
                print!("{}", show::text(&r, part));
            }
        }
        Command::Tunnel(TunnelCommand::Add { config }) => {
            let added = gre_user::tunnels::add_tunnels(&cli.instance, &config).await?;
            println!("instance {}: added {}", cli.instance, added.join(", "));
        }
        Command::Tunnel(TunnelCommand::Del { name }) => gre_user::tunnels::del_tunnel(&cli.instance, &name).await?,
        Command::Peer(PeerCommand::Add { tunnel, overlay, nbma, multicast }) => change::peer_add(&cli.instance, &tunnel, overlay, nbma, multicast).await?,
        Command::Peer(PeerCommand::Del { tunnel, overlay }) => change::peer_del(&cli.instance, &tunnel, overlay)?,
        Command::Route(RouteCommand::Add { prefix, tunnel, via }) => change::route_add(&cli.instance, prefix, &tunnel, via).await?,
        Command::Route(RouteCommand::Del { prefix }) => change::route_del(&cli.instance, prefix).await?,
        Command::Showconf => print!("{}", gre_user::showconf::showconf(&cli.instance).await?),
        Command::Stats { watch, interval, count, json } => {
            if !(0.01..=3600.0).contains(&interval) {
                anyhow::bail!("--interval is between 0.01 and 3600 seconds");
            }
            let count = if watch { count } else { Some(1) };
            stats::watch(&cli.instance, std::time::Duration::from_secs_f64(interval), count, |s| {
                if json {
                    println!("{}", serde_json::to_string(s)?);
                } else {
                    if watch {
                        println!("{}", utc_time_of_day());
                    }
                    print!("{}", stats::table(s));
                }
                Ok(())
            })?;
        }
        Command::Log { level: Some(level), .. } => {
            gre_user::control::ask(&cli.instance, &gre_user::control::Request::LogLevel { level: level.clone() }).await?;
            println!("instance {}: log level {level}", cli.instance);
        }
        Command::Log { count, .. } => gre_user::datapath_log::follow(&cli.instance, count).await?,
        Command::Daemon { config, metrics, purge_on_exit } => {
            let mut listen = metrics;
            if let Some(path) = config {
                let cfg = config::load(&path)?;
                listen = listen.or(cfg.metrics.map(|m| m.listen));
                if gre_user::instance::instance_dir(&cli.instance)?.exists() {
                    log::info!("instance {} is up already; running for it as it is", cli.instance);
                } else {
                    loader::up(&cfg, &cli.instance).await?;
                    log::info!("instance {} is up", cli.instance);
                }
            }
            daemon::run(&cli.instance, listen, purge_on_exit).await?;
        }
        Command::Nhrp(NhrpCommand::Clear { what }) => {
            use gre_user::control::{Clear, Request};
            let what = match what.as_str() {
                "cache" => Clear::Cache,
                "shortcuts" => Clear::Shortcuts,
                a => Clear::Address(a.parse().map_err(|_| anyhow::anyhow!("clear what? cache, shortcuts or an overlay address, not {a:?}"))?),
            };
            let v = gre_user::control::ask(&cli.instance, &Request::Clear { what }).await?;
            println!("instance {}: {} entries cleared", cli.instance, v["cleared"]);
        }
        Command::Nhrp(NhrpCommand::Dump { file, iface, count, json }) => {
            let print = |m: &nhrp::dump::Message| -> Result<()> {
                if json {
                    println!("{}", serde_json::to_string(&nhrp::dump::MessageView::from(m))?);
                } else {
                    println!("{}", nhrp::dump::line(m));
                }
                Ok(())
            };
            match (file, iface) {
                (Some(file), _) => nhrp::dump::read(&file)?.iter().take(count.unwrap_or(usize::MAX)).try_for_each(print)?,
                (None, Some(iface)) => nhrp::dump::live(&iface, count, print)?,
                (None, None) => anyhow::bail!("give a capture file or -i IFACE"),
            }
        }
        Command::GenDocs { out } => gen_docs(&out)?,
        Command::Check { config } => {
            let cfg = config::load(&config)?;
            for t in &cfg.tunnels {
                let remote = if t.multipoint { "multipoint".to_string() } else { t.remote.to_string() };
                println!("tunnel {}: {} -> {remote} via {}", t.name, t.local, t.interface);
            }
            println!("{}: ok", config.display());
        }
    }
    Ok(())
}

/// The time of day (UTC) for `gre stats --watch` headers.
fn utc_time_of_day() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("-- {:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Man pages (one per command) and bash, zsh and fish completions, from the clap definition.
fn gen_docs(out: &std::path::Path) -> Result<()> {
    use clap::CommandFactory as _;
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).context("writing man pages")?;
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "gre", &completions).context("writing completions")?;
    }
    Ok(())
}
