//! IKEv2 for protected tunnels, through strongSwan's charon over its vici socket: `gre daemon`
//! loads each protected tunnel's connection (its credentials and an ESP transport child for
//! GRE between the NBMA addresses), brings a point-to-point tunnel's SA up, and follows the SAs'
//! states for `gre show`. charon may start after the daemon or restart under it: the daemon
//! reconnects and loads everything again. What it loads is what `gre up` saved of the
//! configuration in the runtime directory (`INSTANCE.protection`, readable by root only).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, pin_mut};
use log::{info, warn};
use serde::{Deserialize, Serialize};

use crate::config;

/// What the daemon needs of a protected tunnel, saved by `gre up`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protected {
    pub tunnel: String,
    pub local: IpAddr,
    /// Unspecified for a multipoint tunnel: its peers come and go.
    pub remote: IpAddr,
    /// A multipoint tunnel's NHSs' NBMA addresses: a spoke keeps an SA up with each.
    #[serde(default)]
    pub nhs: Vec<IpAddr>,
    pub protection: config::Protection,
}

impl Protected {
    /// charon's name for this tunnel's connection (and its child, `gre`): a point-to-point
    /// tunnel's, or a multipoint one's for any peer (it answers, and never initiates).
    #[must_use]
    pub fn connection(&self, instance: &str) -> String {
        format!("gre-{instance}-{}", self.tunnel)
    }

    /// The connections charon gets for this tunnel, with the remote each is kept up with
    /// (`None`: the multipoint tunnel's answering one).
    #[must_use]
    pub fn connections(&self, instance: &str) -> Vec<(String, Option<IpAddr>)> {
        let base = self.connection(instance);
        if !self.remote.is_unspecified() {
            return vec![(base, Some(self.remote))];
        }
        std::iter::once((base.clone(), None)).chain(self.nhs.iter().map(|n| (format!("{base}-{n}"), Some(*n)))).collect()
    }

    /// Whether charon's connection `name` is one of this tunnel's.
    fn owns(&self, instance: &str, name: &str) -> bool {
        let base = self.connection(instance);
        name == base || name.strip_prefix(&base).is_some_and(|rest| rest.starts_with('-') && rest[1..].parse::<IpAddr>().is_ok())
    }
}

/// The protected tunnels of `cfg`.
#[must_use]
pub fn of(cfg: &config::Config) -> Vec<Protected> {
    cfg.tunnels
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let nhs = t.nhs.iter().filter_map(|(overlay, _)| cfg.peers.iter().find(|p| p.tunnel == i && p.overlay == *overlay).map(|p| p.nbma)).collect();
            t.protection.as_ref().map(|p| Protected { tunnel: t.name.clone(), local: t.local, remote: t.remote, nhs, protection: p.clone() })
        })
        .collect()
}

/// Saves `protected` for the daemon (mode 0600: it may hold a pre-shared key).
///
/// # Errors
/// The runtime directory cannot be written.
pub fn save(instance: &str, protected: &[Protected]) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let path = crate::runtime::path(instance, "protection");
    if protected.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    std::fs::create_dir_all(crate::runtime::DIR).with_context(|| format!("creating {}", crate::runtime::DIR))?;
    let tmp = path.with_extension("protection.tmp");
    let mut f =
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(protected)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
}

/// What `gre up` saved for the daemon; none when no tunnel is protected.
///
/// # Errors
/// The file exists but cannot be read.
pub fn load(instance: &str) -> Result<Vec<Protected>> {
    let path = crate::runtime::path(instance, "protection");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A child SA as charon lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildSa {
    pub tunnel: String,
    pub local: String,
    pub remote: String,
    /// charon's state: INSTALLED, REKEYING, …
    pub state: String,
    pub spi_in: String,
    pub spi_out: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The SAs of the protected tunnels, and whether charon answers; shared with `gre show`'s
/// answers.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub charon: Option<String>,
    /// Why charon does not answer (the `error` key is the control socket's own failures).
    pub unreachable: Option<String>,
    pub children: Vec<ChildSa>,
}

impl Status {
    /// Every (tunnel, peer) with an SA up.
    #[must_use]
    pub fn secured_pairs(&self) -> std::collections::HashSet<(String, IpAddr)> {
        self.children
            .iter()
            .filter(|c| matches!(c.state.as_str(), "INSTALLED" | "REKEYING" | "REKEYED"))
            .filter_map(|c| Some((c.tunnel.clone(), c.remote.parse().ok()?)))
            .collect()
    }

    /// Whether tunnel `tunnel` has an SA up with `nbma`.
    #[must_use]
    pub fn secured(&self, tunnel: &str, nbma: IpAddr) -> bool {
        let nbma = nbma.to_string();
        self.children.iter().any(|c| c.tunnel == tunnel && c.remote == nbma && matches!(c.state.as_str(), "INSTALLED" | "REKEYING" | "REKEYED"))
    }
}

/// A multipoint tunnel's peer that NHRP resolved: its SA is to be brought up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Want {
    pub tunnel: String,
    pub nbma: IpAddr,
}

/// What the NHRP agent holds of the task: the SAs, and where to ask for one.
#[derive(Clone)]
pub struct Link {
    pub status: Arc<Mutex<Status>>,
    pub want: tokio::sync::mpsc::Sender<Want>,
    /// Signalled when `status` changed, so that a lost SA takes its peer at once.
    pub changed: Arc<tokio::sync::Notify>,
}

/// Peers' SAs asked for and not yet taken down, at most (beyond, NHRP's peers wait).
const MAX_WANTED: usize = 1024;
/// A peer's SA that NHRP no longer asks for is taken down after this long.
const WANTED_FOR: Duration = Duration::from_secs(600);

/// Drives charon for `protected` until the daemon ends; `status` follows what charon reports,
/// `wants` brings the peers NHRP resolved.
pub async fn run(instance: String, protected: Vec<Protected>, link: Link, mut wants: tokio::sync::mpsc::Receiver<Want>) {
    let status = &link.status;
    if protected.is_empty() {
        return;
    }
    let socket = protected[0].protection.vici.clone();
    let mut wanted: HashMap<Want, tokio::time::Instant> = HashMap::new();
    loop {
        match session(&instance, &protected, &socket, &link, &mut wants, &mut wanted).await {
            Ok(()) => {}
            Err(e) => {
                let text = format!("{e:#}");
                let mut s = status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if s.unreachable.as_deref() != Some(&text) {
                    warn!("ipsec: {text}; retrying every 2 s");
                }
                *s = Status { charon: None, unreachable: Some(text), children: Vec::new() };
                drop(s);
                link.changed.notify_one();
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One connection to charon: load everything, then follow the SAs until the socket fails.
async fn session(
    instance: &str,
    protected: &[Protected],
    socket: &Path,
    link: &Link,
    wants: &mut tokio::sync::mpsc::Receiver<Want>,
    wanted: &mut HashMap<Want, tokio::time::Instant>,
) -> Result<()> {
    let mut client = rsvici::unix::connect(socket).await.with_context(|| format!("connecting to charon at {}", socket.display()))?;
    // charon's events on a connection of their own, read without pause: rsvici's listener
    // waits for an event's reader, and would hold up the answers to our commands meanwhile.
    let updown = Arc::new(tokio::sync::Notify::new());
    let events = Events(tokio::spawn(follow_events(socket.to_path_buf(), updown.clone())));
    let version: Version = client.request("version", ()).await.context("asking charon its version")?;
    for p in protected {
        load_connection(&mut client, instance, p).await.with_context(|| format!("tunnel {}", p.tunnel))?;
    }
    // Peers' connections of an earlier charon: loaded again.
    for w in wanted.keys() {
        if let Some(p) = protected.iter().find(|p| p.tunnel == w.tunnel) {
            load_one(&mut client, p, &peer_connection(instance, p, w.nbma), Some(w.nbma)).await?;
        }
    }
    info!("ipsec: charon {} has the connections of {} protected tunnel(s)", version.version, protected.len());
    // Point-to-point tunnels come up at once and are kept up: initiated again while they have
    // no SA (their child also traps, so traffic asks for it too); multipoint ones wait for
    // NHRP's peers.
    let mut next_try: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        let children = list(&mut client, instance, protected).await?;
        let now = tokio::time::Instant::now();
        // A peer's SA no longer asked for goes (its connection with it).
        let stale: Vec<Want> = wanted.iter().filter(|(_, at)| now.duration_since(**at) > WANTED_FOR).map(|(w, _)| w.clone()).collect();
        for w in stale {
            wanted.remove(&w);
            if let Some(p) = protected.iter().find(|p| p.tunnel == w.tunnel) {
                let name = peer_connection(instance, p, w.nbma);
                let _: Result<Answer, _> = client.request("terminate", Terminate { ike: &name, timeout: "-1" }).await;
                let _: Result<Answer, _> = client.request("unload-conn", Unload { name: &name }).await;
                info!("ipsec: tunnel {}: the SA with {} is no longer wanted", p.tunnel, w.nbma);
            }
        }
        let dynamic: Vec<(String, Option<IpAddr>, &Protected)> = wanted
            .keys()
            .filter_map(|w| protected.iter().find(|p| p.tunnel == w.tunnel).map(|p| (peer_connection(instance, p, w.nbma), Some(w.nbma), p)))
            .collect();
        let fixed = protected.iter().flat_map(|p| p.connections(instance).into_iter().map(move |(n, r)| (n, r, p)));
        for (name, remote, p) in fixed.chain(dynamic) {
            {
                let Some(remote) = remote else { continue };
                if children.iter().any(|c| c.tunnel == p.tunnel && c.remote == remote.to_string()) {
                    next_try.remove(&name);
                } else if next_try.get(&name).is_none_or(|t| *t <= now) {
                    initiate(&mut client, &name).await?;
                    next_try.insert(name, now + RETRY);
                }
            }
        }
        *link.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Status { charon: Some(version.version.clone()), unreachable: None, children };
        link.changed.notify_one();
        ensure!(!events.0.is_finished(), "charon's event connection closed");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            // An SA came, went or was rekeyed: listed again at once.
            () = updown.notified() => {}
            Some(w) = wants.recv() => {
                let Some(p) = protected.iter().find(|p| p.tunnel == w.tunnel && p.remote.is_unspecified()) else { continue };
                if let Some(at) = wanted.get_mut(&w) {
                    *at = tokio::time::Instant::now();
                } else if wanted.len() < MAX_WANTED {
                    let name = peer_connection(instance, p, w.nbma);
                    load_one(&mut client, p, &name, Some(w.nbma)).await?;
                    info!("ipsec: tunnel {}: bringing up an SA with {} for NHRP", p.tunnel, w.nbma);
                    initiate(&mut client, &name).await?;
                    wanted.insert(w, tokio::time::Instant::now());
                } else {
                    warn!("ipsec: {MAX_WANTED} peers' SAs wanted already; {} waits", w.nbma);
                }
            }
        }
    }
}

/// The task reading charon's events, stopped with the session that started it.
struct Events(tokio::task::JoinHandle<()>);

impl Drop for Events {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes `updown` on each of charon's SA events until the connection fails.
async fn follow_events(socket: std::path::PathBuf, updown: Arc<tokio::sync::Notify>) {
    let Ok(mut client) = rsvici::unix::connect(&socket).await else { return };
    let streams = ["ike-updown", "child-updown", "child-rekey", "ike-rekey"].map(|e| client.subscribe::<BTreeMap<String, serde::de::IgnoredAny>>(e));
    let all = futures::stream::select_all(streams.into_iter().map(Box::pin));
    pin_mut!(all);
    while let Some(Ok(_)) = all.next().await {
        updown.notify_one();
    }
}

/// A multipoint tunnel's connection with one peer (an NHS's, or one NHRP resolved).
fn peer_connection(instance: &str, p: &Protected, nbma: IpAddr) -> String {
    format!("{}-{nbma}", p.connection(instance))
}

#[derive(Serialize)]
struct Terminate<'a> {
    ike: &'a str,
    timeout: &'static str,
}

#[derive(Serialize)]
struct Unload<'a> {
    name: &'a str,
}

/// How long a point-to-point tunnel without an SA waits before charon is asked again.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Version {
    version: String,
}

/// A command's answer.
#[derive(Deserialize)]
struct Answer {
    success: bool,
    errmsg: Option<String>,
}

impl Answer {
    fn check(self, what: &str) -> Result<()> {
        if !self.success {
            bail!("charon refused {what}: {}", self.errmsg.unwrap_or_default());
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct SharedKey<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    data: &'a str,
    owners: Vec<String>,
}

#[derive(Serialize)]
struct Credential {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flag: Option<&'static str>,
    data: String,
}

#[derive(Serialize)]
struct Conn {
    version: &'static str,
    unique: &'static str,
    local_addrs: Vec<String>,
    remote_addrs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    proposals: Vec<String>,
    dpd_delay: &'static str,
    /// Off, as for DMVPN: MOBIKE would offer the overlay addresses as the peer's to move to.
    mobike: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rekey_time: Option<String>,
    local: Round,
    remote: Round,
    children: BTreeMap<&'static str, Child>,
}

#[derive(Serialize)]
struct Round {
    auth: &'static str,
    id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    certs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cacerts: Vec<String>,
}

#[derive(Serialize)]
struct Child {
    mode: &'static str,
    local_ts: Vec<&'static str>,
    remote_ts: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    esp_proposals: Vec<String>,
    start_action: &'static str,
    dpd_action: &'static str,
    close_action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rekey_time: Option<String>,
}

/// The child of every connection: ESP in transport mode for GRE between the two NBMA
/// addresses (NHRP included: it travels in GRE).
pub const CHILD: &str = "gre";

async fn load_connection(client: &mut rsvici::Client, instance: &str, p: &Protected) -> Result<()> {
    let spec = &p.protection;
    if let Some(psk) = &spec.psk {
        let owners = if p.remote.is_unspecified() { vec![p.local.to_string()] } else { vec![p.local.to_string(), p.remote.to_string()] };
        let key = SharedKey { id: p.connection(instance), kind: "IKE", data: psk, owners };
        client.request::<_, Answer>("load-shared", key).await?.check("the pre-shared key")?;
    } else {
        let (key, ca) = (read_pem(spec.key.as_ref())?, read_pem(spec.ca.as_ref())?);
        client.request::<_, Answer>("load-key", Credential { kind: "any", flag: None, data: key }).await?.check("the private key")?;
        client.request::<_, Answer>("load-cert", Credential { kind: "X509", flag: Some("CA"), data: ca }).await?.check("the CA certificate")?;
    }
    for (name, remote) in p.connections(instance) {
        load_one(client, p, &name, remote).await?;
    }
    Ok(())
}

/// A certificate or key file's text (PEM).
fn read_pem(f: Option<&std::path::PathBuf>) -> Result<String> {
    let f = f.context("a certificate file")?;
    std::fs::read_to_string(f).with_context(|| format!("reading {} (PEM)", f.display()))
}

/// Connection `name` of tunnel `p`, toward `remote` (kept up) or any peer (answering).
async fn load_one(client: &mut rsvici::Client, p: &Protected, name: &str, remote_addr: Option<IpAddr>) -> Result<()> {
    let spec = &p.protection;
    let any = remote_addr.is_none();
    let remote_str = remote_addr.map_or_else(|| "%any".to_string(), |r| r.to_string());
    let (local, remote) = if spec.psk.is_some() {
        (
            Round { auth: "psk", id: p.local.to_string(), certs: Vec::new(), cacerts: Vec::new() },
            Round { auth: "psk", id: remote_str.clone(), certs: Vec::new(), cacerts: Vec::new() },
        )
    } else {
        let (cert, ca) = (read_pem(spec.cert.as_ref())?, read_pem(spec.ca.as_ref())?);
        (
            Round { auth: "pubkey", id: String::new(), certs: vec![cert], cacerts: Vec::new() },
            Round { auth: "pubkey", id: "%any".into(), certs: Vec::new(), cacerts: vec![ca] },
        )
    };
    let local = Round { id: if local.id.is_empty() { "%any".into() } else { local.id }, ..local };
    let child = Child {
        mode: "transport",
        local_ts: vec!["dynamic[gre]"],
        remote_ts: vec!["dynamic[gre]"],
        esp_proposals: spec.esp_proposals.clone(),
        // A point-to-point tunnel's child traps: the kernel asks charon for the SA whenever GRE
        // finds none (after a failure, or before the first initiation completes).
        start_action: if any { "none" } else { "trap" },
        dpd_action: if any { "clear" } else { "trap" },
        close_action: if any { "none" } else { "trap" },
        rekey_time: spec.rekey_time.map(|s| format!("{s}s")),
    };
    // Two spokes resolve each other at once and both initiate: each side's INITIAL_CONTACT
    // would make the other destroy the SA it had just set up, without a word to its peer.
    // Both SAs stay instead (the kernel sends with the newer; DPD clears what the peer lost).
    let between_spokes = remote_addr.is_some_and(|r| p.remote.is_unspecified() && !p.nhs.contains(&r));
    let conn = Conn {
        version: "2",
        unique: if between_spokes { "never" } else { "no" },
        local_addrs: vec![p.local.to_string()],
        remote_addrs: vec![remote_str],
        proposals: spec.proposals.clone(),
        dpd_delay: "10s",
        mobike: false,
        rekey_time: spec.rekey_time.map(|s| format!("{s}s")),
        local,
        remote,
        children: BTreeMap::from([(CHILD, child)]),
    };
    client.request::<_, Answer>("load-conn", BTreeMap::from([(name.to_string(), conn)])).await?.check(&format!("connection {name}"))
}

#[derive(Serialize)]
struct Initiate<'a> {
    child: &'static str,
    ike: &'a str,
    timeout: &'static str,
    #[serde(rename = "init-limits")]
    init_limits: bool,
}

async fn initiate(client: &mut rsvici::Client, ike: &str) -> Result<()> {
    // Asynchronous (timeout -1): the answer comes at once, the SA when IKE completes.
    let r: Answer = client.request("initiate", Initiate { child: CHILD, ike, timeout: "-1", init_limits: false }).await?;
    if !r.success {
        warn!("ipsec: initiating {ike}: {}", r.errmsg.unwrap_or_default());
    }
    Ok(())
}

#[derive(Deserialize)]
struct IkeSa {
    #[serde(rename = "local-host", default)]
    local_host: String,
    #[serde(rename = "remote-host", default)]
    remote_host: String,
    #[serde(rename = "child-sas", default)]
    child_sas: HashMap<String, ListedChild>,
}

#[derive(Deserialize)]
struct ListedChild {
    name: String,
    state: String,
    #[serde(rename = "spi-in", default)]
    spi_in: String,
    #[serde(rename = "spi-out", default)]
    spi_out: String,
    #[serde(rename = "bytes-in", default)]
    bytes_in: String,
    #[serde(rename = "bytes-out", default)]
    bytes_out: String,
}

#[derive(Serialize)]
struct ListSas {
    noblock: bool,
}

/// The child SAs of our connections.
async fn list(client: &mut rsvici::Client, instance: &str, protected: &[Protected]) -> Result<Vec<ChildSa>> {
    let stream = client.stream_request::<_, HashMap<String, IkeSa>>("list-sas", "list-sa", ListSas { noblock: true });
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(event) = stream.next().await {
        for (name, ike) in event.context("listing charon's SAs")? {
            let Some(p) = protected.iter().find(|p| p.owns(instance, &name)) else { continue };
            for c in ike.child_sas.into_values().filter(|c| c.name == CHILD) {
                out.push(ChildSa {
                    tunnel: p.tunnel.clone(),
                    local: ike.local_host.clone(),
                    remote: ike.remote_host.clone(),
                    state: c.state,
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    bytes_in: c.bytes_in.parse().unwrap_or(0),
                    bytes_out: c.bytes_out.parse().unwrap_or(0),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.tunnel, &a.remote).cmp(&(&b.tunnel, &b.remote)));
    Ok(out)
}
