//! Fuzz targets for ft-tcp's segment decoders and rewriter (issue #10), with bolero.
//!
//! Under `cargo test` bolero runs each target on its checked-in corpus, the files in
//! `tests/__fuzz__/<target without "fuzz_">/corpus/`, then on random inputs for one second;
//! `cargo bolero test -p ft-tcp --test fuzz_segment fuzz_raw_packet` runs a target under
//! libFuzzer (nightly), which also adds the inputs it finds to that directory.
//!
//! - `fuzz_raw_packet`: arbitrary bytes. Its corpus is real packets (Linux and Windows SYNs
//!   with options, a SYN-ACK, data, FIN, RST, SACK, IP options, wrong option lengths,
//!   truncations), written by `write_seed_corpus` from [`seed_packets`].
//! - `fuzz_generated_segment`: a well-formed IPv4/TCP packet built by hand from fuzzed fields
//!   and TCP options (MSS, window scale, SACK-permitted, SACK blocks, timestamps, NOP, EOL,
//!   unknown kinds, lengths that lie, a kind with no length), then one fuzzed mutation
//!   (truncation, a flipped byte, IHL / data offset / total length overwritten with or
//!   without fixing the checksums, link padding after the packet).
//! - `fuzz_syncookie`: cookies made and checked with fuzzed tuples, ISNs, options and clocks.
//!
//! Properties, for every input: nothing panics; [`TcpMeta::parse_checked`] is
//! [`TcpMeta::parse`] plus [`checksums_ok`]; for a TCP packet that is not a fragment
//! `rewrite::parse` succeeds exactly when `TcpMeta::parse` does, and when both do they agree on
//! sequence, acknowledgment, flags and payload length, and `rewrite::parse` agrees with
//! etherparse's option iterator on MSS, window scale, SACK-permitted and SACK whenever
//! etherparse reads every option; `set_seq`/`set_ack`/`set_window` read back, change nothing
//! else and keep `checksums_ok` as it was; `SynOpts::of_syn` rounds the MSS down to the cookie
//! table and survives `rebuild_syn`. For a generated packet before mutation: both parsers
//! read back every generated field (the options whenever the generated list is well-formed),
//! `checksums_ok` holds and `parse_checked` accepts it (or refuses it as a fragment when it is
//! one). After mutation: a truncation fails every parser, a byte flipped anywhere but in the
//! total length fails the checksums, and bytes after the total length change nothing. For a
//! raw input whose checksums are right (the corpus packets): the same for every truncation
//! and every byte flipped three ways. Cookies: a cookie checks with the options it was made
//! with in its period and the next, never in the two periods after that or the two before,
//! and `CookieJar::check` accepts an ISN only when `isn()` makes exactly that ISN; a cookie's
//! SYN-ACK reads back its ISN, ACK, MSS, window scale and SACK-permitted.
//!
//! A bug these targets found (a lone option kind in the last header byte) is pinned by
//! [`lone_option_kind_in_the_last_header_byte_parses`].

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use bolero::{check, TypeGenerator};
use etherparse::{Ipv4Slice, TcpOptionElement, TcpSlice};
use ft_tcp::packet::checksums_ok;
use ft_tcp::rewrite::{self, Seg};
use ft_tcp::syncookie::{self, CookieJar, SynOpts};
use ft_tcp::{FlowKey, PacketError, SeqNumber, TcpFlags, TcpMeta};

/// The MSS values a cookie can carry, as `syncookie.rs` documents them.
const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// The Internet checksum (RFC 1071) of the concatenation of `parts`, written independently of
/// `packet.rs` (16-bit words, end-around carry). Only the last part may have an odd length.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u64::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum and the TCP checksum as far as the (possibly
/// inconsistent) IHL and total length allow, so that a mutated packet reaches the parsers'
/// length checks instead of failing on its sums.
fn fix_checksums(p: &mut [u8]) {
    if p.len() < 20 {
        return;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || ihl > p.len() {
        return;
    }
    p[10..12].fill(0);
    let c = internet_checksum(&[&p[..ihl]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let total = usize::from(be16(p, 2));
    if total < ihl + 18 || total > p.len() {
        return;
    }
    p[ihl + 16..ihl + 18].fill(0);
    let tcp_len = u16::try_from(total - ihl).unwrap_or(u16::MAX);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&tcp_len.to_be_bytes());
    let c = internet_checksum(&[&pseudo, &p[ihl..total]]);
    p[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
}

/// One element of a generated TCP option list.
#[derive(Debug, Clone, TypeGenerator)]
enum TcpOpt {
    /// Kind 0: the list ends.
    Eol,
    /// Kind 1.
    Nop,
    /// Kind 2, length 4.
    Mss(u16),
    /// Kind 3, length 3 (shifts above 14 are read as 14, RFC 7323 §2.3).
    WindowScale(u8),
    /// Kind 4, length 2.
    SackPermitted,
    /// Kind 5, length 2 + 8 per block (RFC 2018).
    Sack(#[generator(Vec::produce().with().len(0usize..=4))] Vec<(u32, u32)>),
    /// Kind 8, length 10 (RFC 7323).
    Timestamps(u32, u32),
    /// A kind the parser does not interpret, with a true length.
    Unknown {
        #[generator(6u8..=255)]
        kind: u8,
        #[generator(Vec::produce().with().len(0usize..=10))]
        body: Vec<u8>,
    },
    /// Any kind, with a length byte that need not match the bytes after it.
    Raw {
        kind: u8,
        len: u8,
        #[generator(Vec::produce().with().len(0usize..=10))]
        body: Vec<u8>,
    },
    /// A kind that needs a length byte, without one.
    KindOnly(#[generator(2u8..=255)] u8),
}

impl TcpOpt {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TcpOpt::Eol => out.push(0),
            TcpOpt::Nop => out.push(1),
            TcpOpt::Mss(v) => {
                out.extend_from_slice(&[2, 4]);
                out.extend_from_slice(&v.to_be_bytes());
            }
            TcpOpt::WindowScale(v) => out.extend_from_slice(&[3, 3, *v]),
            TcpOpt::SackPermitted => out.extend_from_slice(&[4, 2]),
            TcpOpt::Sack(blocks) => {
                out.extend_from_slice(&[5, 2 + 8 * blocks.len() as u8]);
                for (l, r) in blocks {
                    out.extend_from_slice(&l.to_be_bytes());
                    out.extend_from_slice(&r.to_be_bytes());
                }
            }
            TcpOpt::Timestamps(val, ecr) => {
                out.extend_from_slice(&[8, 10]);
                out.extend_from_slice(&val.to_be_bytes());
                out.extend_from_slice(&ecr.to_be_bytes());
            }
            TcpOpt::Unknown { kind, body } => {
                out.extend_from_slice(&[*kind, 2 + body.len() as u8]);
                out.extend_from_slice(body);
            }
            TcpOpt::Raw { kind, len, body } => {
                out.extend_from_slice(&[*kind, *len]);
                out.extend_from_slice(body);
            }
            TcpOpt::KindOnly(kind) => out.push(*kind),
        }
    }
}

/// The options `rewrite::parse` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct OptModel {
    mss: Option<u16>,
    wscale: Option<u8>,
    sack_permitted: bool,
    sack: bool,
}

impl OptModel {
    fn of(seg: &Seg) -> OptModel {
        OptModel {
            mss: seg.mss,
            wscale: seg.wscale,
            sack_permitted: seg.sack_permitted,
            sack: seg.sack,
        }
    }
}

/// What a receiver reads from a generated option list (RFC 9293 §3.1: EOL ends the list;
/// the last of a repeated option wins), or `None` when an element's length byte does not
/// describe it, so that what follows depends on how the bytes happen to line up.
fn option_model(opts: &[TcpOpt]) -> Option<OptModel> {
    let mut m = OptModel::default();
    for o in opts {
        match o {
            TcpOpt::Eol => return Some(m),
            TcpOpt::Nop | TcpOpt::Timestamps(..) | TcpOpt::Unknown { .. } => {}
            TcpOpt::Mss(v) => m.mss = Some(*v),
            TcpOpt::WindowScale(v) => m.wscale = Some((*v).min(14)),
            TcpOpt::SackPermitted => m.sack_permitted = true,
            TcpOpt::Sack(_) => m.sack = true,
            TcpOpt::Raw { kind, len, body } if usize::from(*len) == body.len() + 2 => {
                match (kind, len) {
                    (0, _) => return Some(m),
                    (1, _) => return None,
                    (2, 4) => m.mss = Some(be16(body, 0)),
                    (3, 3) => m.wscale = Some(body[0].min(14)),
                    (4, 2) => m.sack_permitted = true,
                    (5, _) => m.sack = true,
                    _ => {}
                }
            }
            TcpOpt::Raw { .. } | TcpOpt::KindOnly(_) => return None,
        }
    }
    Some(m)
}

/// The options etherparse reads, when it reads every one of them (it refuses unknown kinds
/// and wrong lengths, so then the list is well-formed and the two parsers must agree).
fn etherparse_options(p: &[u8]) -> Option<OptModel> {
    let ip = Ipv4Slice::from_slice(p).ok()?;
    let tcp = TcpSlice::from_slice(ip.payload().payload).ok()?;
    let mut m = OptModel::default();
    for o in tcp.options_iterator() {
        match o.ok()? {
            TcpOptionElement::MaximumSegmentSize(v) => m.mss = Some(v),
            TcpOptionElement::WindowScale(v) => m.wscale = Some(v.min(14)),
            TcpOptionElement::SelectiveAcknowledgementPermitted => m.sack_permitted = true,
            TcpOptionElement::SelectiveAcknowledgement(..) => m.sack = true,
            TcpOptionElement::Noop | TcpOptionElement::Timestamp(..) => {}
        }
    }
    Some(m)
}

/// The fields of a generated IPv4/TCP packet.
#[derive(Debug, Clone, TypeGenerator)]
struct SegSpec {
    src: [u8; 4],
    dst: [u8; 4],
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    /// CWR ECE URG ACK PSH RST SYN FIN.
    flags: u8,
    /// The low four bits of the data-offset byte (reserved, and AccECN's AE).
    #[generator(0u8..16)]
    reserved: u8,
    window: u16,
    urgent: u16,
    tos: u8,
    id: u16,
    ttl: u8,
    dont_fragment: bool,
    /// 0: more fragments follow; 1: a later fragment; otherwise not a fragment.
    #[generator(0u8..8)]
    fragment: u8,
    with_ip_options: bool,
    #[generator(Vec::produce().with().len(0usize..=40))]
    ip_options: Vec<u8>,
    #[generator(Vec::produce().with().len(0usize..=12))]
    options: Vec<TcpOpt>,
    no_payload: bool,
    #[generator(Vec::produce().with().len(0usize..=1460))]
    payload: Vec<u8>,
}

/// A generated packet and what went into it.
struct Built {
    pkt: Vec<u8>,
    ihl: usize,
    doff: usize,
    /// The options that fit in the 40 bytes of option space.
    opts: Vec<TcpOpt>,
    payload_len: usize,
}

impl SegSpec {
    fn is_fragment(&self) -> bool {
        self.fragment < 2
    }

    fn src(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.src), self.src_port)
    }

    fn dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(self.dst), self.dst_port)
    }

    fn payload(&self) -> &[u8] {
        if self.no_payload {
            &[]
        } else {
            &self.payload
        }
    }

    /// Builds the packet by hand, checksums included.
    fn build(&self) -> Built {
        let mut ip_opts = if self.with_ip_options {
            self.ip_options.clone()
        } else {
            Vec::new()
        };
        ip_opts.resize(ip_opts.len().div_ceil(4) * 4, 0);
        let mut tcp_opts = Vec::new();
        let mut kept = Vec::new();
        for o in &self.options {
            let mut b = Vec::new();
            o.encode(&mut b);
            if tcp_opts.len() + b.len() > 40 {
                break;
            }
            tcp_opts.extend_from_slice(&b);
            kept.push(o.clone());
        }
        // Padding with zeros is an EOL, as stacks pad.
        tcp_opts.resize(tcp_opts.len().div_ceil(4) * 4, 0);
        let ihl = 20 + ip_opts.len();
        let doff = 20 + tcp_opts.len();
        let payload = self.payload();
        let total = ihl + doff + payload.len();

        let mut p = Vec::with_capacity(total);
        p.push(0x40 | (ihl / 4) as u8);
        p.push(self.tos);
        p.extend_from_slice(&(total as u16).to_be_bytes());
        p.extend_from_slice(&self.id.to_be_bytes());
        let mut frag: u16 = if self.dont_fragment { 0x4000 } else { 0 };
        match self.fragment {
            0 => frag |= 0x2000,
            1 => frag |= 185,
            _ => {}
        }
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[self.ttl, 6, 0, 0]);
        p.extend_from_slice(&self.src);
        p.extend_from_slice(&self.dst);
        p.extend_from_slice(&ip_opts);
        p.extend_from_slice(&self.src_port.to_be_bytes());
        p.extend_from_slice(&self.dst_port.to_be_bytes());
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ack.to_be_bytes());
        p.push(((doff / 4) as u8) << 4 | self.reserved);
        p.push(self.flags);
        p.extend_from_slice(&self.window.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&self.urgent.to_be_bytes());
        p.extend_from_slice(&tcp_opts);
        p.extend_from_slice(payload);
        fix_checksums(&mut p);
        Built {
            pkt: p,
            ihl,
            doff,
            opts: kept,
            payload_len: payload.len(),
        }
    }
}

fn is_tcp_non_fragment(p: &[u8]) -> bool {
    p.len() >= 20 && p[9] == 6 && p[6] & 0x20 == 0 && be16(p, 6) & 0x1fff == 0
}

fn flags_of(seg: &Seg) -> TcpFlags {
    TcpFlags {
        syn: seg.syn,
        ack: seg.ack_flag,
        fin: seg.fin,
        rst: seg.rst,
    }
}

/// Values the rewriter writes.
#[derive(Debug, Clone, Copy, TypeGenerator)]
struct Rewrite {
    seq: u32,
    ack: u32,
    window: u16,
}

fn key() -> FlowKey {
    FlowKey {
        client: "198.18.0.2:40000".parse().unwrap(),
        service: "198.19.0.10:80".parse().unwrap(),
    }
}

/// The properties that hold for any bytes at all.
fn check_any(p: &[u8], new: Rewrite) {
    let seg = rewrite::parse(p);
    let meta = TcpMeta::parse(p);
    let sums = checksums_ok(p);
    let checked = TcpMeta::parse_checked(p);
    match meta {
        Ok(m) if sums => assert_eq!(checked, Ok(m)),
        Ok(_) => assert_eq!(checked, Err(PacketError::Checksum)),
        Err(e) => assert_eq!(checked, Err(e)),
    }
    if is_tcp_non_fragment(p) {
        assert_eq!(
            seg.is_some(),
            meta.is_ok(),
            "rewrite::parse {seg:?} but TcpMeta::parse {meta:?}"
        );
    }
    let Some(seg) = seg else { return };
    assert!(seg.tcp_off >= 20 && seg.payload_off >= seg.tcp_off + 20);
    assert!(seg.payload_off + seg.payload_len <= p.len());
    if let Ok(m) = meta {
        assert_eq!(
            (m.seq, m.ack, m.flags, m.payload_len),
            (seg.seq.0, seg.ack.0, flags_of(&seg), seg.payload_len),
            "TcpMeta::parse and rewrite::parse disagree"
        );
    }
    if let Some(m) = etherparse_options(p) {
        assert_eq!(OptModel::of(&seg), m, "options differ from etherparse's");
    }

    let mut q = p.to_vec();
    rewrite::set_seq(&mut q, &seg, SeqNumber(new.seq));
    rewrite::set_ack(&mut q, &seg, SeqNumber(new.ack));
    rewrite::set_window(&mut q, &seg, new.window);
    assert_eq!(checksums_ok(&q), sums, "a rewrite changed checksums_ok");
    let expect = Seg {
        seq: SeqNumber(new.seq),
        ack: SeqNumber(new.ack),
        window: new.window,
        ..seg
    };
    assert_eq!(rewrite::parse(&q), Some(expect));
    if let Ok(m) = meta {
        let m2 = TcpMeta {
            seq: new.seq,
            ack: new.ack,
            ..m
        };
        assert_eq!(TcpMeta::parse(&q), Ok(m2));
    }

    if seg.syn {
        check_syn_opts(&seg);
    }
}

/// `SynOpts::of_syn` keeps what a cookie can carry, and a rebuilt SYN reads back the same.
fn check_syn_opts(seg: &Seg) {
    let o = SynOpts::of_syn(seg);
    let given = seg.mss.unwrap_or(536);
    let rounded = MSS_TABLE.iter().rev().find(|m| **m <= given).copied();
    assert_eq!(o.mss, rounded.unwrap_or(536), "MSS {given}");
    assert_eq!(o.wscale, seg.wscale.map(|w| w.min(14)));
    assert_eq!(o.sack, seg.sack_permitted);
    let syn = syncookie::rebuild_syn(key(), seg.seq, o);
    assert!(checksums_ok(&syn));
    let again = rewrite::parse(&syn).expect("a rebuilt SYN parses");
    assert!(again.syn && !again.ack_flag);
    assert_eq!(again.seq, seg.seq);
    assert_eq!(SynOpts::of_syn(&again), o);
}

/// For a packet whose checksums are right: every truncation fails every parser, every byte
/// flipped (but in the total length) fails the checksums, and link padding changes nothing.
fn damage_everywhere(p: &[u8], new: Rewrite) {
    let total = usize::from(be16(p, 2));
    for n in 0..total {
        let t = &p[..n];
        assert_eq!(rewrite::parse(t), None, "truncated to {n}");
        assert!(TcpMeta::parse(t).is_err(), "truncated to {n}");
        assert!(!checksums_ok(t), "truncated to {n}");
    }
    for i in (0..total).filter(|i| !matches!(i, 2 | 3)) {
        for xor in [0x01, 0x80, 0xff] {
            let mut q = p.to_vec();
            q[i] ^= xor;
            assert_flip_detected(&q, i, xor);
            check_any(&q, new);
        }
    }
    let mut padded = p[..total].to_vec();
    padded.extend_from_slice(&[0, 0, 0, 0, 0, 0x55]);
    assert_padding_ignored(&p[..total], &padded);
}

fn assert_flip_detected(q: &[u8], at: usize, xor: u8) {
    assert!(
        !checksums_ok(q),
        "byte {at} ^ {xor:#04x} kept the checksums"
    );
    assert!(
        TcpMeta::parse_checked(q).is_err(),
        "byte {at} ^ {xor:#04x} passed parse_checked"
    );
}

fn assert_padding_ignored(p: &[u8], padded: &[u8]) {
    assert_eq!(rewrite::parse(padded), rewrite::parse(p));
    assert_eq!(TcpMeta::parse(padded), TcpMeta::parse(p));
    assert_eq!(checksums_ok(padded), checksums_ok(p));
}

#[test]
fn fuzz_raw_packet() {
    check!().for_each(|p: &[u8]| {
        let new = Rewrite {
            seq: 0x8000_0001,
            ack: 0xffff_fffe,
            window: 0x1234,
        };
        check_any(p, new);
        if checksums_ok(p) && rewrite::parse(p).is_some() {
            damage_everywhere(p, new);
        }
    });
}

/// How a generated packet is damaged before the second round of checks.
#[derive(Debug, Clone, TypeGenerator)]
enum Mutation {
    None,
    Truncate(u16),
    Flip {
        at: u16,
        #[generator(1u8..=255)]
        xor: u8,
    },
    Ihl {
        #[generator(0u8..16)]
        ihl: u8,
        fix_checksums: bool,
    },
    DataOffset {
        #[generator(0u8..16)]
        doff: u8,
        fix_checksums: bool,
    },
    TotalLength {
        #[generator(-80i32..=80)]
        delta: i32,
        fix_checksums: bool,
    },
    Padding(#[generator(Vec::produce().with().len(1usize..=32))] Vec<u8>),
}

#[test]
fn fuzz_generated_segment() {
    check!()
        .with_type::<(SegSpec, Mutation, Rewrite)>()
        .for_each(|(spec, mutation, new)| {
            let b = spec.build();
            let p = &b.pkt[..];
            check_any(p, *new);
            check_generated(spec, &b);

            let mut q = p.to_vec();
            match mutation {
                Mutation::None => {}
                Mutation::Truncate(n) => {
                    let n = usize::from(*n) % p.len();
                    assert_eq!(rewrite::parse(&p[..n]), None);
                    assert!(TcpMeta::parse(&p[..n]).is_err());
                    assert!(!checksums_ok(&p[..n]));
                    q.truncate(n);
                }
                Mutation::Flip { at, xor } => {
                    let at = usize::from(*at) % p.len();
                    q[at] ^= xor;
                    if !matches!(at, 2 | 3) {
                        assert_flip_detected(&q, at, *xor);
                    }
                }
                Mutation::Ihl {
                    ihl,
                    fix_checksums: fix,
                } => {
                    q[0] = 0x40 | ihl;
                    if *fix {
                        fix_checksums(&mut q);
                    }
                }
                Mutation::DataOffset {
                    doff,
                    fix_checksums: fix,
                } => {
                    q[b.ihl + 12] = (doff << 4) | (q[b.ihl + 12] & 0x0f);
                    if *fix {
                        fix_checksums(&mut q);
                    }
                }
                Mutation::TotalLength {
                    delta,
                    fix_checksums: fix,
                } => {
                    let total = (p.len() as i32 + delta).clamp(0, 0xffff) as u16;
                    q[2..4].copy_from_slice(&total.to_be_bytes());
                    if *fix {
                        fix_checksums(&mut q);
                    }
                }
                Mutation::Padding(extra) => {
                    q.extend_from_slice(extra);
                    assert_padding_ignored(p, &q);
                }
            }
            check_any(&q, *new);
        });
}

/// Both parsers read back what was generated; the checksums are right.
fn check_generated(spec: &SegSpec, b: &Built) {
    let p = &b.pkt[..];
    assert!(checksums_ok(p), "a generated packet fails checksums_ok");
    let flags = TcpFlags {
        syn: spec.flags & SYN != 0,
        ack: spec.flags & ACK != 0,
        fin: spec.flags & FIN != 0,
        rst: spec.flags & RST != 0,
    };
    if spec.is_fragment() {
        assert_eq!(TcpMeta::parse(p), Err(PacketError::Fragment));
        assert_eq!(TcpMeta::parse_checked(p), Err(PacketError::Fragment));
    } else {
        let m = TcpMeta {
            src: spec.src(),
            dst: spec.dst(),
            flags,
            payload_len: b.payload_len,
            seq: spec.seq,
            ack: spec.ack,
        };
        assert_eq!(TcpMeta::parse(p), Ok(m));
        assert_eq!(TcpMeta::parse_checked(p), Ok(m));
    }
    let Some(seg) = rewrite::parse(p) else {
        panic!("rewrite::parse refused a generated packet");
    };
    assert_eq!(
        (seg.seq.0, seg.ack.0, flags_of(&seg), seg.window),
        (spec.seq, spec.ack, flags, spec.window)
    );
    assert_eq!(
        (seg.tcp_off, seg.payload_off, seg.payload_len),
        (b.ihl, b.ihl + b.doff, b.payload_len)
    );
    if let Some(m) = option_model(&b.opts) {
        assert_eq!(OptModel::of(&seg), m, "options {:?}", b.opts);
    }
}

/// Cookie inputs: the SYN's options as parsed, the tuple, ISNs and clocks.
#[derive(Debug, Clone, TypeGenerator)]
struct CookieSpec {
    key: [u8; 4],
    client: ([u8; 4], u16),
    service: ([u8; 4], u16),
    client_isn: u32,
    mss: Option<u16>,
    wscale: Option<u8>,
    sack_permitted: bool,
    made_at: u64,
    /// Seconds from making the cookie to checking it.
    #[generator(-300i64..=600)]
    checked_after: i64,
    /// An arbitrary ISN offered as a cookie.
    forged: u32,
    /// Bits flipped in the real cookie (zero: none).
    flip: u32,
    /// Bits flipped in the client ISN the check is given.
    other_client_isn: u32,
    /// A clock the check runs at, unrelated to when the cookie was made.
    any_time: u64,
    mtu: u16,
    #[generator(1usize..=(1 << 30))]
    rx_buffer: usize,
}

fn period(t: u64) -> u64 {
    t / 64
}

/// `check` accepted `isn` with `opts` at `now`: then `isn()` makes exactly that ISN in the
/// current or the previous period.
fn assert_made_by_isn(
    jar: &CookieJar,
    key: FlowKey,
    client_isn: SeqNumber,
    isn: SeqNumber,
    now: u64,
) {
    let Some(opts) = jar.check(key, client_isn, isn, now) else {
        return;
    };
    let made = [period(now), period(now).wrapping_sub(1)]
        .iter()
        .any(|p| p.checked_mul(64).map(|t| jar.isn(key, client_isn, opts, t)) == Some(isn));
    assert!(
        made,
        "check accepted {isn:?} at {now} as {opts:?}, which isn() does not make"
    );
}

#[test]
fn fuzz_syncookie() {
    check!().with_type::<CookieSpec>().for_each(|s| {
        let jar = CookieJar::from_cluster_key(&s.key);
        let key = FlowKey {
            client: SocketAddrV4::new(s.client.0.into(), s.client.1),
            service: SocketAddrV4::new(s.service.0.into(), s.service.1),
        };
        let cisn = SeqNumber(s.client_isn);
        let seg = Seg {
            syn: true,
            seq: cisn,
            mss: s.mss,
            wscale: s.wscale,
            sack_permitted: s.sack_permitted,
            ..Seg::default()
        };
        check_syn_opts(&seg);
        let opts = SynOpts::of_syn(&seg);

        let isn = jar.isn(key, cisn, opts, s.made_at);
        assert_eq!(jar.check(key, cisn, isn, s.made_at), Some(opts));
        if let Some(now) = s.made_at.checked_add_signed(s.checked_after) {
            let (made, at) = (period(s.made_at), period(now));
            let got = jar.check(key, cisn, isn, now);
            if at == made || at == made + 1 {
                assert_eq!(got, Some(opts), "checked {} s later", s.checked_after);
            } else if at == made + 2 || at == made + 3 || at + 1 == made || at + 2 == made {
                assert_eq!(got, None, "checked {} s later", s.checked_after);
            }
            for candidate in [isn, SeqNumber(isn.0 ^ s.flip), SeqNumber(s.forged)] {
                assert_made_by_isn(&jar, key, cisn, candidate, now);
            }
            let other = SeqNumber(s.client_isn ^ s.other_client_isn);
            assert_made_by_isn(&jar, key, other, isn, now);
        }
        for now in [0, 63, s.any_time, u64::MAX] {
            assert_made_by_isn(&jar, key, cisn, SeqNumber(s.forged), now);
            assert_made_by_isn(&jar, key, cisn, isn, now);
        }

        let synack = syncookie::synack(key, cisn, isn, opts, usize::from(s.mtu), s.rx_buffer);
        assert!(checksums_ok(&synack));
        let seg = rewrite::parse(&synack).expect("a cookie's SYN-ACK parses");
        assert!(seg.syn && seg.ack_flag);
        assert_eq!((seg.seq, seg.ack), (isn, cisn.plus(1)));
        assert_eq!(seg.mss, Some(s.mtu.saturating_sub(40)));
        let shift = syncookie::window_shift(s.rx_buffer).min(14);
        assert_eq!(seg.wscale, opts.wscale.map(|_| shift));
        assert_eq!(seg.sack_permitted, opts.sack);
    });
}

/// A packet for the seed corpus, built by the same code as the generated target's.
fn seed(
    flags: u8,
    options: Vec<TcpOpt>,
    ip_options: &[u8],
    payload: &[u8],
    inbound: bool,
) -> Vec<u8> {
    let (client, server) = (([192, 168, 1, 10], 54321), ([10, 0, 0, 1], 80));
    let ((src, src_port), (dst, dst_port)) = if inbound {
        (client, server)
    } else {
        (server, client)
    };
    SegSpec {
        src,
        dst,
        src_port,
        dst_port,
        seq: if inbound { 0x1a2b_3c4d } else { 0x9e37_79b9 },
        ack: if flags & ACK == 0 {
            0
        } else if inbound {
            0x9e37_79ba
        } else {
            0x1a2b_3c4e
        },
        flags,
        reserved: 0,
        window: if flags & SYN != 0 { 64240 } else { 502 },
        urgent: 0,
        tos: 0,
        id: 0x4d2,
        ttl: 64,
        dont_fragment: true,
        fragment: 7,
        with_ip_options: !ip_options.is_empty(),
        ip_options: ip_options.to_vec(),
        options,
        no_payload: payload.is_empty(),
        payload: payload.to_vec(),
    }
    .build()
    .pkt
}

/// The seed corpus of `fuzz_raw_packet`: packets as stacks send them, and a few broken ones.
fn seed_packets() -> Vec<(&'static str, Vec<u8>)> {
    use TcpOpt::*;
    let ts = |val, ecr| Timestamps(val, ecr);
    let linux_syn = seed(
        SYN,
        vec![
            Mss(1460),
            SackPermitted,
            ts(2_405_116_123, 0),
            Nop,
            WindowScale(7),
        ],
        &[],
        &[],
        true,
    );
    let http = b"GET / HTTP/1.1\r\nHost: 10.0.0.1\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
    let mut fragment = seed(
        ACK | PSH,
        vec![],
        &[],
        b"first half of a fragmented segment",
        true,
    );
    fragment[6] |= 0x20;
    fix_checksums(&mut fragment);
    let mut udp = seed(0, vec![], &[], b"not tcp", true);
    udp[9] = 17;
    fix_checksums(&mut udp);
    let mut doff_too_large = seed(ACK, vec![], &[], &[], true);
    doff_too_large[32] = 0xf0;
    fix_checksums(&mut doff_too_large);
    let mut padded_rst = seed(RST, vec![], &[], &[], true);
    padded_rst.extend_from_slice(&[0; 6]);
    vec![
        ("linux_syn", linux_syn.clone()),
        (
            "linux_synack",
            seed(
                SYN | ACK,
                vec![
                    Mss(1460),
                    SackPermitted,
                    ts(1_337_001, 2_405_116_123),
                    Nop,
                    WindowScale(7),
                ],
                &[],
                &[],
                false,
            ),
        ),
        (
            "linux_ack",
            seed(
                ACK,
                vec![Nop, Nop, ts(2_405_116_140, 1_337_001)],
                &[],
                &[],
                true,
            ),
        ),
        (
            "linux_http_request",
            seed(
                ACK | PSH,
                vec![Nop, Nop, ts(2_405_116_141, 1_337_001)],
                &[],
                http,
                true,
            ),
        ),
        (
            "data_odd_length_no_options",
            seed(ACK, vec![], &[], &[0xa5; 101], false),
        ),
        (
            "linux_fin_ack",
            seed(
                FIN | ACK,
                vec![Nop, Nop, ts(2_405_116_200, 1_337_050)],
                &[],
                &[],
                true,
            ),
        ),
        ("rst", seed(RST, vec![], &[], &[], true)),
        ("rst_ack", seed(RST | ACK, vec![], &[], &[], false)),
        (
            "ack_with_sack_blocks",
            seed(
                ACK,
                vec![
                    Nop,
                    Nop,
                    ts(2_405_116_300, 1_337_090),
                    Nop,
                    Nop,
                    Sack(vec![(0x9e37_89b9, 0x9e37_8db9), (0x9e37_91b9, 0x9e37_95b9)]),
                ],
                &[],
                &[],
                true,
            ),
        ),
        (
            "windows_syn",
            seed(
                SYN,
                vec![Mss(1460), Nop, WindowScale(8), Nop, Nop, SackPermitted],
                &[],
                &[],
                true,
            ),
        ),
        (
            "syn_with_router_alert_ip_option",
            seed(
                SYN,
                vec![Mss(1460), Nop, WindowScale(7)],
                &[0x94, 0x04, 0x00, 0x00],
                &[],
                true,
            ),
        ),
        (
            "syn_with_record_route_ip_option",
            seed(
                SYN,
                vec![Mss(536)],
                &[1, 7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0],
                &[],
                true,
            ),
        ),
        ("syn_no_options", seed(SYN, vec![], &[], &[], true)),
        (
            "syn_wscale_15_mss_9000",
            seed(SYN, vec![Mss(9000), WindowScale(15)], &[], &[], true),
        ),
        (
            "syn_mptcp_option",
            seed(
                SYN,
                vec![
                    Mss(1460),
                    Unknown {
                        kind: 30,
                        body: vec![0x01, 0x81, 1, 2, 3, 4, 5, 6, 7, 8],
                    },
                ],
                &[],
                &[],
                true,
            ),
        ),
        (
            "syn_mss_length_3",
            seed(
                SYN,
                vec![
                    Raw {
                        kind: 2,
                        len: 3,
                        body: vec![5],
                    },
                    WindowScale(2),
                ],
                &[],
                &[],
                true,
            ),
        ),
        (
            "syn_option_length_0",
            seed(
                SYN,
                vec![
                    Raw {
                        kind: 19,
                        len: 0,
                        body: vec![],
                    },
                    Mss(1460),
                ],
                &[],
                &[],
                true,
            ),
        ),
        (
            "syn_option_runs_past_header",
            seed(
                SYN,
                vec![
                    Mss(1400),
                    Raw {
                        kind: 30,
                        len: 40,
                        body: vec![1, 2],
                    },
                ],
                &[],
                b"payload",
                true,
            ),
        ),
        (
            "syn_eol_then_mss",
            seed(SYN, vec![SackPermitted, Eol, Mss(1460)], &[], &[], true),
        ),
        (
            "syn_full_option_space",
            seed(
                SYN,
                vec![
                    Mss(1460),
                    SackPermitted,
                    ts(1, 0),
                    Nop,
                    WindowScale(7),
                    Unknown {
                        kind: 253,
                        body: vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0],
                    },
                    Nop,
                    Nop,
                ],
                &[],
                &[],
                true,
            ),
        ),
        (
            "syn_lone_kind_in_last_byte",
            seed(SYN, vec![Nop, Nop, Nop, KindOnly(19)], &[], &[], true),
        ),
        ("linux_syn_truncated_in_options", linux_syn[..44].to_vec()),
        ("linux_syn_truncated_ip_header", linux_syn[..12].to_vec()),
        ("fragment_more_fragments", fragment),
        ("udp", udp),
        ("data_offset_past_packet", doff_too_large),
        ("rst_with_ethernet_padding", padded_rst),
    ]
}

/// Writes `fuzz_raw_packet`'s seed corpus. Run by hand after changing [`seed_packets`]:
/// `cargo test -p ft-tcp --test fuzz_segment write_seed_corpus -- --ignored`.
#[test]
#[ignore = "writes the seed corpus into the source tree; run by hand"]
fn write_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/__fuzz__/raw_packet/corpus");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seed_packets() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The seeds are what their names say (so that the corpus exercises what it claims to).
#[test]
fn seed_packets_are_what_they_claim() {
    for (name, p) in seed_packets() {
        let whole = !name.contains("truncated");
        let tcp = whole && name != "udp";
        let sound = tcp && name != "data_offset_past_packet";
        let fragment = name == "fragment_more_fragments";
        assert_eq!(checksums_ok(&p), tcp, "{name}");
        assert_eq!(TcpMeta::parse(&p).is_ok(), sound && !fragment, "{name}");
        assert_eq!(rewrite::parse(&p).is_some(), sound, "{name}");
    }
    let syn = &seed_packets()[0].1;
    let seg = rewrite::parse(syn).unwrap();
    assert_eq!(
        (seg.mss, seg.wscale, seg.sack_permitted),
        (Some(1460), Some(7), true)
    );
}

/// Regression (found by `fuzz_generated_segment`, shrunk input: options `[3, 3, 24, 2]`, a
/// window scale and a lone MSS kind, no payload): a SYN whose options end with a lone kind
/// in the last header byte was refused by `rewrite::parse` (it returned `None` for the
/// missing length byte) while the same header followed by payload or padding parsed, and
/// `TcpMeta::parse` accepted all three. The option walk now ends at such a kind.
#[test]
fn lone_option_kind_in_the_last_header_byte_parses() {
    let opts = || vec![TcpOpt::Nop, TcpOpt::Nop, TcpOpt::Nop, TcpOpt::KindOnly(19)];
    let p = seed(SYN, opts(), &[], &[], true);
    assert!(TcpMeta::parse_checked(&p).is_ok());
    let with_payload = seed(SYN, opts(), &[], b"x", true);
    assert!(rewrite::parse(&with_payload).is_some());
    let mut padded = p.clone();
    padded.extend_from_slice(&[0; 6]);
    assert!(rewrite::parse(&padded).is_some());
    assert!(
        rewrite::parse(&p).is_some(),
        "rewrite::parse refuses a SYN whose last option byte is a lone kind"
    );
}
