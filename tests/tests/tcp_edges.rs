//! TCP edges with hand-made segments (issue #10, defects 2 and 3), each checked against
//! Linux's own TCP answering the same segments.
//!
//! A kernel-TCP client in the lab's client namespace talks to redis through HydraNet (ft3)
//! and, as the baseline, to a plain redis on h1's own address (Linux's TCP, no HydraNet).
//! A raw socket beside it watches every segment that arrives and injects forged ones into
//! the client's connection: an RST in the window but not at the expected sequence number,
//! a SYN, a data segment with a bad checksum, and finally an exact RST. RFC 5961 and
//! Linux's answers: a challenge ACK for the first two and the connection lives on; the
//! damaged segment is ignored; the exact RST ends the connection and later data from the
//! client gets an RST.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use tests::*;

/// What one target did with the forged segments.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    challenge_for_inexact_rst: bool,
    alive_after_inexact_rst: bool,
    challenge_for_syn: bool,
    alive_after_syn: bool,
    alive_after_bad_checksum: bool,
    reset_after_exact_rst: bool,
}

const LINUX: Outcome = Outcome {
    challenge_for_inexact_rst: true,
    alive_after_inexact_rst: true,
    challenge_for_syn: true,
    alive_after_syn: true,
    alive_after_bad_checksum: true,
    reset_after_exact_rst: true,
};

/// Incoming TCP segments of one connection, seen by a raw socket.
struct Watch {
    rx: OwnedFd,
    tx: OwnedFd,
    local: SocketAddrV4,
    remote: SocketAddrV4,
}

/// (seq, ack, flags byte) of a segment.
type Seen = (u32, u32, u8);

impl Watch {
    /// Segments from the server to `local` arriving within `wait`.
    fn collect(&self, wait: Duration) -> Vec<Seen> {
        let end = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while Instant::now() < end {
            let n = match recv(self.rx.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            };
            let Ok(p) = SlicedPacket::from_ip(&buf[..n]) else {
                continue;
            };
            let (Some(etherparse::NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) =
                (p.net, p.transport)
            else {
                continue;
            };
            let src = SocketAddrV4::new(ip.header().source_addr(), t.source_port());
            let dst = SocketAddrV4::new(ip.header().destination_addr(), t.destination_port());
            if src == self.remote && dst == self.local {
                let flags = t.slice()[13];
                out.push((t.sequence_number(), t.acknowledgment_number(), flags));
            }
        }
        out
    }

    /// Sends a forged segment from the client's 4-tuple.
    fn inject(&self, seq: u32, ack: Option<u32>, flags: &str, payload: &[u8], bad_csum: bool) {
        let b = PacketBuilder::ipv4(self.local.ip().octets(), self.remote.ip().octets(), 64).tcp(
            self.local.port(),
            self.remote.port(),
            seq,
            502,
        );
        let b = if flags.contains('S') { b.syn() } else { b };
        let b = if flags.contains('R') { b.rst() } else { b };
        let b = if flags.contains('P') { b.psh() } else { b };
        let b = match ack {
            Some(a) => b.ack(a),
            None => b,
        };
        let mut p = Vec::new();
        b.write(&mut p, payload).expect("build segment");
        if bad_csum {
            let at = 20 + 16; // the TCP checksum
            p[at] ^= 0x5a;
        }
        let to = SockaddrIn::from(self.remote);
        sendto(self.tx.as_raw_fd(), &p, &to, MsgFlags::empty()).expect("inject segment");
    }
}

fn ping(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Runs the forged-segment script against `remote` (run inside the client namespace).
fn probe(remote: SocketAddrV4) -> Outcome {
    let rx = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::Tcp,
    )
    .expect("raw tcp socket (root)");
    let tx = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::empty(),
        SockProtocol::Raw,
    )
    .expect("raw socket (root)");
    let _ = setsockopt(&rx, sockopt::RcvBuf, &(4 << 20));
    let mut s = TcpStream::connect_timeout(&remote.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {remote}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let std::net::SocketAddr::V4(local) = s.local_addr().expect("local addr") else {
        panic!("ipv4 only");
    };
    let w = Watch {
        rx,
        tx,
        local,
        remote,
    };
    // The SYN-ACK tells the client's ISN (its ack minus one).
    let synack = w
        .collect(Duration::from_millis(300))
        .into_iter()
        .find(|&(_, _, f)| f & 0x12 == 0x12)
        .expect("saw the SYN-ACK");
    let client_isn = synack.1.wrapping_sub(1);
    assert!(ping(&mut s), "first PING through {remote}");
    let mut next = client_isn.wrapping_add(1 + 6);
    let server_next = |seen: &[Seen]| seen.iter().map(|x| x.0).max();
    let acks = w.collect(Duration::from_millis(100));
    let their_seq = server_next(&acks).unwrap_or(synack.0.wrapping_add(1 + 7));
    let is_challenge =
        |seen: &[Seen], at: u32| seen.iter().any(|&(_, a, f)| f & 0x14 == 0x10 && a == at);

    // 1. An RST in the window but 100 bytes off: a challenge ACK, the connection lives.
    w.inject(next.wrapping_add(100), None, "R", &[], false);
    let seen = w.collect(Duration::from_millis(300));
    let challenge_for_inexact_rst = is_challenge(&seen, next);
    let alive_after_inexact_rst = ping(&mut s);
    next = next.wrapping_add(6);
    // Linux sends at most one challenge ACK per connection per 500 ms.
    std::thread::sleep(Duration::from_millis(600));

    // 2. A SYN on the open connection: a challenge ACK, the connection lives.
    w.inject(0x1234_5678, None, "S", &[], false);
    let seen = w.collect(Duration::from_millis(300));
    let challenge_for_syn = is_challenge(&seen, next);
    let alive_after_syn = ping(&mut s);
    next = next.wrapping_add(6);

    // 3. PING at exactly the next sequence number, with a bad checksum: ignored. Had it been
    // taken, the server would expect the client's next PING 6 bytes later and its answer
    // would not come back as one clean PONG.
    w.inject(next, Some(their_seq), "PA", b"PING\r\n", true);
    std::thread::sleep(Duration::from_millis(100));
    let alive_after_bad_checksum = ping(&mut s);
    next = next.wrapping_add(6);

    // 4. An RST at exactly the next sequence number: the connection is over, and the
    // client's next data gets an RST.
    w.inject(next, None, "R", &[], false);
    std::thread::sleep(Duration::from_millis(200));
    let _ = s.write_all(b"PING\r\n");
    let mut buf = [0u8; 7];
    let reset_after_exact_rst =
        matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
    Outcome {
        challenge_for_inexact_rst,
        alive_after_inexact_rst,
        challenge_for_syn,
        alive_after_syn,
        alive_after_bad_checksum,
        reset_after_exact_rst,
    }
}

#[test]
fn forged_rst_syn_and_damaged_segments_are_handled_as_linux_does() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let lab = Lab::up("edge", 3, REDIS_BACKEND, &["--mode", "ft"]);
    // The baseline: a plain redis on h1's own address, reached by plain routing.
    let mut linux_redis = hydractl()
        .args(["lab", "exec", "--name", &lab.name, "h1", "--"])
        .args(["redis-server", "--port", "9091", "--bind", "198.18.1.2"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the baseline redis");
    std::thread::sleep(Duration::from_millis(500));
    let linux = lab
        .in_ns("client", || {
            probe(SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 9091))
        })
        .join()
        .expect("linux probe");
    let ft = lab
        .in_ns("client", || {
            probe(SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80))
        })
        .join()
        .expect("ft probe");
    // `lab down` ends the redis itself; this ends `lab exec`.
    let _ = linux_redis.kill();
    let _ = linux_redis.wait();
    let primary = lab.primary();
    // Redirect mode, on a lab of its own.
    let rd = Lab::up("edgr", 1, REDIS_BACKEND, &["--mode", "redirect"]);
    let redirect = rd
        .in_ns("client", || {
            probe(SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80))
        })
        .join()
        .expect("redirect probe");
    println!("linux:    {linux:?}\nft3:      {ft:?}\nredirect: {redirect:?}");
    assert_eq!(
        linux, LINUX,
        "the baseline itself (Linux's TCP) answered otherwise"
    );
    assert_eq!(
        ft, linux,
        "HydraNet ft3 must answer the forged segments as Linux does"
    );
    assert_eq!(
        redirect, linux,
        "HydraNet redirect mode must answer as Linux does"
    );
    let m = lab.metrics(&primary);
    assert!(metric(&m, "hydra_challenge_acks_total") >= 2, "{m}");
    assert!(
        metric(&m, "hydra_packets_dropped_total{reason=\"bad_checksum\"}") >= 1,
        "{m}"
    );
}

/// A server that speaks first: it sends a banner on every connection and closes.
const BANNER_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
while True:
    c, _ = s.accept()
    c.sendall(b"220 hydranet says hello\r\n")
    c.close()
"#;

/// Connects from the lab's client namespace and reads the banner: what came, and when.
fn banner_from(lab: &Lab, to: SocketAddrV4) -> (Vec<u8>, Duration) {
    lab.in_ns("client", move || {
        let t = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(8)))
            .expect("read timeout");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        (got, t.elapsed())
    })
    .join()
    .expect("banner client")
}

/// Hosts answer every SYN with a SYN cookie and keep nothing, so the client's handshake ACK
/// alone opens the connection. When it is lost and the server speaks first (SMTP, MySQL, a
/// streamer's banner), the client waits for bytes that would never come. Linux (cookies only
/// when its SYN queue overflows) sends its SYN-ACK again after 1 s, and the client's answer
/// opens the connection; HydraNet must do the same. The client namespace drops the
/// client's handshake ACK (its second packet) to both: Linux's TCP on h1's own address, and
/// the ft3 service.
#[test]
fn a_lost_handshake_ack_delays_a_server_first_banner_as_long_as_on_linux() {
    if !netns_or_skip() {
        return;
    }
    let _one_at_a_time = serial();
    let script = std::env::temp_dir().join(format!("hn-banner-{}.py", std::process::id()));
    std::fs::write(&script, BANNER_PY).expect("write the banner server");
    let py = script.display().to_string();
    let lab = Lab::up(
        "syna",
        3,
        &format!("exec python3 {py} 127.0.0.1 8080"),
        &["--mode", "ft"],
    );
    let mut linux_server = lab.spawn_sh("h1", &format!("exec python3 {py} 198.18.1.2 9092"));
    let linux_addr = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 9092);
    let ft_addr = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 80);
    let rules = "sysctl -qw net.netfilter.nf_conntrack_acct=1 && \
        nft add table inet hn_test && \
        nft add chain inet hn_test out '{ type filter hook output priority 0; }' && \
        nft add rule inet hn_test out ip daddr 198.18.1.2 tcp dport 9092 tcp flags == ack ct original packets 2 counter drop && \
        nft add rule inet hn_test out ip daddr 198.19.0.10 tcp dport 80 tcp flags == ack ct original packets 2 counter drop";
    let out = lab.sh("client", rules);
    assert!(out.status.success(), "nft rules: {}", show(&out));
    // The baseline server needs a moment to listen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab
        .sh("h1", "ss -ltn | grep -q 198.18.1.2:9092")
        .status
        .code()
        != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "the baseline banner server never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let banner = b"220 hydranet says hello\r\n".to_vec();
    let (linux_got, linux_took) = banner_from(&lab, linux_addr);
    let primary = lab.primary();
    let resent_before = metric(
        &lab.metrics(&primary),
        "hydra_synack_retries_total{result=\"resent\"}",
    );
    let (ft_got, ft_took) = banner_from(&lab, ft_addr);
    let resent = metric(
        &lab.metrics(&primary),
        "hydra_synack_retries_total{result=\"resent\"}",
    ) - resent_before;
    let counters = lab.sh("client", "nft list table inet hn_test");
    let _ = linux_server.kill();
    let _ = linux_server.wait();
    let _ = std::fs::remove_file(&script);
    let listing = String::from_utf8_lossy(&counters.stdout).to_string();
    println!("linux: {linux_took:?}, ft3: {ft_took:?}, SYN-ACKs resent {resent}\n{listing}");
    assert_eq!(
        listing.matches("counter packets 1 ").count(),
        2,
        "each handshake ACK must have been dropped once:\n{listing}"
    );
    assert_eq!(
        linux_got, banner,
        "the baseline (Linux's TCP) sent no banner"
    );
    assert_eq!(ft_got, banner, "ft3 sent no banner: the connection hung");
    assert!(resent >= 1, "the primary resent no SYN-ACK");
    // Both wait for the SYN-ACK's 1 s timer; slack for a loaded machine.
    assert!(
        ft_took < linux_took + Duration::from_millis(1500),
        "ft3 took {ft_took:?}, Linux {linux_took:?}"
    );
}
