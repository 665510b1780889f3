//! Hostile clients (issue #10): a SYN flood from random sources must not take the service
//! down. While `hydractl lab flood` sends 20,000 SYN/s for 10 s, a legit client fetches 1 MiB
//! every 0.3 s and every fetch must succeed within 5 s; no replica may leave the view, no
//! backend may be marked down, host memory stays bounded, and nothing of the flood is left
//! 10 s later.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::*;

const RATE: u32 = 20_000;
const SECONDS: u32 = 10;

/// What one flood run with a legit client saw.
struct FloodRun {
    /// SYNs sent and the rate measured.
    sent: u64,
    pps: u64,
    /// Fetches that returned the right bytes, of how many.
    ok: usize,
    fetches: usize,
    /// Time of each successful fetch, seconds.
    times: Vec<f64>,
    text: String,
}

impl FloodRun {
    fn summary(&self) -> String {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        let med = t.get(t.len() / 2).copied().unwrap_or(f64::NAN);
        let max = t.last().copied().unwrap_or(f64::NAN);
        format!(
            "flood {} SYNs at {}/s; legit 1 MiB fetches {} of {}, median {:.3} s, max {:.3} s",
            self.sent, self.pps, self.ok, self.fetches, med, max
        )
    }

    fn assert_all_served(&self) {
        assert!(
            self.sent >= u64::from(RATE * SECONDS) * 9 / 10,
            "the flood fell short of {RATE}/s: {}",
            self.summary()
        );
        assert_eq!(
            self.ok, self.fetches,
            "every legit fetch during the flood must succeed within 5 s:\n{}",
            self.text
        );
    }
}

/// Floods `to` (default: the service) with `lab flood` at RATE for SECONDS while a legit
/// client fetches 1 MiB from the same place every 0.3 s (each within 5 s); `sample` runs
/// every 250 ms meanwhile.
fn flood_with_legit_client(
    lab: &Lab,
    www: &WebRoot,
    to: Option<(&str, u16)>,
    mut sample: impl FnMut(),
) -> FloodRun {
    let mut flood = hydractl();
    flood
        .args(["lab", "flood", "--name", &lab.name])
        .args(["--rate", &RATE.to_string()])
        .args(["--seconds", &SECONDS.to_string()]);
    let url = match to {
        Some((ip, port)) => {
            flood.args(["--to", ip, "--port", &port.to_string()]);
            format!("http://{ip}:{port}/data.bin")
        }
        None => "http://198.19.0.10/data.bin".to_string(),
    };
    let flood = flood
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab flood");
    let tmp = format!("/tmp/{}-fetch", lab.name);
    let fetches = (SECONDS * 10 / 3) as usize;
    let legit = lab.spawn_sh(
        "client",
        &format!(
            "for i in $(seq 1 {fetches}); do \
               if curl -sS --fail --max-time 5 -o {tmp} -w 'time %{{time_total}} ' {url}; \
               then sha256sum {tmp}; else echo FAILED; fi; sleep 0.3; done; rm -f {tmp}"
        ),
    );
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(u64::from(SECONDS) + 1) {
        sample();
        std::thread::sleep(Duration::from_millis(250));
    }
    let flood = flood.wait_with_output().expect("wait lab flood");
    assert!(flood.status.success(), "lab flood failed: {}", show(&flood));
    let report: serde_json::Value = serde_json::from_slice(&flood.stdout)
        .unwrap_or_else(|e| panic!("lab flood printed no JSON ({e}): {}", show(&flood)));
    let legit = legit.wait_with_output().expect("wait legit client");
    let text = String::from_utf8_lossy(&legit.stdout).to_string();
    let times = text
        .lines()
        .filter(|l| l.contains(&www.sha256))
        .filter_map(|l| {
            l.strip_prefix("time ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    FloodRun {
        sent: report["sent"].as_u64().unwrap_or(0),
        pps: report["pps"].as_u64().unwrap_or(0),
        ok: text.matches(&www.sha256).count(),
        fetches,
        times,
        text: format!("{text}\n{}", show(&legit)),
    }
}

fn flood_leaves_the_service_up(prefix: &str, mode: &str, replicas: u32) {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new(prefix, 1 << 20, 0xf1_00d);
    let lab = Lab::up(prefix, replicas, &www.backend_cmd(), &["--mode", mode]);
    let hosts: Vec<String> = (1..=replicas).map(|i| format!("h{i}")).collect();
    let redir_before = lab.status("redir");
    let rss_before: Vec<u64> = hosts.iter().map(|h| lab.host_rss_kib(h)).collect();

    let mut rss_peak = rss_before.clone();
    let run = flood_with_legit_client(&lab, &www, None, || {
        for (i, h) in hosts.iter().enumerate() {
            rss_peak[i] = rss_peak[i].max(lab.host_rss_kib(h));
        }
    });
    let sent = run.sent;
    println!(
        "{mode}: {}; rss KiB before {rss_before:?} peak {rss_peak:?}",
        run.summary()
    );
    run.assert_all_served();

    // The flood reached the hosts, and was answered statelessly.
    let cookies: u64 = hosts
        .iter()
        .map(|h| metric(&lab.metrics(h), "hydra_syn_cookies_total{result=\"sent\"}"))
        .sum();
    assert!(
        cookies >= sent / 2,
        "the hosts answered only {cookies} of {sent} SYNs: did the flood reach them?"
    );
    for (i, h) in hosts.iter().enumerate() {
        let grown = rss_peak[i].saturating_sub(rss_before[i]);
        assert!(
            grown <= 256 * 1024,
            "{h} grew by {grown} KiB during the flood (bound 256 MiB)"
        );
    }
    // Nobody left the view, no backend was marked down.
    let redir = lab.status("redir");
    if mode == "ft" {
        assert_eq!(
            redir["views"][0]["epoch"], redir_before["views"][0]["epoch"],
            "the view changed during the flood: before {redir_before}, after {redir}"
        );
        assert_eq!(lab.members().len(), replicas as usize, "{redir}");
    }
    assert!(
        redir["hosts"]
            .as_array()
            .is_some_and(|h| h.len() == replicas as usize && h.iter().all(|h| h["live"] == true)),
        "a host is not live at the redirector after the flood: {redir}"
    );
    // The redirector names the service's mode as its hosts advertise it (it printed
    // "redirect" for ft services once).
    assert_eq!(redir["services"][0]["mode"], mode, "{redir}");
    for h in &hosts {
        let st = lab.status(h);
        assert!(
            st["services"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["backend_healthy"] == true)),
            "{h} marked its backend down: {st}"
        );
    }
    // Nothing of the flood remains.
    std::thread::sleep(Duration::from_secs(10));
    for h in &hosts {
        let st = lab.status(h);
        let n = st["connections_active"].as_u64().unwrap_or(u64::MAX);
        assert!(
            n <= 30,
            "{h} still holds {n} connections 10 s after the flood: {}",
            st["connection_states"]
        );
    }
}

/// The baseline: Linux's own TCP (SYN cookies, a bounded backlog) on h1's address, the same
/// file server, the same flood and the same legit client.
#[test]
fn kernel_tcp_serves_legit_clients_through_a_syn_flood() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("fldk", 1 << 20, 0xf1_00d);
    let lab = Lab::up("fldk", 1, &www.backend_cmd(), &["--mode", "redirect"]);
    let mut server = hydractl()
        .args(["lab", "exec", "--name", &lab.name, "h1", "--"])
        .arg(bin("hydra-fileserver"))
        .args(["--root"])
        .arg(&www.dir)
        .args(["--listen", "198.18.1.2:9090"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the kernel-path file server");
    std::thread::sleep(Duration::from_millis(300));
    let run = flood_with_legit_client(&lab, &www, Some(("198.18.1.2", 9090)), || {});
    println!("kernel: {}", run.summary());
    let _ = server.kill();
    let _ = server.wait();
    run.assert_all_served();
}

#[test]
fn ft3_serves_legit_clients_through_a_syn_flood() {
    flood_leaves_the_service_up("fldft", "ft", 3);
}

#[test]
fn redirect_serves_legit_clients_through_a_syn_flood() {
    flood_leaves_the_service_up("fldrd", "redirect", 2);
}

/// Raises this process's open-files limit to its hard limit (the test holds thousands of
/// sockets).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[test]
fn abandoned_connections_are_reaped_within_the_idle_timeout() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    raise_fd_limit();
    const ABANDONED: usize = 5000;
    let www = WebRoot::new("idle", 1 << 20, 0x1d1e);
    let lab = Lab::up("idle", 3, &www.backend_cmd(), &["--mode", "ft"]);
    lab.setportopt_all(&["--idle-timeout", "10s"]);
    let hosts = lab.members();
    // A legit client fetches all along.
    let tmp = format!("/tmp/{}-fetch", lab.name);
    let legit = lab.spawn_sh(
        "client",
        &format!(
            "for i in $(seq 1 40); do \
               if curl -sS --fail --max-time 5 -o {tmp} http://198.19.0.10/data.bin; \
               then sha256sum {tmp}; else echo FAILED at $(date +%T.%N); fi; sleep 0.5; done; \
             rm -f {tmp}"
        ),
    );
    // Open connections and abandon them: the handshake completes, then nothing, ever.
    let openers: Vec<_> = (0..4)
        .map(|_| {
            lab.in_ns("client", || {
                (0..ABANDONED / 4)
                    .filter_map(|_| {
                        std::net::TcpStream::connect_timeout(
                            &"198.19.0.10:80".parse().expect("addr"),
                            Duration::from_secs(5),
                        )
                        .ok()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let held: Vec<std::net::TcpStream> = openers
        .into_iter()
        .flat_map(|o| o.join().expect("opener"))
        .collect();
    let opened_at = Instant::now();
    assert_eq!(held.len(), ABANDONED, "every connection must open");
    let most: u64 = hosts
        .iter()
        .map(|h| lab.status(h)["connections_active"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    assert!(
        most as usize >= ABANDONED * 9 / 10,
        "the hosts hold only {most} of the {ABANDONED} connections"
    );
    // Reaped within the timeout (10 s) plus the sweep's period and slack.
    let mut left = u64::MAX;
    while opened_at.elapsed() < Duration::from_secs(13) {
        left = hosts
            .iter()
            .map(|h| lab.status(h)["connections_active"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if left <= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reaped_after = opened_at.elapsed();
    assert!(
        left <= 5,
        "{left} connections still held {reaped_after:?} after opening with a 10 s idle timeout"
    );
    for h in &hosts {
        let n = metric(&lab.metrics(h), "hydra_idle_timeouts_total");
        assert!(
            n as usize >= ABANDONED * 9 / 10,
            "{h} counted only {n} idle timeouts"
        );
    }
    // The clients were told: their sockets were reset, at once or, if that RST was lost,
    // when they next send (the host remembers the reset connection and answers with RST).
    let is_reset = |r: std::io::Result<usize>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    let mut at_once = 0;
    let mut reset = 0;
    for s in &held {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        let mut b = [0u8; 1];
        if is_reset((&*s).read(&mut b)) {
            at_once += 1;
            reset += 1;
            continue;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = std::io::Write::write(&mut &*s, b"x");
        if is_reset((&*s).read(&mut b)) {
            reset += 1;
        }
    }
    println!("idle: {at_once} resets arrived at once, {reset} in all");
    let superseded: u64 = hosts
        .iter()
        .map(|h| metric(&lab.metrics(h), "hydra_conns_superseded_total"))
        .sum();
    println!("idle: {superseded} connections left behind were superseded by a reused 4-tuple");
    assert_eq!(
        reset, ABANDONED,
        "every abandoned client must learn its connection was reset"
    );
    drop(held);
    let legit = legit.wait_with_output().expect("wait legit client");
    let text = String::from_utf8_lossy(&legit.stdout).to_string();
    println!(
        "idle: reaped {ABANDONED} within {reaped_after:?}; legit fetches {}",
        text.matches(&www.sha256).count()
    );
    assert_eq!(
        text.matches(&www.sha256).count(),
        40,
        "a legit client must be served throughout:\n{text}\n{}",
        show(&legit)
    );
}

/// TCP keep-alive (issue #10): with `--keepalive 2s` a client that stops answering (its
/// packets dropped, as when its machine dies) is reset after 3 unanswered probes, on every
/// replica, while an idle client that answers the probes keeps its connection.
#[test]
fn keepalive_resets_a_dead_client_and_keeps_an_idle_live_one() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("kalive", 3, REDIS_BACKEND, &["--mode", "ft"]);
    lab.setportopt_all(&["--keepalive", "2s", "--idle-timeout", "0"]);
    let hosts = lab.members();
    let ping = |s: &mut std::net::TcpStream| {
        let mut buf = [0u8; 7];
        std::io::Write::write_all(s, b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    };
    let (mut live, mut dead) = lab
        .in_ns("client", || {
            let open = || {
                let s = std::net::TcpStream::connect_timeout(
                    &"198.19.0.10:80".parse().expect("addr"),
                    Duration::from_secs(5),
                )
                .expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                s
            };
            (open(), open())
        })
        .join()
        .expect("open");
    assert!(ping(&mut live) && ping(&mut dead), "both answer at first");
    let port = dead.local_addr().expect("addr").port();
    let out = lab.sh(
        "client",
        &format!("iptables -I INPUT -p tcp --dport {port} -j DROP"),
    );
    assert!(out.status.success(), "iptables: {}", show(&out));
    // Silent 2 s, then probes 1 s apart, reset after the third: about 5 s; sweeps every 0.5 s.
    let started = Instant::now();
    let mut held = u64::MAX;
    while started.elapsed() < Duration::from_secs(9) {
        held = hosts
            .iter()
            .map(|h| lab.status(h)["connections_active"].as_u64().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if held <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = started.elapsed();
    println!("keepalive: the dead client's connection went after {took:?}");
    assert!(
        held <= 1,
        "the dead client's connection is still held after {took:?}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "reset after {took:?}: before its probes could have gone unanswered"
    );
    for h in &hosts {
        let m = lab.metrics(h);
        assert!(metric(&m, "hydra_keepalive_resets_total") >= 1, "{h}: {m}");
    }
    let primary = lab.primary();
    assert!(
        metric(&lab.metrics(&primary), "hydra_keepalive_probes_total") >= 3,
        "the primary sent the probes"
    );
    assert!(
        ping(&mut live),
        "the idle client that answered its probes keeps its connection"
    );
}
