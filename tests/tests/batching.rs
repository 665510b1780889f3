//! The batched data path end to end (issue #11): TUN offload on the redirector, UDP GSO and
//! GRO on the tunnel. Bulk transfers both ways must arrive exact, and the counters must show
//! that the batching was used: fewer system calls than datagrams, fewer TUN reads than
//! packets. Without it every ratio below is 1.

use tests::*;

/// Datagrams (or packets) per system call, from two counters.
fn per_call(text: &str, items: &str, calls: &str) -> f64 {
    let items = metric(text, items) as f64;
    let calls = metric(text, calls).max(1) as f64;
    items / calls
}

/// Downloads `www`'s file and uploads `up` bytes through the lab's service; both checked by
/// SHA-256.
fn transfer_both_ways(lab: &Lab, www: &WebRoot, up: usize) {
    let out = lab.sh(
        "client",
        "curl -sS --fail --max-time 120 http://198.19.0.10/data.bin | sha256sum",
    );
    assert!(out.status.success(), "download: {}", show(&out));
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got.split_whitespace().next(),
        Some(www.sha256.as_str()),
        "download differs"
    );

    let body: Vec<u8> = (0..up)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = www.file().with_file_name("upload.bin");
    std::fs::write(&file, &body).expect("write upload body");
    let out = lab.sh(
        "client",
        &format!(
            "curl -sS --fail --max-time 120 -H 'Expect:' --data-binary @{} http://198.19.0.10/upload",
            file.display()
        ),
    );
    assert!(out.status.success(), "upload: {}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sha256_hex(&body),
        "the backend hashed a different upload"
    );
}

/// Writes into the redirector's TUN, as the kernel counts them (each write is one packet
/// to the kernel, however many segments it carries).
fn tun_writes(lab: &Lab) -> u64 {
    let out = lab.exec("redir", &["ip", "-j", "-s", "link", "show", "hydra0"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {v}"))
}

/// What one system call (or one TUN read or write) carried at the redirector, on average.
struct Batching {
    /// Client packets per TUN read (uploads: super-segments cut here).
    per_read: f64,
    /// Client-bound packets per TUN write, by the kernel's count (downloads: coalesced).
    per_write: f64,
    /// Datagrams per send to the hosts, and per receive from them.
    per_send: f64,
    per_recv: f64,
}

impl Batching {
    fn at_redirector(lab: &Lab) -> Self {
        let r = lab.metrics("redir");
        Batching {
            per_read: per_call(
                &r,
                "hydra_tun_packets_total{dir=\"in\"}",
                "hydra_tun_reads_total",
            ),
            per_write: metric(&r, "hydra_tun_packets_total{dir=\"out\"}") as f64
                / tun_writes(lab).max(1) as f64,
            per_send: per_call(&r, "hydra_datagrams_sent_total", "hydra_send_calls_total"),
            per_recv: per_call(
                &r,
                "hydra_datagrams_received_total",
                "hydra_recv_calls_total",
            ),
        }
    }
}

fn check_batching(lab: &Lab, hosts: &[&str]) {
    // As `hydractl lab up` reads it.
    let plain = std::env::var("HYDRA_LAB_PLAIN_IO").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    });
    if plain {
        // The whole suite runs with the batching off (issue #11: every test passes that way
        // too); the transfers above were checked, the ratios cannot hold.
        eprintln!("HYDRA_LAB_PLAIN_IO set: batching is off in every lab, ratios not checked");
        return;
    }
    let b = Batching::at_redirector(lab);
    eprintln!(
        "redirector: {:.1} packets per TUN read, {:.1} per TUN write, {:.1} datagrams per send, {:.1} per receive",
        b.per_read, b.per_write, b.per_send, b.per_recv
    );
    assert!(
        b.per_read >= 2.0,
        "TUN offload unused: {:.2} packets per read",
        b.per_read
    );
    assert!(
        b.per_write >= 2.0,
        "return segments not coalesced: {:.2} packets per TUN write",
        b.per_write
    );
    assert!(
        b.per_send >= 2.0,
        "UDP GSO unused at the redirector: {:.2}",
        b.per_send
    );
    assert!(
        b.per_recv >= 2.0,
        "UDP GRO unused at the redirector: {:.2}",
        b.per_recv
    );
    assert_eq!(
        metric(&lab.metrics("redir"), "hydra_tun_read_errors_total"),
        0
    );
    // The host that served the download sent in runs, and every host received in runs.
    let mut best_send: f64 = 0.0;
    for h in hosts {
        let m = lab.metrics(h);
        let s = per_call(&m, "hydra_datagrams_sent_total", "hydra_send_calls_total");
        let g = per_call(
            &m,
            "hydra_datagrams_received_total",
            "hydra_recv_calls_total",
        );
        eprintln!("{h}: {s:.1} datagrams per send, {g:.1} per receive");
        assert!(g >= 2.0, "UDP GRO unused at {h}: {g:.2}");
        best_send = best_send.max(s);
    }
    assert!(
        best_send >= 2.0,
        "UDP GSO unused at the speaking host: {best_send:.2}"
    );
}

/// 32 MiB each way through a lab of `replicas` hosts, exact and batched.
fn bulk_both_ways_in_batches(prefix: &str, seed: u64, replicas: u32, extra: &[&str]) {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new(prefix, 32 << 20, seed);
    let lab = Lab::up(prefix, replicas, &www.backend_cmd(), extra);
    transfer_both_ways(&lab, &www, 32 << 20);
    let hosts: Vec<String> = (1..=replicas).map(|i| format!("h{i}")).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    check_batching(&lab, &hosts);
}

#[test]
fn redirect_bulk_both_ways_is_exact_and_moves_in_batches() {
    bulk_both_ways_in_batches("bat", 0x5eed_0b01, 1, &[]);
}

#[test]
fn ft3_bulk_both_ways_is_exact_and_moves_in_batches() {
    bulk_both_ways_in_batches("batft", 0x5eed_0b02, 3, &["--mode", "ft"]);
}

/// `lab up --plain-io` turns the batching off (TUN offload, UDP GSO): the same transfers are
/// exact, and every TUN read and every send carries one packet. This is the path a kernel
/// without offload takes, and it shows the counters above count what they claim.
#[test]
fn without_offload_every_packet_is_its_own_call_and_transfers_stay_exact() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("plain", 8 << 20, 0x5eed_0b03);
    let lab = Lab::up("plain", 1, &www.backend_cmd(), &["--plain-io"]);
    transfer_both_ways(&lab, &www, 8 << 20);
    let b = Batching::at_redirector(&lab);
    let h = per_call(
        &lab.metrics("h1"),
        "hydra_datagrams_sent_total",
        "hydra_send_calls_total",
    );
    // At most one per call (a failed send counts a call and no datagram).
    assert!(
        b.per_read <= 1.0 && b.per_write <= 1.0 && b.per_send <= 1.0 && h <= 1.0,
        "batching without offload: {} packets per TUN read, {} per TUN write, {} and {h} datagrams per send",
        b.per_read,
        b.per_write,
        b.per_send
    );
    let r = lab.metrics("redir");
    assert!(metric(&r, "hydra_tun_packets_total{dir=\"in\"}") > 5_000);
}
