//! The fault soak (`hydractl lab soak`) with a fresh seed each run: checked downloads,
//! uploads and redis sequences while a nemesis kills, restarts, partitions, heals and
//! impairs; it passes only with zero bytes lost or corrupted and zero resets.

use tests::*;

#[test]
fn soak_with_a_random_seed_loses_corrupts_and_resets_nothing() {
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
        "invariants: all held",
    ] {
        assert!(stdout.contains(line), "summary lacks {line:?}: {stdout}");
    }
}
