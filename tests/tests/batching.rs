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

fn check_batching(lab: &Lab, hosts: &[&str]) {
    let r = lab.metrics("redir");
    // Downloads: the segments taken from hosts reach the client's kernel coalesced.
    let coalesced =
        metric(&r, "hydra_tun_packets_total{dir=\"out\"}") as f64 / tun_writes(lab).max(1) as f64;
    // Uploads: the client's kernel hands the TUN super-segments, cut into many packets.
    let tun = per_call(
        &r,
        "hydra_tun_packets_total{dir=\"in\"}",
        "hydra_tun_reads_total",
    );
    // Those packets leave for each host in runs; downloads arrive from the host in runs.
    let sent = per_call(&r, "hydra_datagrams_sent_total", "hydra_send_calls_total");
    let recv = per_call(
        &r,
        "hydra_datagrams_received_total",
        "hydra_recv_calls_total",
    );
    eprintln!("redirector: {tun:.1} packets per TUN read, {coalesced:.1} per TUN write, {sent:.1} datagrams per send, {recv:.1} per receive");
    assert!(tun >= 2.0, "TUN offload unused: {tun:.2} packets per read");
    assert!(
        coalesced >= 2.0,
        "return segments not coalesced: {coalesced:.2} packets per TUN write"
    );
    assert!(sent >= 2.0, "UDP GSO unused at the redirector: {sent:.2}");
    assert!(recv >= 2.0, "UDP GRO unused at the redirector: {recv:.2}");
    assert_eq!(metric(&r, "hydra_tun_read_errors_total"), 0);
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

#[test]
fn redirect_bulk_both_ways_is_exact_and_moves_in_batches() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("bat", 32 << 20, 0x5eed_0b01);
    let lab = Lab::up("bat", 1, &www.backend_cmd(), &[]);
    transfer_both_ways(&lab, &www, 32 << 20);
    check_batching(&lab, &["h1"]);
}

#[test]
fn ft3_bulk_both_ways_is_exact_and_moves_in_batches() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("batft", 32 << 20, 0x5eed_0b02);
    let lab = Lab::up("batft", 3, &www.backend_cmd(), &["--mode", "ft"]);
    transfer_both_ways(&lab, &www, 32 << 20);
    check_batching(&lab, &["h1", "h2", "h3"]);
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
    let r = lab.metrics("redir");
    let tun = per_call(
        &r,
        "hydra_tun_packets_total{dir=\"in\"}",
        "hydra_tun_reads_total",
    );
    let sent = per_call(&r, "hydra_datagrams_sent_total", "hydra_send_calls_total");
    let h = per_call(
        &lab.metrics("h1"),
        "hydra_datagrams_sent_total",
        "hydra_send_calls_total",
    );
    let coalesced =
        metric(&r, "hydra_tun_packets_total{dir=\"out\"}") as f64 / tun_writes(&lab).max(1) as f64;
    assert!(
        coalesced <= 1.0,
        "{coalesced} packets per TUN write without offload"
    );
    // At most one per call (a failed send counts a call and no datagram).
    assert!(
        tun <= 1.0 && sent <= 1.0 && h <= 1.0,
        "batching without offload: {tun} packets per TUN read, {sent} and {h} datagrams per send"
    );
    assert!(metric(&r, "hydra_tun_packets_total{dir=\"in\"}") > 5_000);
}
