//! Fuzz targets for every ack-channel decoder (bolero; issue #10).
//!
//! Under `cargo test` bolero runs each target on its checked-in corpus, the files in
//! `tests/__fuzz__/<target without "fuzz_">/corpus/`, then on random inputs for one second;
//! with `cargo bolero test --package ack-channel fuzz_open` a target runs under libFuzzer
//! (nightly), which also adds the inputs it finds to that directory.
//!
//! - `fuzz_open`: arbitrary bytes. No input panics, and only datagrams sealed with the key
//!   ever open. Corpus: datagrams sealed with another cluster's key, headers broken in each
//!   way the format can be, payloads.
//! - `fuzz_open_mutated_real_datagrams`: a sealed datagram with one byte changed opens
//!   exactly when nothing changed.
//! - `fuzz_raw_payload`: arbitrary bytes through every decoder (heartbeat, view, progress,
//!   digests, order, order repair, the datagram header, `Opener::open`). Nothing panics; whatever parses
//!   emits back to the same bytes; the header checks answer as the format says
//!   ([`expected_header`]); a datagram that opens (the corpus has one of each message type,
//!   sealed with [`key`]) is what sealing its header and payload gives, its payload parses as
//!   its type, and no truncation or flipped byte of it opens. Corpus: real payloads and
//!   datagrams, written by `write_seed_corpus`.
//! - `fuzz_payload_round_trip`: a random heartbeat, view, progress, digest, order or order
//!   repair payload
//!   emits and parses back to itself, also sealed in a datagram and opened; every truncation
//!   of the encoding and every extension with trailing bytes is refused.
//! - `fuzz_datagram_round_trip`: a random header (all eleven message types, any flags) emits
//!   and parses back; magic, version, type and reserved bytes replaced by fuzzed values give
//!   exactly the format's errors; a sealed datagram opens once to its header and payload, then
//!   is a replay; every truncation and any flipped byte is refused.
//!
//! What the formats allow, as these targets pin it:
//! - Every payload is count-prefixed and of exact length: a truncation at any length and any
//!   trailing byte is an error, never a different value.
//! - One payload has two encodings for one value: a progress entry without `isn_s` ignores
//!   the four `isn_s` bytes (`emit_progress` writes zeros). Harmless, the MAC covers them.
//! - The datagram has no length field: a datagram cut anywhere at or after byte 72 still
//!   parses (`Datagram::new_checked`, `Header::parse`) with the same header and a shorter
//!   payload; only the MAC refuses it, and `Opener::open` does.
//! - The emitters cap silently: `View::emit` keeps the first 255 members (tested here),
//!   the others the first 65535 entries.
//! - `Repair`, `ToHost` and `ToClient` carry an IPv4 packet that this crate does not decode
//!   (ft-tcp does; `ft-tcp/tests/fuzz_segment.rs` fuzzes it); here it only round-trips.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use ack_channel::wire::{HEADER_LEN, MAC_LEN};
use ack_channel::{
    emit_digests, emit_exclusions, emit_order, emit_progress, parse_digests, parse_exclusions,
    parse_order, parse_progress, ClusterKey, Datagram, DigestEntry, DropReason, Epoch,
    ExclusionEntry, Header, Heartbeat, Incarnation, Member, Mode, MsgType, Opener, OrderEntry,
    OrderRepair, OrderRepairKind, OutputEnd, ProgressEntry, Receiver, ReplicaId, Sealer, ServiceAd,
    ServiceId, View, WireError,
};
use bolero::{check, TypeGenerator};

/// Who opens the targets' datagrams: node 1 in its life 7.
const ME: ReplicaId = ReplicaId(1);
const MY_LIFE: Incarnation = Incarnation(7);

fn opener() -> Opener {
    Opener::new(key(), ME, MY_LIFE)
}

fn to_me() -> Receiver {
    Receiver::node(ME, MY_LIFE)
}

#[test]
fn fuzz_open() {
    bolero::check!().for_each(|bytes: &[u8]| {
        let mut opener = opener();
        if let Ok((_, payload)) = opener.open(bytes) {
            // Reaching here by chance means forging a 128-bit MAC: treat as a failure.
            panic!("random bytes opened as a datagram: {payload:?}");
        }
        let _ = Heartbeat::parse(bytes);
        let _ = ack_channel::View::parse(bytes);
        let _ = ack_channel::parse_progress(bytes);
    });
}

#[test]
fn fuzz_open_mutated_real_datagrams() {
    bolero::check!()
        .with_type::<(Vec<u8>, u16, u8)>()
        .for_each(|(payload, pos, xor)| {
            let sealer = Sealer::new(key(), ReplicaId(2), Incarnation(1));
            let mut d = sealer.seal(MsgType::Heartbeat, ServiceId(0), Epoch(0), to_me(), payload);
            let mut opener = opener();
            let at = usize::from(*pos) % d.len();
            d[at] ^= *xor;
            assert_eq!(opener.open(&d).is_ok(), *xor == 0);
        });
}

/// The key the corpus datagrams of `fuzz_raw_payload` are sealed with.
fn key() -> ClusterKey {
    ClusterKey::from_bytes([7; 32])
}

/// Every message type with its wire code, in the order of `wire.rs` (9 was the retired
/// Handoff).
const ALL_TYPES: [(u8, MsgType); 13] = [
    (1, MsgType::ToHost),
    (2, MsgType::ToClient),
    (3, MsgType::Heartbeat),
    (4, MsgType::Progress),
    (5, MsgType::View),
    (6, MsgType::Repair),
    (7, MsgType::Digest),
    (8, MsgType::Order),
    (10, MsgType::Welcome),
    (11, MsgType::OrderRepair),
    (12, MsgType::Exclude),
    (13, MsgType::Excluded),
    (14, MsgType::ExcludedAck),
];

/// The message type with wire code `code`.
fn msg_type(code: u8) -> Option<MsgType> {
    ALL_TYPES.iter().find(|(c, _)| *c == code).map(|(_, t)| *t)
}

/// What `Datagram::new_checked` then `Header::parse` answer for `b`, by the format alone.
fn expected_header(b: &[u8]) -> Result<Header, WireError> {
    if b.len() < HEADER_LEN + MAC_LEN {
        return Err(WireError::Truncated);
    }
    if b[..2] != *b"HN" {
        return Err(WireError::BadMagic);
    }
    if b[2] != 4 {
        return Err(WireError::Version(b[2]));
    }
    if b[6..8] != [0, 0] {
        return Err(WireError::Reserved);
    }
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
    Ok(Header {
        msg_type: msg_type(b[3]).ok_or(WireError::UnknownType(b[3]))?,
        flags: u16::from_be_bytes([b[4], b[5]]),
        service: ServiceId(u64_at(8)),
        epoch: Epoch(u64_at(16)),
        sender: ReplicaId(u32::from_be_bytes(b[24..28].try_into().unwrap())),
        receiver: ReplicaId(u32::from_be_bytes(b[28..32].try_into().unwrap())),
        sender_incarnation: Incarnation(u64_at(32)),
        receiver_incarnation: Incarnation(u64_at(40)),
        counter: u64_at(48),
    })
}

fn parse_header(b: &[u8]) -> Result<Header, WireError> {
    let d = Datagram::new_checked(b)?;
    assert_eq!(d.payload(), &b[HEADER_LEN..b.len() - MAC_LEN]);
    assert_eq!(d.mac(), &b[b.len() - MAC_LEN..]);
    Header::parse(&d)
}

/// `emit_progress` writes zeros where an entry without `isn_s` (or without `out`) has it;
/// `parse_progress` ignores those bytes. The encoding of `b` with them zeroed.
fn canonical_progress(b: &[u8]) -> Vec<u8> {
    let mut c = b.to_vec();
    for e in c[2..].chunks_exact_mut(38) {
        if e[16] == 0 {
            e[17..21].fill(0);
        }
        if e[33] & 1 == 0 {
            e[34..38].fill(0);
        }
    }
    c
}

/// A payload of type `t` parses, and emits back to the same bytes.
fn assert_payload_round_trips(t: MsgType, p: &[u8]) {
    match t {
        MsgType::Heartbeat => assert_eq!(Heartbeat::parse(p).unwrap().emit(), p),
        MsgType::View => assert_eq!(View::parse(p).unwrap().emit(), p),
        MsgType::Progress => assert_eq!(emit_progress(&parse_progress(p).unwrap()), p),
        MsgType::Digest => assert_eq!(emit_digests(&parse_digests(p).unwrap()), p),
        MsgType::Order => assert_eq!(emit_order(&parse_order(p).unwrap()), p),
        MsgType::Exclude | MsgType::Excluded | MsgType::ExcludedAck => {
            assert_eq!(emit_exclusions(&parse_exclusions(p).unwrap()), p)
        }
        MsgType::OrderRepair => assert_eq!(OrderRepair::parse(p).unwrap().emit(), p),
        MsgType::ToHost | MsgType::ToClient | MsgType::Repair => {}
        MsgType::Welcome => assert!(p.is_empty()),
    }
}

#[test]
fn fuzz_raw_payload() {
    check!().for_each(|b: &[u8]| {
        if let Ok(hb) = Heartbeat::parse(b) {
            assert_eq!(hb.emit(), b);
        }
        if let Ok(v) = View::parse(b) {
            assert_eq!(v.emit(), b);
        }
        if let Ok(entries) = parse_progress(b) {
            assert_eq!(emit_progress(&entries), canonical_progress(b));
        }
        if let Ok(entries) = parse_digests(b) {
            assert_eq!(emit_digests(&entries), b);
        }
        if let Ok(entries) = parse_order(b) {
            assert_eq!(emit_order(&entries), b);
        }
        if let Ok(entries) = parse_exclusions(b) {
            assert_eq!(emit_exclusions(&entries), b);
        }
        if let Ok(r) = OrderRepair::parse(b) {
            assert_eq!(r.emit(), b);
        }
        let header = parse_header(b);
        assert_eq!(header, expected_header(b));
        if let Ok(h) = header {
            let mut buf = [0u8; HEADER_LEN];
            h.emit(&mut buf);
            assert_eq!(buf, b[..HEADER_LEN]);
        }

        let mut opener = opener();
        let Ok((h, payload)) = opener.open(b) else {
            return;
        };
        // Only a datagram sealed with `key()` gets here: the corpus has some.
        assert_eq!(Ok(h), header);
        assert_eq!(opener.open(b), Err(DropReason::Replay));
        if h.flags == 0 {
            let to = Receiver::node(h.receiver, h.receiver_incarnation);
            let again =
                Sealer::with_first_counter(key(), h.sender, h.sender_incarnation, h.counter)
                    .seal(h.msg_type, h.service, h.epoch, to, payload);
            assert_eq!(again, b);
        }
        assert_payload_round_trips(h.msg_type, payload);
        assert_never_opens_damaged(b);
    });
}

/// No truncation and no flipped byte of a sealed datagram opens, and each is refused for the
/// reason the format gives.
fn assert_never_opens_damaged(d: &[u8]) {
    for n in 0..d.len() {
        let got = opener().open(&d[..n]);
        let want = if n < HEADER_LEN + MAC_LEN {
            DropReason::Malformed(WireError::Truncated)
        } else {
            DropReason::BadMac
        };
        assert_eq!(got.err(), Some(want), "cut to {n} bytes");
    }
    for at in 0..d.len() {
        for xor in [0x01, 0x80, 0xff] {
            let mut f = d.to_vec();
            f[at] ^= xor;
            assert_flip_refused(&f, at, xor);
        }
    }
}

fn assert_flip_refused(f: &[u8], at: usize, xor: u8) {
    let got = opener().open(f).err();
    let want = match expected_header(f) {
        Ok(_) => Some(DropReason::BadMac),
        Err(e) => Some(DropReason::Malformed(e)),
    };
    assert_eq!(got, want, "byte {at} ^ {xor:#04x}");
}

#[derive(Debug, Clone, Copy, TypeGenerator)]
struct GenAddr {
    ip: [u8; 4],
    port: u16,
}

impl GenAddr {
    fn get(self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.ip), self.port)
    }
}

#[derive(Debug, Clone, TypeGenerator)]
struct GenService {
    addr: GenAddr,
    #[generator(0u8..3)]
    mode: u8,
    hb_ms: u16,
    timeout_ms: u16,
}

#[derive(Debug, Clone, TypeGenerator)]
struct GenProgress {
    client: GenAddr,
    service: GenAddr,
    isn_local: u32,
    isn_s: Option<u32>,
    rcv_nxt: u32,
    client_fin: bool,
    edge: u32,
    hole_end: u32,
}

#[derive(Debug, Clone, TypeGenerator)]
struct GenDigest {
    client: GenAddr,
    service: GenAddr,
    index: u32,
    len: u32,
    fin: bool,
    digest: [u8; 16],
}

#[derive(Debug, Clone, TypeGenerator)]
struct GenOrder {
    stamp: u64,
    client: GenAddr,
    service: GenAddr,
    len: u32,
    epoch: u64,
}

/// A payload of one of the parsed message types.
#[derive(Debug, Clone, TypeGenerator)]
enum GenPayload {
    Heartbeat(
        GenAddr,
        #[generator(Vec::produce().with().len(0usize..=40))] Vec<GenService>,
    ),
    /// Up to 300 members: `View::emit` keeps the first 255.
    View(#[generator(Vec::produce().with().len(0usize..=300))] Vec<(u32, u64, u64, GenAddr)>),
    Progress(#[generator(Vec::produce().with().len(0usize..=45))] Vec<GenProgress>),
    Digests(#[generator(Vec::produce().with().len(0usize..=40))] Vec<GenDigest>),
    Order(#[generator(Vec::produce().with().len(0usize..=64))] Vec<GenOrder>),
    OrderRepair(GenAddr, bool, u64, u64),
}

fn mode(code: u8) -> Mode {
    match code {
        0 => Mode::Off,
        1 => Mode::Redirect,
        _ => Mode::Ft,
    }
}

/// A decoded payload, to compare with what was generated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Heartbeat(Heartbeat),
    View(View),
    Progress(Vec<ProgressEntry>),
    Digests(Vec<DigestEntry>),
    Order(Vec<OrderEntry>),
    OrderRepair(OrderRepair),
}

impl Value {
    fn of(g: &GenPayload) -> Value {
        match g {
            GenPayload::Heartbeat(a, s) => Value::Heartbeat(Heartbeat {
                addr: a.get(),
                services: s
                    .iter()
                    .map(|s| ServiceAd {
                        addr: s.addr.get(),
                        mode: mode(s.mode),
                        hb_ms: s.hb_ms,
                        timeout_ms: s.timeout_ms,
                    })
                    .collect(),
            }),
            GenPayload::View(m) => Value::View(View {
                members: m
                    .iter()
                    .map(|(id, inc, since, a)| Member {
                        id: ReplicaId(*id),
                        incarnation: Incarnation(*inc),
                        since: Epoch(*since),
                        addr: a.get(),
                    })
                    .collect(),
            }),
            GenPayload::Progress(e) => Value::Progress(
                e.iter()
                    .map(|e| ProgressEntry {
                        client: e.client.get(),
                        service: e.service.get(),
                        isn_local: e.isn_local,
                        isn_s: e.isn_s,
                        rcv_nxt: e.rcv_nxt,
                        client_fin: e.client_fin,
                        edge: e.edge,
                        hole_end: e.hole_end,
                        out: e.isn_s.map(|s| s ^ e.hole_end),
                        end: [OutputEnd::Open, OutputEnd::Fin, OutputEnd::Reset]
                            [(e.isn_local % 3) as usize],
                    })
                    .collect(),
            ),
            GenPayload::Digests(e) => Value::Digests(
                e.iter()
                    .map(|e| DigestEntry {
                        client: e.client.get(),
                        service: e.service.get(),
                        index: e.index,
                        len: e.len,
                        fin: e.fin,
                        digest: e.digest,
                    })
                    .collect(),
            ),
            GenPayload::Order(e) => Value::Order(
                e.iter()
                    .map(|e| OrderEntry {
                        stamp: e.stamp,
                        client: e.client.get(),
                        service: e.service.get(),
                        len: e.len,
                        epoch: e.epoch,
                    })
                    .collect(),
            ),
            GenPayload::OrderRepair(service, gone, from, to) => Value::OrderRepair(OrderRepair {
                service: service.get(),
                kind: if *gone {
                    OrderRepairKind::Gone
                } else {
                    OrderRepairKind::Need
                },
                from: *from,
                to: *to,
            }),
        }
    }

    fn msg_type(&self) -> MsgType {
        match self {
            Value::Heartbeat(_) => MsgType::Heartbeat,
            Value::View(_) => MsgType::View,
            Value::Progress(_) => MsgType::Progress,
            Value::Digests(_) => MsgType::Digest,
            Value::Order(_) => MsgType::Order,
            Value::OrderRepair(_) => MsgType::OrderRepair,
        }
    }

    fn emit(&self) -> Vec<u8> {
        match self {
            Value::Heartbeat(h) => h.emit(),
            Value::View(v) => v.emit(),
            Value::Progress(e) => emit_progress(e),
            Value::Digests(e) => emit_digests(e),
            Value::Order(e) => emit_order(e),
            Value::OrderRepair(r) => r.emit(),
        }
    }

    /// Parses `b` as a payload of this value's type.
    fn parse_like(&self, b: &[u8]) -> Result<Value, WireError> {
        Ok(match self {
            Value::Heartbeat(_) => Value::Heartbeat(Heartbeat::parse(b)?),
            Value::View(_) => Value::View(View::parse(b)?),
            Value::Progress(_) => Value::Progress(parse_progress(b)?),
            Value::Digests(_) => Value::Digests(parse_digests(b)?),
            Value::Order(_) => Value::Order(parse_order(b)?),
            Value::OrderRepair(_) => Value::OrderRepair(OrderRepair::parse(b)?),
        })
    }

    /// What survives emitting: a view's first 255 members.
    fn as_emitted(&self) -> Value {
        match self {
            Value::View(v) => Value::View(View {
                members: v.members.iter().take(255).copied().collect(),
            }),
            other => other.clone(),
        }
    }
}

#[test]
fn fuzz_payload_round_trip() {
    check!()
        .with_type::<(GenPayload, Vec<u8>, u64)>()
        .for_each(|(g, trailing, counter)| {
            let value = Value::of(g);
            let bytes = value.emit();
            let expect = value.as_emitted();
            assert_eq!(value.parse_like(&bytes), Ok(expect.clone()));
            for n in 0..bytes.len() {
                assert_eq!(
                    value.parse_like(&bytes[..n]),
                    Err(WireError::Payload),
                    "cut to {n} of {} bytes",
                    bytes.len()
                );
            }
            if !trailing.is_empty() {
                let mut longer = bytes.clone();
                longer.extend_from_slice(trailing);
                assert_eq!(value.parse_like(&longer), Err(WireError::Payload));
            }

            let sealer = Sealer::with_first_counter(key(), ReplicaId(2), Incarnation(9), *counter);
            let t = value.msg_type();
            let d = sealer.seal(t, ServiceId(0xc613_000a_0050), Epoch(3), to_me(), &bytes);
            let (h, payload) = opener().open(&d).expect("a sealed datagram opens");
            assert_eq!(
                (h.msg_type, h.sender, h.counter),
                (t, ReplicaId(2), *counter)
            );
            assert_eq!(value.parse_like(payload), Ok(expect));
        });
}

/// A datagram's fields, and damage to its header.
#[derive(Debug, Clone, TypeGenerator)]
struct GenDatagram {
    /// An index into `ALL_TYPES`.
    #[generator(0u8..13)]
    msg_type: u8,
    flags: u16,
    service: u64,
    epoch: u64,
    sender: u32,
    receiver: u32,
    sender_incarnation: u64,
    receiver_incarnation: u64,
    counter: u64,
    #[generator(Vec::produce().with().len(0usize..=300))]
    payload: Vec<u8>,
    magic: Option<[u8; 2]>,
    version: Option<u8>,
    type_code: Option<u8>,
    reserved: Option<[u8; 2]>,
    flip_at: u16,
    #[generator(1u8..=255)]
    xor: u8,
}

#[test]
fn fuzz_datagram_round_trip() {
    check!().with_type::<GenDatagram>().for_each(|g| {
        let t = ALL_TYPES[usize::from(g.msg_type)].1;
        let h = Header {
            msg_type: t,
            flags: g.flags,
            service: ServiceId(g.service),
            epoch: Epoch(g.epoch),
            sender: ReplicaId(g.sender),
            receiver: ReplicaId(g.receiver),
            sender_incarnation: Incarnation(g.sender_incarnation),
            receiver_incarnation: Incarnation(g.receiver_incarnation),
            counter: g.counter,
        };
        let mut buf = vec![0u8; Header::buffer_len(g.payload.len())];
        h.emit(&mut buf);
        buf[HEADER_LEN..HEADER_LEN + g.payload.len()].copy_from_slice(&g.payload);
        let d = Datagram::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&d), Ok(h));
        assert_eq!(d.payload(), &g.payload[..]);
        assert_eq!((d.sender(), d.counter()), (h.sender, h.counter));
        for n in 0..buf.len() {
            // No length field: past the minimum a cut is a datagram with a shorter payload.
            let want = if n < HEADER_LEN + MAC_LEN {
                Err(WireError::Truncated)
            } else {
                Ok(h)
            };
            assert_eq!(parse_header(&buf[..n]), want, "cut to {n} bytes");
        }

        let mut bad = buf.clone();
        if let Some(m) = g.magic {
            bad[..2].copy_from_slice(&m);
        }
        if let Some(v) = g.version {
            bad[2] = v;
        }
        if let Some(c) = g.type_code {
            bad[3] = c;
        }
        if let Some(r) = g.reserved {
            bad[6..8].copy_from_slice(&r);
        }
        assert_eq!(parse_header(&bad), expected_header(&bad));

        let sealer = Sealer::with_first_counter(key(), h.sender, h.sender_incarnation, h.counter);
        let sealed = sealer.seal(t, h.service, h.epoch, to_me(), &g.payload);
        let mut opener = opener();
        let sealed_header = Header {
            flags: 0,
            receiver: ME,
            receiver_incarnation: MY_LIFE,
            ..h
        };
        assert_eq!(
            opener.open(&sealed),
            Ok((sealed_header, &g.payload[..])),
            "a sealed datagram opens to its header and payload"
        );
        assert_eq!(opener.open(&sealed), Err(DropReason::Replay));
        for n in 0..sealed.len() {
            assert!(crate::opener().open(&sealed[..n]).is_err());
        }
        let mut f = sealed.clone();
        let at = usize::from(g.flip_at) % f.len();
        f[at] ^= g.xor;
        assert_flip_refused(&f, at, g.xor);
        let next = sealer.seal(t, h.service, h.epoch, to_me(), &g.payload);
        assert!(opener.open(&next).is_ok() || h.counter == u64::MAX);
    });
}

/// `p`, an IPv4/TCP packet without options, with its IPv4 header and TCP checksums
/// (RFC 1071) filled in.
fn with_checksums(mut p: Vec<u8>) -> Vec<u8> {
    let sum = |parts: &[&[u8]]| {
        let mut s: u32 = parts
            .iter()
            .flat_map(|b| b.chunks(2))
            .map(|w| u32::from(w[0]) << 8 | u32::from(*w.get(1).unwrap_or(&0)))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        (!(s as u16)).to_be_bytes()
    };
    let c = sum(&[&p[..20]]);
    p[10..12].copy_from_slice(&c);
    let tcp_len = (p.len() as u16 - 20).to_be_bytes();
    let pseudo = [&p[12..20], &[0, 6], &tcp_len[..]].concat();
    let c = sum(&[&pseudo, &p[20..]]);
    p[36..38].copy_from_slice(&c);
    p
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

/// Named files of a seed corpus.
type Corpus = Vec<(&'static str, Vec<u8>)>;

/// The seed corpora: `fuzz_raw_payload`'s (payloads, and datagrams sealed with [`key`]) and
/// `fuzz_open`'s (datagrams that must not open).
fn seed_corpora() -> [(&'static str, Corpus); 2] {
    let client = addr("198.18.0.2:40000");
    let service = addr("198.19.0.10:80");
    let heartbeat = Heartbeat {
        addr: addr("198.18.1.2:7000"),
        services: vec![
            ServiceAd {
                addr: service,
                mode: Mode::Ft,
                hb_ms: 100,
                timeout_ms: 300,
            },
            ServiceAd {
                addr: addr("198.19.0.10:443"),
                mode: Mode::Redirect,
                hb_ms: 250,
                timeout_ms: 1000,
            },
            ServiceAd {
                addr: addr("198.19.0.11:6379"),
                mode: Mode::Off,
                hb_ms: 0,
                timeout_ms: 0,
            },
        ],
    }
    .emit();
    let view = View {
        members: (1..=2)
            .map(|i| Member {
                id: ReplicaId(i),
                incarnation: Incarnation(1_800_000_000_000_000_000 + u64::from(i)),
                since: Epoch(1_800_000_000_000_000 + u64::from(i)),
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i as u8), 7100),
            })
            .collect(),
    }
    .emit();
    let progress = emit_progress(&[
        ProgressEntry {
            client,
            service,
            isn_local: 0x1000,
            isn_s: Some(0x9e37_79b9),
            rcv_nxt: 0x1a2b_3c4e,
            client_fin: true,
            edge: 0x1a2c_3c4e,
            hole_end: 0x1a2b_3c4e,
            out: Some(0x9e37_8000),
            end: OutputEnd::Fin,
        },
        ProgressEntry {
            client: addr("198.18.0.3:40001"),
            service,
            isn_local: 0x2000,
            isn_s: None,
            rcv_nxt: 7,
            client_fin: false,
            edge: 65542,
            hole_end: 1455,
            out: None,
            end: OutputEnd::Open,
        },
    ]);
    let digests = emit_digests(&[DigestEntry {
        client,
        service,
        index: 3,
        len: 4096,
        fin: true,
        digest: *b"0123456789abcdef",
    }]);
    let exclusions = emit_exclusions(&[
        ExclusionEntry {
            client,
            service,
            members: vec![1, 3],
        },
        ExclusionEntry {
            client: addr("198.18.0.3:40001"),
            service,
            members: vec![],
        },
    ]);
    let order = emit_order(&[
        OrderEntry {
            stamp: 41,
            client,
            service,
            len: 13,
            epoch: 7,
        },
        OrderEntry {
            stamp: 42,
            client: addr("198.18.0.3:40001"),
            service,
            len: 1,
            epoch: 7,
        },
    ]);
    let order_repair = OrderRepair {
        service,
        kind: OrderRepairKind::Need,
        from: 41,
        to: 57,
    }
    .emit();
    // A client's SYN (MSS 1460, SACK-permitted, timestamps, window scale 7), as a repair
    // or a tunnelled packet carries it.
    let syn: Vec<u8> = [
        "4500003c04d240004006",
        "0000c6120002c613000a9c400050",
        "1a2b3c4d00000000a002faf000000000",
        "020405b40402080a8f5b28db0000000001030307",
    ]
    .concat()
    .as_bytes()
    .chunks(2)
    .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
    .collect();
    let syn = with_checksums(syn);
    let sid = ServiceId::from_addr(service);
    let sealer = Sealer::new(key(), ReplicaId(2), Incarnation(1_800_000_000_000_000_002));
    let sealed = |t, p: &[u8]| sealer.seal(t, sid, Epoch(3), to_me(), p);
    let group = |t, p: &[u8]| sealer.seal(t, sid, Epoch(3), Receiver::GROUP, p);
    let raw = vec![
        ("heartbeat", heartbeat.clone()),
        ("heartbeat_empty", vec![198, 18, 1, 2, 0x1b, 0x58, 0, 0]),
        ("view", view.clone()),
        ("view_empty", vec![0]),
        ("progress", progress.clone()),
        ("digests", digests.clone()),
        ("order", order.clone()),
        ("order_repair", order_repair.clone()),
        ("order_repair_synced", {
            let mut r = order_repair.clone();
            r[6] = 2;
            r
        }),
        ("order_repair_kind_3", {
            let mut r = order_repair.clone();
            r[6] = 3;
            r
        }),
        (
            "heartbeat_count_too_big",
            vec![
                198, 18, 1, 2, 0x1b, 0x58, 0, 2, 198, 19, 0, 10, 0, 80, 2, 0, 100, 1, 44,
            ],
        ),
        ("heartbeat_unknown_mode", {
            let mut h = heartbeat.clone();
            h[14] = 3;
            h
        }),
        ("progress_end_3", {
            let mut p = progress.clone();
            p[2 + 33] = 3 << 1;
            p
        }),
        ("progress_has_isn_s_2", {
            let mut p = progress.clone();
            p[2 + 16] = 2;
            p
        }),
        ("datagram_heartbeat", sealed(MsgType::Heartbeat, &heartbeat)),
        ("datagram_view", sealed(MsgType::View, &view)),
        ("datagram_progress", group(MsgType::Progress, &progress)),
        ("datagram_digest", group(MsgType::Digest, &digests)),
        ("datagram_order", group(MsgType::Order, &order)),
        ("exclusions", exclusions.clone()),
        ("exclusions_33_members", {
            let mut e = exclusions.clone();
            e[2 + 12] = 33;
            e
        }),
        ("datagram_exclude", sealed(MsgType::Exclude, &exclusions)),
        ("datagram_excluded", sealed(MsgType::Excluded, &exclusions)),
        (
            "datagram_excluded_ack",
            sealed(MsgType::ExcludedAck, &exclusions),
        ),
        (
            "datagram_order_repair",
            sealed(MsgType::OrderRepair, &order_repair),
        ),
        ("datagram_repair_syn", sealed(MsgType::Repair, &syn)),
        ("datagram_to_host_syn", group(MsgType::ToHost, &syn)),
        ("datagram_to_client_empty", sealed(MsgType::ToClient, &[])),
        ("datagram_welcome", sealed(MsgType::Welcome, &[])),
    ];
    let other = Sealer::new(
        ClusterKey::from_bytes([8; 32]),
        ReplicaId(2),
        Incarnation(5),
    );
    let good = other.seal(
        MsgType::Heartbeat,
        ServiceId(0),
        Epoch(0),
        to_me(),
        &heartbeat,
    );
    let broken = |at: usize, v: u8| {
        let mut d = good.clone();
        d[at] = v;
        d
    };
    let open = vec![
        ("other_cluster_heartbeat", good.clone()),
        (
            "other_cluster_progress",
            other.seal(MsgType::Progress, sid, Epoch(3), Receiver::GROUP, &progress),
        ),
        ("bad_magic", broken(0, b'X')),
        ("version_1", broken(2, 1)),
        ("unknown_type_15", broken(3, 15)),
        ("reserved_set", broken(7, 1)),
        ("truncated_header", good[..40].to_vec()),
        ("heartbeat_payload", heartbeat),
        ("view_payload", view),
    ];
    [("raw_payload", raw), ("open", open)]
}

/// Writes the seed corpora. Run by hand after changing [`seed_corpora`]:
/// `cargo test -p ack-channel --test fuzz_decoder write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes the seed corpus into the source tree; run by hand"]
fn write_seed_corpus() {
    for (target, files) in seed_corpora() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/__fuzz__")
            .join(target)
            .join("corpus");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The seeds are what their names say.
#[test]
fn seed_corpora_are_what_they_claim() {
    let [(_, raw), (_, open)] = seed_corpora();
    for (name, b) in raw {
        let opens = opener().open(&b).is_ok();
        assert_eq!(opens, name.starts_with("datagram_"), "{name}");
        let parses = Heartbeat::parse(&b).is_ok()
            || View::parse(&b).is_ok()
            || parse_progress(&b).is_ok()
            || parse_digests(&b).is_ok()
            || parse_order(&b).is_ok()
            || parse_exclusions(&b).is_ok()
            || OrderRepair::parse(&b).is_ok();
        let broken = matches!(
            name,
            "heartbeat_count_too_big"
                | "exclusions_33_members"
                | "heartbeat_unknown_mode"
                | "progress_has_isn_s_2"
                | "progress_end_3"
                | "order_repair_kind_3"
        );
        assert_eq!(parses, !opens && !broken, "{name}");
    }
    for (name, b) in open {
        let got = opener().open(&b).err();
        let want = match name {
            "bad_magic" => DropReason::Malformed(WireError::BadMagic),
            "version_1" => DropReason::Malformed(WireError::Version(1)),
            "unknown_type_15" => DropReason::Malformed(WireError::UnknownType(15)),
            "reserved_set" => DropReason::Malformed(WireError::Reserved),
            "truncated_header" | "heartbeat_payload" | "view_payload" => {
                DropReason::Malformed(WireError::Truncated)
            }
            _ => DropReason::BadMac,
        };
        assert_eq!(got, Some(want), "{name}");
    }
}
