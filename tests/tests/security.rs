//! Forged, bit-flipped, truncated and replayed datagrams sent to each daemon's UDP port are
//! dropped and counted in /metrics, and the daemons keep serving.

use std::net::UdpSocket;
use std::os::fd::AsFd;

use ack_channel::{
    emit_exclusions, emit_progress, ClusterKey, Epoch, ExclusionEntry, Heartbeat, Incarnation,
    Member, MsgType, Receiver, ReplicaId, Sealer, ServiceId, View,
};
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
        let good = Sealer::new(key.clone(), ReplicaId(4242), Incarnation(1));
        let forger = Sealer::new(wrong.clone(), ReplicaId(1), Incarnation(u64::MAX / 2));
        // A valid datagram of a kind that changes nothing (not an IPv4 packet).
        let any = Receiver::GROUP;
        let valid = good.seal(
            MsgType::ToHost,
            ServiceId(0),
            Epoch(0),
            any,
            b"not a packet",
        );
        let mut flipped = good.seal(MsgType::ToHost, ServiceId(0), Epoch(0), any, b"flip me");
        flipped[60] ^= 0x01;
        let forged = forger.seal(MsgType::ToClient, ServiceId(0), Epoch(0), any, b"forged");
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

/// A daemon's life as its `/status` shows it.
fn life(lab: &Lab, node: &str) -> Incarnation {
    let st = lab.status(node);
    st["incarnation"]
        .as_str()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .map(Incarnation)
        .unwrap_or_else(|| panic!("{node} shows no incarnation: {st}"))
}

fn dropped(lab: &Lab, node: &str, reason: &str) -> u64 {
    metric(
        &lab.metrics(node),
        &format!("hydra_datagrams_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// Issue #12, findings 4 to 6: a datagram names its receiver in one life, so one sealed for
/// h1 is refused by h2 and one sealed before h2 restarted is refused after; only the
/// redirector's views are taken, from its current life; a heartbeat's address is the one
/// under its MAC, not the UDP source. Each datagram here is sealed with the cluster key, as
/// a recording of real traffic would be, by a node (9) that is not a member, so the lab's own
/// replay windows are left alone.
#[test]
fn datagrams_for_another_node_an_earlier_life_or_from_a_non_authority_are_refused() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("addr", 1 << 20, 0x5ec_0012);
    let lab = Lab::up("addr", 3, &www.backend_cmd(), &["--mode", "ft"]);
    let key = ClusterKey::load(&lab.key_file()).expect("lab key");
    let stranger = Sealer::new(key.clone(), ReplicaId(9), Incarnation(1));
    let svc = ServiceId::from_addr("198.19.0.10:80".parse().unwrap());
    let h2_addr = "198.18.2.2:7000";
    let epoch = |lab: &Lab| lab.status("redir")["views"][0]["epoch"].as_u64().unwrap();
    let h2_epoch = |lab: &Lab| lab.status("h2")["views"][0]["epoch"].as_u64().unwrap();
    let (h1, h2_old) = (life(&lab, "h1"), life(&lab, "h2"));
    let before_restart = Epoch(epoch(&lab));

    // Sealed for h1, delivered to h2.
    let for_h1 = stranger.seal(
        MsgType::Repair,
        svc,
        before_restart,
        Receiver::node(ReplicaId(1), h1),
        b"x",
    );
    // A view from a node that is not the redirector: h2 first, far in the future.
    let forged_view = View {
        members: vec![Member {
            id: ReplicaId(2),
            incarnation: h2_old,
            since: Epoch(before_restart.0 + 1000),
            addr: h2_addr.parse().unwrap(),
        }],
    };
    let not_authority = stranger.seal(
        MsgType::View,
        svc,
        Epoch(before_restart.0 + 1000),
        Receiver::node(ReplicaId(2), h2_old),
        &forged_view.emit(),
    );
    let (mis, auth) = (
        dropped(&lab, "h2", "misaddressed"),
        dropped(&lab, "h2", "not_authority"),
    );
    let seen = h2_epoch(&lab);
    send_from_client_ns(&lab, h2_addr, vec![for_h1, not_authority]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(dropped(&lab, "h2", "misaddressed"), mis + 1);
    assert_eq!(dropped(&lab, "h2", "not_authority"), auth + 1);
    assert_eq!(h2_epoch(&lab), seen, "h2 took a view from a host");

    // h2 restarts at once (the redirector has not noticed its death): a new life, which
    // joins the view at the end.
    let mut expected: Vec<String> = lab.members().into_iter().filter(|m| m != "h2").collect();
    expected.push("h2".into());
    lab.ctl("restart", "h2", &[]);
    let h2_new = life(&lab, "h2");
    assert!(
        h2_new > h2_old,
        "h2's new life {h2_new} is not newer than {h2_old}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(lab.members(), expected, "{}", lab.status("redir"));
    // Recorded before the restart: for h2's old life; for the view's members with an epoch
    // from before h2 joined; a view from the redirector's life before the current one.
    let for_old_life = stranger.seal(
        MsgType::Repair,
        svc,
        Epoch(epoch(&lab)),
        Receiver::node(ReplicaId(2), h2_old),
        b"x",
    );
    let old_group = stranger.seal(
        MsgType::Progress,
        svc,
        before_restart,
        Receiver::GROUP,
        &emit_progress(&[]),
    );
    let redirector_life = life(&lab, "redir");
    let old_redirector = Sealer::new(
        key.clone(),
        ReplicaId(0),
        Incarnation(redirector_life.0 - 1),
    );
    let old_view = old_redirector.seal(
        MsgType::View,
        svc,
        Epoch(epoch(&lab) + 1000),
        Receiver::node(ReplicaId(2), h2_new),
        &forged_view.emit(),
    );
    let stale = dropped(&lab, "h2", "stale");
    let seen = h2_epoch(&lab);
    send_from_client_ns(&lab, h2_addr, vec![for_old_life, old_group, old_view]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        dropped(&lab, "h2", "stale"),
        stale + 3,
        "{}",
        lab.metrics("h2")
    );
    assert_eq!(
        h2_epoch(&lab),
        seen,
        "h2 took a view of an earlier redirector"
    );

    // A heartbeat's address is its payload's. A stranger (node 77) claims h1's address on
    // another port, from the client's namespace: the redirector welcomes it there, and lists
    // it there once it names the redirector's life.
    let claimed = "198.18.1.2:7999";
    let newcomer = Sealer::new(key.clone(), ReplicaId(77), Incarnation(5));
    let hb = Heartbeat {
        addr: claimed.parse().unwrap(),
        services: vec![],
    }
    .emit();
    let welcomes = metric(
        &lab.metrics("redir"),
        "hydra_redirector_welcomes_sent_total",
    );
    let first = newcomer.seal(
        MsgType::Heartbeat,
        ServiceId(0),
        Epoch(0),
        Receiver::node(ReplicaId(0), Incarnation::UNKNOWN),
        &hb,
    );
    let second = newcomer.seal(
        MsgType::Heartbeat,
        ServiceId(0),
        Epoch(0),
        Receiver::node(ReplicaId(0), redirector_life),
        &hb,
    );
    send_from_client_ns(&lab, "198.18.0.1:7000", vec![first, second]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        metric(
            &lab.metrics("redir"),
            "hydra_redirector_welcomes_sent_total"
        ),
        welcomes + 1
    );
    let st = lab.status("redir");
    let listed = st["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["id"] == 77))
        .unwrap_or_else(|| panic!("node 77 not listed: {st}"));
    assert_eq!(listed["addr"], claimed, "{st}");

    // The service still answers, correctly.
    let out = lab.sh(
        "client",
        "curl -sS --fail --max-time 10 http://198.19.0.10/data.bin | sha256sum",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&www.sha256));
}

/// Issue #12, finding 1: who speaks for a connection is decided by the redirector alone, and
/// only a member of the view may ask it to exclude anyone. A node outside the view (sealing
/// with the cluster key, as a recording of real traffic would) asks to exclude the speaker of
/// a running download: the redirector refuses and counts it, and the download finishes
/// intact from the view's primary only.
#[test]
fn only_a_member_may_exclude_a_speaker_and_only_the_speaker_reaches_the_client() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let www = WebRoot::new("spk", 6 << 20, 0x5ec_0013);
    let lab = Lab::up(
        "spk",
        3,
        &www.paced_backend_cmd(3_000_000),
        &["--mode", "ft"],
    );
    let client = lab.spawn_sh(
        "client",
        "curl -sS --fail --max-time 30 http://198.19.0.10/data.bin | sha256sum",
    );
    // The connection as the primary shows it.
    let primary = lab.primary();
    let mut conn = None;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let st = lab.status(&primary);
        if let Some(c) = st["connections"][0]["client"].as_str() {
            conn = Some(c.parse().expect("client address"));
            break;
        }
    }
    let client_addr = conn.expect("the download's connection never showed on the primary");
    let primary_id: u32 = primary[1..].parse().expect("node id");
    let key = ClusterKey::load(&lab.key_file()).expect("lab key");
    let stranger = Sealer::new(key, ReplicaId(9), Incarnation(1));
    let service = "198.19.0.10:80".parse().unwrap();
    let ask = emit_exclusions(&[ExclusionEntry {
        client: client_addr,
        service,
        members: vec![primary_id],
    }]);
    let redirector_life = life(&lab, "redir");
    let request = stranger.seal(
        MsgType::Exclude,
        ServiceId::from_addr(service),
        Epoch(0),
        Receiver::node(ReplicaId(0), redirector_life),
        &ask,
    );
    let refused = "hydra_redirector_exclusion_requests_total{outcome=\"refused_not_member\"}";
    let before = metric(&lab.metrics("redir"), refused);
    send_from_client_ns(&lab, "198.18.0.1:7000", vec![request]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let m = lab.metrics("redir");
    assert_eq!(metric(&m, refused), before + 1, "{m}");
    assert_eq!(metric(&m, "hydra_redirector_exclusion_records"), 0, "{m}");

    let out = client.wait_with_output().expect("wait for curl");
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&www.sha256));
    // Only the primary's packets reached the client.
    let st = lab.status("redir");
    for h in st["hosts"].as_array().expect("hosts") {
        let spoke = h["to_client_packets"].as_u64().unwrap_or(0);
        if h["id"].as_u64() == Some(u64::from(primary_id)) {
            assert!(spoke > 1000, "the primary sent {spoke} packets: {st}");
        } else {
            assert_eq!(spoke, 0, "a backup reached the client: {st}");
        }
    }
}
