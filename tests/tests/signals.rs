//! Signals to hydra-host (issue #16). SIGTERM is a planned departure: the host withdraws
//! every service, hands its ft connections to the next member, serves its redirect-mode
//! connections to their end, and exits 0 (`hydractl lab stop` sends it and waits for the
//! exit). SIGHUP reloads its config (`hydractl lab reload`).

use std::time::{Duration, Instant};

use tests::*;

/// The host's log in the lab's state directory.
fn host_log(lab: &Lab, node: &str) -> String {
    std::fs::read_to_string(format!("/run/hydranet/lab-{}/{node}.log", lab.name))
        .unwrap_or_default()
}

/// SIGTERM on an ft primary during a paced stream: the stream completes byte for byte, and
/// the client's pause is shorter than any crash's could be (a crash is noticed only after
/// the detector's 25 ms of silence; here nothing waits for a detector).
#[test]
fn sigterm_on_an_ft_primary_hands_the_stream_over_with_less_pause_than_a_crash() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("drft", 16 << 20, 0xd7a1_0001);
    let lab = Lab::up(
        "drft",
        3,
        &www.paced_backend_cmd(4 << 20),
        &["--mode", "ft"],
    );
    let reader = lab.timed_download();
    std::thread::sleep(Duration::from_millis(1500));
    let victim = lab.primary();
    let at = Instant::now();
    lab.ctl("stop", &victim, &[]);
    let exited = at.elapsed();
    let (stamps, body) = reader.join().expect("the client's download failed");
    assert_eq!(body.len(), 16 << 20, "the download ended early");
    assert_eq!(sha256_hex(&body), www.sha256, "wrong bytes");
    let pause = pause_around(&stamps, at, Duration::from_secs(2));
    println!("{victim} drained and exited after {exited:?}; the client paused {pause:?}");
    assert!(
        pause < Duration::from_millis(25),
        "the client paused {pause:?} at a planned stop: as long as a crash"
    );
    assert!(
        !lab.members().contains(&victim),
        "{victim} still in the view after it exited"
    );
    let log = host_log(&lab, &victim);
    assert!(
        log.contains("drained: no connection left here; exiting"),
        "{victim}'s log does not say it drained: {log}"
    );
    // The next member took the connection over from the handoff, not from a view change
    // that found the primary dead.
    let promoted: u64 = lab
        .members()
        .iter()
        .map(|h| metric(&lab.metrics(h), "hydra_ft_promotions_total"))
        .sum();
    assert!(promoted >= 1, "no member counted a takeover");
}

/// SIGTERM on a redirect-mode host while it serves downloads: they complete byte for byte
/// (nobody else could serve them), new connections go to the other hosts meanwhile, and the
/// host exits 0 once its last one ended.
#[test]
fn sigterm_on_a_redirect_host_finishes_its_downloads_and_places_new_ones_elsewhere() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("drrd", 8 << 20, 0xd7a1_0002);
    let lab = Lab::up("drrd", 3, &www.paced_backend_cmd(2 << 20), &[]);
    // Six paced downloads (about 4 s each), spread over the hosts by the redirector's hash.
    let downloads: Vec<_> = (0..6)
        .map(|_| {
            lab.spawn_sh(
                "client",
                "curl -sS --fail --max-time 60 http://198.19.0.10/data.bin | sha256sum",
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    // The host serving the most of them.
    let active = |h: &str| metric(&lab.metrics(h), "hydra_connections_active");
    let victim = ["h1", "h2", "h3"]
        .into_iter()
        .max_by_key(|h| active(h))
        .expect("three hosts")
        .to_string();
    let held = active(&victim);
    assert!(held >= 1, "no host serves a download");
    let stop = {
        let (name, victim) = (lab.name.clone(), victim.clone());
        std::thread::spawn(move || {
            let at = Instant::now();
            let out = hydractl()
                .args(["lab", "stop", "--name", &name, &victim])
                .output()
                .expect("run hydractl");
            (at.elapsed(), out)
        })
    };
    // While it drains, a new connection is served (by another host).
    std::thread::sleep(Duration::from_millis(300));
    let during = lab.sh(
        "client",
        "curl -sS --fail --max-time 60 http://198.19.0.10/data.bin | sha256sum",
    );
    assert!(during.status.success(), "{}", show(&during));
    assert!(String::from_utf8_lossy(&during.stdout).starts_with(&www.sha256));
    for d in downloads {
        let out = d.wait_with_output().expect("wait for curl");
        assert!(out.status.success(), "a download failed: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&www.sha256),
            "wrong bytes: {}",
            show(&out)
        );
    }
    let (took, out) = stop.join().expect("lab stop");
    assert!(out.status.success(), "lab stop {victim}: {}", show(&out));
    println!("{victim} held {held} downloads; drained and exited after {took:?}");
    let log = host_log(&lab, &victim);
    assert!(
        log.contains("drained: no connection left here; exiting"),
        "{victim}'s log does not say it drained: {log}"
    );
    // It waited for its downloads (about 4 s at 2 MiB/s, 1 s of it gone before the stop).
    assert!(
        took >= Duration::from_secs(1),
        "{victim} exited after {took:?}, before its downloads could end"
    );
}

/// SIGHUP after a service was added to every host's TOML: the hosts serve it, without a
/// restart and without touching the service they already served. A TOML that does not load
/// is refused with a logged error, and nothing changes.
#[test]
fn sighup_serves_a_service_added_to_the_config_and_refuses_a_broken_one() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("rld", 1 << 20, 0xd7a1_0003);
    let lab = Lab::up("rld", 2, &www.backend_cmd(), &[]);
    assert!(lab.fetches(80, 10, &www.sha256), "the lab's own service");
    assert!(
        !lab.fetches(81, 2, &www.sha256),
        "port 81 served before the reload"
    );
    let incarnations: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|h| lab.status(h)["incarnation"].clone())
        .collect();
    let config = |h: &str| format!("/run/hydranet/lab-{}/{h}.toml", lab.name);
    for h in ["h1", "h2"] {
        let mut text = std::fs::read_to_string(config(h)).expect("read the host's config");
        text.push_str(
            "\n[[service]]\naddr = \"198.19.0.10:81\"\nmode = \"redirect\"\n\
             backend = \"127.0.0.1:8080\"\n",
        );
        std::fs::write(config(h), text).expect("write the host's config");
        lab.ctl("reload", h, &[]);
    }
    let reloaded = Instant::now();
    let mut served = false;
    while !served && reloaded.elapsed() < Duration::from_secs(5) {
        served = lab.fetches(81, 2, &www.sha256);
    }
    assert!(served, "port 81 not served 5 s after the reload");
    println!("port 81 served {:?} after the reload", reloaded.elapsed());
    for (h, before) in ["h1", "h2"].iter().zip(&incarnations) {
        assert_eq!(
            &lab.status(h)["incarnation"],
            before,
            "{h} restarted instead of reloading"
        );
        assert!(
            host_log(&lab, h).contains("SIGHUP: config reloaded"),
            "{h}'s log: {}",
            host_log(&lab, h)
        );
    }
    // A broken config: refused, and both services are still served.
    std::fs::write(config("h1"), "node_id = \"one\"\n").expect("write");
    lab.ctl("reload", "h1", &[]);
    let deadline = Instant::now() + Duration::from_secs(2);
    while !host_log(&lab, "h1").contains("reload refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = host_log(&lab, "h1");
    assert!(log.contains("reload refused"), "h1's log: {log}");
    assert!(lab.fetches(80, 10, &www.sha256) && lab.fetches(81, 10, &www.sha256));
}
