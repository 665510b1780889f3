//! The fault soak (`hydractl lab soak`) with a fresh seed each run, two services (files on
//! port 80, redis on 6379): checked downloads, uploads and redis sequences while a nemesis
//! kills, restarts (also at once, within the detector's timeout), partitions, heals and
//! impairs; it passes only with no failed operation (indeterminate ones only with the allowed
//! faults as reason), zero bytes lost or corrupted, zero resets, and the live redis replicas
//! equal per era (keys one connection wrote, and the list and counter every connection of an
//! era shares, whose values depend on the order across connections).
//!
//! CI runs it twice: redis in per-connection order (the default) and in total order, where
//! the replicas' whole redis state is compared per era (issue #12).

use tests::*;

#[test]
fn soak_with_a_random_seed_fails_no_operation_and_keeps_redis_replicas_equal() {
    soak(&["--redis-order", "none"]);
}

#[test]
fn soak_with_redis_in_total_order() {
    soak(&["--redis-order", "total"]);
}

fn soak(extra: &[&str]) {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let seconds: u64 = std::env::var("HYDRA_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let name = unique_name("soak");
    let out = hydractl()
        .args([
            "lab",
            "soak",
            "--name",
            &name,
            "--seconds",
            &seconds.to_string(),
        ])
        .args(extra)
        .output()
        .expect("run hydractl lab soak");
    let text = show(&out);
    // The summary (and the seed to replay) shows in the test log either way.
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        namespaces_of(&name).is_empty(),
        "the soak left namespaces behind"
    );
    assert!(out.status.success(), "soak failed: {text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "bytes lost: 0\n",
        "bytes corrupted: 0\n",
        "resets seen: 0\n",
        "fast restarts on",
        "invariants: all held",
    ] {
        assert!(stdout.contains(line), "summary lacks {line:?}: {stdout}");
    }
    let ops = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("operations:"))
        .unwrap_or_else(|| panic!("no operations line: {stdout}"));
    assert!(ops.contains(" 0 failed"), "{ops}");
    // The redis replicas were compared (per era; the final, fault-free era always has at
    // least two live hosts).
    let redis = stdout
        .lines()
        .find(|l| l.contains("eras compared"))
        .unwrap_or_else(|| panic!("no redis comparison in the summary: {stdout}"));
    assert!(!redis.contains(" 0 eras compared"), "{redis}");
    // Every indeterminate operation names the allowed fault it overlapped.
    for l in stdout.lines().filter(|l| l.contains("indeterminate: ")) {
        assert!(
            l.contains("impaired client")
                || l.contains("every replica that held it failed")
                || l.contains("more not shown"),
            "{l}"
        );
    }
}
