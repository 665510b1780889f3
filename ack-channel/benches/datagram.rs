//! Per-datagram costs of the authenticated datagram layer: what every tunnelled client packet
//! pays on the redirector (seal) and on the host server (open), and the decode of the
//! control messages.
//!
//! Run with `cargo bench -p ack-channel`. The payload is 1400 bytes, a full-MTU IPv4 packet
//! inside the tunnel (the default host `mtu`).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ack_channel::{
    emit_progress, parse_progress, ClusterKey, Epoch, Heartbeat, Incarnation, Mode, MsgType,
    Opener, OutputEnd, ProgressEntry, Receiver, ReplicaId, Sealer, ServiceAd, ServiceId,
    PROGRESS_PER_DATAGRAM,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const PAYLOAD_LEN: usize = 1400;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x5a; 32])
}

fn payload() -> Vec<u8> {
    (0..PAYLOAD_LEN).map(|i| i as u8).collect()
}

fn seal_and_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("datagram");
    g.throughput(Throughput::Bytes(PAYLOAD_LEN as u64));
    let payload = payload();

    let sealer = Sealer::new(key(), ReplicaId(1), Incarnation(1));
    let mut out = Vec::with_capacity(PAYLOAD_LEN + 80);
    g.bench_function("seal_1400", |b| {
        b.iter(|| {
            sealer.seal_into(
                MsgType::ToHost,
                ServiceId(0),
                Epoch(0),
                Receiver::GROUP,
                black_box(&payload),
                &mut out,
            );
            black_box(&out);
        })
    });

    // One long-lived opener, as on a host server. The replay window rejects a counter seen
    // before, so each iteration gets a freshly sealed datagram with the next counter; the
    // sealing happens in the untimed setup and only `open` is measured.
    let sealer = Sealer::new(key(), ReplicaId(1), Incarnation(1));
    let mut opener = Opener::new(key(), ReplicaId(2), Incarnation(1));
    g.bench_function("open_1400", |b| {
        b.iter_batched_ref(
            || {
                let to = Receiver::GROUP;
                sealer.seal(MsgType::ToHost, ServiceId(0), Epoch(0), to, &payload)
            },
            |d| {
                // INVARIANT: every datagram is sealed with the opener's key and a new counter.
                let (h, p) = opener.open(black_box(d)).expect("fresh datagram opens");
                black_box((h, p.len()));
            },
            BatchSize::SmallInput,
        )
    });

    // The forged-packet path: full MAC computation, then drop. No window update, so the
    // same bytes can be reused.
    let forged = Sealer::new(
        ClusterKey::from_bytes([0xa5; 32]),
        ReplicaId(1),
        Incarnation(1),
    )
    .seal(
        MsgType::ToHost,
        ServiceId(0),
        Epoch(0),
        Receiver::GROUP,
        &payload,
    );
    let mut opener = Opener::new(key(), ReplicaId(2), Incarnation(1));
    g.bench_function("open_1400_bad_mac", |b| {
        b.iter(|| {
            let r = opener.open(black_box(&forged));
            black_box(r.is_err());
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("payload_decode");

    // A host serving a handful of ports.
    let hb = Heartbeat {
        addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 7000),
        services: (0..4)
            .map(|i| ServiceAd {
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80 + i),
                mode: if i % 2 == 0 { Mode::Ft } else { Mode::Redirect },
                hb_ms: 100,
                timeout_ms: 500,
            })
            .collect(),
    }
    .emit();
    g.bench_function("heartbeat_parse_4_services", |b| {
        b.iter(|| black_box(Heartbeat::parse(black_box(&hb))))
    });

    // A full progress datagram.
    let entries: Vec<ProgressEntry> = (0..PROGRESS_PER_DATAGRAM as u32)
        .map(|i| ProgressEntry {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000 + i as u16),
            service: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80),
            isn_local: 0x1000_0000 + i,
            isn_s: Some(0x2000_0000 + i),
            rcv_nxt: 0x3000_0000 + i,
            client_fin: false,
            edge: 0x3001_0000 + i,
            hole_end: 0x3000_0000 + i,
            out: Some(0x4000_0000 + i),
            end: OutputEnd::Open,
        })
        .collect();
    let progress = emit_progress(&entries);
    g.bench_function("parse_progress_full_datagram", |b| {
        b.iter(|| black_box(parse_progress(black_box(&progress))))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = seal_and_open, decode
}
criterion_main!(benches);
