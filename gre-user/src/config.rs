//! The TOML configuration: parsed with serde, then validated as a whole before anything on the
//! host is touched. Every error names the file, the line and what is wrong.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use gre_common::{
    gre,
    maps::{MAX_NHS, MAX_PEERS, MAX_ROUTES, MAX_TUNNELS},
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Longest tunnel netdev name: IFNAMSIZ (16, with the NUL) leaves 15, and the datapath end of
/// the veth pair takes a `-dp` suffix.
pub const MAX_TUNNEL_NAME: usize = 12;
/// Suffix of the datapath end of a tunnel netdev.
pub const INJECT_SUFFIX: &str = "-dp";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<Interface>,
    #[serde(default, rename = "tunnel")]
    pub tunnels: Vec<TunnelSpec>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSpec>,
    /// Prometheus metrics served by `gre daemon` (off without this table).
    pub metrics: Option<Metrics>,
    pub limits: Option<toml::Spanned<Limits>>,
}

/// `[limits]`: the capacity of the instance's peer and route tables, fixed when it comes up
/// (the kernel allocates as entries are added: a large limit costs only a bigger hash table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// NHRP cache entries (static and dynamic peers of all multipoint tunnels).
    pub peers: u32,
    /// Overlay routes.
    pub routes: u32,
}

/// Largest limits accepted: the peer and route tables' hash buckets and trie nodes grow with them.
pub const LIMIT_PEERS_MAX: u32 = 1 << 24;
pub const LIMIT_ROUTES_MAX: u32 = 1 << 22;

impl Default for Limits {
    fn default() -> Self {
        Self { peers: MAX_PEERS, routes: MAX_ROUTES }
    }
}

/// `[metrics]`: where `gre daemon` serves Prometheus metrics (`GET /metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address and port to listen on, such as "127.0.0.1:9477".
    pub listen: std::net::SocketAddr,
}

/// A static peer of a multipoint tunnel (Cisco `ip nhrp map`, FRR `nhrp map`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub tunnel: Spanned<String>,
    pub overlay: Spanned<IpAddr>,
    pub nbma: Spanned<IpAddr>,
    /// Replicate multicast to it (`ip nhrp map multicast`).
    #[serde(default)]
    pub multicast: bool,
}

/// A validated static peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Index into `Config::tunnels`.
    pub tunnel: usize,
    pub overlay: IpAddr,
    pub nbma: IpAddr,
    pub multicast: bool,
}

/// An overlay route: traffic to `prefix` goes into tunnel `tunnel` (in the kernel, and in the
/// LAN fast path).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub prefix: Spanned<IpNet>,
    pub tunnel: Spanned<String>,
    /// Multipoint: the overlay next hop (by default the destination itself).
    pub via: Option<Spanned<IpAddr>>,
}

/// A validated overlay route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpNet,
    /// Index into `Config::tunnels`.
    pub tunnel: usize,
    pub via: Option<IpAddr>,
}

/// An interface of the datapath: an underlay port (GRE arrives there: XDP decapsulation) or a
/// LAN port (routed overlay traffic arrives there: the XDP encapsulation fast path).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: Spanned<String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub xdp_mode: XdpMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Underlay,
    Lan,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Native,
    Skb,
}

/// A point-to-point GRE tunnel, over IPv4 (ip_gre) or IPv6 (ip6_gre) by the family of its
/// addresses. Option names are ip(8)'s: local, remote, key/ikey/okey, csum/icsum/ocsum,
/// seq/iseq/oseq, ttl, tos, flowlabel, pmtudisc, ignore-df (here `ignore_df`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[expect(clippy::struct_excessive_bools, reason = "ip(8)'s on/off options, as the file spells them")]
pub struct TunnelSpec {
    /// The tunnel netdev the kernel sees (overlay addresses, routes).
    pub name: Spanned<String>,
    /// `gre` (IP packets; the default) or `gretap` (Ethernet frames, protocol type 0x6558).
    #[serde(default)]
    pub mode: Mode,
    /// Underlay interface, one of the `[[interface]]` entries.
    pub interface: Spanned<String>,
    pub local: Spanned<IpAddr>,
    /// Absent: a multipoint tunnel (mGRE), whose remotes are its peers.
    pub remote: Option<Spanned<IpAddr>>,
    /// Multipoint: the overlay address of the NHS (hub), where traffic goes while a peer is not
    /// resolved, or a list of NHSs (addresses, or `{ address, priority }`: lower is preferred).
    /// Their NBMA addresses come from `[[peer]]` entries.
    pub nhs: Option<Spanned<NhsSpec>>,
    /// Multipoint: accept GRE only from the NBMA addresses of known peers (NHRP still reaches
    /// the daemon, so new spokes can register). The default on tunnels that run NHRP.
    pub strict: Option<Spanned<bool>>,
    /// Multipoint: which multicast is replicated to the peers, and how much.
    pub multicast: Option<Spanned<MulticastSpec>>,
    /// Sets both `ikey` and `okey`.
    pub key: Option<Spanned<u32>>,
    pub ikey: Option<Spanned<u32>>,
    pub okey: Option<Spanned<u32>>,
    /// Checksums both ways; or `icsum` (require and verify) / `ocsum` (send).
    #[serde(default)]
    pub csum: bool,
    #[serde(default)]
    pub icsum: bool,
    #[serde(default)]
    pub ocsum: bool,
    /// Sequence numbers both ways; or `iseq` (require, in order) / `oseq` (send).
    #[serde(default)]
    pub seq: bool,
    #[serde(default)]
    pub iseq: bool,
    #[serde(default)]
    pub oseq: bool,
    /// Outer TTL / hop limit: 1..=255, or "inherit" (the default, as ip_gre; 0 means the same).
    #[serde(default)]
    pub ttl: Setting<u8>,
    /// Outer TOS / traffic class: a number (default 0) or "inherit". ECN is always propagated.
    #[serde(default = "tos_default")]
    pub tos: Setting<u8>,
    /// Outer IPv6 flow label: a number (default 0) or "inherit". IPv6 outer only.
    pub flowlabel: Option<Spanned<Setting<u32>>>,
    /// Set DF on the outer header (default, as ip_gre); `false` is ip(8)'s `nopmtudisc`, where
    /// the outer DF copies the inner IPv4 one.
    #[serde(default = "yes")]
    pub pmtudisc: bool,
    /// With `pmtudisc = false`: never set DF on the outer header.
    #[serde(default)]
    pub ignore_df: Option<Spanned<bool>>,
    /// Overlay addresses of the tunnel netdev, with prefix length.
    #[serde(default)]
    pub address: Vec<Spanned<IpNet>>,
    /// Cisco-style keepalives sent by `gre daemon` (IOS `keepalive PERIOD RETRIES`).
    pub keepalive: Option<Spanned<Keepalive>>,
    /// NHRP on a multipoint tunnel, run by `gre daemon`.
    pub nhrp: Option<Spanned<Nhrp>>,
    /// IPsec: ESP in transport mode for this tunnel's GRE, keyed by strongSwan's charon.
    pub protection: Option<Spanned<Protection>>,
}

/// A protected tunnel: `gre daemon` loads an IKEv2 connection into charon over its vici socket
/// (ESP in transport mode for GRE between the tunnel's NBMA addresses) and brings its SAs up;
/// the datapath sends GRE only through the kernel's xfrm and takes only what it decrypted.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Protection {
    /// charon's vici socket.
    #[serde(default = "default_vici")]
    pub vici: PathBuf,
    /// A pre-shared key (IKEv2 PSK authentication, both ways) ...
    pub psk: Option<String>,
    /// ... or X.509: this gateway's certificate and private key, and the CA certificate that
    /// signs its peers' (PEM or DER files).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// IKE and ESP proposals in strongSwan's syntax; charon's defaults when empty.
    #[serde(default)]
    pub proposals: Vec<String>,
    #[serde(default)]
    pub esp_proposals: Vec<String>,
    /// Seconds between rekeyings of the SAs (IKE and ESP); charon's defaults (4 h and 1 h)
    /// when left out.
    pub rekey_time: Option<u32>,
}

/// Without the key: messages (a refused reload lists the settings that differ) and logs must
/// not carry it.
impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Protection")
            .field("vici", &self.vici)
            .field("psk", &self.psk.as_ref().map(|_| "(not shown)"))
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("ca", &self.ca)
            .field("proposals", &self.proposals)
            .field("esp_proposals", &self.esp_proposals)
            .field("rekey_time", &self.rekey_time)
            .finish()
    }
}

fn default_vici() -> PathBuf {
    PathBuf::from("/var/run/charon.vici")
}

/// Multicast replication of a multipoint tunnel: one copy per peer mapped for multicast, so it
/// is bounded by group and by rate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastSpec {
    /// Group prefixes replicated (at most four); the default is the link-local scopes routing
    /// protocols use, 224.0.0.0/24 and ff02::/16. Other multicast is a counted drop.
    #[serde(default = "default_groups")]
    pub groups: Vec<Spanned<IpNet>>,
    /// Replicas sent per second at most, all peers together.
    #[serde(default = "default_multicast_rate")]
    pub rate: u32,
}

/// Multicast replication as the datapath applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multicast {
    pub groups: Vec<IpNet>,
    pub rate: u32,
}

impl Default for Multicast {
    fn default() -> Self {
        Self { groups: LINK_LOCAL_GROUPS.iter().map(|g| g.parse().expect("a prefix")).collect(), rate: DEFAULT_MULTICAST_RATE }
    }
}

/// The link-local multicast scopes (routing-protocol hellos): what a multipoint tunnel
/// replicates unless told otherwise.
pub const LINK_LOCAL_GROUPS: [&str; 2] = ["224.0.0.0/24", "ff02::/16"];
pub const DEFAULT_MULTICAST_RATE: u32 = 10_000;

fn default_groups() -> Vec<Spanned<IpNet>> {
    LINK_LOCAL_GROUPS.iter().map(|g| Spanned::new(0..0, g.parse().expect("a prefix"))).collect()
}

const fn default_multicast_rate() -> u32 {
    DEFAULT_MULTICAST_RATE
}

/// NHRP settings of a multipoint tunnel (Cisco `ip nhrp …`, FRR `ip nhrp …`).
/// `nhs = …`: one address, or a list of addresses and `{ address, priority }` tables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NhsSpec {
    One(IpAddr),
    Many(Vec<NhsEntry>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum NhsEntry {
    Address(IpAddr),
    Table(NhsTable),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NhsTable {
    pub address: IpAddr,
    /// Lower is preferred (as Cisco's and FRR's `nhs … priority`); 0 by default.
    #[serde(default)]
    pub priority: u8,
}

/// The NHSs of a tunnel: at most [`MAX_NHS`], each once.
fn nhs_list(name: &str, spec: &NhsSpec) -> Result<Vec<(IpAddr, u8)>, String> {
    let list: Vec<(IpAddr, u8)> = match spec {
        NhsSpec::One(a) => vec![(*a, 0)],
        NhsSpec::Many(l) => l
            .iter()
            .map(|e| match e {
                NhsEntry::Address(a) => (*a, 0),
                NhsEntry::Table(t) => (t.address, t.priority),
            })
            .collect(),
    };
    if list.is_empty() || list.len() > MAX_NHS {
        return Err(format!("tunnel {name:?}: nhs lists 1 to {MAX_NHS} servers"));
    }
    let mut seen = HashSet::new();
    if let Some((dup, _)) = list.iter().find(|(a, _)| !seen.insert(*a)) {
        return Err(format!("tunnel {name:?}: nhs {dup} is listed twice"));
    }
    Ok(list)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Nhrp {
    /// "nhs" (a hub: takes registrations, answers resolutions) or "nhc" (a spoke).
    pub role: NhrpRole,
    /// Seconds a registration or resolution holds (`ip nhrp holdtime`); a spoke re-registers
    /// every third of it.
    #[serde(default = "default_holdtime")]
    pub holdtime: u16,
    /// The NHRP network this tunnel belongs to (`ip nhrp network-id`): local, never on the
    /// wire; each network is one tunnel here, so two tunnels may not share one.
    #[serde(default = "default_network_id")]
    pub network_id: u32,
    /// Cisco-style authentication (`ip nhrp authentication`): at most 8 bytes.
    pub auth: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NhrpRole {
    Nhs,
    Nhc,
}

const fn default_network_id() -> u32 {
    1
}

const fn default_holdtime() -> u16 {
    7200
}

/// Keepalive timing: one every `period` seconds; down after `retries` unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keepalive {
    pub period: u16,
    #[serde(default = "three")]
    pub retries: u8,
}

const fn three() -> u8 {
    3
}

const fn yes() -> bool {
    true
}

const fn tos_default() -> Setting<u8> {
    Setting::Fixed(0)
}

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// IPv4 and IPv6 packets (ip_gre / ip6_gre).
    #[default]
    Gre,
    /// Ethernet frames (gretap / ip6gretap): the tunnel netdev is a bridgeable Ethernet link.
    Gretap,
}

/// A value that is either fixed or inherited from the inner packet (`"inherit"` in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Setting<T> {
    #[default]
    Inherit,
    Fixed(T),
}

impl<'de, T: TryFrom<i64>> Deserialize<'de> for Setting<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: TryFrom<i64>> serde::de::Visitor<'_> for V<T> {
            type Value = Setting<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number of {} bits at most, or \"inherit\"", std::mem::size_of::<T>() * 8)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::try_from(v).map(Setting::Fixed).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "inherit" { Ok(Setting::Inherit) } else { Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)) }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T: Serialize> Serialize for Setting<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inherit => s.serialize_str("inherit"),
            Self::Fixed(v) => v.serialize(s),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inherit => f.write_str("inherit"),
            Self::Fixed(v) => v.fmt(f),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub interfaces: Vec<Interface>,
    pub tunnels: Vec<Tunnel>,
    pub routes: Vec<Route>,
    pub peers: Vec<Peer>,
    pub metrics: Option<Metrics>,
    pub limits: Limits,
}

/// A validated tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "ip(8)'s on/off options")]
pub struct Tunnel {
    pub name: String,
    pub mode: Mode,
    pub interface: String,
    pub local: IpAddr,
    /// The unspecified address for a multipoint tunnel.
    pub remote: IpAddr,
    pub multipoint: bool,
    /// The NHSs and their priorities, in the configured order.
    pub nhs: Vec<(IpAddr, u8)>,
    pub strict: bool,
    /// Multipoint tunnels' multicast replication.
    pub multicast: Multicast,
    pub ikey: Option<u32>,
    pub okey: Option<u32>,
    pub icsum: bool,
    pub ocsum: bool,
    pub iseq: bool,
    pub oseq: bool,
    /// `Fixed(0)` never occurs: 0 means inherit, as in ip(8).
    pub ttl: Setting<u8>,
    pub tos: Setting<u8>,
    pub flowlabel: Setting<u32>,
    pub pmtudisc: bool,
    pub ignore_df: bool,
    pub addresses: Vec<IpNet>,
    pub keepalive: Option<Keepalive>,
    pub nhrp: Option<Nhrp>,
    pub protection: Option<Protection>,
}

/// Room left on a protected tunnel for ESP: SPI and sequence (8), IV (16 for CBC), padding (up
/// to 15), pad length and next header (2), ICV (16), and a UDP header when NAT-T wraps it (8).
pub const ESP_OVERHEAD: usize = 72;

impl Tunnel {
    /// Name of the datapath end of the tunnel netdev.
    #[must_use]
    pub fn inject_name(&self) -> String {
        format!("{}{INJECT_SUFFIX}", self.name)
    }

    /// True for GRE over IPv6 (ip6gre).
    #[must_use]
    pub const fn outer_v6(&self) -> bool {
        self.local.is_ipv6()
    }

    /// The GRE flags of transmitted packets.
    #[must_use]
    pub const fn tx_gre_flags(&self) -> u16 {
        let mut f = 0;
        if self.okey.is_some() {
            f |= gre::FLAG_K;
        }
        if self.ocsum {
            f |= gre::FLAG_C;
        }
        if self.oseq {
            f |= gre::FLAG_S;
        }
        f
    }

    /// Bytes the outer headers add (and, for a gretap, the inner Ethernet header): the tunnel
    /// netdev's MTU is the underlay's minus this.
    #[must_use]
    pub const fn overhead(&self) -> usize {
        let l2 = if matches!(self.mode, Mode::Gretap) { gre::ETH_HLEN } else { 0 };
        let esp = if self.protection.is_some() { ESP_OVERHEAD } else { 0 };
        gre::overhead(self.outer_v6(), self.tx_gre_flags()) + l2 + esp
    }

    /// The datapath's `Tunnel::flags` for this tunnel.
    #[must_use]
    pub const fn datapath_flags(&self) -> u32 {
        use gre_common::maps::tunnel_flags as f;
        let mut flags = 0;
        let bits = [
            (self.ikey.is_some(), f::IKEY),
            (self.okey.is_some(), f::OKEY),
            (!self.pmtudisc, f::NOPMTUDISC),
            (self.ignore_df, f::IGNORE_DF),
            (self.icsum, f::ICSUM),
            (self.ocsum, f::OCSUM),
            (self.iseq, f::ISEQ),
            (self.oseq, f::OSEQ),
            (matches!(self.tos, Setting::Inherit), f::TOS_INHERIT),
            (self.outer_v6(), f::OUTER_V6),
            (matches!(self.flowlabel, Setting::Inherit), f::FLOWLABEL_INHERIT),
            (matches!(self.mode, Mode::Gretap), f::TEB),
            (self.multipoint, f::MULTIPOINT),
            (self.strict, f::STRICT),
            (self.protection.is_some(), f::PROTECTED),
        ];
        let mut i = 0;
        while i < bits.len() {
            if bits[i].0 {
                flags |= bits[i].1;
            }
            i += 1;
        }
        flags
    }
}

/// The multicast settings of tunnel `name`, checked.
fn multicast(name: &str, m: &Spanned<MulticastSpec>) -> Result<Multicast, (Range<usize>, String)> {
    let spec = m.get_ref();
    if spec.groups.len() > gre_common::maps::MAX_MULTICAST_GROUPS {
        return Err((m.span(), format!("tunnel {name:?}: multicast: at most {} groups", gre_common::maps::MAX_MULTICAST_GROUPS)));
    }
    for g in &spec.groups {
        let multicast = match g.get_ref() {
            IpNet::V4(n) => n.prefix_len() >= 4 && n.network().is_multicast(),
            IpNet::V6(n) => n.prefix_len() >= 8 && n.network().is_multicast(),
        };
        if !multicast || g.get_ref().trunc() != *g.get_ref() {
            return Err((
                g.span(),
                format!("tunnel {name:?}: multicast: {} is not a multicast prefix (within 224.0.0.0/4 or ff00::/8, host bits zero)", g.get_ref()),
            ));
        }
    }
    if spec.rate == 0 {
        return Err((m.span(), format!("tunnel {name:?}: multicast: rate must be at least 1 replica per second")));
    }
    Ok(Multicast { groups: spec.groups.iter().map(|g| *g.get_ref()).collect(), rate: spec.rate })
}

/// A configuration error: where and what.
#[derive(Debug)]
pub struct Error {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
    }
}

impl std::error::Error for Error {}

/// Reads and validates a configuration file.
///
/// # Errors
/// The file cannot be read, is not valid TOML for this schema, or fails validation.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    Ok(parse(path, &text)?)
}

/// Parses and validates configuration text; `path` is only used in messages.
///
/// # Errors
/// The first problem found, with its position.
#[expect(clippy::too_many_lines, reason = "one check after the other, in file order")]
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = position(text, span.start);
        Error { file: path.to_path_buf(), line, column, message }
    };
    let file: File = toml::from_str(text).map_err(|e| at(e.span().unwrap_or(0..0), e.message().trim_end().to_string()))?;

    let mut interfaces = HashSet::new();
    for i in &file.interfaces {
        if !valid_ifname(i.name.get_ref(), 15) {
            return Err(at(i.name.span(), format!("interface name {:?} is not a valid interface name", i.name.get_ref())));
        }
        if !interfaces.insert(i.name.get_ref().clone()) {
            return Err(at(i.name.span(), format!("interface {:?} is listed twice", i.name.get_ref())));
        }
    }
    if file.tunnels.len() > MAX_TUNNELS as usize {
        return Err(at(0..0, format!("{} tunnels configured; one instance holds at most {MAX_TUNNELS}", file.tunnels.len())));
    }

    let mut tunnels: Vec<Tunnel> = Vec::new();
    let mut names = HashSet::new();
    let mut matches = HashMap::new();
    let mut networks: HashMap<u32, &str> = HashMap::new();
    for t in &file.tunnels {
        let name = t.name.get_ref();
        if !valid_ifname(name, MAX_TUNNEL_NAME) {
            return Err(at(t.name.span(), format!("tunnel name {name:?} must be 1 to {MAX_TUNNEL_NAME} characters of letters, digits, '-', '_' or '.'")));
        }
        if interfaces.contains(name) {
            return Err(at(t.name.span(), format!("tunnel name {name:?} is also an underlay interface")));
        }
        if !names.insert(name.clone()) {
            return Err(at(t.name.span(), format!("tunnel {name:?} is defined twice")));
        }
        if !interfaces.contains(t.interface.get_ref()) {
            return Err(at(t.interface.span(), format!("tunnel {name:?}: interface {:?} is not declared in an [[interface]] section", t.interface.get_ref())));
        }
        if file.interfaces.iter().any(|i| i.name.get_ref() == t.interface.get_ref() && i.role == Role::Lan) {
            return Err(at(t.interface.span(), format!("tunnel {name:?}: interface {:?} is a LAN port, not an underlay one", t.interface.get_ref())));
        }
        let local = *t.local.get_ref();
        let multipoint = t.remote.is_none();
        let unspecified = if local.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
        let remote = t.remote.as_ref().map_or(unspecified, |r| *r.get_ref());
        let mut checked = vec![(local, t.local.span(), "local")];
        if let Some(r) = &t.remote {
            checked.push((remote, r.span(), "remote"));
        }
        for (addr, span, what) in checked {
            if !unicast(addr) {
                return Err(at(span, format!("tunnel {name:?}: {what} {addr} must be a global or site unicast address")));
            }
        }
        if let Some(r) = &t.remote {
            if local.is_ipv4() != remote.is_ipv4() {
                return Err(at(r.span(), format!("tunnel {name:?}: remote {remote} is not of the same family as local {local}")));
            }
            if local == remote {
                return Err(at(r.span(), format!("tunnel {name:?}: remote is the same address as local")));
            }
        }
        let multipoint_only = [
            (t.nhs.as_ref().map(Spanned::span), "nhs"),
            (t.strict.as_ref().filter(|s| *s.get_ref()).map(Spanned::span), "strict"),
            (t.multicast.as_ref().map(Spanned::span), "multicast"),
            ((t.seq || t.iseq).then(|| t.name.span()).filter(|_| multipoint), "iseq"),
        ];
        for (span, what) in multipoint_only {
            match (span, multipoint) {
                (Some(span), true) if what == "iseq" => {
                    // One expected number for all peers would drop every peer's packets but
                    // the fastest sender's.
                    return Err(at(span, format!("tunnel {name:?}: iseq/seq is for point-to-point tunnels (one sequence per remote)")));
                }
                (Some(span), false) if what != "iseq" => {
                    return Err(at(span, format!("tunnel {name:?}: {what} is for multipoint tunnels (without remote)")));
                }
                _ => {}
            }
        }
        let nhs = match &t.nhs {
            None => vec![],
            Some(n) => nhs_list(name, n.get_ref()).map_err(|message| at(n.span(), message))?,
        };
        let multicast = match &t.multicast {
            None => Multicast::default(),
            Some(m) => multicast(name, m).map_err(|(span, message)| at(span, message))?,
        };
        if let Some(n) = &t.nhrp {
            let reason = if !multipoint {
                Some("NHRP runs on multipoint tunnels (without remote)".to_string())
            } else if n.get_ref().network_id == 0 {
                Some("network_id is 1 or more".to_string())
            } else if n.get_ref().holdtime < 3 {
                Some("holdtime must be at least 3 seconds".to_string())
            } else if n.get_ref().auth.as_ref().is_some_and(|a| a.len() > 8) {
                Some("auth is at most 8 bytes, as Cisco's".to_string())
            } else if t.oseq {
                Some("NHRP does not run with oseq: the datapath numbers the tunnel's packets, and NHRP's would break its sequence".to_string())
            } else if n.get_ref().role == NhrpRole::Nhc && nhs.is_empty() {
                Some("a spoke (nhc) needs `nhs`, the hub's overlay address".to_string())
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(at(n.span(), format!("tunnel {name:?}: nhrp: {reason}")));
            }
            if let Some(other) = networks.insert(n.get_ref().network_id, name) {
                return Err(at(n.span(), format!("tunnel {name:?}: nhrp: network_id {} is tunnel {other:?}'s already", n.get_ref().network_id)));
            }
        }
        if multipoint && (t.mode == Mode::Gretap || t.keepalive.is_some()) {
            return Err(at(t.name.span(), format!("tunnel {name:?}: a multipoint tunnel is gre without keepalives")));
        }
        let flowlabel = match &t.flowlabel {
            None => Setting::Fixed(0),
            Some(f) if local.is_ipv4() => {
                return Err(at(f.span(), format!("tunnel {name:?}: flowlabel is for IPv6 outer headers only")));
            }
            Some(f) => match *f.get_ref() {
                Setting::Fixed(v) if v > 0xf_ffff => {
                    return Err(at(f.span(), format!("tunnel {name:?}: flowlabel {v} does not fit in 20 bits")));
                }
                s => s,
            },
        };
        let ignore_df = t.ignore_df.as_ref().is_some_and(|s| *s.get_ref());
        if let Some(s) = t.ignore_df.as_ref().filter(|_| ignore_df && t.pmtudisc) {
            return Err(at(s.span(), format!("tunnel {name:?}: ignore_df needs pmtudisc = false (as ip(8): nopmtudisc ignore-df)")));
        }
        if let (Some(k), Some(other)) = (&t.key, t.ikey.as_ref().or(t.okey.as_ref())) {
            {
                return Err(at(
                    other.span(),
                    format!("tunnel {name:?}: `key` sets both directions (line {}); give either `key` or `ikey`/`okey`", position(text, k.span().start).0),
                ));
            }
        }
        let ikey = t.key.as_ref().or(t.ikey.as_ref()).map(|k| *k.get_ref());
        let okey = t.key.as_ref().or(t.okey.as_ref()).map(|k| *k.get_ref());
        let rx = (local, remote, ikey, t.mode);
        if let Some(other) = matches.insert(rx, name.clone()) {
            let key = ikey.map_or_else(|| "no key".to_string(), |k| format!("key {k}"));
            return Err(at(
                t.name.span(),
                format!(
                    "tunnel {name:?}: tunnel {other:?} already receives {} from {remote} to {local} with {key}",
                    if t.mode == Mode::Gretap { "frames" } else { "packets" }
                ),
            ));
        }
        if let Some(k) = &t.keepalive {
            let ka = k.get_ref();
            let reason = if ka.period == 0 || ka.retries == 0 {
                Some("period and retries must be at least 1")
            } else if !local.is_ipv4() || t.mode != Mode::Gre {
                Some("keepalives are for gre tunnels over IPv4, as Cisco's")
            } else if t.csum || t.ocsum || t.seq || t.oseq {
                Some("keepalives cannot be combined with ocsum or oseq (they are sent outside the datapath)")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(at(k.span(), format!("tunnel {name:?}: keepalive: {reason}")));
            }
        }
        if let Some(p) = &t.protection {
            let spec = p.get_ref();
            let certs = [&spec.cert, &spec.key, &spec.ca].iter().filter(|c| c.is_some()).count();
            let reason = if local.is_ipv6() {
                Some("IPv6 underlays are not protected yet (the kernel forwards IPv6 only with forwarding on everywhere)")
            } else if spec.psk.is_some() == (certs > 0) {
                Some("give either psk or cert, key and ca")
            } else if certs != 0 && certs != 3 {
                Some("cert, key and ca go together")
            } else if t.keepalive.is_some() {
                Some("keepalives are not sent protected; charon's dead peer detection watches the SA")
            } else if spec.rekey_time.is_some_and(|s| s < 10) {
                Some("rekey_time: at least 10 seconds")
            } else if spec.psk.as_ref().is_some_and(|k| k.len() < 16) {
                Some("psk: at least 16 characters")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(at(p.span(), format!("tunnel {name:?}: protection: {reason}")));
            }
        }
        let mut seen = HashSet::new();
        for a in &t.address {
            if !seen.insert(*a.get_ref()) {
                return Err(at(a.span(), format!("tunnel {name:?}: address {} is listed twice", a.get_ref())));
            }
        }
        tunnels.push(Tunnel {
            name: name.clone(),
            mode: t.mode,
            interface: t.interface.get_ref().clone(),
            local,
            remote,
            multipoint,
            nhs,
            // A hub admits a spoke's GRE once NHRP has registered it.
            strict: t.strict.as_ref().map_or(t.nhrp.is_some(), |s| *s.get_ref()),
            multicast,
            ikey,
            okey,
            icsum: t.csum || t.icsum,
            ocsum: t.csum || t.ocsum,
            iseq: t.seq || t.iseq,
            oseq: t.seq || t.oseq,
            ttl: match t.ttl {
                Setting::Fixed(0) => Setting::Inherit,
                ttl => ttl,
            },
            tos: t.tos,
            flowlabel,
            pmtudisc: t.pmtudisc,
            ignore_df,
            addresses: t.address.iter().map(|a| *a.get_ref()).collect(),
            keepalive: t.keepalive.as_ref().map(|k| *k.get_ref()),
            nhrp: t.nhrp.as_ref().map(|n| n.get_ref().clone()),
            protection: t.protection.as_ref().map(|p| p.get_ref().clone()),
        });
    }
    let limits = file.limits.as_ref().map_or_else(Limits::default, |l| *l.get_ref());
    if !(1..=LIMIT_PEERS_MAX).contains(&limits.peers) || !(1..=LIMIT_ROUTES_MAX).contains(&limits.routes) {
        let span = file.limits.as_ref().map_or(0..0, toml::Spanned::span);
        return Err(at(span, format!("limits: peers must be 1 to {LIMIT_PEERS_MAX} and routes 1 to {LIMIT_ROUTES_MAX}")));
    }
    let mut routes: Vec<Route> = Vec::new();
    for r in &file.routes {
        let prefix = r.prefix.get_ref().trunc();
        let Some(tunnel) = tunnels.iter().position(|t| &t.name == r.tunnel.get_ref()) else {
            return Err(at(r.tunnel.span(), format!("route {prefix}: no tunnel named {:?}", r.tunnel.get_ref())));
        };
        if routes.iter().any(|other| other.prefix == prefix) {
            return Err(at(r.prefix.span(), format!("route {prefix} is listed twice")));
        }
        if routes.len() >= limits.routes as usize {
            return Err(at(r.prefix.span(), format!("more than {} routes (limits.routes)", limits.routes)));
        }
        let via = r.via.as_ref().map(|v| *v.get_ref());
        if let (Some(v), false) = (&r.via, tunnels[tunnel].multipoint) {
            return Err(at(v.span(), format!("route {prefix}: via is for multipoint tunnels")));
        }
        routes.push(Route { prefix, tunnel, via });
    }
    let mut peers: Vec<Peer> = Vec::new();
    for p in &file.peers {
        let Some(tunnel) = tunnels.iter().position(|t| &t.name == p.tunnel.get_ref()) else {
            return Err(at(p.tunnel.span(), format!("peer: no tunnel named {:?}", p.tunnel.get_ref())));
        };
        if !tunnels[tunnel].multipoint {
            return Err(at(p.tunnel.span(), format!("peer: tunnel {:?} is point to point", p.tunnel.get_ref())));
        }
        let (overlay, nbma) = (*p.overlay.get_ref(), *p.nbma.get_ref());
        if nbma.is_ipv4() != tunnels[tunnel].local.is_ipv4() || !unicast(nbma) {
            return Err(at(p.nbma.span(), format!("peer {overlay}: NBMA address {nbma} must be unicast, of the tunnel's outer family")));
        }
        if peers.iter().any(|q| q.tunnel == tunnel && q.overlay == overlay) {
            return Err(at(p.overlay.span(), format!("peer {overlay} is listed twice")));
        }
        if peers.len() >= limits.peers as usize {
            return Err(at(p.overlay.span(), format!("more than {} peers (limits.peers)", limits.peers)));
        }
        peers.push(Peer { tunnel, overlay, nbma, multicast: p.multicast });
    }
    Ok(Config { interfaces: file.interfaces, tunnels, routes, peers, metrics: file.metrics, limits })
}

/// 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

/// An address a tunnel can use as an endpoint.
pub(crate) fn unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_loopback() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback() || v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some()),
    }
}

fn valid_ifname(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name != "." && name != ".." && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Config {
    /// Puts every tunnel on one underlay interface (`gre up --iface`), keeping the XDP mode of
    /// the first declared interface and the LAN ports.
    pub fn override_interface(&mut self, iface: &str) {
        let mode = self.interfaces.first().map(|i| i.xdp_mode).unwrap_or_default();
        self.interfaces.retain(|i| i.role == Role::Lan);
        self.interfaces.insert(0, Interface { name: Spanned::new(0..0, iface.to_string()), role: Role::Underlay, xdp_mode: mode });
        for t in &mut self.tunnels {
            t.interface = iface.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[interface]]
name = "eth0"

[[tunnel]]
name = "gre0"
interface = "eth0"
local = "198.51.100.2"
remote = "198.51.100.66"
key = 42
ttl = 64
address = ["203.0.113.1/30", "2001:db8:100::1/64"]

[[tunnel]]
name = "gre1"
interface = "eth0"
local = "198.51.100.2"
remote = "198.51.100.66"
ikey = 7
okey = 8
pmtudisc = false
"#;

    fn err(text: &str) -> Error {
        parse(Path::new("test.toml"), text).expect_err("config should be rejected")
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse(Path::new("test.toml"), GOOD).unwrap();
        assert_eq!(c.interfaces.len(), 1);
        assert_eq!(c.interfaces[0].xdp_mode, XdpMode::Auto);
        let t = &c.tunnels[0];
        assert_eq!((t.ikey, t.okey, t.ttl, t.pmtudisc), (Some(42), Some(42), Setting::Fixed(64), true));
        assert_eq!((t.tos, t.overhead()), (Setting::Fixed(0), 28));
        assert_eq!(t.addresses, vec!["203.0.113.1/30".parse::<IpNet>().unwrap(), "2001:db8:100::1/64".parse().unwrap()]);
        assert_eq!(t.inject_name(), "gre0-dp");
        let t = &c.tunnels[1];
        assert_eq!((t.ikey, t.okey, t.ttl, t.pmtudisc), (Some(7), Some(8), Setting::Inherit, false));
    }

    #[test]
    fn ip6gre_with_every_option() {
        use gre_common::maps::tunnel_flags as f;
        let text = r#"
[[interface]]
name = "eth0"
xdp_mode = "native"

[[tunnel]]
name = "g6"
interface = "eth0"
local = "2001:db8::1"
remote = "2001:db8::2"
key = 5
csum = true
iseq = true
oseq = true
ttl = "inherit"
tos = "inherit"
flowlabel = 12345
pmtudisc = false
ignore_df = true
"#;
        let c = parse(Path::new("t.toml"), text).unwrap();
        let t = &c.tunnels[0];
        assert!(t.outer_v6() && t.icsum && t.ocsum && t.iseq && t.oseq && t.ignore_df);
        assert_eq!((t.ttl, t.tos, t.flowlabel), (Setting::Inherit, Setting::Inherit, Setting::Fixed(12345)));
        // IPv6 40 + GRE 4 + checksum 4 + key 4 + sequence 4.
        assert_eq!(t.overhead(), 56);
        assert_eq!(
            t.datapath_flags(),
            f::IKEY | f::OKEY | f::ICSUM | f::OCSUM | f::ISEQ | f::OSEQ | f::TOS_INHERIT | f::OUTER_V6 | f::NOPMTUDISC | f::IGNORE_DF
        );
        let e = parse(Path::new("t.toml"), &text.replace("12345", "\"inherit\"").replace("2001:db8::2", "fe80::2")).unwrap_err();
        assert!(e.message.contains("fe80::2 must be a global"), "{e}");
        let e = parse(Path::new("t.toml"), &text.replace("12345", "1048576")).unwrap_err();
        assert!(e.message.contains("does not fit in 20 bits"), "{e}");
    }

    #[test]
    fn protection_takes_a_psk_or_certificates() {
        use gre_common::maps::tunnel_flags as f;
        let protected = format!("{GOOD}\n[tunnel.protection]\npsk = \"sixteen or more chars\"\n");
        let c = parse(Path::new("t.toml"), &protected).unwrap();
        let t = &c.tunnels[1];
        assert!(t.protection.is_some() && t.datapath_flags() & f::PROTECTED != 0);
        // GRE with keys 28 bytes, and room for ESP.
        assert_eq!(t.overhead(), 28 + ESP_OVERHEAD);
        assert_eq!(t.protection.as_ref().unwrap().vici, PathBuf::from("/var/run/charon.vici"));
        let e = err(&protected.replace("sixteen or more chars", "short"));
        assert!(e.message.contains("psk: at least 16 characters") && e.line == 23, "{e}");
        let e = err(&format!("{protected}cert = \"/etc/swanctl/x509/a.pem\"\n"));
        assert!(e.message.contains("either psk or cert, key and ca"), "{e}");
        let e = err(&protected.replace("psk = \"sixteen or more chars\"", "cert = \"a.pem\"\nkey = \"a.key\""));
        assert!(e.message.contains("cert, key and ca go together"), "{e}");
        assert!(
            parse(Path::new("t.toml"), &protected.replace("psk = \"sixteen or more chars\"", "cert = \"a.pem\"\nkey = \"a.key\"\nca = \"ca.pem\"")).is_ok()
        );
        // What lists a tunnel's settings (a refused reload) never shows the key.
        assert!(!format!("{t:?}").contains("sixteen or more chars"), "{t:?}");
    }

    #[test]
    fn routes_and_lan_ports() {
        let text = format!("{GOOD}\n[[interface]]\nname = \"lan0\"\nrole = \"lan\"\n\n[[route]]\nprefix = \"203.0.113.130/26\"\ntunnel = \"gre1\"\n");
        let c = parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(c.routes, vec![Route { prefix: "203.0.113.128/26".parse().unwrap(), tunnel: 1, via: None }]);
        assert_eq!(c.interfaces[1].role, Role::Lan);
        let e = parse(Path::new("t.toml"), &text.replace("tunnel = \"gre1\"\n", "tunnel = \"gre9\"\n")).unwrap_err();
        assert!(e.message.contains("no tunnel named \"gre9\""), "{e}");
        let e = parse(Path::new("t.toml"), &text.replace("name = \"eth0\"\n", "name = \"eth0\"\nrole = \"lan\"\n")).unwrap_err();
        assert!(e.message.contains("is a LAN port"), "{e}");
    }

    #[test]
    fn limits_size_the_tables() {
        let c = parse(Path::new("t.toml"), GOOD).unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = parse(Path::new("t.toml"), &format!("{GOOD}\n[limits]\npeers = 1048576\nroutes = 4\n")).unwrap();
        assert_eq!(c.limits, Limits { peers: 1 << 20, routes: 4 });
        let text = format!("{GOOD}\n[limits]\npeers = 0\n");
        let e = parse(Path::new("t.toml"), &text).unwrap_err();
        let line = text.lines().position(|l| l == "peers = 0").unwrap() + 1;
        assert!(e.message.contains("limits: peers must be 1 to"), "{e}");
        assert!(e.line + 1 >= line && e.line <= line, "{e} (peers = 0 is on line {line})");
        let route = |p: &str| format!("\n[[route]]\nprefix = \"{p}\"\ntunnel = \"gre1\"\n");
        let text = format!("{GOOD}\n[limits]\nroutes = 1\n{}{}", route("203.0.113.0/28"), route("203.0.113.16/28"));
        let e = parse(Path::new("t.toml"), &text).unwrap_err();
        assert!(e.message.contains("more than 1 routes (limits.routes)"), "{e}");
        assert_eq!(e.line, text.lines().position(|l| l.contains("203.0.113.16/28")).unwrap() + 1, "{e}");
    }

    #[test]
    fn unknown_field_names_line() {
        let e = err("[[interface]]\nname = \"eth0\"\nmtu = 9000\n");
        assert_eq!((e.line, e.column), (3, 1));
        assert!(e.message.contains("unknown field `mtu`"), "{}", e.message);
        assert!(e.to_string().starts_with("test.toml:3:1: "), "{e}");
    }

    #[test]
    fn bad_address_names_line() {
        let text = GOOD.replace("remote = \"198.51.100.66\"\nkey", "remote = \"198.51.100.666\"\nkey");
        let e = err(&text);
        assert_eq!((e.line, e.column), (9, 10), "{e}");
        assert!(e.message.contains("invalid IP address"), "{}", e.message);
    }

    #[test]
    fn undeclared_interface() {
        let e = err(&GOOD.replacen("interface = \"eth0\"", "interface = \"eth9\"", 1));
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("\"eth9\" is not declared"), "{}", e.message);
    }

    #[test]
    fn duplicate_match_is_rejected() {
        let e = err(&GOOD.replace("ikey = 7\nokey = 8", "key = 42"));
        assert_eq!(e.line, 15, "{e}");
        assert!(e.message.contains("already receives packets from 198.51.100.66 to 198.51.100.2 with key 42"), "{}", e.message);
        // A gretap may share endpoints and key with a gre tunnel, as in the kernel.
        let c = parse(Path::new("test.toml"), &GOOD.replace("ikey = 7\nokey = 8", "key = 42\nmode = \"gretap\"")).unwrap();
        assert_eq!((c.tunnels[1].mode, c.tunnels[1].overhead()), (Mode::Gretap, 28 + 14));
    }

    #[test]
    fn key_with_ikey_is_ambiguous() {
        let e = err(&GOOD.replace("key = 42\n", "key = 42\nikey = 1\n"));
        assert_eq!(e.line, 11, "{e}");
        assert!(e.message.contains("(line 10); give either `key` or `ikey`/`okey`"), "{}", e.message);
    }

    #[test]
    fn rejects_names_addresses_and_values() {
        assert!(err(&GOOD.replace("gre1", "much-too-long-name")).message.contains("1 to 12 characters"));
        assert!(err(&GOOD.replace("gre1", "gre0")).message.contains("defined twice"));
        assert!(err(&GOOD.replace("198.51.100.66\"\nkey", "2001:db8::1\"\nkey")).message.contains("not of the same family"));
        assert!(err(&GOOD.replace("ttl = 64", "ttl = \"inheritt\"")).message.contains("or \"inherit\""));
        assert!(err(&GOOD.replace("ttl = 64", "flowlabel = 1")).message.contains("IPv6 outer headers only"));
        assert!(err(&GOOD.replace("ttl = 64", "ignore_df = true")).message.contains("needs pmtudisc = false"));
        assert!(err(&GOOD.replace("198.51.100.66\"\nkey", "224.0.0.5\"\nkey")).message.contains("unicast"));
        assert!(err(&GOOD.replace("198.51.100.66\"\nkey", "198.51.100.2\"\nkey")).message.contains("same address"));
        assert!(err(&GOOD.replace("ttl = 64", "ttl = 300")).message.contains("invalid value: integer `300`"));
        assert!(err(&GOOD.replace("/30", "/33")).message.contains("invalid IP address"));
        assert!(err(&GOOD.replace("\"2001:db8:100::1/64\"", "\"203.0.113.1/30\"")).message.contains("listed twice"));
        assert!(err(&GOOD.replace("name = \"eth0\"", "name = \"eth0\"\nxdp_mode = \"turbo\"")).message.contains("unknown variant"));
    }

    #[test]
    fn nhrp_settings_are_checked() {
        let text = r#"
[[interface]]
name = "eth0"

[[tunnel]]
name = "dmvpn0"
interface = "eth0"
local = "198.51.100.17"
key = 100
nhs = "203.0.113.254"
nhrp = { role = "nhc", holdtime = 60 }
"#;
        let c = parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(c.tunnels[0].nhrp.as_ref().map(|n| (n.network_id, n.holdtime)), Some((1, 60)));
        assert_eq!(c.tunnels[0].nhs, [("203.0.113.254".parse().unwrap(), 0)]);
        // Several NHSs, with priorities or without; at most four, each once, no other keys.
        let two = text.replace("nhs = \"203.0.113.254\"", "nhs = [{ address = \"203.0.113.254\", priority = 2 }, \"203.0.113.253\"]");
        let c2 = parse(Path::new("t.toml"), &two).unwrap();
        assert_eq!(c2.tunnels[0].nhs, [("203.0.113.254".parse().unwrap(), 2), ("203.0.113.253".parse().unwrap(), 0)]);
        let five = text.replace("nhs = \"203.0.113.254\"", "nhs = [\"203.0.113.1\", \"203.0.113.2\", \"203.0.113.3\", \"203.0.113.4\", \"203.0.113.5\"]");
        let e = err(&five);
        assert!(e.message.contains("1 to 4 servers") && e.line == 10, "{e:?}");
        assert!(err(&text.replace("nhs = \"203.0.113.254\"", "nhs = [\"203.0.113.1\", \"203.0.113.1\"]")).message.contains("listed twice"));
        assert!(parse(Path::new("t.toml"), &text.replace("nhs = \"203.0.113.254\"", "nhs = [{ address = \"203.0.113.1\", prio = 1 }]")).is_err());
        // With NHRP a tunnel is strict unless told otherwise; one iseq for all peers is refused.
        assert!(c.tunnels[0].strict);
        let open = parse(Path::new("t.toml"), &text.replace("key = 100", "key = 100\nstrict = false")).unwrap();
        assert!(!open.tunnels[0].strict);
        assert!(err(&text.replace("key = 100", "key = 100\niseq = true")).message.contains("iseq/seq is for point-to-point tunnels"));
        assert!(err(&text.replace("key = 100", "key = 100\nseq = true")).message.contains("iseq/seq is for point-to-point tunnels"));
        assert!(err(&text.replace("key = 100", "key = 100\noseq = true")).message.contains("NHRP does not run with oseq"));
        assert!(parse(Path::new("t.toml"), &text.replace("key = 100", "key = 100\ncsum = true")).is_ok(), "NHRP carries checksums");
        // Multicast: link-local scopes by default; other groups by name, multicast ones only.
        assert_eq!(c.tunnels[0].multicast, Multicast::default());
        assert_eq!(Multicast::default().groups.iter().map(ToString::to_string).collect::<Vec<_>>(), ["224.0.0.0/24", "ff02::/16"]);
        let wide = parse(Path::new("t.toml"), &text.replace("key = 100", "key = 100\nmulticast = { groups = [\"233.252.0.0/24\"], rate = 50 }")).unwrap();
        assert_eq!(wide.tunnels[0].multicast, Multicast { groups: vec!["233.252.0.0/24".parse().unwrap()], rate: 50 });
        let e = err(&text.replace("key = 100", "key = 100\nmulticast = { groups = [\"203.0.113.0/24\"] }"));
        assert!(e.message.contains("203.0.113.0/24 is not a multicast prefix") && e.line == 10, "{e}");
        assert!(err(&text.replace("key = 100", "key = 100\nmulticast = { rate = 0 }")).message.contains("at least 1 replica"));
        assert!(
            err(&text
                .replace("key = 100", "key = 100\nmulticast = { groups = [\"224.0.0.0/24\", \"224.0.1.0/24\", \"ff02::/16\", \"ff05::/16\", \"ff0e::/16\"] }"))
            .message
            .contains("at most 4 groups")
        );
        let second = text.split("[[tunnel]]").nth(1).unwrap().replace("dmvpn0", "dmvpn1").replace("key = 100", "key = 101");
        let e = parse(Path::new("t.toml"), &format!("{text}\n[[tunnel]]{second}")).unwrap_err();
        assert!(e.message.contains("network_id 1 is tunnel \"dmvpn0\"'s already"), "{e}");
        assert_eq!(e.line, 19, "{e}");
        let other = second.replace("holdtime = 60", "holdtime = 60, network_id = 2");
        assert!(parse(Path::new("t.toml"), &format!("{text}\n[[tunnel]]{other}")).is_ok());
        assert!(err(&text.replace("holdtime = 60", "network_id = 0")).message.contains("network_id is 1 or more"));
        assert!(err(&text.replace("holdtime = 60", "holdtime = 2")).message.contains("at least 3 seconds"));
        assert!(err(&text.replace("nhs = \"203.0.113.254\"\n", "")).message.contains("needs `nhs`"));
        // Over IPv6 NBMA (the overlay stays IPv4).
        assert!(parse(Path::new("t.toml"), &text.replace("198.51.100.17", "2001:db8:1::17")).is_ok());
        // An IPv6 NHS: IPv6 NHRP (protocol type 0x86DD) beside IPv4's.
        assert_eq!(
            parse(Path::new("t.toml"), &text.replace("203.0.113.254", "2001:db8:100::1")).unwrap().tunnels[0].nhs,
            [("2001:db8:100::1".parse().unwrap(), 0)]
        );
        // A hub may register with a hub of its own (hierarchical DMVPN).
        assert!(parse(Path::new("t.toml"), &text.replace("role = \"nhc\"", "role = \"nhs\"")).is_ok());
    }
}
