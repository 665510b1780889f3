//! Per-packet costs of the FT layer's translation and of the redirector's classification.
//!
//! Every segment a backup or primary passes between its local stack and the client is parsed
//! and has its sequence number, acknowledgment number and window rewritten in place with an
//! incremental checksum update (RFC 1624). The full recomputation benchmarks show what that
//! update saves.
//!
//! Run with `cargo bench -p ft-tcp`. The packet is a 1420-byte IPv4/TCP segment (20 + 20
//! header bytes, 1380 bytes of payload), the largest that fits the tunnel.

use std::hint::black_box;
use std::net::SocketAddrV4;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::TcpSlice;
use ft_tcp::rewrite::{self, Seg};
use ft_tcp::{SeqNumber, TcpMeta};

const PACKET_LEN: usize = 1420;
const IP_HEADER_LEN: usize = 20;
const TCP_HEADER_LEN: usize = 20;
const PAYLOAD_LEN: usize = PACKET_LEN - IP_HEADER_LEN - TCP_HEADER_LEN;

fn src() -> SocketAddrV4 {
    "198.19.0.10:80".parse().expect("valid address literal")
}

fn dst() -> SocketAddrV4 {
    "198.18.0.2:40000".parse().expect("valid address literal")
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| (i * 7) as u8).collect()
}

fn packet() -> Vec<u8> {
    let p = rewrite::build(
        src(),
        dst(),
        SeqNumber(0x1234_5678),
        SeqNumber(0x8765_4321),
        502,
        &payload(),
        false,
    );
    assert_eq!(p.len(), PACKET_LEN);
    p
}

/// The TCP checksum computed from scratch over pseudo-header, header and payload.
fn full_checksum(p: &[u8]) -> u16 {
    // INVARIANT: the benchmark packets are well-formed IPv4/TCP built by `rewrite::build`.
    let tcp = TcpSlice::from_slice(&p[IP_HEADER_LEN..]).expect("valid tcp");
    let ip = |at: usize| [p[at], p[at + 1], p[at + 2], p[at + 3]];
    tcp.calc_checksum_ipv4(ip(12), ip(16))
        .expect("segment fits in ipv4")
}

fn stored_checksum(p: &[u8]) -> u16 {
    let c = IP_HEADER_LEN + 16;
    u16::from_be_bytes([p[c], p[c + 1]])
}

/// The three rewrites the FT layer does on each segment.
fn rewrite_incremental(p: &mut [u8], seg: &Seg, seq: SeqNumber, ack: SeqNumber, win: u16) {
    rewrite::set_seq(p, seg, seq);
    rewrite::set_ack(p, seg, ack);
    rewrite::set_window(p, seg, win);
}

/// The same rewrites with the checksum recomputed over the whole segment.
fn rewrite_full(p: &mut [u8], seg: &Seg, seq: SeqNumber, ack: SeqNumber, win: u16) {
    let t = seg.tcp_off;
    p[t + 4..t + 8].copy_from_slice(&seq.0.to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&ack.0.to_be_bytes());
    p[t + 14..t + 16].copy_from_slice(&win.to_be_bytes());
    let c = full_checksum(p);
    p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
}

fn sanity_check() {
    // Both rewrite paths must agree and leave a valid checksum, or the numbers mean nothing.
    let mut a = packet();
    let mut b = packet();
    assert_eq!(full_checksum(&a), stored_checksum(&a));
    let seg = rewrite::parse(&a).expect("valid packet");
    let (seq, ack, win) = (SeqNumber(0xdead_beef), SeqNumber(0x0bad_f00d), 1234);
    rewrite_incremental(&mut a, &seg, seq, ack, win);
    rewrite_full(&mut b, &seg, seq, ack, win);
    assert_eq!(a, b);
    assert_eq!(full_checksum(&a), stored_checksum(&a));
}

fn per_packet(c: &mut Criterion) {
    sanity_check();
    let mut g = c.benchmark_group("ft_tcp");
    g.throughput(Throughput::Elements(1));
    let p = packet();

    g.bench_function("rewrite_parse", |b| {
        b.iter(|| black_box(rewrite::parse(black_box(&p))))
    });

    g.bench_function("tcp_meta_parse", |b| {
        b.iter(|| black_box(TcpMeta::parse(black_box(&p))))
    });

    // Distinct values every iteration so nothing is hoisted; the offsets do not change.
    let seg = rewrite::parse(&p).expect("valid packet");
    let mut q = p.clone();
    let mut n: u32 = 0;
    g.bench_function("set_seq_ack_window_incremental", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let seq = SeqNumber(0x1000_0000u32.wrapping_add(n.wrapping_mul(1380)));
            let ack = SeqNumber(0x2000_0000u32.wrapping_add(n));
            rewrite_incremental(black_box(&mut q), &seg, seq, ack, n as u16);
            black_box(&q);
        })
    });

    let mut q = p.clone();
    g.bench_function("parse_and_rewrite_incremental", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let seg = rewrite::parse(black_box(&q)).expect("valid packet");
            let seq = seg.seq.plus(1380);
            let ack = seg.ack.plus(1);
            rewrite_incremental(&mut q, &seg, seq, ack, n as u16);
            black_box(&q);
        })
    });

    let mut q = p.clone();
    g.bench_function("set_seq_ack_window_full_checksum", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let seq = SeqNumber(0x1000_0000u32.wrapping_add(n.wrapping_mul(1380)));
            let ack = SeqNumber(0x2000_0000u32.wrapping_add(n));
            rewrite_full(black_box(&mut q), &seg, seq, ack, n as u16);
            black_box(&q);
        })
    });

    g.bench_function("tcp_checksum_full", |b| {
        b.iter(|| black_box(full_checksum(black_box(&p))))
    });

    let payload = payload();
    let (from, to) = (src(), dst());
    g.bench_function("build_1420", |b| {
        b.iter(|| {
            black_box(rewrite::build(
                black_box(from),
                black_box(to),
                SeqNumber(0x1234_5678),
                SeqNumber(0x8765_4321),
                502,
                black_box(&payload),
                false,
            ))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = per_packet
}
criterion_main!(benches);
