//! `hydractl lab flood`: a SYN flood at the lab's service, from the client namespace.
//!
//! A thread enters the client namespace (setns affects only that thread), opens a raw IPv4
//! socket and sends TCP SYNs to 198.19.0.10:PORT that look like a real client's (MSS 1460,
//! SACK permitted, window scale) from random addresses in 198.18.128.0/17 and random ports,
//! paced to the rate in batches every millisecond. Nothing answers those addresses: the
//! SYN-ACKs die in the lab, as they would on the internet.
//!
//! The spoofed sources pass the redirector: its namespace has rp_filter off and forwards
//! anything for 198.19.0.0/16 into its TUN, whatever the source (see `net::create_topology`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etherparse::{IpNumber, Ipv4Header, TcpHeader, TcpOptionElement};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
};

use super::rng::{rng, Rng};
use super::{LabState, Node};

/// Highest `--rate`: enough to load the data path, low enough not to swamp the machine.
pub(super) const MAX_RATE: u64 = 200_000;
/// Longest `--seconds`.
pub(super) const MAX_SECONDS: u64 = 120;
/// How often the sender wakes to send the SYNs that came due.
const TICK: Duration = Duration::from_millis(1);
/// Most SYNs one tick sends: 10 ms at the rate, so a sender that fell behind (a busy
/// machine, a full queue) catches up gradually instead of in one burst.
const CATCH_UP: Duration = Duration::from_millis(10);

/// What `lab flood` was asked to do.
pub(super) struct FloodArgs {
    pub rate: u64,
    pub seconds: u64,
    pub port: u16,
    /// The address flooded (a lab address: the caller checks).
    pub to: Ipv4Addr,
    pub seed: u64,
}

/// What it did.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// SYNs the kernel took.
    pub sent: u64,
    /// SYNs the client namespace's firewall refused (`lab partition client`).
    pub refused: u64,
    /// Times the client link's queue was full (the sender waited for the next tick).
    pub full: u64,
    /// `sent` over the time from the first to the last send, rounded.
    pub pps: u64,
}

/// Refuses a rate or a duration outside what `lab flood` allows, saying what is allowed.
pub(super) fn check_limits(rate: u64, seconds: u64) -> Result<()> {
    if !(1..=MAX_RATE).contains(&rate) {
        bail!("--rate {rate} is out of range: give 1 to {MAX_RATE} SYNs per second");
    }
    if !(1..=MAX_SECONDS).contains(&seconds) {
        bail!("--seconds {seconds} is out of range: give 1 to {MAX_SECONDS}");
    }
    Ok(())
}

/// Floods the lab's service from its client namespace; returns once the last SYN is sent.
pub(super) fn flood(lab: &LabState, a: &FloodArgs) -> Result<Report> {
    check_limits(a.rate, a.seconds)?;
    let ns_path = Path::new("/run/netns").join(lab.ns(&Node::Client));
    let ns = File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
    let result = thread::scope(|s| {
        s.spawn(|| -> Result<Report> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", ns_path.display()))?;
            // IPPROTO_RAW implies IP_HDRINCL (raw(7)): we write the IP header, spoofed
            // source included; the kernel fills in the total length and checksum.
            let sock = socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Raw,
            )
            .context("opening a raw IPv4 socket in the client namespace")?;
            send_paced(sock.as_raw_fd(), a)
        })
        .join()
    });
    result.map_err(|_| anyhow!("the flood thread for lab {} panicked", lab.name))?
}

/// Sends `rate` SYNs a second for `seconds` on raw socket `fd`, stopping after `seconds`
/// (and at most one tick) even when it could not keep up.
fn send_paced(fd: std::os::fd::RawFd, a: &FloodArgs) -> Result<Report> {
    let dst = a.to;
    let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
    let mut rng = rng(a.seed);
    let mut buf = Vec::with_capacity(64);
    let total = a.rate * a.seconds;
    let per_tick = (a.rate * CATCH_UP.as_millis() as u64 / 1000).max(1);
    let mut report = Report::default();
    // SYNs handed to the kernel, whether it took them or its firewall refused them.
    let mut done = 0u64;
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut last_send = start;
    loop {
        let now = Instant::now();
        let elapsed = now.min(end).duration_since(start);
        let due = (u128::from(a.rate) * elapsed.as_nanos() / 1_000_000_000) as u64;
        let due = due.min(total).min(done + per_tick);
        while done < due {
            buf.clear();
            write_syn(&mut buf, &mut rng, dst, a.port);
            match sendto(fd, &buf, &to, MsgFlags::MSG_DONTWAIT) {
                Ok(_) => {
                    report.sent += 1;
                    done += 1;
                    last_send = Instant::now();
                }
                // A netfilter drop in the client namespace.
                Err(Errno::EPERM) => {
                    report.refused += 1;
                    done += 1;
                }
                // The link's queue is full: try again next tick.
                Err(Errno::ENOBUFS | Errno::EAGAIN) => {
                    report.full += 1;
                    break;
                }
                Err(e) => {
                    return Err(e).context(format!("sending a SYN to {dst}:{}", a.port));
                }
            }
        }
        // The duration is the contract: a sender that fell behind stops on time all the
        // same, and `sent` and `pps` show the shortfall.
        if done >= total || now >= end {
            break;
        }
        thread::sleep(TICK);
    }
    let took = last_send.duration_since(start).as_secs_f64();
    report.pps = if took > 0.0 {
        (report.sent as f64 / took).round() as u64
    } else {
        report.sent
    };
    Ok(report)
}

/// Appends one IPv4 + TCP SYN to `dst:port` from a random address in 198.18.128.0/17 and a
/// random port, with the options a Linux client sends (MSS, SACK permitted, window scale).
fn write_syn(buf: &mut Vec<u8>, rng: &mut Rng, dst: Ipv4Addr, port: u16) {
    let r = rng.next();
    let src = spoofed_source(r);
    let sport = 1024 + (r >> 32) as u16 % (u16::MAX - 1024);
    let mut tcp = TcpHeader::new(sport, port, (r >> 16) as u32, 64240);
    tcp.syn = true;
    // INVARIANT: 12 bytes of options fit the 40 a TCP header holds.
    tcp.set_options(&[
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ])
    .expect("syn options fit");
    // INVARIANT: a TCP header is at most 60 bytes, far below the IPv4 payload limit.
    let mut ip = Ipv4Header::new(
        tcp.header_len_u16(),
        64,
        IpNumber::TCP,
        src.octets(),
        dst.octets(),
    )
    .expect("syn fits an ipv4 packet");
    ip.dont_fragment = true;
    ip.identification = rng.next() as u16;
    ip.header_checksum = ip.calc_header_checksum();
    // INVARIANT: as above, the segment is far below the checksum's length limit.
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, &[]).expect("syn length");
    buf.extend_from_slice(&ip.to_bytes());
    buf.extend_from_slice(&tcp.to_bytes());
}

/// An address in 198.18.128.0/17 from random bits, never the block's first or last.
fn spoofed_source(r: u64) -> Ipv4Addr {
    // 15 host bits, 1 ..= 2^15 - 2.
    let host = 1 + (r as u32 & 0x7fff) % 0x7ffe;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) | host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    #[test]
    fn syn_parses_as_a_client_syn_from_the_flood_block() {
        let mut rng = rng(7);
        let dst: Ipv4Addr = crate::lab::SERVICE_IP.parse().unwrap();
        for _ in 0..1000 {
            let mut buf = Vec::new();
            write_syn(&mut buf, &mut rng, dst, 80);
            let p = SlicedPacket::from_ip(&buf).unwrap();
            let Some(NetSlice::Ipv4(ip)) = p.net else {
                panic!("not ipv4")
            };
            let h = ip.header();
            assert_eq!(h.destination_addr(), dst);
            let src = h.source_addr();
            assert_eq!(
                u32::from(src) >> 15,
                u32::from(Ipv4Addr::new(198, 18, 128, 0)) >> 15
            );
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            let Some(TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("not tcp")
            };
            assert!(tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin());
            assert_eq!(tcp.destination_port(), 80);
            assert!(tcp.source_port() >= 1024);
            assert_eq!(
                tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
                tcp.checksum()
            );
            let opts: Vec<_> = tcp.options_iterator().map(|o| o.unwrap()).collect();
            assert!(opts.contains(&TcpOptionElement::MaximumSegmentSize(1460)));
            assert!(opts.contains(&TcpOptionElement::WindowScale(7)));
        }
    }

    #[test]
    fn spoofed_sources_stay_inside_the_block_and_off_its_ends() {
        for r in [0, 1, 0x7ffe, 0x7fff, 0x8000, u64::MAX] {
            let a = spoofed_source(r).octets();
            assert_eq!(a[..2], [198, 18]);
            assert!(a[2] >= 128, "{a:?}");
            assert_ne!(a, [198, 18, 128, 0]);
            assert_ne!(a, [198, 18, 255, 255]);
        }
    }

    #[test]
    fn limits_are_refused_with_the_allowed_range() {
        assert!(check_limits(20_000, 10).is_ok());
        let e = check_limits(MAX_RATE + 1, 1).unwrap_err().to_string();
        assert!(e.contains("200000"), "{e}");
        let e = check_limits(1, MAX_SECONDS + 1).unwrap_err().to_string();
        assert!(e.contains("120"), "{e}");
        assert!(check_limits(0, 1).is_err());
        assert!(check_limits(1, 0).is_err());
    }
}
