//! The video failover demo, shortened: every frame arrives with the right md5 across two
//! primary kills, and the nginx contrast run breaks at its kill.

use std::process::Command;

use tests::*;

#[test]
fn demo_plays_every_frame_across_two_primary_kills() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let out = std::env::temp_dir().join(format!("hn-demo-{}", std::process::id()));
    let run = Command::new(bin("hydra-demo"))
        .args(["--seconds", "12", "--out"])
        .arg(&out)
        .output()
        .expect("run hydra-demo");
    let report: serde_json::Value = std::fs::read_to_string(out.join("demo.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let png = out.join("demo-timeline.png");
    let png_ok = std::fs::metadata(&png)
        .map(|m| m.len() > 10_000)
        .unwrap_or(false);
    let _ = std::fs::remove_dir_all(&out);
    assert!(run.status.success(), "hydra-demo failed: {}", show(&run));
    let sent = report["frames_sent"].as_u64().unwrap_or(0);
    assert_eq!(sent, 360, "{report}");
    assert_eq!(report["hydranet"]["frames_played"], sent, "{report}");
    assert_eq!(report["hydranet"]["frames_matching"], sent, "{report}");
    assert_eq!(
        report["hydranet"]["kills"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    let nginx = report["nginx"]["frames_played"].as_u64().unwrap_or(sent);
    assert!(
        nginx < sent,
        "the nginx contrast run did not break: {report}"
    );
    assert!(png_ok, "no timeline PNG");
}
