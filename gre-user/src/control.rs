//! The daemon's control socket, `/run/gre/INSTANCE.ctl` (mode 0600, and the peer's credentials
//! checked: root only). The CLI asks the daemon for NHRP state and for changes to it, rather
//! than writing NHRP's tables behind its back. One JSON request per connection, one JSON answer.

use std::{net::IpAddr, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// What the CLI asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Request {
    /// Every peer as DMVPN operators read them (Cisco's `show dmvpn`, FRR's `show ip nhrp
    /// cache`), and each NHS's registration.
    Dmvpn,
    /// Everything about one peer, by overlay or NBMA address.
    Peer { address: IpAddr },
    /// Forget dynamic NHRP state.
    Clear { what: Clear },
    /// The protected tunnels' IPsec SAs, as charon reports them.
    Ipsec,
    /// Change the daemon's log level (an env-filter directive: `debug`, `info,gre=trace` …).
    LogLevel { level: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Clear {
    /// Every dynamic peer (registrations and resolutions) and shortcut.
    Cache,
    /// The shortcuts only.
    Shortcuts,
    /// One peer (overlay address) and what goes with it.
    Address(IpAddr),
}

/// A request on its way to the daemon's loop, with where its answer goes.
pub struct Asked {
    pub request: Request,
    pub answer: oneshot::Sender<serde_json::Value>,
}

/// Requests larger than this are refused (nothing the CLI sends comes near).
const MAX_REQUEST: u64 = 4096;
/// How long a client may take to send its request, and the daemon to answer.
const PATIENCE: Duration = Duration::from_secs(5);

#[must_use]
pub fn socket_path(instance: &str) -> PathBuf {
    crate::runtime::path(instance, "ctl")
}

/// Listens on the instance's control socket; requests come out of the returned channel, for
/// the daemon's loop to answer (a few at a time: a full channel is answered "busy").
///
/// # Errors
/// The socket cannot be made.
pub fn serve(instance: &str) -> Result<(tokio::task::JoinHandle<()>, mpsc::Receiver<Asked>)> {
    let path = socket_path(instance);
    std::fs::create_dir_all(crate::runtime::DIR).with_context(|| format!("creating {}", crate::runtime::DIR))?;
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", path.display()))?;
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else { continue };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(2 * PATIENCE, answer(client, tx)).await;
            });
        }
    });
    Ok((task, rx))
}

async fn answer(client: UnixStream, tx: mpsc::Sender<Asked>) -> Result<()> {
    // Root only: the file's mode says so to the file system, the credentials to us.
    let uid = client.peer_cred()?.uid();
    let (read, mut write) = client.into_split();
    let reply = if uid == 0 {
        let mut line = String::new();
        tokio::time::timeout(PATIENCE, BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST)).read_line(&mut line)).await??;
        match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({ "error": format!("not a request: {e}") }),
            Ok(request) => {
                let (answer, answered) = oneshot::channel();
                match tx.try_send(Asked { request, answer }) {
                    Err(_) => serde_json::json!({ "error": "the daemon is busy; try again" }),
                    Ok(()) => tokio::time::timeout(PATIENCE, answered).await.map_or_else(
                        |_| serde_json::json!({ "error": "the daemon did not answer in time" }),
                        |r| r.unwrap_or_else(|_| serde_json::json!({ "error": "the daemon is stopping" })),
                    ),
                }
            }
        }
    } else {
        serde_json::json!({ "error": format!("uid {uid} may not ask: root only") })
    };
    write.write_all(format!("{reply}\n").as_bytes()).await?;
    Ok(())
}

/// Asks the daemon of `instance`.
///
/// # Errors
/// No daemon runs for the instance, or it answered with an error.
pub async fn ask(instance: &str, request: &Request) -> Result<serde_json::Value> {
    let path = socket_path(instance);
    let stream = UnixStream::connect(&path).await.with_context(|| format!("no gre daemon answers for instance {instance} ({})", path.display()))?;
    let (read, mut write) = stream.into_split();
    // A refusal may come (and the daemon close) before the request is written: read it anyway.
    let _ = write.write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes()).await;
    let mut line = String::new();
    tokio::time::timeout(2 * PATIENCE, BufReader::new(read).read_line(&mut line)).await.context("the daemon did not answer")??;
    let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("the daemon answered {line:?}"))?;
    if let Some(e) = v.get("error").and_then(serde_json::Value::as_str) {
        bail!("{e}");
    }
    Ok(v)
}
