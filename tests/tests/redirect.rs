//! Redirect mode end to end: kernel-TCP clients in the client namespace, the redirector,
//! three host servers, real backends (hydra-fileserver, redis-server).

use std::time::{Duration, Instant};

use tests::*;

#[test]
fn download_of_100_mib_is_exact_alone_and_50_in_parallel() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("dl", 100 << 20, 0x5eed_0001);
    let lab = Lab::up("dl", 3, &www.backend_cmd(), &[]);
    let out = lab.sh(
        "client",
        "curl -sS --fail --max-time 120 http://198.19.0.10/data.bin | sha256sum",
    );
    assert!(out.status.success(), "{}", show(&out));
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.split_whitespace().next(), Some(www.sha256.as_str()));

    // 50 downloads at once, each hashed as it streams (no 5 GiB on disk).
    let script = "d=$(mktemp -d); for i in $(seq 1 50); do \
        (curl -sS --fail --max-time 600 http://198.19.0.10/data.bin | sha256sum > $d/$i; \
         echo \"rc=$?\" >> $d/$i) & done; wait; cat $d/*; rm -rf $d";
    let out = lab.sh("client", script);
    assert!(out.status.success(), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let sums: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("rc="))
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(sums.len(), 50, "{text}");
    assert!(
        sums.iter().all(|s| *s == www.sha256),
        "some parallel download differs: {text}"
    );
    assert_eq!(text.matches("rc=0").count(), 50, "{text}");
    // The connections were spread over the hosts.
    let st = lab.status("redir");
    let busy = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["connections"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(busy >= 2, "connections not spread: {st}");
}

#[test]
fn after_killing_h1_new_connections_succeed_on_the_others_within_1s() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("kill", 64 << 10, 7);
    let lab = Lab::up("kill", 3, &www.backend_cmd(), &[]);
    lab.ctl("kill", "h1", &[]);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(1).saturating_sub(killed.elapsed()));
    let st = lab.status("redir");
    let h1 = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == 1)
        .cloned()
        .unwrap();
    assert_eq!(h1["live"], false, "h1 still live 1 s after the kill: {st}");
    let before = h1["connections"].as_u64().unwrap();
    // 30 new connections, each must connect at once (a SYN sent to the dead host would wait
    // for the client's 1 s SYN retransmission) and download correctly.
    let out = lab.sh(
        "client",
        "for i in $(seq 1 30); do curl -sS --fail --max-time 5 -o /dev/null \
         -w '%{time_connect}\\n' http://198.19.0.10/data.bin || echo FAIL; done",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("FAIL"),
        "{}",
        show(&out)
    );
    let slow: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .filter(|t| *t >= 0.9)
        .collect();
    assert_eq!(text.lines().count(), 30);
    assert!(slow.is_empty(), "connects that hit the dead host: {slow:?}");
    let st = lab.status("redir");
    let h1_after = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == 1)
        .unwrap()["connections"]
        .as_u64()
        .unwrap();
    assert!(
        h1_after <= before,
        "new connections were pinned to dead h1: {st}"
    );
}

#[test]
fn redis_benchmark_through_the_service_address_has_no_errors() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("redis", 3, REDIS_BACKEND, &[]);
    let out = lab.exec(
        "client",
        &[
            "redis-benchmark",
            "-h",
            "198.19.0.10",
            "-p",
            "80",
            "-t",
            "set,get",
            "-n",
            "100000",
            "-c",
            "50",
            "-q",
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{}", show(&out));
    assert!(!text.to_lowercase().contains("error"), "{text}");
    for t in ["SET:", "GET:"] {
        assert!(
            text.lines()
                .any(|l| l.contains(t) && l.contains("requests per second")),
            "no {t} summary in {text}"
        );
    }
    // Every request crossed the data path: both daemons counted the connections.
    let total: u64 = (1..=3)
        .map(|i| metric(&lab.metrics(&format!("h{i}")), "hydra_connections_total"))
        .sum();
    assert!(total >= 50, "only {total} connections reached the hosts");
}
