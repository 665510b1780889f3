//! Changes made at run time with `hydractl` survive a restart (issue #16): each host keeps
//! them in its state file (`<config>.state`) and makes them again after its config.

use std::time::{Duration, Instant};

use tests::*;

/// `hydractl setportopt` against host `node`'s admin socket.
fn setportopt(lab: &Lab, node: &str, args: &[&str]) -> std::process::Output {
    hydractl()
        .arg("setportopt")
        .args(args)
        .arg("--socket")
        .arg(lab.socket(node))
        .output()
        .expect("run hydractl")
}

/// A service added with `hydractl setportopt` on every host is still served after every
/// host crashed and restarted with the same config file; a setportopt the host refuses is
/// not kept.
#[test]
fn a_service_set_at_run_time_is_served_again_after_a_restart() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("rts", 1 << 20, 0xd7a1_0004);
    let lab = Lab::up("rts", 2, &www.backend_cmd(), &[]);
    for h in ["h1", "h2"] {
        let out = setportopt(
            &lab,
            h,
            &[
                "198.19.0.10:81",
                "--mode",
                "redirect",
                "--backend",
                "127.0.0.1:8080",
            ],
        );
        assert!(out.status.success(), "{}", show(&out));
        // Refused (a backend must be on the loopback): nothing kept.
        let out = setportopt(
            &lab,
            h,
            &[
                "198.19.0.10:82",
                "--mode",
                "redirect",
                "--backend",
                "192.0.2.1:8080",
            ],
        );
        assert!(!out.status.success(), "a remote backend was taken");
    }
    let wait_served = |what: &str| {
        let began = Instant::now();
        while !lab.fetches(81, 5, &www.sha256) {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "port 81 not served {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_served("after setportopt");
    let state = |h: &str| {
        std::fs::read_to_string(format!("/run/hydranet/lab-{}/{h}.toml.state", lab.name))
            .unwrap_or_default()
    };
    for h in ["h1", "h2"] {
        let kept = state(h);
        assert_eq!(kept.lines().count(), 1, "{h}'s state file: {kept}");
        assert!(kept.contains("198.19.0.10:81"), "{h}'s state file: {kept}");
    }
    // Both hosts crash and come back with the config file alone naming port 80.
    for h in ["h1", "h2"] {
        lab.ctl("kill", h, &[]);
        lab.ctl("restart", h, &[]);
    }
    wait_served("after both hosts restarted");
    assert!(lab.fetches(80, 5, &www.sha256), "the config's own service");
    let status = hydractl()
        .args(["status", "--json", "--socket"])
        .arg(lab.socket("h1"))
        .output()
        .expect("run hydractl");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("198.19.0.10:81") && !text.contains("198.19.0.10:82"),
        "h1's status after its restart: {text}"
    );
    // setportopt named no detector or stall time: the host's defaults apply, defined in
    // one place (host-server's services.rs), not copied into hydractl.
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let svc = v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == "198.19.0.10:81"))
        .unwrap_or_else(|| panic!("no :81 in {v}"));
    assert_eq!(
        (&svc["hb_ms"], &svc["timeout_ms"], &svc["stall_ms"]),
        (
            &serde_json::json!(5),
            &serde_json::json!(25),
            &serde_json::json!(1000)
        ),
        "{svc}"
    );
}
