//! ft mode end to end: kernel-TCP clients keep their connections while replicas crash.

use std::process::Child;
use std::time::{Duration, Instant};

use tests::*;

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("wait client");
    (out.status.success(), show(&out))
}

/// A 200 MiB download paced to last about 10 s, with `faults` applied at the given offsets.
fn paced_download_with(prefix: &str, faults: &[(u64, Fault)]) {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new(prefix, 200 << 20, 0xf7_0001);
    let lab = Lab::up(
        prefix,
        3,
        &www.paced_backend_cmd(20 << 20),
        &["--mode", "ft"],
    );
    let started = Instant::now();
    let client = lab.spawn_sh(
        "client",
        "curl -sS --fail --max-time 120 http://198.19.0.10/data.bin | sha256sum",
    );
    for (at_ms, fault) in faults {
        let at = Duration::from_millis(*at_ms);
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let victim = match fault {
            Fault::KillPrimary | Fault::RestartPrimary => lab.primary(),
            Fault::KillBackup => lab.members()[1].clone(),
        };
        if let Fault::RestartPrimary = fault {
            // Killed and started again at once: the redirector learns of the new life
            // from its first heartbeat, before the detector could notice the old one died.
            lab.ctl("restart", &victim, &[]);
            let members = lab.members();
            assert_eq!(
                members.last(),
                Some(&victim),
                "the new life of {victim} did not join at the end: {members:?}"
            );
            assert_eq!(members.len(), 3, "{members:?}");
        } else {
            lab.ctl("kill", &victim, &[]);
            lab.wait_until_out_of_view(&victim);
        }
    }
    let (ok, text) = finish(client);
    assert!(ok, "download failed: {text}");
    assert!(text.contains(&www.sha256), "wrong bytes: {text}");
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "the stream was not long enough for the faults to land mid-way"
    );
}

#[derive(Clone, Copy)]
enum Fault {
    KillPrimary,
    KillBackup,
    /// Kill the primary and start it again at once (issue #12, finding 4).
    RestartPrimary,
}

#[test]
fn download_survives_a_primary_crash() {
    paced_download_with("ftp", &[(2000, Fault::KillPrimary)]);
}

/// A host restarted before the detector noticed it died is a new member: its old life
/// leaves the view at once (the next member takes the connection over), the new one joins
/// at the end, holding none of the old connections, and is never their primary.
#[test]
fn download_survives_its_primary_restarting_before_the_detector_noticed() {
    paced_download_with("ftrp", &[(2000, Fault::RestartPrimary)]);
}

#[test]
fn download_survives_a_backup_crash() {
    paced_download_with("ftb", &[(2000, Fault::KillBackup)]);
}

#[test]
fn download_survives_the_primary_and_then_the_next_primary_crashing() {
    paced_download_with(
        "ftpp",
        &[(2000, Fault::KillPrimary), (4000, Fault::KillPrimary)],
    );
}

#[test]
fn upload_of_100_mib_reaches_the_survivors_backend_intact() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftup", 100 << 20, 0xf7_0002);
    let lab = Lab::up("ftup", 3, &www.backend_cmd(), &["--mode", "ft"]);
    let script = format!(
        "curl -sS --fail --max-time 120 --limit-rate 20M --data-binary @{} http://198.19.0.10/upload",
        www.file().display()
    );
    let client = lab.spawn_sh("client", &script);
    std::thread::sleep(Duration::from_secs(2));
    let victim = lab.primary();
    lab.ctl("kill", &victim, &[]);
    lab.wait_until_out_of_view(&victim);
    let (ok, text) = finish(client);
    assert!(ok, "upload failed: {text}");
    assert!(
        text.contains(&www.sha256),
        "the survivor's backend hashed something else: {text}"
    );
}

#[test]
fn redis_benchmark_survives_a_primary_crash() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("ftrd", 3, REDIS_BACKEND, &["--mode", "ft"]);
    // SET and GET of redis-benchmark's fixed key give the same replies whatever the order
    // of connections at each replica; commands whose replies depend on the interleaving of
    // connections (INCR, LPOP...) need total order (issue #6).
    benchmark_across_a_primary_kill(
        &lab,
        "-c 20 -n 200000 -t ping,set,get",
        Duration::from_secs(2),
        &["SET:", "GET:"],
    );
}

/// Runs `redis-benchmark ARGS` against the service, kills the primary after `kill_after`,
/// and asserts the benchmark ended without errors or resets, with a summary for each test.
fn benchmark_across_a_primary_kill(lab: &Lab, args: &str, kill_after: Duration, tests: &[&str]) {
    let client = lab.spawn_sh(
        "client",
        &format!("redis-benchmark -h 198.19.0.10 -p 80 {args} -q 2>&1"),
    );
    std::thread::sleep(kill_after);
    let victim = lab.primary();
    lab.ctl("kill", &victim, &[]);
    lab.wait_until_out_of_view(&victim);
    let (ok, text) = finish(client);
    assert!(ok, "redis-benchmark failed: {text}");
    // Its progress lines end in carriage returns.
    let text = text.replace('\r', "\n");
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("reset"),
        "{text}"
    );
    for t in tests {
        assert!(
            text.lines()
                .any(|l| l.contains(t) && l.contains("requests per second")),
            "no {t} summary: {text}"
        );
    }
}

#[test]
fn partitioned_primary_is_replaced_and_fenced_after_heal() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftpart", 120 << 20, 0xf7_0003);
    let lab = Lab::up(
        "ftpart",
        3,
        &www.paced_backend_cmd(16 << 20),
        &["--mode", "ft"],
    );
    let client = lab.spawn_sh(
        "client",
        "curl -sS --fail --max-time 120 http://198.19.0.10/data.bin | sha256sum",
    );
    std::thread::sleep(Duration::from_secs(2));
    let old = lab.primary();
    lab.ctl("partition", &old, &[]);
    lab.wait_until_out_of_view(&old);
    std::thread::sleep(Duration::from_secs(2));
    lab.ctl("heal", &old, &[]);
    let spoke = |lab: &Lab| -> u64 {
        let st = lab.status("redir");
        let id: u64 = old[1..].parse().unwrap();
        st["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .map(|h| h["to_client_packets"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let after_heal = spoke(&lab);
    let (ok, text) = finish(client);
    assert!(ok, "download failed: {text}");
    assert!(text.contains(&www.sha256), "wrong bytes: {text}");
    assert_eq!(
        spoke(&lab),
        after_heal,
        "the old primary reached the client after the heal"
    );
    assert_ne!(lab.primary(), old, "the old primary took its role back");
    // Back in the view (at its end, with a new `since`), it left the download: it missed the
    // client's bytes of its time out, so no later view may make it the speaker.
    assert!(
        lab.members().contains(&old),
        "{old} did not rejoin the view"
    );
    let left = metric(&lab.metrics(&old), "hydra_ft_left_out_of_view_total");
    assert!(
        left >= 1,
        "{old} kept the connection it was partitioned from"
    );
}

/// Client-visible pause at failover: a kernel-TCP client reads a paced stream and
/// timestamps every read; each kill's pause is the longest gap between reads around it.
/// 7 labs of 4 replicas, 3 primary kills each: 21 kills. The figures are printed (run with
/// `--nocapture`), written to target/failover-pause.txt, and bounded: p50 at most 35 ms, the
/// longest at most 50 ms (detection takes 25 ms of it).
#[test]
fn failover_pause_over_21_primary_kills() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftpause", 24 << 20, 0xf7_0004);
    let rate = 2u64 << 20;
    let mut pauses = Vec::new();
    let mut redir_pauses = 0.0;
    for round in 0..7 {
        let lab = Lab::up("ftpz", 4, &www.paced_backend_cmd(rate), &["--mode", "ft"]);
        let reader = lab.timed_download();
        let mut kills = Vec::new();
        for k in 0..3 {
            std::thread::sleep(Duration::from_millis(if k == 0 { 1500 } else { 2500 }));
            let victim = lab.primary();
            kills.push(Instant::now());
            lab.ctl("kill", &victim, &[]);
            lab.wait_until_out_of_view(&victim);
        }
        let (stamps, body) = reader.join().expect("reader");
        assert_eq!(sha256_hex(&body), www.sha256, "round {round}: wrong bytes");
        for k in kills {
            pauses.push(pause_around(&stamps, k, Duration::from_secs(1)));
        }
        // The redirector measured each failover too (issue #16's histograms): one pause
        // per primary crash, and one view change per crash, none before the 25 ms timeout.
        let m = lab.metrics("redir");
        let float = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in:\n{m}"))
        };
        assert_eq!(
            metric(&m, "hydra_failover_pause_seconds_count"),
            3,
            "round {round}: the redirector's failover pauses"
        );
        redir_pauses += float("hydra_failover_pause_seconds_sum");
        let views = metric(&m, "hydra_view_change_seconds_count");
        assert!(views >= 3, "round {round}: {views} view changes counted");
        let detection = float("hydra_view_change_seconds_sum") / views as f64;
        assert!(
            detection >= 0.025,
            "round {round}: a member dropped after {detection} s of silence on average"
        );
    }
    pauses.sort();
    let p50 = pauses[pauses.len() / 2];
    let max = pauses[pauses.len() - 1];
    let line = format!(
        "failover pause over {} primary kills (detector 5 ms / 25 ms, paced 2 MiB/s): p50 {:.1} ms, max {:.1} ms, all {:?}",
        pauses.len(),
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        pauses.iter().map(|d| (d.as_secs_f64() * 1e4).round() / 10.0).collect::<Vec<_>>()
    );
    println!("{line}");
    let redir_mean = redir_pauses / pauses.len() as f64 * 1e3;
    println!(
        "the redirector's own measure (hydra_failover_pause_seconds): mean {redir_mean:.1} ms"
    );
    assert!(
        redir_mean <= 50.0,
        "the redirector measured a mean failover pause of {redir_mean:.1} ms"
    );
    let _ = std::fs::write(bin_dir().join("failover-pause.txt"), format!("{line}\n"));
    // Issue #12: the figures the README quotes are bounds this test holds.
    assert!(
        p50 <= Duration::from_millis(35) && max <= Duration::from_millis(50),
        "failover pause above its bounds (p50 35 ms, max 50 ms): {line}"
    );
}

#[test]
fn killed_and_restarted_host_serves_new_connections_within_1s() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftrs", 1 << 20, 0xf7_0005);
    let lab = Lab::up("ftrs", 3, &www.backend_cmd(), &["--mode", "ft"]);
    lab.ctl("kill", "h1", &[]);
    lab.wait_until_out_of_view("h1");
    let restarted = Instant::now();
    lab.ctl("restart", "h1", &[]);
    assert!(
        lab.members().iter().any(|m| m == "h1"),
        "h1 not back in the view"
    );
    let before = metric(&lab.metrics("h1"), "hydra_connections_total");
    let out = lab.sh(
        "client",
        "curl -sS --fail --max-time 5 http://198.19.0.10/data.bin | sha256sum",
    );
    let served_after = restarted.elapsed();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&www.sha256));
    let after = metric(&lab.metrics("h1"), "hydra_connections_total");
    assert_eq!(
        after,
        before + 1,
        "the new connection did not reach restarted h1"
    );
    assert!(
        served_after < Duration::from_secs(1),
        "h1 served a new connection only {served_after:?} after its restart began"
    );
}

/// One upload of `file` from the client, at most `max_secs`: (bytes/s, curl's output).
/// A timed-out upload still reports what it moved.
fn upload_rate(lab: &Lab, file: &std::path::Path, max_secs: u32) -> (f64, String) {
    let out = lab.sh(
        "client",
        &format!(
            "curl -sS --max-time {max_secs} -w '\\nrate %{{size_upload}} %{{time_total}}\\n' \
             --data-binary @{} http://198.19.0.10/upload",
            file.display()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("rate "))
        .and_then(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<f64>().ok());
            Some(it.next()?? / it.next()??.max(0.001))
        })
        .unwrap_or(0.0);
    (rate, format!("{text}{}", show(&out)))
}

/// The best of three uploads that must all arrive intact (the backend answers the sha256):
/// one slow run on a busy 2-core machine says nothing.
fn best_intact_upload(lab: &Lab, www: &WebRoot) -> f64 {
    (0..3)
        .map(|_| {
            let (rate, text) = upload_rate(lab, &www.file(), 60);
            assert!(
                text.contains(&www.sha256),
                "upload not intact or not complete: {text}"
            );
            rate
        })
        .fold(0.0, f64::max)
}

#[test]
fn repair_keeps_upload_throughput_with_5pct_loss_on_a_backups_link() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftrep", 24 << 20, 0xf7_0005);
    let lab = Lab::up("ftrep", 3, &www.backend_cmd(), &["--mode", "ft"]);
    let clean = best_intact_upload(&lab, &www);

    let members = lab.members();
    let (primary, backup) = (members[0].clone(), members[1].clone());
    lab.ctl("impair", &backup, &["--loss", "5"]);
    let before = metric(
        &lab.metrics(&primary),
        "hydra_ft_repairs_total{dir=\"sent\"}",
    );
    let repaired = best_intact_upload(&lab, &www);
    let sent = metric(
        &lab.metrics(&primary),
        "hydra_ft_repairs_total{dir=\"sent\"}",
    ) - before;

    // The contrast: the same loss with repair off on every replica, so the client's
    // retransmission timer is the only way the backup gets its missing bytes.
    lab.setportopt_all(&["--repair", "off"]);
    let (unrepaired, _) = upload_rate(&lab, &www.file(), 8);
    println!(
        "ft3 single-connection upload: loss-free {:.1} MB/s; 5% loss on {backup}'s link: \
         {:.1} MB/s with repair ({:.0}% of loss-free, {sent} repair packets from {primary}), \
         {:.2} MB/s without",
        clean / 1e6,
        repaired / 1e6,
        100.0 * repaired / clean,
        unrepaired / 1e6
    );
    assert!(sent > 0, "the primary sent no repair packets");
    // What repair is for: it keeps most of the loss-free rate (78-89% measured here) where
    // the client's own retransmission timer alone keeps 1-3%. The bounds have the slack
    // a timed test needs (about twice), so they fail when repair breaks, not when a busy
    // 2-core machine measures one upload slowly.
    assert!(
        repaired >= 0.5 * clean,
        "with repair, 5% loss on a backup's link cut throughput to {:.0}% of loss-free",
        100.0 * repaired / clean
    );
    assert!(
        repaired >= 5.0 * unrepaired,
        "repair on was not 5x faster than repair off: the loss did not reach the backup, or \
         repair did not help"
    );
}

#[test]
fn a_replica_with_different_output_is_reported_and_never_takes_over() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("ftdiv", 64 << 20, 0xf7_0006);
    // Every host runs the same backend; the one whose directory holds `noisy` starts each
    // response with one random extra byte (its output is one byte longer and shifted).
    let cmd = format!("{} --rate 8000000 --noise-file ./noisy", www.backend_cmd());
    let lab = Lab::up("ftdiv", 3, &cmd, &["--mode", "ft"]);
    let members = lab.members();
    let (primary, noisy, good) = (&members[0], &members[1], &members[2]);
    // A slower detector: a false removal under CPU load would drop the noisy host from
    // the connection and leave nothing to test.
    lab.setportopt_all(&["--hb", "10ms", "--timeout", "300ms"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        &lab.members(),
        &members,
        "the view changed while the detector was set"
    );
    std::fs::write(format!("/run/hydranet/lab-{}/{noisy}/noisy", lab.name), b"")
        .expect("mark the noisy host");

    let client = lab.spawn_sh(
        "client",
        "curl -sS --fail --max-time 60 http://198.19.0.10/data.bin | sha256sum",
    );
    std::thread::sleep(Duration::from_secs(2));
    // Every member reports the noisy one divergent; the good one is vouched for.
    let noisy_id: u64 = noisy[1..].parse().expect("node id");
    let good_id: u64 = good[1..].parse().expect("node id");
    for h in [primary, good] {
        let st = lab.status(h);
        let conn = &st["connections"][0]["ft"]["agreement"];
        let divergent: Vec<u64> = conn["divergent"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(divergent, vec![noisy_id], "{h} status: {conn}");
        let attests = conn["attests"].to_string();
        if h == primary {
            assert!(
                attests.contains(&format!("[{good_id},")),
                "{h} vouches for nobody: {conn}"
            );
        }
        let text = lab.metrics(h);
        assert!(
            metric(
                &text,
                "hydra_ft_blocks_compared_total{result=\"different\"}"
            ) > 0,
            "{h} counted no differing blocks"
        );
        assert_eq!(metric(&text, "hydra_ft_divergent_members"), 1, "{h}");
    }
    let shown = hydractl()
        .args(["status", "--socket"])
        .arg(lab.socket(primary))
        .output()
        .expect("run hydractl");
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains(&format!("divergent (never takes over) node{noisy_id}")),
        "hydractl status: {shown}"
    );

    // The view makes the noisy host first; for this connection it is passed over.
    lab.ctl("kill", primary, &[]);
    lab.wait_until_out_of_view(primary);
    assert_eq!(
        &lab.primary(),
        noisy,
        "the view's next member is the noisy host"
    );
    let (ok, text) = finish(client);
    assert!(ok, "download failed: {text}");
    assert!(
        text.contains(&www.sha256),
        "the client's stream was corrupted: {text}"
    );
    let good_metrics = lab.metrics(good);
    assert_eq!(
        metric(&good_metrics, "hydra_ft_promotions_total"),
        1,
        "the agreeing member took over"
    );
    assert_eq!(metric(&lab.metrics(noisy), "hydra_ft_promotions_total"), 0);
    assert!(metric(&good_metrics, "hydra_ft_divergent_skips_total") >= 1);
}

/// redis-benchmark's 20 connections to a redis in total order, the primary killed midway:
/// the two survivors' `DEBUG DIGEST`s must agree, and the new primary's sync (it collects
/// the stamps the members delivered before it numbers any) must end complete, with the other
/// survivor's answer. (Ignored until the sync request was sealed per member: sent to the
/// group, every member dropped it as misaddressed, each failover waited 2 s for answers that
/// never came, and a backup lagging past the 1 s stall time was dropped, in 1 of 3 runs.)
#[test]
fn total_order_keeps_redis_replicas_identical_across_a_primary_kill() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up(
        "fttot",
        3,
        "exec redis-server --port 8080 --bind 127.0.0.1 --save '' --appendonly no \
         --enable-debug-command yes",
        &["--mode", "ft"],
    );
    lab.setportopt_all(&["--order", "total"]);
    // Replies and final state of these depend on how the 20 connections interleave.
    benchmark_across_a_primary_kill(
        &lab,
        "-c 20 -r 100 -n 100000 -t set,incr,lpush,rpop",
        Duration::from_secs(15),
        &["SET:", "INCR:", "LPUSH:", "RPOP:"],
    );
    let survivors = lab.members();
    assert_eq!(survivors.len(), 2, "{survivors:?}");
    // The benchmark ends when the client has every reply, from the speaker; a backup may
    // still be working through stamps it queued (it lags on a loaded machine). Its state
    // must reach the speaker's: compare until they agree, for at most 10 s.
    let mut digests: Vec<String> = Vec::new();
    let compared = Instant::now();
    for _ in 0..50 {
        digests = survivors.iter().map(|h| lab.redis_digest(h)).collect();
        if digests.iter().all(|d| d == &digests[0]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "DEBUG DIGEST on {survivors:?}: {digests:?} (after {:?})",
        compared.elapsed()
    );
    // What each survivor's sequencer did: a replica that left connections it could not
    // follow (or whose past differed from the new primary's) has a different state for good.
    let order: Vec<String> = survivors
        .iter()
        .map(|h| {
            let text = lab.metrics(h);
            let counts: Vec<String> = [
                "left",
                "abandoned",
                "diverged",
                "starved",
                "gone",
                "dropped",
                "voided",
                "adopted",
                "sync_incomplete",
            ]
            .iter()
            .map(|w| format!("{w}={}", metric(&text, &format!("hydra_order_{w}_total"))))
            .collect();
            let dropped: Vec<String> = ["ended", "stalled", "differs", "silent"]
                .iter()
                .map(|r| {
                    let name = format!("hydra_ft_members_dropped_total{{reason=\"{r}\"}}");
                    format!("{r}={}", metric(&text, &name))
                })
                .collect();
            format!(
                "{h}: {}; members it dropped as speaker: {}",
                counts.join(" "),
                dropped.join(" ")
            )
        })
        .collect();
    println!("total order on the survivors: {order:?}");
    assert!(
        digests.iter().all(|d| d == &digests[0] && d.len() == 40),
        "the surviving replicas' redis states differ: {digests:?}; total order: {order:?}"
    );
    let primary = lab.primary();
    let backup = survivors
        .iter()
        .find(|h| **h != primary)
        .expect("a backup survived");
    let (p, b) = (lab.metrics(&primary), lab.metrics(backup));
    assert_eq!(
        metric(&p, "hydra_order_sync_incomplete_total"),
        0,
        "the new primary's sync ended without every member's answer: {order:?}"
    );
    assert!(
        metric(&b, "hydra_order_sync_answers_total") >= 1,
        "{backup} never answered the new primary's sync: {order:?}"
    );
    for (h, text) in [(&primary, &p), (backup, &b)] {
        let name = "hydra_datagrams_dropped_total{reason=\"misaddressed\"}";
        assert_eq!(
            metric(text, name),
            0,
            "{h} dropped datagrams as misaddressed"
        );
    }
}

/// A kernel-TCP connection from the client's port `port` to the service, its connect
/// bounded by `wait` (SO_SNDTIMEO bounds connect on Linux). SO_REUSEADDR lets the port be
/// bound again once its last connection was reset.
fn connect_from(port: u16, wait: Duration) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(wait.as_secs() as i64, 0),
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
    connect(fd.as_raw_fd(), &SockaddrIn::new(198, 19, 0, 10, 80))?;
    let s = std::net::TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// PING on `s`; whether PONG came back.
fn pong(s: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Closes `s` with a reset (SO_LINGER 0): the client keeps no TIME-WAIT, its port is free
/// at once.
fn reset(s: std::net::TcpStream) {
    let off = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &off).expect("linger");
}

/// A client reuses the port of a connection the view's primary left while it was cut off:
/// the primary never heard the client's reset, so it still holds the connection it left.
/// The client's new SYN on that 4-tuple must be answered (as Linux answers it), not
/// swallowed by the left connection; the soak timed out such a connect (seed
/// 961789355045568426).
#[test]
fn a_port_reused_after_the_primary_left_its_connection_connects() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("ftreuse", 3, REDIS_BACKEND, &["--mode", "ft"]);
    const PORT: u16 = 41_234;
    let first = lab.in_ns("client", || {
        let mut s = connect_from(PORT, Duration::from_secs(5)).expect("first connect");
        assert!(pong(&mut s), "no PONG on the first connection");
        s
    });
    let mut s = first.join().expect("client thread");
    let old = lab.primary();
    let others: Vec<String> = lab.members().into_iter().filter(|m| *m != old).collect();
    lab.ctl("partition", &old, &[]);
    lab.wait_until_out_of_view(&old);
    // The connection lives on at the others; the client resets it while the old primary is
    // cut off.
    let s = lab
        .in_ns("client", move || {
            assert!(pong(&mut s), "no PONG after the primary was cut off");
            reset(s);
        })
        .join();
    assert!(s.is_ok(), "client thread failed");
    lab.ctl("heal", &old, &[]);
    // Back at the end of the view, the old primary leaves the connection; with the others
    // gone it is the primary again.
    for _ in 0..300 {
        if lab.members().contains(&old) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in &others {
        lab.ctl("kill", h, &[]);
        lab.wait_until_out_of_view(h);
    }
    assert_eq!(lab.members(), vec![old.clone()]);
    assert!(
        metric(&lab.metrics(&old), "hydra_ft_left_out_of_view_total") >= 1,
        "{old} did not leave the connection it was cut off from"
    );
    let again = lab
        .in_ns("client", || {
            let t = Instant::now();
            let mut s = connect_from(PORT, Duration::from_secs(8))
                .map_err(|e| format!("connect again from port {PORT}: {e}"))?;
            let took = t.elapsed();
            if !pong(&mut s) {
                return Err("no PONG on the new connection".to_string());
            }
            Ok(took)
        })
        .join()
        .expect("client thread");
    let took = again.unwrap_or_else(|e| panic!("{e}"));
    // Linux answers such a SYN at once; the first SYN must do here too (a retransmitted one
    // would take 1 s).
    assert!(took < Duration::from_millis(900), "connect took {took:?}");
    assert!(
        metric(&lab.metrics(&old), "hydra_conns_superseded_total") >= 1,
        "{old} did not count the connection the new SYN superseded"
    );
}
