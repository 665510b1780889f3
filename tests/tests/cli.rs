//! Every hydractl subcommand has --help; wrong input gives one line that says what is wrong
//! and what to do, and a non-zero exit; daemons refuse to start without a key.

use std::process::Command;

use tests::*;

fn assert_one_line_error(args: &[&str], must_mention: &str) {
    let out = hydractl().args(args).output().expect("run hydractl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "hydractl {args:?} succeeded: {}",
        show(&out)
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "hydractl {args:?}: not one line: {err}");
    assert!(
        lines[0].contains(must_mention),
        "hydractl {args:?}: `{}` does not mention `{must_mention}`",
        lines[0]
    );
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        vec![],
        vec!["keygen"],
        vec!["v_host"],
        vec!["v_host", "add"],
        vec!["v_host", "del"],
        vec!["v_host", "list"],
        vec!["setportopt"],
        vec!["status"],
        vec!["lab"],
        vec!["lab", "up"],
        vec!["lab", "exec"],
        vec!["lab", "kill"],
        vec!["lab", "restart"],
        vec!["lab", "pause"],
        vec!["lab", "resume"],
        vec!["lab", "status"],
        vec!["lab", "partition"],
        vec!["lab", "heal"],
        vec!["lab", "impair"],
        vec!["lab", "soak"],
        vec!["lab", "flood"],
        vec!["lab", "down"],
    ] {
        let out = hydractl().args(&sub).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub:?} --help: {}", show(&out));
        assert!(text.contains("Usage:"), "{sub:?} --help: {text}");
    }
}

#[test]
fn wrong_input_gives_one_actionable_line() {
    let missing = "/nonexistent/hydra.sock";
    assert_one_line_error(&["status", "--socket", missing], "start it");
    assert_one_line_error(&["v_host", "list", "--socket", missing], "start it");
    assert_one_line_error(
        &["v_host", "add", "1.2.3", "--socket", missing],
        "not an IPv4 address",
    );
    assert_one_line_error(
        &[
            "setportopt",
            "198.19.0.10",
            "--mode",
            "redirect",
            "--backend",
            "127.0.0.1:1",
            "--socket",
            missing,
        ],
        "is not ip:port",
    );
    assert_one_line_error(
        &[
            "setportopt",
            "198.19.0.10:80",
            "--mode",
            "fast",
            "--socket",
            missing,
        ],
        "use one of off, redirect, ft",
    );
    assert_one_line_error(
        &[
            "setportopt",
            "198.19.0.10:80",
            "--mode",
            "redirect",
            "--socket",
            missing,
        ],
        "--backend",
    );
    assert_one_line_error(
        &[
            "setportopt",
            "198.19.0.10:80",
            "--mode",
            "ft",
            "--backend",
            "127.0.0.1:8080",
            "--stall-timeout",
            "500",
            "--socket",
            missing,
        ],
        "needs a unit",
    );
    assert_one_line_error(
        &[
            "setportopt",
            "198.19.0.10:80",
            "--mode",
            "ft",
            "--backend",
            "127.0.0.1:8080",
            "--stall-timeout",
            "0ms",
            "--socket",
            missing,
        ],
        "at least 1ms",
    );
    assert_one_line_error(&["lab", "down", "--name", "Bad Name"], "from a-z and 0-9");
    assert_one_line_error(
        &["lab", "flood", "--name", "x", "--rate", "200001"],
        "1 to 200000",
    );
    assert_one_line_error(
        &["lab", "flood", "--name", "x", "--seconds", "121"],
        "1 to 120",
    );
}

/// Runs a daemon with a config whose key file is missing.
fn daemon_without_key(bin_name: &str, config: &str) {
    let dir = std::env::temp_dir().join(format!("hn-nokey-{bin_name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, config.replace("DIR", &dir.display().to_string())).unwrap();
    let out = Command::new(bin(bin_name))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{bin_name} started without a key");
    assert!(err.contains("hydractl keygen --out"), "{bin_name}: {err}");
}

/// A new cluster key made by `hydractl keygen` in `dir`.
fn keygen_in(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("cluster.key");
    let made = Command::new(bin("hydractl"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "keygen: {made:?}");
    key
}

/// Logs for journald and log shippers: no colour codes off a terminal, JSON lines on request,
/// and a misspelt format refused before the daemon starts.
#[test]
fn daemons_log_json_on_request_and_refuse_an_unknown_log_format() {
    for bin_name in ["hydra-host", "hydra-redirector"] {
        let run = |format: &str| {
            Command::new(bin(bin_name))
                .args(["--config", "/nonexistent/hydranet.toml"])
                .env("HYDRA_LOG_FORMAT", format)
                .env_remove("NO_COLOR")
                .output()
                .unwrap()
        };
        let out = run("xml");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{bin_name} started with HYDRA_LOG_FORMAT=xml"
        );
        assert!(
            err.contains("HYDRA_LOG_FORMAT") && err.contains("`json`"),
            "{bin_name}: {err}"
        );
        // The missing config is reported; nothing the daemon wrote carries an escape code.
        for format in ["json", "text"] {
            let out = run(format);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{bin_name}: {err}");
            assert!(
                err.contains("/nonexistent/hydranet.toml"),
                "{bin_name}: {err}"
            );
            assert!(
                !err.contains('\u{1b}'),
                "{bin_name} coloured its stderr: {err:?}"
            );
        }
    }
    // A host server on loopback (no redirector answers at 127.0.0.1:9): its first log line
    // is one JSON object.
    let dir = std::env::temp_dir().join(format!("hn-jsonlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = keygen_in(&dir);
    let cfg = dir.join("h.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = 1\nlisten = \"127.0.0.1:0\"\nredirector = \"127.0.0.1:9\"\nkey_file = \"{}\"\nadmin_socket = \"{}\"\n",
            key.display(),
            dir.join("a.sock").display()
        ),
    )
    .unwrap();
    let mut host = Command::new(bin("hydra-host"))
        .arg("--config")
        .arg(&cfg)
        .env("HYDRA_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = host.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(10));
    let _ = host.kill();
    let _ = host.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let line = line.expect("hydra-host logged nothing in 10 s");
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
    assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
}

/// `--check` (as `nginx -t`): a usable config and key print one OK line and exit 0 without
/// starting anything; a missing key exits 2 and says how to make one; a wrong word in the
/// file exits 2 naming its line.
#[test]
fn daemons_check_their_config_without_starting() {
    let dir = std::env::temp_dir().join(format!("hn-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = keygen_in(&dir);
    let configs = [
        (
            "hydra-host",
            "node_id = 1\nlisten = \"127.0.0.1:0\"\nredirector = \"127.0.0.1:9\"\nkey_file = \"KEY\"\nadmin_socket = \"DIR/h.sock\"\n",
        ),
        (
            "hydra-redirector",
            "listen = \"127.0.0.1:0\"\nkey_file = \"KEY\"\nadmin_socket = \"DIR/r.sock\"\ntun_addr = \"198.19.255.254/16\"\n",
        ),
    ];
    for (bin_name, config) in configs {
        let check = |key_file: &std::path::Path| {
            let cfg = dir.join(format!("{bin_name}.toml"));
            let text = config
                .replace("KEY", &key_file.display().to_string())
                .replace("DIR", &dir.display().to_string());
            std::fs::write(&cfg, text).unwrap();
            Command::new(bin(bin_name))
                .arg("--check")
                .arg("--config")
                .arg(&cfg)
                .output()
                .unwrap()
        };
        let ok = check(&key);
        let text = String::from_utf8_lossy(&ok.stdout);
        assert!(ok.status.success(), "{bin_name} --check: {ok:?}");
        assert!(text.contains("config OK"), "{bin_name}: {text}");
        // Nothing started: no admin socket was bound.
        assert!(!dir.join("h.sock").exists() && !dir.join("r.sock").exists());
        let bad = check(&dir.join("missing.key"));
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(
            bad.status.code(),
            Some(2),
            "{bin_name} --check without a key: {bad:?}"
        );
        assert!(err.contains("hydractl keygen --out"), "{bin_name}: {err}");
    }
    // A mode and an order that do not exist: each refused while parsing, at its line.
    let host_cfg = dir.join("words.toml");
    let base = configs[0]
        .1
        .replace("KEY", &key.display().to_string())
        .replace("DIR", &dir.display().to_string());
    for (line, word) in [
        ("mode = \"fast\"", "unknown mode `fast`"),
        ("order = \"random\"", "unknown order `random`"),
    ] {
        let (mode, order) = if line.starts_with("mode") {
            (line.to_string(), String::new())
        } else {
            ("mode = \"ft\"".to_string(), format!("{line}\n"))
        };
        std::fs::write(
            &host_cfg,
            format!(
                "{base}vhosts = [\"198.19.0.10\"]\n\n[[service]]\naddr = \"198.19.0.10:80\"\n\
                 backend = \"127.0.0.1:8080\"\n{order}{mode}\n"
            ),
        )
        .unwrap();
        let out = Command::new(bin("hydra-host"))
            .args(["--check", "--config"])
            .arg(&host_cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {out:?}");
        assert!(
            err.contains(word) && err.contains("line 11"),
            "{line}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemons_refuse_to_start_without_a_key_and_say_how_to_make_one() {
    daemon_without_key(
        "hydra-host",
        "node_id = 1\nlisten = \"127.0.0.1:0\"\nredirector = \"127.0.0.1:9\"\nkey_file = \"DIR/missing.key\"\nadmin_socket = \"DIR/a.sock\"\n",
    );
    daemon_without_key(
        "hydra-redirector",
        "listen = \"127.0.0.1:0\"\nkey_file = \"DIR/missing.key\"\nadmin_socket = \"DIR/a.sock\"\ntun_addr = \"198.19.255.254/16\"\n",
    );
}

#[test]
fn keygen_writes_a_0600_key_the_daemons_accept_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("hn-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("k");
    let out = hydractl()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(ack_channel::ClusterKey::load(&key).is_ok());
    let again = hydractl()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_namespace_is_left_after_a_failed_up_or_a_failing_test() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    // A backend that never listens: lab up fails and must clean up after itself.
    let name = unique_name("fail");
    let out = hydractl()
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--replicas",
            "2",
            "--backend-cmd",
            "exit 3",
        ])
        .env("HYDRA_LAB_TIMEOUT_SECS", "5")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "lab up with a dead backend succeeded"
    );
    assert_eq!(namespaces_of(&name), Vec::<String>::new(), "{}", show(&out));

    // A test that panics while its lab is up: the guard removes the lab while unwinding.
    let name = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = name.clone();
    let r = std::panic::catch_unwind(move || {
        let lab = Lab::up(
            "pnc",
            1,
            "exec python3 -m http.server 8080 --bind 127.0.0.1",
            &[],
        );
        *seen.lock().unwrap() = lab.name.clone();
        assert!(!namespaces_of(&lab.name).is_empty());
        panic!("deliberate failure inside a lab");
    });
    assert!(r.is_err());
    let name = name.lock().unwrap().clone();
    assert!(!name.is_empty());
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
}

#[test]
fn lab_up_with_a_missing_backend_program_fails_at_once_naming_it() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let name = unique_name("nopro");
    let started = std::time::Instant::now();
    let out = hydractl()
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--replicas",
            "1",
            "--mode",
            "ft",
        ])
        .args(["--backend-cmd", "no-such-program-xyz --port 8080"])
        .output()
        .unwrap();
    let took = started.elapsed();
    // Anything created by mistake goes again, even if an assertion below fails.
    let _down = Lab {
        name: name.clone(),
        info: serde_json::Value::Null,
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lab up succeeded: {}", show(&out));
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    assert!(lines[0].contains("no-such-program-xyz"), "{err}");
    assert!(lines[0].contains("not found on PATH"), "{err}");
    // Without the check, lab up waits 30 s for a service that never comes.
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    assert_eq!(namespaces_of(&name), Vec::<String>::new());
    assert!(!std::path::Path::new(&format!("/run/hydranet/lab-{name}")).exists());
}

/// TCP packets the redirector read from its TUN (the ICMP errors a flood provokes apart).
fn tcp_from_tun(lab: &Lab) -> u64 {
    let m = lab.metrics("redir");
    metric(&m, "hydra_tun_packets_total{dir=\"in\"}")
        - metric(&m, "hydra_packets_dropped_total{reason=\"not_tcp\"}")
}

#[test]
fn lab_flood_sends_syns_at_the_rate_and_they_reach_the_redirector() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let missing = hydractl()
        .args(["lab", "flood", "--name", "nolab0", "--seconds", "1"])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "{}", show(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no lab named nolab0"),
        "{}",
        show(&missing)
    );

    let www = WebRoot::new("flood", 1024, 1);
    let lab = Lab::up("flood", 1, &www.backend_cmd(), &["--mode", "redirect"]);
    let before = tcp_from_tun(&lab);
    let (rate, seconds) = (2000u64, 1u64);
    let out = hydractl()
        .args(["lab", "flood", "--name", &lab.name])
        .args([
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "lab flood: {}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "not one line: {}", show(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("lab flood printed no JSON ({e}): {}", show(&out)));
    let sent = report["sent"].as_u64().expect("sent");
    let pps = report["pps"].as_u64().expect("pps");
    let want = rate * seconds;
    assert!(
        want * 8 / 10 <= sent && sent <= want * 12 / 10,
        "sent {sent}, want {want} ± 20%"
    );
    assert!(
        rate / 2 <= pps && pps <= rate * 12 / 10,
        "pps {pps} at --rate {rate}"
    );

    // Every SYN crosses the client link and the redirector's forwarding into its TUN;
    // the counters may trail the sender by a moment.
    let mut got = 0;
    for _ in 0..40 {
        got = tcp_from_tun(&lab) - before;
        if got >= sent * 9 / 10 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        sent * 9 / 10 <= got && got <= sent * 11 / 10 + 20,
        "the redirector read {got} TCP packets from its TUN for {sent} SYNs sent"
    );
}

/// Prometheus can scrape both daemons over TCP (`metrics_listen`; the lab sets it): the
/// redirector from the client's side, a host from the redirector's, each with
/// `hydra_build_info`. Anything but `GET /metrics` there is refused: the admin API stays on
/// the Unix socket.
#[test]
fn prometheus_scrapes_both_daemons_over_tcp() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("prom", 2, REDIS_BACKEND, &["--mode", "ft"]);
    // One connection, so that every member connected to its backend once.
    let ping = lab.sh("client", "redis-cli -h 198.19.0.10 -p 80 PING");
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains("PONG"),
        "{}",
        show(&ping)
    );
    let scrape = |from: &str, url: &str| {
        let out = lab.sh(
            from,
            &format!("curl -sS --max-time 5 -w '\\n%{{http_code}}' {url}"),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let redir = scrape("client", "http://198.18.0.1:9100/metrics");
    assert!(redir.ends_with("\n200"), "{redir}");
    assert!(
        redir.contains("hydra_build_info{daemon=\"hydra-redirector\""),
        "{redir}"
    );
    assert!(redir.contains("hydra_tun_packets_total"), "{redir}");
    let host = scrape("redir", "http://198.18.1.2:9100/metrics");
    assert!(host.ends_with("\n200"), "{host}");
    assert!(
        host.contains("hydra_build_info{daemon=\"hydra-host\""),
        "{host}"
    );
    assert!(host.contains("wire=\"4\""), "{host}");
    // Histograms: the host timed its backend connect; the redirector has its failover
    // families (empty: nothing failed here).
    assert!(
        host.contains("# TYPE hydra_backend_connect_seconds histogram")
            && !host.contains("hydra_backend_connect_seconds_count 0\n"),
        "{host}"
    );
    for family in ["hydra_failover_pause_seconds", "hydra_view_change_seconds"] {
        assert!(
            redir.contains(&format!("# TYPE {family} histogram")),
            "{family}: {redir}"
        );
    }
    let status = scrape("redir", "http://198.18.1.2:9100/status");
    assert!(status.ends_with("\n404"), "{status}");
    // The alert rules and the dashboard under deploy/ name only metrics the daemons export.
    let families: std::collections::BTreeSet<String> = [&redir, &host]
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(String::from)
        .collect();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard = std::fs::read_to_string(deploy.join("grafana/hydranet-dashboard.json"))
        .expect("the Grafana dashboard");
    let board: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let exprs: Vec<String> = board["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect();
    assert!(exprs.len() >= 10, "{} dashboard queries", exprs.len());
    let rules = std::fs::read_to_string(deploy.join("prometheus/hydranet-alerts.yml"))
        .expect("the alert rules");
    assert!(rules.matches("- alert: ").count() >= 6, "{rules}");
    for text in exprs.iter().map(String::as_str).chain([rules.as_str()]) {
        let mut rest = text;
        while let Some(at) = rest.find("hydra_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| families.contains(*b)))
                .unwrap_or(&name);
            assert!(
                families.contains(base),
                "deploy/ names {name}, which no daemon exports"
            );
        }
    }
    // What Prometheus gets parses as its text exposition format, every family and sample.
    for (who, text) in [("redirector", &redir), ("host", &host)] {
        let body = text.strip_suffix("\n200").expect("a 200 answer");
        let parsed = openmetrics_parser::prometheus::parse_prometheus(body)
            .unwrap_or_else(|e| panic!("the {who}'s /metrics does not parse: {e:?}\n{body}"));
        let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            parsed.families.len(),
            families,
            "{who}: families lost in parsing"
        );
        assert!(families > 10, "{who}: only {families} metric families");
    }
}

/// The systemd units in `deploy/systemd` load: `systemd-analyze verify` on each, with the
/// binaries pointed at this build (scripts/packages.txt installs systemd).
#[test]
fn the_systemd_units_verify() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let dir = std::env::temp_dir().join(format!("hn-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bins = bin_dir();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
        std::fs::write(dir.join(&name), text).unwrap();
        names.push(dir.join(&name));
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .expect("systemd-analyze (Debian package systemd, in scripts/packages.txt)");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// `hydractl completions SHELL` prints a script that knows the subcommands (bash's passes
/// `bash -n`), and `hydractl man` writes a page per subcommand.
#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = hydractl().args(["completions", shell]).output().unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", show(&out));
        for word in ["setportopt", "v_host", "lab"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
        if shell == "bash" {
            let dir = std::env::temp_dir().join(format!("hn-compl-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("hydractl.bash");
            std::fs::write(&file, script.as_bytes()).unwrap();
            let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
            assert!(check.status.success(), "bash -n: {}", show(&check));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let dir = std::env::temp_dir().join(format!("hn-man-{}", std::process::id()));
    let out = hydractl()
        .args(["man", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    for (page, says) in [
        ("hydractl.1", "Control HydraNet daemons and labs"),
        ("hydractl-setportopt.1", "stall\\-timeout"),
        ("hydractl-lab-stop.1", "SIGTERM"),
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap_or_default();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is no man page: {text}"
        );
        assert!(text.contains(says), "{page} lacks {says}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under systemd's `Type=notify`: hydra-host says READY=1 once it runs, STOPPING=1 at
/// SIGTERM, and with no connection to drain exits 0 soon after (NOTIFY_SOCKET is a datagram
/// socket of the test's; the host's redirector is a discard port on the loopback).
#[test]
fn hydra_host_notifies_systemd_and_exits_0_after_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("hn-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = keygen_in(&dir);
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = 1\nlisten = \"127.0.0.1:0\"\nadvertise = \"127.0.0.1:7000\"\n\
             redirector = \"127.0.0.1:9\"\nkey_file = \"{}\"\nadmin_socket = \"{}\"\n",
            key.display(),
            dir.join("h.sock").display()
        ),
    )
    .unwrap();
    let mut host = Command::new(bin("hydra-host"))
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(next(), "STOPPING=1\n");
    let began = std::time::Instant::now();
    let status = loop {
        if let Some(s) = host.try_wait().unwrap() {
            break s;
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(5),
            "hydra-host still runs 5 s after SIGTERM with nothing to drain"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    let _ = host.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("drained: no connection left here"), "{err}");
    assert!(
        !dir.join("h.sock").exists(),
        "the admin socket stayed behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
