//! Per-64 KiB costs of the FT layer: what one replica's `FtConn` (sequence translation, ACK
//! gate, shadow queue, repair log, output agreement and its smoltcp stack) spends to move
//! 64 KiB of a connection, without any I/O.
//!
//! Three replicas of one connection are wired together in memory, as the host servers and
//! the redirector wire them: every client segment reaches every replica, each replica's
//! progress reports and digests reach the others, and only the primary's segments reach the
//! client, which acknowledges what it got. One iteration moves 64 KiB one way:
//!
//! - `upload`: the client sends 64 KiB in MSS-sized segments; every backend reads them; the
//!   primary acknowledges them once both backups reported holding them.
//! - `download`: every backend writes 64 KiB; the primary sends it (the backups hold theirs
//!   in their shadow queues), the client acknowledges each batch of segments it got.
//!
//! The `ft1` variants run a view of one (no peers: no gate to wait for, no reports) and show
//! what the replication itself costs. Throughput is per replica set: divide by three for one
//! replica's share in `ft3`. Run with `cargo bench -p ft-tcp --bench ft_layer`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use ft_tcp::rewrite;
use ft_tcp::{EndpointConfig, FlowKey, FtConfig, FtConn, PeerId, SeqNumber, TcpState};
use smoltcp::time::Instant;

/// Bytes one iteration moves.
const CHUNK: usize = 64 * 1024;
/// The client's MSS: the tunnel's 1,400-byte MTU less the IPv4 and TCP headers.
const MSS: usize = 1360;
const CLIENT_ISN: u32 = 1000;
/// Exchange rounds after which an iteration that has not moved its 64 KiB is a bug here.
const ROUNDS_MAX: usize = 10_000;

fn key() -> FlowKey {
    FlowKey {
        client: "198.18.0.2:40000".parse().expect("valid address literal"),
        service: "198.19.0.10:80".parse().expect("valid address literal"),
    }
}

/// The client's SYN, with the MSS and window scale a Linux client offers.
fn syn() -> Vec<u8> {
    let k = key();
    let mut out = Vec::new();
    PacketBuilder::ipv4(k.client.ip().octets(), k.service.ip().octets(), 64)
        .tcp(k.client.port(), k.service.port(), CLIENT_ISN, 65535)
        .syn()
        .options(&[
            TcpOptionElement::MaximumSegmentSize(MSS as u16),
            TcpOptionElement::WindowScale(7),
        ])
        .expect("the options fit")
        .write(&mut out, b"")
        .expect("a SYN fits in a Vec");
    out
}

/// A replica set of one connection and its client, established.
struct Set {
    conns: Vec<FtConn>,
    now: Instant,
    /// The client's next sequence number (C).
    snd_nxt: SeqNumber,
    /// The next byte the client expects from the service (S).
    rcv_nxt: SeqNumber,
    /// Bytes of the service's output the client got since the last reset of the count.
    received: usize,
    payload: Vec<u8>,
    /// The upload's segments, built at the first upload (with their parsed headers).
    segments: Vec<(Vec<u8>, rewrite::Seg)>,
}

impl Set {
    /// A connection held by `n` replicas (replica 0 the primary), through its handshake.
    fn new(n: u32) -> Set {
        let now = Instant::from_millis(0);
        let members: Vec<PeerId> = (0..n).collect();
        let ep = EndpointConfig::default();
        let conns = members
            .iter()
            .map(|&me| FtConn::new(key(), FtConfig::default(), ep, 7, now, me, &members))
            .collect();
        let mut s = Set {
            conns,
            now,
            snd_nxt: SeqNumber(CLIENT_ISN + 1),
            rcv_nxt: SeqNumber(0),
            received: 0,
            payload: (0..MSS).map(|i| (i * 7) as u8).collect(),
            segments: Vec::new(),
        };
        s.send_to_all(&syn());
        let mut synack = None;
        for _ in 0..ROUNDS_MAX {
            s.exchange(|seg, _| {
                if seg.syn {
                    synack = Some(seg.seq);
                }
            });
            if synack.is_some() {
                break;
            }
        }
        let isn_s = synack.expect("the primary sends its SYN-ACK once the backups reported");
        s.rcv_nxt = isn_s.plus(1);
        s.ack();
        s.exchange(|_, _| {});
        for c in &s.conns {
            assert_eq!(c.state(), TcpState::Established);
        }
        s
    }

    /// A client segment, as the redirector sends it: to every replica.
    fn send_to_all(&mut self, packet: &[u8]) {
        for c in &mut self.conns {
            c.handle_client_packet(self.now, packet);
        }
    }

    /// The client acknowledges what it got.
    fn ack(&mut self) {
        let k = key();
        let a = rewrite::build(
            k.client,
            k.service,
            self.snd_nxt,
            self.rcv_nxt,
            65535,
            &[],
            false,
        );
        self.send_to_all(&a);
    }

    /// One round: each replica polls, its reports, digests and repairs reach the others,
    /// and the primary's segments reach the client (`seen` gets each with its payload
    /// length; the client takes in-order payload).
    fn exchange(&mut self, mut seen: impl FnMut(&rewrite::Seg, usize)) {
        self.now += smoltcp::time::Duration::from_millis(1);
        let now = self.now;
        for i in 0..self.conns.len() {
            self.conns[i].poll(now);
            let report = self.conns[i].take_progress(now);
            let digests = self.conns[i].take_digests();
            let repairs = self.conns[i].take_repairs();
            let to_client = self.conns[i].take_to_client();
            for (j, c) in self.conns.iter_mut().enumerate() {
                if j == i {
                    continue;
                }
                if let Some(p) = report {
                    c.handle_progress(now, i as PeerId, p);
                }
                for d in &digests {
                    c.handle_digest(i as PeerId, *d);
                }
            }
            for (to, pkt) in repairs {
                if let Some(c) = self.conns.get_mut(to as usize) {
                    c.handle_repair(now, &pkt);
                }
            }
            if i != 0 {
                continue;
            }
            for pkt in to_client {
                let Some(seg) = rewrite::parse(&pkt) else {
                    continue;
                };
                if seg.payload_len > 0 && seg.seq == self.rcv_nxt {
                    self.rcv_nxt = self.rcv_nxt.plus(seg.payload_len as u32);
                    self.received += seg.payload_len;
                }
                seen(&seg, seg.payload_len);
            }
        }
    }

    /// Every backend reads what its stack holds.
    fn backends_read(&mut self) {
        for c in &mut self.conns {
            while c.endpoint().recv_into(|b| black_box(b).len()) > 0 {}
        }
    }

    /// The client sends `CHUNK` bytes; returns once the primary acknowledged them all. The
    /// segments are built once and renumbered in place (the client's cost stays out).
    fn upload(&mut self) {
        if self.segments.is_empty() {
            let k = key();
            let mut left = CHUNK;
            while left > 0 {
                let n = left.min(MSS);
                let p = rewrite::build(
                    k.client,
                    k.service,
                    SeqNumber(0),
                    SeqNumber(0),
                    65535,
                    &self.payload[..n],
                    false,
                );
                let seg = rewrite::parse(&p).expect("a segment we built parses");
                self.segments.push((p, seg));
                left -= n;
            }
        }
        let end = self.snd_nxt.plus(CHUNK as u32);
        let mut segments = std::mem::take(&mut self.segments);
        for (p, seg) in &mut segments {
            rewrite::set_seq(p, seg, self.snd_nxt);
            rewrite::set_ack(p, seg, self.rcv_nxt);
            self.send_to_all(p);
            self.snd_nxt = self.snd_nxt.plus(seg.payload_len as u32);
        }
        self.segments = segments;
        for _ in 0..ROUNDS_MAX {
            self.backends_read();
            let mut acked = false;
            self.exchange(|seg, _| acked |= seg.ack_flag && seg.ack == end);
            if acked {
                return;
            }
        }
        panic!("the primary never acknowledged the upload");
    }

    /// Every backend writes `CHUNK` bytes; returns once the client got them all.
    fn download(&mut self) {
        for c in &mut self.conns {
            let mut left = CHUNK;
            while left > 0 {
                let n = c.endpoint().send_from(|b| {
                    let n = b.len().min(left);
                    b[..n].fill(0x5a);
                    n
                });
                assert!(n > 0, "the send buffer holds 64 KiB");
                left -= n;
            }
        }
        self.received = 0;
        for _ in 0..ROUNDS_MAX {
            self.exchange(|_, _| {});
            self.ack();
            if self.received >= CHUNK {
                return;
            }
        }
        panic!("the client never got the download");
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ft_layer_64KiB");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for n in [1, 3] {
        let mut s = Set::new(n);
        g.bench_function(format!("upload_ft{n}"), |b| b.iter(|| s.upload()));
        let mut s = Set::new(n);
        g.bench_function(format!("download_ft{n}"), |b| b.iter(|| s.download()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
