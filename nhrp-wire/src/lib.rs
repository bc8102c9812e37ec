//! The NHRP wire format (RFC 2332 §5): fixed header, mandatory part, client information entries
//! (CIEs) and extensions. Decoding keeps every field as it was on the wire, so that encoding what
//! was decoded gives the same bytes; it never panics, whatever the input.

use std::{fmt, net::IpAddr};

use serde::Serialize;

/// GRE protocol type (and EtherType) of NHRP.
pub const GRE_PROTOCOL: u16 = 0x2001;
pub const VERSION: u8 = 1;
pub const FIXED_HEADER_LEN: usize = 20;
/// Source and destination protocol lengths, flags and request ID.
pub const MANDATORY_COMMON_LEN: usize = 8;
pub const CIE_FIXED_LEN: usize = 12;
/// The compulsory bit of an extension type.
pub const COMPULSORY: u16 = 0x8000;

/// Address family numbers (ar$afn) and protocol types (ar$pro.type) we can show as addresses.
pub const AFN_IPV4: u16 = 1;
pub const AFN_IPV6: u16 = 2;

/// Packet types (ar$op.type).
pub mod kind {
    pub const RESOLUTION_REQUEST: u8 = 1;
    pub const RESOLUTION_REPLY: u8 = 2;
    pub const REGISTRATION_REQUEST: u8 = 3;
    pub const REGISTRATION_REPLY: u8 = 4;
    pub const PURGE_REQUEST: u8 = 5;
    pub const PURGE_REPLY: u8 = 6;
    pub const ERROR_INDICATION: u8 = 7;
    pub const TRAFFIC_INDICATION: u8 = 8;

    /// The name of a packet type.
    #[must_use]
    pub fn name(k: u8) -> &'static str {
        match k {
            RESOLUTION_REQUEST => "Resolution Request",
            RESOLUTION_REPLY => "Resolution Reply",
            REGISTRATION_REQUEST => "Registration Request",
            REGISTRATION_REPLY => "Registration Reply",
            PURGE_REQUEST => "Purge Request",
            PURGE_REPLY => "Purge Reply",
            ERROR_INDICATION => "Error Indication",
            TRAFFIC_INDICATION => "Traffic Indication",
            _ => "Unknown",
        }
    }
}

/// Extension types (without the compulsory bit).
pub mod ext {
    pub const END: u16 = 0;
    pub const RESPONDER_ADDRESS: u16 = 3;
    pub const FORWARD_TRANSIT_NHS: u16 = 4;
    pub const REVERSE_TRANSIT_NHS: u16 = 5;
    pub const AUTHENTICATION: u16 = 7;
    pub const VENDOR_PRIVATE: u16 = 8;
    /// Cisco's NAT address extension (also FRR's).
    pub const NAT_ADDRESS: u16 = 9;

    /// The name of an extension type.
    #[must_use]
    pub fn name(t: u16) -> &'static str {
        match t {
            END => "End",
            RESPONDER_ADDRESS => "Responder Address",
            FORWARD_TRANSIT_NHS => "Forward Transit NHS Record",
            REVERSE_TRANSIT_NHS => "Reverse Transit NHS Record",
            AUTHENTICATION => "Authentication",
            VENDOR_PRIVATE => "Vendor-Private",
            NAT_ADDRESS => "NAT Address",
            _ => "Unknown",
        }
    }

    /// Extensions this implementation understands; a compulsory one outside this list makes a
    /// packet be refused with an Error Indication (RFC 2332 §5.3). Vendor-Private is understood
    /// as "not ours" (no vendor's private data is used here): read past when optional, refused
    /// when compulsory, as for any vendor whose ID is not ours.
    #[must_use]
    pub const fn understood(t: u16) -> bool {
        matches!(t, END | RESPONDER_ADDRESS | FORWARD_TRANSIT_NHS | REVERSE_TRANSIT_NHS | AUTHENTICATION | NAT_ADDRESS)
    }

    /// Extensions whose body is a list of CIEs.
    #[must_use]
    pub const fn carries_cies(t: u16) -> bool {
        matches!(t, RESPONDER_ADDRESS | FORWARD_TRANSIT_NHS | REVERSE_TRANSIT_NHS | NAT_ADDRESS)
    }
}

/// Error Indication codes (RFC 2332 §5.2.7).
pub mod error_code {
    pub const UNRECOGNIZED_EXTENSION: u16 = 1;
    pub const LOOP_DETECTED: u16 = 3;
    pub const PROTOCOL_ADDRESS_UNREACHABLE: u16 = 6;
    pub const PROTOCOL_ERROR: u16 = 7;
    pub const SDU_SIZE_EXCEEDED: u16 = 8;
    pub const INVALID_EXTENSION: u16 = 9;
    pub const INVALID_RESOLUTION_REPLY: u16 = 10;
    pub const AUTHENTICATION_FAILURE: u16 = 11;
    pub const HOP_COUNT_EXCEEDED: u16 = 15;

    /// The name of an error code.
    #[must_use]
    pub fn name(c: u16) -> &'static str {
        match c {
            UNRECOGNIZED_EXTENSION => "Unrecognized Extension",
            LOOP_DETECTED => "NHRP Loop Detected",
            PROTOCOL_ADDRESS_UNREACHABLE => "Protocol Address Unreachable",
            PROTOCOL_ERROR => "Protocol Error",
            SDU_SIZE_EXCEEDED => "NHRP SDU Size Exceeded",
            INVALID_EXTENSION => "Invalid Extension",
            INVALID_RESOLUTION_REPLY => "Invalid NHRP Resolution Reply Received",
            AUTHENTICATION_FAILURE => "Authentication Failure",
            HOP_COUNT_EXCEEDED => "Hop Count Exceeded",
            _ => "Unknown",
        }
    }
}

/// Flags of the mandatory part, one set per message type (RFC 2332 §5.2; Cisco's NAT bit).
pub mod flags {
    /// Resolution Request and Reply (§5.2.1, §5.2.2).
    pub mod resolution {
        /// Q: the requester is a router.
        pub const Q: u16 = 0x8000;
        /// A: the reply comes from the NHS that serves the target (authoritative).
        pub const A: u16 = 0x4000;
        /// D: the association between the target and its NBMA address is stable.
        pub const D: u16 = 0x2000;
        /// U: the target's binding is unique.
        pub const U: u16 = 0x1000;
        /// S: the association between the source and its NBMA address is stable.
        pub const S: u16 = 0x0800;
        /// Cisco: the requester understands the NAT extension.
        pub const NAT: u16 = 0x0002;
    }
    /// Registration Request and Reply (§5.2.3, §5.2.4).
    pub mod registration {
        /// U: the binding is unique: no other NBMA address may claim the protocol address.
        pub const U: u16 = 0x8000;
        /// Cisco: the registrant understands the NAT extension.
        pub const NAT: u16 = 0x0002;
    }
    /// Purge Request and Reply (§5.2.5, §5.2.6).
    pub mod purge {
        /// N: no reply is expected.
        pub const N: u16 = 0x8000;
    }
}

/// A type/length octet (ar$shtl and the like) and the address it announces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Address {
    /// The octet as on the wire: bit 6 is the type (E.164 if set), the low six bits the length.
    pub type_len: u8,
    pub bytes: Vec<u8>,
}

impl Address {
    /// An NSAP-format address of these bytes.
    ///
    /// # Panics
    /// Never for addresses of IP length; longer than 63 bytes is not an NHRP address.
    #[must_use]
    pub fn nsap(bytes: &[u8]) -> Self {
        Self { type_len: u8::try_from(bytes.len()).expect("NHRP addresses are at most 63 bytes") & 0x3f, bytes: bytes.to_vec() }
    }

    /// The announced length.
    #[must_use]
    pub const fn len_of(type_len: u8) -> usize {
        (type_len & 0x3f) as usize
    }
}

/// A client information entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cie {
    pub code: u8,
    pub prefix_len: u8,
    pub unused: u16,
    pub mtu: u16,
    pub holding_time: u16,
    pub nbma: Address,
    pub nbma_sub: Address,
    pub proto: Vec<u8>,
    pub preference: u8,
}

/// The body of an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtBody {
    Cies(Vec<Cie>),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub compulsory: bool,
    /// Type without the compulsory bit (14 bits; bit 14 is reserved and kept here).
    pub kind: u16,
    pub body: ExtBody,
}

/// What follows the addresses of the mandatory part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Resolution, Registration, Purge: client information entries.
    Cies(Vec<Cie>),
    /// Error and Traffic Indication: the packet that caused it.
    Raw(Vec<u8>),
}

/// An NHRP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub afn: u16,
    pub protocol_type: u16,
    pub protocol_snap: [u8; 5],
    pub hop_count: u8,
    /// The checksum as on the wire (recomputed by [`Packet::encode`] when `fix_checksum`).
    pub checksum: u16,
    pub version: u8,
    pub kind: u8,
    pub src_nbma: Address,
    pub src_nbma_sub: Address,
    /// Flags (Resolution, Registration, Purge); for an Error Indication the unused field; for a
    /// Traffic Indication the traffic code.
    pub flags: u16,
    /// Request ID; for an Error Indication the error code (high half) and offset (low half).
    pub request_id: u32,
    pub src_proto: Vec<u8>,
    pub dst_proto: Vec<u8>,
    pub payload: Payload,
    pub extensions: Vec<Extension>,
    /// Bytes after the last extension up to the packet size (none in a well-formed packet).
    pub trailer: Vec<u8>,
    /// The extension offset pointed at the end of the packet though no extension followed
    /// (RFC 2332 says 0 then; kept so that the packet re-encodes to its own bytes).
    pub empty_extension_area: bool,
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The data ends before the field at this offset.
    Truncated { at: usize, what: &'static str },
    /// A length or offset points outside the packet.
    Bad { at: usize, what: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { at, what } => write!(f, "truncated at byte {at} ({what})"),
            Self::Bad { at, what } => write!(f, "invalid {what} at byte {at}"),
        }
    }
}

impl std::error::Error for Error {}

/// A bounds-checked reader.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(Error::Truncated { at: self.at, what })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn address(&mut self, type_len: u8, what: &'static str) -> Result<Address, Error> {
        Ok(Address { type_len, bytes: self.take(Address::len_of(type_len), what)?.to_vec() })
    }
}

fn cie(c: &mut Cursor<'_>) -> Result<Cie, Error> {
    let code = c.u8("CIE code")?;
    let prefix_len = c.u8("CIE prefix length")?;
    let unused = c.u16("CIE unused")?;
    let mtu = c.u16("CIE MTU")?;
    let holding_time = c.u16("CIE holding time")?;
    let nbma_tl = c.u8("CIE client address type/length")?;
    let sub_tl = c.u8("CIE client subaddress type/length")?;
    let proto_len = c.u8("CIE client protocol length")?;
    let preference = c.u8("CIE preference")?;
    let nbma = c.address(nbma_tl, "CIE client NBMA address")?;
    let nbma_sub = c.address(sub_tl, "CIE client NBMA subaddress")?;
    let proto = c.take(usize::from(proto_len), "CIE client protocol address")?.to_vec();
    Ok(Cie { code, prefix_len, unused, mtu, holding_time, nbma, nbma_sub, proto, preference })
}

fn cies(buf: &[u8], base: usize) -> Result<Vec<Cie>, Error> {
    let mut c = Cursor { buf, at: 0 };
    let mut out = Vec::new();
    while c.at < buf.len() {
        out.push(cie(&mut c).map_err(|e| shift(e, base))?);
    }
    Ok(out)
}

fn shift(e: Error, base: usize) -> Error {
    match e {
        Error::Truncated { at, what } => Error::Truncated { at: at + base, what },
        Error::Bad { at, what } => Error::Bad { at: at + base, what },
    }
}

impl Packet {
    /// Decodes an NHRP packet (the GRE payload). Bytes past the packet size are ignored.
    ///
    /// # Errors
    /// Where the packet is truncated or inconsistent.
    pub fn decode(buf: &[u8]) -> Result<Self, Error> {
        let mut c = Cursor { buf, at: 0 };
        let afn = c.u16("address family")?;
        let protocol_type = c.u16("protocol type")?;
        let mut protocol_snap = [0u8; 5];
        protocol_snap.copy_from_slice(c.take(5, "protocol SNAP")?);
        let hop_count = c.u8("hop count")?;
        let size = usize::from(c.u16("packet size")?);
        let checksum = c.u16("checksum")?;
        let extoff = usize::from(c.u16("extension offset")?);
        let version = c.u8("version")?;
        let kind = c.u8("packet type")?;
        let shtl = c.u8("source NBMA type/length")?;
        let sstl = c.u8("source NBMA subaddress type/length")?;
        if size < FIXED_HEADER_LEN {
            return Err(Error::Bad { at: 10, what: "packet size" });
        }
        if size > buf.len() {
            return Err(Error::Truncated { at: buf.len(), what: "packet (shorter than its size field)" });
        }
        let buf = &buf[..size];
        let mut c = Cursor { buf, at: c.at };
        let spl = c.u8("source protocol length")?;
        let dpl = c.u8("destination protocol length")?;
        let flags = c.u16("flags")?;
        let request_id = c.u32("request ID")?;
        let src_nbma = c.address(shtl, "source NBMA address")?;
        let src_nbma_sub = c.address(sstl, "source NBMA subaddress")?;
        let src_proto = c.take(usize::from(spl), "source protocol address")?.to_vec();
        let dst_proto = c.take(usize::from(dpl), "destination protocol address")?.to_vec();
        let body_end = if extoff == 0 { size } else { extoff };
        if body_end < c.at || body_end > size {
            return Err(Error::Bad { at: 14, what: "extension offset" });
        }
        let body = &buf[c.at..body_end];
        let payload = match kind {
            kind::ERROR_INDICATION | kind::TRAFFIC_INDICATION => Payload::Raw(body.to_vec()),
            _ => Payload::Cies(cies(body, c.at)?),
        };
        let mut extensions = Vec::new();
        let mut trailer = Vec::new();
        if extoff != 0 {
            let mut e = Cursor { buf, at: extoff };
            while e.at < size {
                let t = e.u16("extension type")?;
                let len = usize::from(e.u16("extension length")?);
                let start = e.at;
                let data = e.take(len, "extension body")?;
                let kind = t & !COMPULSORY;
                let body = if ext::carries_cies(kind & 0x3fff) { ExtBody::Cies(cies(data, start)?) } else { ExtBody::Raw(data.to_vec()) };
                extensions.push(Extension { compulsory: t & COMPULSORY != 0, kind, body });
                if kind & 0x3fff == ext::END {
                    trailer = buf[e.at..].to_vec();
                    break;
                }
            }
        }
        Ok(Self {
            afn,
            protocol_type,
            protocol_snap,
            hop_count,
            checksum,
            version,
            kind,
            src_nbma,
            src_nbma_sub,
            flags,
            request_id,
            src_proto,
            dst_proto,
            payload,
            empty_extension_area: extoff != 0 && extensions.is_empty(),
            extensions,
            trailer,
        })
    }

    /// Encodes the packet. With `fix_checksum` the checksum is computed; otherwise the stored
    /// one is written (to reproduce a capture).
    ///
    /// # Errors
    /// A length does not fit its field.
    pub fn encode(&self, fix_checksum: bool) -> Result<Vec<u8>, Error> {
        let len8 = |n: usize, what: &'static str| u8::try_from(n).map_err(|_| Error::Bad { at: 0, what });
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.afn.to_be_bytes());
        out.extend_from_slice(&self.protocol_type.to_be_bytes());
        out.extend_from_slice(&self.protocol_snap);
        out.push(self.hop_count);
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // size, checksum, extension offset
        out.push(self.version);
        out.push(self.kind);
        out.push(self.src_nbma.type_len);
        out.push(self.src_nbma_sub.type_len);
        out.push(len8(self.src_proto.len(), "source protocol length")?);
        out.push(len8(self.dst_proto.len(), "destination protocol length")?);
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.src_nbma.bytes);
        out.extend_from_slice(&self.src_nbma_sub.bytes);
        out.extend_from_slice(&self.src_proto);
        out.extend_from_slice(&self.dst_proto);
        match &self.payload {
            Payload::Cies(list) => encode_cies(list, &mut out)?,
            Payload::Raw(raw) => out.extend_from_slice(raw),
        }
        let extoff = if self.extensions.is_empty() && !self.empty_extension_area { 0 } else { out.len() };
        for e in &self.extensions {
            let t = e.kind | if e.compulsory { COMPULSORY } else { 0 };
            out.extend_from_slice(&t.to_be_bytes());
            let at = out.len();
            out.extend_from_slice(&[0, 0]);
            match &e.body {
                ExtBody::Cies(list) => encode_cies(list, &mut out)?,
                ExtBody::Raw(raw) => out.extend_from_slice(raw),
            }
            let len = u16::try_from(out.len() - at - 2).map_err(|_| Error::Bad { at, what: "extension length" })?;
            out[at..at + 2].copy_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(&self.trailer);
        let size = u16::try_from(out.len()).map_err(|_| Error::Bad { at: 10, what: "packet size" })?;
        out[10..12].copy_from_slice(&size.to_be_bytes());
        out[14..16].copy_from_slice(&u16::try_from(extoff).unwrap_or(0).to_be_bytes());
        let checksum = if fix_checksum { gre_common::gre::internet_checksum(&out) } else { self.checksum };
        out[12..14].copy_from_slice(&checksum.to_be_bytes());
        Ok(out)
    }

    /// True if the checksum over `wire` (the packet as received, `size` bytes) is right.
    #[must_use]
    pub fn checksum_ok(wire: &[u8]) -> bool {
        let size = wire.get(10..12).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        wire.get(..size).is_some_and(|p| gre_common::gre::internet_checksum(p) == 0)
    }

    /// Where each extension starts, in bytes from the start of the packet as [`Packet::encode`]
    /// writes it (which is how it was received: decoding keeps every byte).
    #[must_use]
    pub fn extension_offsets(&self) -> Vec<usize> {
        let cies_len = |list: &[Cie]| list.iter().map(|c| CIE_FIXED_LEN + c.nbma.bytes.len() + c.nbma_sub.bytes.len() + c.proto.len()).sum::<usize>();
        let mut at = FIXED_HEADER_LEN
            + MANDATORY_COMMON_LEN
            + self.src_nbma.bytes.len()
            + self.src_nbma_sub.bytes.len()
            + self.src_proto.len()
            + self.dst_proto.len()
            + match &self.payload {
                Payload::Cies(c) => cies_len(c),
                Payload::Raw(r) => r.len(),
            };
        self.extensions
            .iter()
            .map(|e| {
                let start = at;
                at += 4 + match &e.body {
                    ExtBody::Cies(c) => cies_len(c),
                    ExtBody::Raw(r) => r.len(),
                };
                start
            })
            .collect()
    }

    /// The first compulsory extension we do not understand, with its offset.
    #[must_use]
    pub fn unrecognized_compulsory(&self) -> Option<(u16, usize)> {
        self.extensions.iter().zip(self.extension_offsets()).find(|(e, _)| e.compulsory && !ext::understood(e.kind & 0x3fff)).map(|(e, at)| (e.kind, at))
    }

    /// The extension of type `t` (compulsory bit ignored), if present.
    #[must_use]
    pub fn extension(&self, t: u16) -> Option<&Extension> {
        self.extensions.iter().find(|e| e.kind & 0x3fff == t)
    }

    /// The CIEs of the mandatory part (none for the indications).
    #[must_use]
    pub fn cies(&self) -> &[Cie] {
        match &self.payload {
            Payload::Cies(c) => c,
            Payload::Raw(_) => &[],
        }
    }
}

fn encode_cies(list: &[Cie], out: &mut Vec<u8>) -> Result<(), Error> {
    for c in list {
        out.push(c.code);
        out.push(c.prefix_len);
        out.extend_from_slice(&c.unused.to_be_bytes());
        out.extend_from_slice(&c.mtu.to_be_bytes());
        out.extend_from_slice(&c.holding_time.to_be_bytes());
        out.push(c.nbma.type_len);
        out.push(c.nbma_sub.type_len);
        out.push(u8::try_from(c.proto.len()).map_err(|_| Error::Bad { at: out.len(), what: "CIE protocol length" })?);
        out.push(c.preference);
        out.extend_from_slice(&c.nbma.bytes);
        out.extend_from_slice(&c.nbma_sub.bytes);
        out.extend_from_slice(&c.proto);
    }
    Ok(())
}

/// Shows address bytes as an IP address when they have an IP length, else as hex.
#[must_use]
pub fn show_address(bytes: &[u8]) -> String {
    match bytes.len() {
        0 => String::new(),
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
    }
}

/// JSON view of a packet: every field, addresses shown as text.
#[derive(Debug, Serialize)]
pub struct PacketView {
    pub r#type: &'static str,
    pub type_code: u8,
    pub afn: u16,
    pub protocol_type: u16,
    pub hop_count: u8,
    pub checksum: u16,
    pub version: u8,
    pub src_nbma: String,
    pub src_nbma_sub: String,
    pub src_proto: String,
    pub dst_proto: String,
    pub flags: u16,
    pub request_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_offset: Option<u16>,
    pub cies: Vec<CieView>,
    /// Error / Traffic Indication: the packet that caused it, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
    pub extensions: Vec<ExtensionView>,
}

#[derive(Debug, Serialize)]
pub struct CieView {
    pub code: u8,
    pub prefix_len: u8,
    pub mtu: u16,
    pub holding_time: u16,
    pub nbma: String,
    pub nbma_sub: String,
    pub proto: String,
    pub preference: u8,
}

#[derive(Debug, Serialize)]
pub struct ExtensionView {
    pub r#type: &'static str,
    pub type_code: u16,
    pub compulsory: bool,
    pub length: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cies: Vec<CieView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl From<&Cie> for CieView {
    fn from(c: &Cie) -> Self {
        Self {
            code: c.code,
            prefix_len: c.prefix_len,
            mtu: c.mtu,
            holding_time: c.holding_time,
            nbma: show_address(&c.nbma.bytes),
            nbma_sub: show_address(&c.nbma_sub.bytes),
            proto: show_address(&c.proto),
            preference: c.preference,
        }
    }
}

impl From<&Packet> for PacketView {
    fn from(p: &Packet) -> Self {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let error = p.kind == kind::ERROR_INDICATION;
        Self {
            r#type: kind::name(p.kind),
            type_code: p.kind,
            afn: p.afn,
            protocol_type: p.protocol_type,
            hop_count: p.hop_count,
            checksum: p.checksum,
            version: p.version,
            src_nbma: show_address(&p.src_nbma.bytes),
            src_nbma_sub: show_address(&p.src_nbma_sub.bytes),
            src_proto: show_address(&p.src_proto),
            dst_proto: show_address(&p.dst_proto),
            flags: p.flags,
            request_id: p.request_id,
            #[expect(clippy::cast_possible_truncation, reason = "the two halves of the field")]
            error_code: error.then_some((p.request_id >> 16) as u16),
            #[expect(clippy::cast_possible_truncation, reason = "the two halves of the field")]
            error_offset: error.then_some(p.request_id as u16),
            cies: p.cies().iter().map(CieView::from).collect(),
            contents: match &p.payload {
                Payload::Raw(r) => Some(hex(r)),
                Payload::Cies(_) => None,
            },
            extensions: p
                .extensions
                .iter()
                .map(|e| {
                    let (cies, data, length) = match &e.body {
                        ExtBody::Cies(list) => {
                            let mut bytes = Vec::new();
                            let _ = encode_cies(list, &mut bytes);
                            (list.iter().map(CieView::from).collect(), None, bytes.len())
                        }
                        ExtBody::Raw(r) => (Vec::new(), (!r.is_empty()).then(|| hex(r)), r.len()),
                    };
                    ExtensionView { r#type: ext::name(e.kind & 0x3fff), type_code: e.kind, compulsory: e.compulsory, length, cies, data }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Registration Request as a spoke sends it: NBMA 198.51.100.1, protocol 203.0.113.1 to
    /// the NHS 203.0.113.254, one CIE with holding time 7200, the usual extensions.
    pub(crate) fn registration() -> Packet {
        Packet {
            afn: AFN_IPV4,
            protocol_type: 0x0800,
            protocol_snap: [0; 5],
            hop_count: 255,
            checksum: 0,
            version: VERSION,
            kind: kind::REGISTRATION_REQUEST,
            src_nbma: Address::nsap(&[198, 51, 100, 1]),
            src_nbma_sub: Address::default(),
            flags: flags::registration::U | flags::registration::NAT,
            request_id: 7,
            src_proto: vec![203, 0, 113, 1],
            dst_proto: vec![203, 0, 113, 254],
            payload: Payload::Cies(vec![Cie { prefix_len: 32, mtu: 1400, holding_time: 7200, ..Cie::default() }]),
            extensions: vec![
                Extension { compulsory: true, kind: ext::RESPONDER_ADDRESS, body: ExtBody::Cies(vec![]) },
                Extension { compulsory: true, kind: ext::FORWARD_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
                Extension { compulsory: true, kind: ext::REVERSE_TRANSIT_NHS, body: ExtBody::Cies(vec![]) },
                Extension { compulsory: true, kind: ext::AUTHENTICATION, body: ExtBody::Raw(vec![0, 0, 0, 1, b's', b'e', b'c', b'r']) },
                Extension {
                    compulsory: false,
                    kind: ext::NAT_ADDRESS,
                    body: ExtBody::Cies(vec![Cie { prefix_len: 32, nbma: Address::nsap(&[192, 0, 2, 9]), proto: vec![203, 0, 113, 1], ..Cie::default() }]),
                },
                Extension { compulsory: true, kind: ext::END, body: ExtBody::Raw(vec![]) },
            ],
            trailer: vec![],
            empty_extension_area: false,
        }
    }

    #[test]
    fn encodes_the_rfc_layout_and_round_trips() {
        let p = registration();
        let wire = p.encode(true).unwrap();
        assert_eq!(&wire[..4], &[0, 1, 8, 0], "afn, protocol type");
        assert_eq!(usize::from(u16::from_be_bytes([wire[10], wire[11]])), wire.len(), "packet size");
        assert_eq!(u16::from_be_bytes([wire[14], wire[15]]), 20 + 8 + 4 + 4 + 4 + 12, "extension offset after one CIE");
        assert_eq!((wire[17], wire[18], wire[19]), (kind::REGISTRATION_REQUEST, 4, 0), "type, shtl, sstl");
        assert!(Packet::checksum_ok(&wire));
        let back = Packet::decode(&wire).unwrap();
        assert_eq!(back, Packet { checksum: back.checksum, ..p });
        assert_eq!(back.encode(false).unwrap(), wire);
    }

    /// Found by the fuzzer: an extension offset at the very end, with nothing after it, must
    /// survive a round trip (it used to come back as 0).
    #[test]
    fn an_empty_extension_area_round_trips() {
        let mut p = registration();
        p.extensions.clear();
        p.empty_extension_area = true;
        let wire = p.encode(true).unwrap();
        assert_eq!(usize::from(u16::from_be_bytes([wire[14], wire[15]])), wire.len());
        let back = Packet::decode(&wire).unwrap();
        assert!(back.empty_extension_area && back.extensions.is_empty());
        assert_eq!(back.encode(false).unwrap(), wire);
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let wire = registration().encode(true).unwrap();
        for n in 0..wire.len() {
            assert!(Packet::decode(&wire[..n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn inconsistent_lengths_are_errors() {
        let mut wire = registration().encode(true).unwrap();
        wire[14..16].copy_from_slice(&5u16.to_be_bytes());
        assert!(matches!(Packet::decode(&wire), Err(Error::Bad { what: "extension offset", .. })));
        let mut wire = registration().encode(true).unwrap();
        wire[10..12].copy_from_slice(&3u16.to_be_bytes());
        assert!(matches!(Packet::decode(&wire), Err(Error::Bad { what: "packet size", .. })));
    }

    #[test]
    fn indications_keep_the_offending_packet() {
        let original = registration().encode(true).unwrap();
        let p =
            Packet { kind: kind::ERROR_INDICATION, request_id: (6 << 16) | 20, payload: Payload::Raw(original.clone()), extensions: vec![], ..registration() };
        let wire = p.encode(true).unwrap();
        let back = Packet::decode(&wire).unwrap();
        assert_eq!(back.payload, Payload::Raw(original));
        let view = PacketView::from(&back);
        assert_eq!((view.error_code, view.error_offset), (Some(6), Some(20)));
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = Packet::decode(&bytes);
            }

            #[test]
            fn what_decodes_encodes_to_the_same_bytes(
                hold in any::<u16>(), id in any::<u32>(), flags in any::<u16>(), hop in any::<u8>(),
                nbma in proptest::collection::vec(any::<u8>(), 0..20), n in 0usize..4,
                auth in proptest::collection::vec(any::<u8>(), 0..24),
            ) {
                let mut p = super::registration();
                p.request_id = id;
                p.flags = flags;
                p.hop_count = hop;
                p.src_nbma = Address::nsap(&nbma);
                p.payload = Payload::Cies(vec![Cie { holding_time: hold, ..Cie::default() }; n]);
                p.extensions[3].body = ExtBody::Raw(auth);
                let wire = p.encode(true).unwrap();
                let back = Packet::decode(&wire).unwrap();
                prop_assert_eq!(back.encode(false).unwrap(), wire);
            }

            #[test]
            fn corrupting_a_valid_packet_never_panics(pos in 0usize..100, byte in any::<u8>()) {
                let mut wire = super::registration().encode(true).unwrap();
                let i = pos % wire.len();
                wire[i] = byte;
                let _ = Packet::decode(&wire);
            }
        }
    }
}
