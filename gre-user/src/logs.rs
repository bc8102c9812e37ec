//! Logging: `tracing` to standard error (level from RUST_LOG or -v), `log` records included; and
//! for `gre daemon`, the same lines to whoever follows them with `gre log`, through a unix socket
//! per instance (`/run/gre/<instance>.log`).

use std::{fmt::Write as _, path::PathBuf, sync::OnceLock};

use anyhow::{Context as _, Result};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, sync::broadcast};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Every formatted event, for the log socket's clients (none: sending costs nothing).
static LINES: OnceLock<broadcast::Sender<String>> = OnceLock::new();

fn lines() -> &'static broadcast::Sender<String> {
    LINES.get_or_init(|| broadcast::channel(1024).0)
}

/// Formats an event as `LEVEL message key=value…`.
struct Broadcast;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else if !field.name().starts_with("log.") {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Broadcast {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if lines().receiver_count() == 0 {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let _ = lines().send(format!("{} {}", event.metadata().level(), fields.0));
    }
}

/// Changes the filter of both outputs (standard error and the log socket) at run time.
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Sets up logging: `verbose` 0, 1, 2 for info, debug, trace unless RUST_LOG says otherwise.
pub fn init(verbose: u8) {
    let level = ["info", "debug", "trace"][usize::from(verbose.min(2))];
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (to_stderr, stderr_level) = tracing_subscriber::reload::Layer::new(filter());
    let (to_socket, socket_level) = tracing_subscriber::reload::Layer::new(filter());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr).with_filter(to_stderr))
        .with(Broadcast.with_filter(to_socket))
        .init();
    let _ = SET_LEVEL.set(Box::new(move |directive| {
        let parse = || EnvFilter::try_new(directive).map_err(|e| format!("{directive:?}: {e}"));
        stderr_level.reload(parse()?).map_err(|e| e.to_string())?;
        socket_level.reload(parse()?).map_err(|e| e.to_string())?;
        // `log` records are filtered by the env filter from now on, not by the level at start.
        log::set_max_level(log::LevelFilter::Trace);
        Ok(())
    }));
}

/// Sets the log level (an env-filter directive: `debug`, `info,gre_user::nhrp=trace` …).
///
/// # Errors
/// The directive does not parse, or logging was not set up.
pub fn set_level(directive: &str) -> Result<(), String> {
    SET_LEVEL.get().ok_or("logging is not set up")?(directive)
}

/// Where an instance's daemon serves its log.
#[must_use]
pub fn socket_path(instance: &str) -> PathBuf {
    crate::runtime::path(instance, "log")
}

/// Serves the daemon's log lines on the instance's socket until the task is dropped.
///
/// # Errors
/// The socket cannot be made.
pub fn serve(instance: &str) -> Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(instance);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let mut rx = lines().subscribe();
            tokio::spawn(async move {
                while let Ok(line) = rx.recv().await {
                    if client.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}
