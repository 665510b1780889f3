//! Message payloads. All are idempotent or cumulative, so loss and duplication are harmless.
//!
//! ```text
//! Heartbeat (host -> redirector): count (u16) then count entries of
//!   service ip (4) | port (2) | mode (1) | hb ms (2) | timeout ms (2)
//! View (redirector -> hosts; epoch and service in the header): count (u8) then entries of
//!   node id (4) | incarnation (8) | since (8) | tunnel ip (4) | port (2)
//!   the first member is the primary; `since` is the epoch of the view it last joined
//! Progress (host -> hosts): count (u16) then entries of
//!   client ip (4) | client port (2) | service ip (4) | service port (2) |
//!   isn_local (4) | has isn_s (1) | isn_s (4) | rcv_nxt (4) | edge (4) | hole_end (4) |
//!   flags (1: bit 0 output known, bits 1-2 end: 0 open, 1 FIN, 2 reset, bit 3 rcv_nxt
//!   counts the client's FIN, bits 4-7 zero) | output end (4)
//! Exclude (host -> view authority), Excluded (authority -> host), ExcludedAck (host ->
//! authority), who speaks for a connection: count (u16) then entries of
//!   client ip (4) | client port (2) | service ip (4) | service port (2) |
//!   n (1) | n member ids (4 each)
//!   Exclude: the members to exclude (the sender itself, or as the connection's speaker others)
//!   Excluded: every member excluded from the connection so far, in order
//!   ExcludedAck: the list as the sender now knows it (its length acknowledges)
//! Digest (host -> hosts): count (u16) then entries of
//!   client ip (4) | client port (2) | service ip (4) | service port (2) |
//!   block index (4) | block length (4) | fin (1) | digest (16)
//! Order (primary -> hosts, total order of a service): count (u16) then entries of
//!   stamp (8) | client ip (4) | client port (2) | service ip (4) | service port (2) | len (4) |
//!   epoch (8): the view epoch of the primary that issued the stamp
//! OrderRepair (host -> host, total order of a service):
//!   service ip (4) | service port (2) | kind (1) | from (8) | to (8)
//!   kind 0, need (backup -> primary): send me the stamps in [from, to) (as Order datagrams)
//!   kind 1, gone (primary -> backup): I keep the stamps from `from` on only; my next is `to`
//!   kind 2, synced (backup -> new primary): my answer to your sync from `from` is complete;
//!   I delivered the stamps before `to`
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::ids::{Epoch, Incarnation, ReplicaId};
use crate::wire::WireError;

/// How a port is served (`setportopt`'s mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Not served.
    Off,
    /// Each connection goes to one live host server.
    Redirect,
    /// Every replica receives every packet; one talks (the FT issue).
    Ft,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Redirect => 1,
            Mode::Ft => 2,
        }
    }

    fn from_code(c: u8) -> Result<Self, WireError> {
        Ok(match c {
            0 => Mode::Off,
            1 => Mode::Redirect,
            2 => Mode::Ft,
            _ => return Err(WireError::Payload),
        })
    }

    /// The mode's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Redirect => "redirect",
            Mode::Ft => "ft",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Mode::Off),
            "redirect" => Ok(Mode::Redirect),
            "ft" => Ok(Mode::Ft),
            other => Err(format!(
                "unknown mode `{other}`: use one of off, redirect, ft"
            )),
        }
    }
}

/// One service a host server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAd {
    /// The service address clients connect to.
    pub addr: SocketAddrV4,
    /// How it is served.
    pub mode: Mode,
    /// Heartbeat interval the host keeps for it (setportopt's detector), milliseconds.
    pub hb_ms: u16,
    /// Silence after which the redirector drops the host from the service's view, ms.
    pub timeout_ms: u16,
}

/// A host server's heartbeat: "I am alive, reachable at `addr`, and serve these services
/// right now" (services whose backend does not answer are left out).
///
/// ```text
/// | addr: ip(4) port(2) | count (u16) | count × ( ip(4) port(2) mode(1) hb_ms(2) timeout_ms(2) ) |
/// ```
///
/// The address is the host's own word, under the MAC: the redirector sends views and client
/// packets there and hands it to the host's peers, never the UDP source a datagram arrived
/// from (which anyone on the path can change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Where the host takes tunnel and ack-channel datagrams.
    pub addr: SocketAddrV4,
    /// The services this host can serve now.
    pub services: Vec<ServiceAd>,
}

const ENTRY_LEN: usize = 11;

fn emit_addr(out: &mut Vec<u8>, a: SocketAddrV4) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn addr_at(e: &[u8], i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(e[i], e[i + 1], e[i + 2], e[i + 3]),
        u16::from_be_bytes([e[i + 4], e[i + 5]]),
    )
}

impl Heartbeat {
    /// Serializes into a payload.
    pub fn emit(&self) -> Vec<u8> {
        let n = self.services.len().min(u16::MAX as usize);
        let mut out = Vec::with_capacity(8 + n * ENTRY_LEN);
        emit_addr(&mut out, self.addr);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        for s in &self.services[..n] {
            emit_addr(&mut out, s.addr);
            out.push(s.mode.code());
            out.extend_from_slice(&s.hb_ms.to_be_bytes());
            out.extend_from_slice(&s.timeout_ms.to_be_bytes());
        }
        out
    }

    /// Parses a payload; the length must match the count exactly.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < 6 {
            return Err(WireError::Payload);
        }
        let addr = addr_at(b, 0);
        let body = entries(&b[6..], ENTRY_LEN)?;
        let services = body
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                Ok(ServiceAd {
                    addr: addr_at(e, 0),
                    mode: Mode::from_code(e[6])?,
                    hb_ms: u16::from_be_bytes([e[7], e[8]]),
                    timeout_ms: u16::from_be_bytes([e[9], e[10]]),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Heartbeat { addr, services })
    }
}

/// One member of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The host.
    pub id: ReplicaId,
    /// Its life: a member restarted is a new one, and holds none of its old connections.
    pub incarnation: Incarnation,
    /// The epoch of the view it last joined. It has been a member of every view since; a
    /// member whose `since` changed was out of the view in between (a partition, a false
    /// detection) and holds none of the connections it had (it missed their client bytes).
    pub since: Epoch,
    /// Where it takes tunnel and ack-channel datagrams (its heartbeat's word).
    pub addr: SocketAddrV4,
}

/// A service's view: its members in order (the first is the primary). The epoch travels in
/// the datagram header.
///
/// ```text
/// | count (u8) | count × ( id(4) incarnation(8) since(8) ip(4) port(2) ) |
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct View {
    /// Members, primary first.
    pub members: Vec<Member>,
}

const MEMBER_LEN: usize = 26;

impl View {
    /// Serializes into a payload (at most 255 members).
    pub fn emit(&self) -> Vec<u8> {
        let n = self.members.len().min(255);
        let mut out = Vec::with_capacity(1 + n * MEMBER_LEN);
        out.push(n as u8);
        for m in &self.members[..n] {
            out.extend_from_slice(&m.id.0.to_be_bytes());
            out.extend_from_slice(&m.incarnation.0.to_be_bytes());
            out.extend_from_slice(&m.since.0.to_be_bytes());
            emit_addr(&mut out, m.addr);
        }
        out
    }

    /// Parses a payload.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let (&n, body) = b.split_first().ok_or(WireError::Payload)?;
        if body.len() != usize::from(n) * MEMBER_LEN {
            return Err(WireError::Payload);
        }
        let members = body
            .chunks_exact(MEMBER_LEN)
            .map(|e| Member {
                id: ReplicaId(be_u32(e, 0)),
                incarnation: Incarnation(be_u64(e, 4)),
                since: Epoch(be_u64(e, 12)),
                addr: addr_at(e, 20),
            })
            .collect();
        Ok(View { members })
    }

    /// The member with id `id`.
    pub fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// The entries of a count-prefixed payload (u16 count, then `count` entries of `len` bytes);
/// the length must match the count exactly.
fn entries(b: &[u8], len: usize) -> Result<&[u8], WireError> {
    let (count, body) = b.split_first_chunk::<2>().ok_or(WireError::Payload)?;
    if body.len() != usize::from(u16::from_be_bytes(*count)) * len {
        return Err(WireError::Payload);
    }
    Ok(body)
}

/// The big-endian u32 at `i` of an entry whose length `entries` checked.
fn be_u32(e: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]])
}

/// The big-endian u64 at `i` of an entry whose length was checked.
fn be_u64(e: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&e[i..i + 8]);
    u64::from_be_bytes(b)
}

/// One replica's cumulative progress on one ft connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgressEntry {
    /// The client's address.
    pub client: SocketAddrV4,
    /// The service address.
    pub service: SocketAddrV4,
    /// The reporter's own ISN.
    pub isn_local: u32,
    /// The client-visible ISN, when the reporter knows it.
    pub isn_s: Option<u32>,
    /// Next client byte the reporter expects (one past the client's FIN once it took it).
    pub rcv_nxt: u32,
    /// `rcv_nxt` counts the client's FIN.
    pub client_fin: bool,
    /// Right edge of the reporter's receive window.
    pub edge: u32,
    /// End of the reporter's hole after `rcv_nxt` (the first client byte it saw beyond
    /// it; the primary repairs up to here); equal to `rcv_nxt` when it has none.
    pub hole_end: u32,
    /// End of the reporter's output so far, in the client's sequence space (past its FIN
    /// when it sent one), once it knows `isn_s`.
    pub out: Option<u32>,
    /// How the reporter's backend ended its output.
    pub end: OutputEnd,
}

/// How a member's backend ended its side of a connection, as its progress reports say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputEnd {
    /// Still open.
    #[default]
    Open,
    /// Closed in order (a FIN follows the output).
    Fin,
    /// Reset, refused or gone: this member left the connection.
    Reset,
}

const PROGRESS_LEN: usize = 38;

/// Entries that fit in one datagram on a 1500-byte link.
pub const PROGRESS_PER_DATAGRAM: usize = 34;

/// Serializes progress entries (at most [`PROGRESS_PER_DATAGRAM`] per datagram is the
/// caller's business).
pub fn emit_progress(entries: &[ProgressEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + entries.len() * PROGRESS_LEN);
    out.extend_from_slice(&(entries.len().min(u16::MAX as usize) as u16).to_be_bytes());
    for e in entries.iter().take(u16::MAX as usize) {
        out.extend_from_slice(&e.client.ip().octets());
        out.extend_from_slice(&e.client.port().to_be_bytes());
        out.extend_from_slice(&e.service.ip().octets());
        out.extend_from_slice(&e.service.port().to_be_bytes());
        out.extend_from_slice(&e.isn_local.to_be_bytes());
        out.push(u8::from(e.isn_s.is_some()));
        out.extend_from_slice(&e.isn_s.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&e.rcv_nxt.to_be_bytes());
        out.extend_from_slice(&e.edge.to_be_bytes());
        out.extend_from_slice(&e.hole_end.to_be_bytes());
        let end = match e.end {
            OutputEnd::Open => 0,
            OutputEnd::Fin => 1,
            OutputEnd::Reset => 2,
        };
        out.push(u8::from(e.out.is_some()) | end << 1 | u8::from(e.client_fin) << 3);
        out.extend_from_slice(&e.out.unwrap_or(0).to_be_bytes());
    }
    out
}

/// Parses progress entries; the length must match the count exactly.
pub fn parse_progress(b: &[u8]) -> Result<Vec<ProgressEntry>, WireError> {
    let body = entries(b, PROGRESS_LEN)?;
    body.chunks_exact(PROGRESS_LEN)
        .map(|e| {
            let has = match e[16] {
                0 => false,
                1 => true,
                _ => return Err(WireError::Payload),
            };
            Ok(ProgressEntry {
                client: SocketAddrV4::new(
                    Ipv4Addr::new(e[0], e[1], e[2], e[3]),
                    u16::from_be_bytes([e[4], e[5]]),
                ),
                service: SocketAddrV4::new(
                    Ipv4Addr::new(e[6], e[7], e[8], e[9]),
                    u16::from_be_bytes([e[10], e[11]]),
                ),
                isn_local: be_u32(e, 12),
                isn_s: has.then(|| be_u32(e, 17)),
                rcv_nxt: be_u32(e, 21),
                client_fin: e[33] & 0b1000 != 0,
                edge: be_u32(e, 25),
                hole_end: be_u32(e, 29),
                out: (e[33] & 1 == 1).then(|| be_u32(e, 34)),
                end: match (e[33] & !0b1000) >> 1 {
                    0 => OutputEnd::Open,
                    1 => OutputEnd::Fin,
                    2 => OutputEnd::Reset,
                    _ => return Err(WireError::Payload),
                },
            })
        })
        .collect()
}

/// A digest of one block of one replica's output on one ft connection (output agreement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    /// The client's address.
    pub client: SocketAddrV4,
    /// The service address.
    pub service: SocketAddrV4,
    /// Block number from the start of the output stream.
    pub index: u32,
    /// Bytes in the block.
    pub len: u32,
    /// The output ended (FIN) after this block.
    pub fin: bool,
    /// Truncated BLAKE3 of the block.
    pub digest: [u8; 16],
}

const DIGEST_LEN: usize = 37;

/// Digest entries that fit in one datagram on a 1500-byte link.
pub const DIGESTS_PER_DATAGRAM: usize = 36;

/// Serializes digest entries.
pub fn emit_digests(entries: &[DigestEntry]) -> Vec<u8> {
    let n = entries.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(2 + n * DIGEST_LEN);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for e in &entries[..n] {
        out.extend_from_slice(&e.client.ip().octets());
        out.extend_from_slice(&e.client.port().to_be_bytes());
        out.extend_from_slice(&e.service.ip().octets());
        out.extend_from_slice(&e.service.port().to_be_bytes());
        out.extend_from_slice(&e.index.to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
        out.push(u8::from(e.fin));
        out.extend_from_slice(&e.digest);
    }
    out
}

/// Parses digest entries; the length must match the count exactly.
pub fn parse_digests(b: &[u8]) -> Result<Vec<DigestEntry>, WireError> {
    let body = entries(b, DIGEST_LEN)?;
    body.chunks_exact(DIGEST_LEN)
        .map(|e| {
            let fin = match e[20] {
                0 => false,
                1 => true,
                _ => return Err(WireError::Payload),
            };
            let mut digest = [0u8; 16];
            digest.copy_from_slice(&e[21..37]);
            Ok(DigestEntry {
                client: SocketAddrV4::new(
                    Ipv4Addr::new(e[0], e[1], e[2], e[3]),
                    u16::from_be_bytes([e[4], e[5]]),
                ),
                service: SocketAddrV4::new(
                    Ipv4Addr::new(e[6], e[7], e[8], e[9]),
                    u16::from_be_bytes([e[10], e[11]]),
                ),
                index: be_u32(e, 12),
                len: be_u32(e, 16),
                fin,
                digest,
            })
        })
        .collect()
}

/// Members excluded from one ft connection (see the module's table for what each message
/// means). The view authority decides who speaks for a connection from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExclusionEntry {
    /// The client's address.
    pub client: SocketAddrV4,
    /// The service address.
    pub service: SocketAddrV4,
    /// The members (node ids).
    pub members: Vec<u32>,
}

/// Most members one entry names.
pub const EXCLUSION_MEMBERS_MAX: usize = 32;

/// Exclusion entries sent in one datagram (the largest fit in 1,400 bytes).
pub const EXCLUSIONS_PER_DATAGRAM: usize = 8;

/// Serializes exclusion entries (at most [`EXCLUSION_MEMBERS_MAX`] members each; more are
/// cut off).
pub fn emit_exclusions(entries: &[ExclusionEntry]) -> Vec<u8> {
    let n = entries.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(2 + n * 17);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for e in &entries[..n] {
        out.extend_from_slice(&e.client.ip().octets());
        out.extend_from_slice(&e.client.port().to_be_bytes());
        out.extend_from_slice(&e.service.ip().octets());
        out.extend_from_slice(&e.service.port().to_be_bytes());
        let m = &e.members[..e.members.len().min(EXCLUSION_MEMBERS_MAX)];
        out.push(m.len() as u8);
        for id in m {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }
    out
}

/// Parses exclusion entries; every byte must belong to an entry, and no entry names more
/// than [`EXCLUSION_MEMBERS_MAX`] members.
pub fn parse_exclusions(b: &[u8]) -> Result<Vec<ExclusionEntry>, WireError> {
    let (count, mut rest) = b.split_first_chunk::<2>().ok_or(WireError::Payload)?;
    let count = usize::from(u16::from_be_bytes(*count));
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (head, body) = rest.split_first_chunk::<13>().ok_or(WireError::Payload)?;
        let n = usize::from(head[12]);
        if n > EXCLUSION_MEMBERS_MAX || body.len() < n * 4 {
            return Err(WireError::Payload);
        }
        let (ids, tail) = body.split_at(n * 4);
        out.push(ExclusionEntry {
            client: SocketAddrV4::new(
                Ipv4Addr::new(head[0], head[1], head[2], head[3]),
                u16::from_be_bytes([head[4], head[5]]),
            ),
            service: SocketAddrV4::new(
                Ipv4Addr::new(head[6], head[7], head[8], head[9]),
                u16::from_be_bytes([head[10], head[11]]),
            ),
            members: ids.chunks_exact(4).map(|c| be_u32(c, 0)).collect(),
        });
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(WireError::Payload);
    }
    Ok(out)
}

/// One stamped chunk of a total-order service: the connection's next `len` client bytes
/// are the backend's `stamp`-th input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderEntry {
    /// Position in the service's total order.
    pub stamp: u64,
    /// The client's address.
    pub client: SocketAddrV4,
    /// The service address.
    pub service: SocketAddrV4,
    /// Bytes in the chunk.
    pub len: u32,
    /// The view epoch of the primary that issued the stamp.
    pub epoch: u64,
}

const ORDER_LEN: usize = 32;

/// Order entries that fit in one datagram on a 1500-byte link.
pub const ORDER_PER_DATAGRAM: usize = 42;

/// Serializes order entries.
pub fn emit_order(entries: &[OrderEntry]) -> Vec<u8> {
    let n = entries.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(2 + n * ORDER_LEN);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for e in &entries[..n] {
        out.extend_from_slice(&e.stamp.to_be_bytes());
        out.extend_from_slice(&e.client.ip().octets());
        out.extend_from_slice(&e.client.port().to_be_bytes());
        out.extend_from_slice(&e.service.ip().octets());
        out.extend_from_slice(&e.service.port().to_be_bytes());
        out.extend_from_slice(&e.len.to_be_bytes());
        out.extend_from_slice(&e.epoch.to_be_bytes());
    }
    out
}

/// Parses order entries; the length must match the count exactly.
pub fn parse_order(b: &[u8]) -> Result<Vec<OrderEntry>, WireError> {
    let body = entries(b, ORDER_LEN)?;
    Ok(body
        .chunks_exact(ORDER_LEN)
        .map(|e| {
            let mut st = [0u8; 8];
            st.copy_from_slice(&e[..8]);
            OrderEntry {
                stamp: u64::from_be_bytes(st),
                client: SocketAddrV4::new(
                    Ipv4Addr::new(e[8], e[9], e[10], e[11]),
                    u16::from_be_bytes([e[12], e[13]]),
                ),
                service: SocketAddrV4::new(
                    Ipv4Addr::new(e[14], e[15], e[16], e[17]),
                    u16::from_be_bytes([e[18], e[19]]),
                ),
                len: be_u32(e, 20),
                epoch: be_u64(e, 24),
            }
        })
        .collect())
}

/// What an [`OrderRepair`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderRepairKind {
    /// A backup misses the stamps `[from, to)` and asks the primary for them.
    Need,
    /// The primary keeps stamps from `from` on only (older ones are forgotten); its next
    /// stamp is `to`.
    Gone,
    /// A backup's answer to a new primary's sync from `from` is complete: it delivered (or
    /// passed) the old primary's stamps before `to`, and sent those from `from` on.
    Synced,
}

/// Stamp repair for a total-order service: a backup's request for stamps it missed, or the
/// primary's answer that they are no longer kept. Stamps themselves travel as `Order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRepair {
    /// The service address.
    pub service: SocketAddrV4,
    /// Request or answer.
    pub kind: OrderRepairKind,
    /// First stamp asked for (need), or the oldest stamp kept (gone).
    pub from: u64,
    /// One past the last stamp asked for (need), or the primary's next stamp (gone).
    pub to: u64,
}

const ORDER_REPAIR_LEN: usize = 23;

impl OrderRepair {
    /// Serializes into a payload.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ORDER_REPAIR_LEN);
        out.extend_from_slice(&self.service.ip().octets());
        out.extend_from_slice(&self.service.port().to_be_bytes());
        out.push(match self.kind {
            OrderRepairKind::Need => 0,
            OrderRepairKind::Gone => 1,
            OrderRepairKind::Synced => 2,
        });
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.to.to_be_bytes());
        out
    }

    /// Parses a payload; the length must be exact and the kind known.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != ORDER_REPAIR_LEN {
            return Err(WireError::Payload);
        }
        let kind = match b[6] {
            0 => OrderRepairKind::Need,
            1 => OrderRepairKind::Gone,
            2 => OrderRepairKind::Synced,
            _ => return Err(WireError::Payload),
        };
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        Ok(OrderRepair {
            service: SocketAddrV4::new(
                Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                u16::from_be_bytes([b[4], b[5]]),
            ),
            kind,
            from: u64_at(7),
            to: u64_at(15),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn heartbeat_round_trips(entries in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u8..3, any::<u16>(), any::<u16>()), 0..20)) {
            let hb = Heartbeat {
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 7000),
                services: entries
                    .into_iter()
                    .map(|(ip, port, m, hb_ms, timeout_ms)| ServiceAd {
                        addr: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                        mode: Mode::from_code(m).unwrap(),
                        hb_ms,
                        timeout_ms,
                    })
                    .collect(),
            };
            prop_assert_eq!(Heartbeat::parse(&hb.emit()).unwrap(), hb);
        }

        #[test]
        fn view_round_trips(members in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u16>()), 0..20)) {
            let v = View {
                members: members
                    .into_iter()
                    .map(|(id, inc, since, ip, port)| Member {
                        id: ReplicaId(id),
                        incarnation: Incarnation(inc),
                        since: Epoch(since),
                        addr: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                    })
                    .collect(),
            };
            prop_assert_eq!(View::parse(&v.emit()).unwrap(), v);
        }

        #[test]
        fn progress_round_trips(entries in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u32>(), proptest::option::of(any::<u32>()), any::<u32>(), any::<u32>(), any::<u32>(), (proptest::option::of(any::<u32>()), 0u8..3, any::<bool>())), 0..40)) {
            let v: Vec<ProgressEntry> = entries
                .into_iter()
                .map(|(ip, port, isn_local, isn_s, rcv_nxt, edge, hole_end, (out, end, client_fin))| ProgressEntry {
                    client: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                    service: SocketAddrV4::new(Ipv4Addr::from(!ip), port ^ 1),
                    isn_local,
                    isn_s,
                    rcv_nxt,
                    client_fin,
                    edge,
                    hole_end,
                    out,
                    end: [OutputEnd::Open, OutputEnd::Fin, OutputEnd::Reset][usize::from(end)],
                })
                .collect();
            prop_assert_eq!(parse_progress(&emit_progress(&v)).unwrap(), v);
        }

        #[test]
        fn view_and_progress_parse_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = View::parse(&bytes);
            let _ = parse_progress(&bytes);
            let _ = parse_digests(&bytes);
            let _ = parse_order(&bytes);
            let _ = parse_exclusions(&bytes);
            let _ = OrderRepair::parse(&bytes);
        }

        #[test]
        fn order_repair_round_trips(ip in any::<u32>(), port in any::<u16>(), kind in 0usize..3, from in any::<u64>(), to in any::<u64>()) {
            let r = OrderRepair {
                service: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                kind: [OrderRepairKind::Need, OrderRepairKind::Gone, OrderRepairKind::Synced][kind],
                from,
                to,
            };
            prop_assert_eq!(OrderRepair::parse(&r.emit()).unwrap(), r);
        }

        #[test]
        fn exclusions_round_trip(entries in proptest::collection::vec((any::<u32>(), any::<u16>(), proptest::collection::vec(any::<u32>(), 0..=32)), 0..20)) {
            let v: Vec<ExclusionEntry> = entries
                .into_iter()
                .map(|(ip, port, members)| ExclusionEntry {
                    client: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                    service: SocketAddrV4::new(Ipv4Addr::from(!ip), port ^ 1),
                    members,
                })
                .collect();
            prop_assert_eq!(parse_exclusions(&emit_exclusions(&v)).unwrap(), v);
        }

        #[test]
        fn order_round_trips(entries in proptest::collection::vec((any::<u64>(), any::<u32>(), any::<u16>(), any::<u32>()), 0..50)) {
            let v: Vec<OrderEntry> = entries
                .into_iter()
                .map(|(stamp, ip, port, len)| OrderEntry {
                    stamp,
                    client: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                    service: SocketAddrV4::new(Ipv4Addr::from(!ip), port ^ 1),
                    len,
                    epoch: stamp.rotate_left(17),
                })
                .collect();
            prop_assert_eq!(parse_order(&emit_order(&v)).unwrap(), v);
        }

        #[test]
        fn digests_round_trip(entries in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u32>(), any::<u32>(), any::<bool>(), any::<[u8; 16]>()), 0..36)) {
            let v: Vec<DigestEntry> = entries
                .into_iter()
                .map(|(ip, port, index, len, fin, digest)| DigestEntry {
                    client: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                    service: SocketAddrV4::new(Ipv4Addr::from(!ip), port ^ 1),
                    index,
                    len,
                    fin,
                    digest,
                })
                .collect();
            prop_assert_eq!(parse_digests(&emit_digests(&v)).unwrap(), v);
        }

        #[test]
        fn heartbeat_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Heartbeat::parse(&bytes);
        }
    }

    #[test]
    fn order_repair_bytes_are_as_documented() {
        let need = OrderRepair {
            service: "198.19.0.10:6379".parse().unwrap(),
            kind: OrderRepairKind::Need,
            from: 0x0102_0304_0506_0708,
            to: 0x0102_0304_0506_0808,
        };
        let bytes = [
            198, 19, 0, 10, 0x18, 0xeb, 0, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 8, 8,
        ];
        assert_eq!(need.emit(), bytes);
        assert_eq!(OrderRepair::parse(&bytes), Ok(need));
        let mut gone = bytes;
        gone[6] = 1;
        assert_eq!(
            OrderRepair::parse(&gone).map(|r| r.kind),
            Ok(OrderRepairKind::Gone)
        );
        let mut synced = bytes;
        synced[6] = 2;
        assert_eq!(
            OrderRepair::parse(&synced).map(|r| r.kind),
            Ok(OrderRepairKind::Synced)
        );
        let mut unknown = bytes;
        unknown[6] = 3;
        assert_eq!(OrderRepair::parse(&unknown), Err(WireError::Payload));
        assert_eq!(OrderRepair::parse(&bytes[..22]), Err(WireError::Payload));
        assert_eq!(
            OrderRepair::parse(&[&bytes[..], &[0]].concat()),
            Err(WireError::Payload)
        );
    }

    #[test]
    fn heartbeat_with_wrong_length_is_rejected() {
        let at = [198, 18, 1, 2, 0x1b, 0x58];
        assert!(Heartbeat::parse(&[&at[..], &[0, 1, 1, 2, 3]].concat()).is_err());
        assert!(View::parse(&[1, 0, 0]).is_err());
        assert!(parse_progress(&[0, 1]).is_err());
        assert!(Heartbeat::parse(&[0]).is_err());
        assert!(Heartbeat::parse(&at[..5]).is_err());
        assert_eq!(
            Heartbeat::parse(&[&at[..], &[0, 0]].concat()).unwrap(),
            Heartbeat {
                addr: "198.18.1.2:7000".parse().unwrap(),
                services: vec![]
            }
        );
    }
}
