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
