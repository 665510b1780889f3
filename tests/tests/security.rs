//! Forged, bit-flipped, truncated and replayed datagrams sent to each daemon's UDP port are
//! dropped and counted in /metrics, and the daemons keep serving.

use std::net::UdpSocket;
use std::os::fd::AsFd;

use ack_channel::{ClusterKey, Epoch, MsgType, ReplicaId, Sealer, ServiceId};
use tests::*;

/// Sends datagrams from inside the client namespace (setns affects only this thread).
fn send_from_client_ns(lab: &Lab, target: &str, datagrams: Vec<Vec<u8>>) {
    let ns = format!("/run/netns/hn-{}-client", lab.name);
    let target = target.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open netns");
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for d in datagrams {
            s.send_to(&d, &target).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    })
    .join()
    .expect("sender thread");
}

#[test]
fn bad_datagrams_are_dropped_and_counted_and_service_continues() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("sec", 1 << 20, 3);
    let lab = Lab::up("sec", 2, &www.backend_cmd(), &[]);
    let key = ClusterKey::load(&lab.key_file()).expect("lab key");
    let wrong = ClusterKey::generate().unwrap();
    for (node, addr) in [("redir", "198.18.0.1:7000"), ("h1", "198.18.1.2:7000")] {
        let before = lab.metrics(node);
        let good = Sealer::new(key.clone(), ReplicaId(4242), 1);
        let forger = Sealer::new(wrong.clone(), ReplicaId(1), u64::MAX / 2);
        // A valid datagram of a kind that changes nothing (not an IPv4 packet).
        let valid = good.seal(MsgType::ToHost, ServiceId(0), Epoch(0), b"not a packet");
        let mut flipped = good.seal(MsgType::ToHost, ServiceId(0), Epoch(0), b"flip me");
        flipped[40] ^= 0x01;
        let forged = forger.seal(MsgType::ToClient, ServiceId(0), Epoch(0), b"forged");
        let truncated = valid[..20].to_vec();
        let garbage = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        send_from_client_ns(
            &lab,
            addr,
            vec![forged, flipped, truncated, garbage, valid.clone(), valid],
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = lab.metrics(node);
        let delta = |name: &str| metric(&after, name) - metric(&before, name);
        assert_eq!(
            delta("hydra_datagrams_dropped_total{reason=\"bad_mac\"}"),
            2,
            "{node}: {after}"
        );
        assert_eq!(
            delta("hydra_datagrams_dropped_total{reason=\"malformed\"}"),
            2,
            "{node}: {after}"
        );
        assert_eq!(
            delta("hydra_datagrams_dropped_total{reason=\"replay\"}"),
            1,
            "{node}: {after}"
        );
    }
    // Both daemons are alive and the service still answers correctly.
    let out = lab.sh(
        "client",
        "curl -sS --fail --max-time 10 http://198.19.0.10/data.bin | sha256sum",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&www.sha256));
}
