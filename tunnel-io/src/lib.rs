//! The tunnel's UDP socket I/O in batches, shared by `hydra-redirector` and `hydra-host`.
//!
//! Every hop of the data path carries one sealed datagram per IP packet (README, "The data
//! path"). A bulk transfer makes tens of thousands of them a second, and one `sendto` or
//! `recvfrom` each is a system call and a trip through the kernel's UDP stack per packet.
//! Linux carries a run of datagrams to one destination as one buffer:
//!
//! - **UDP GSO** (`UDP_SEGMENT`, Linux 4.18): one `sendmsg` hands the kernel a buffer of
//!   datagrams of one size (the last may be shorter), which it cuts as late as it can; between
//!   network namespaces on veth the run stays one packet all the way to the receiver.
//! - **UDP GRO** (`UDP_GRO`, Linux 5.0): a socket that turns it on gets such a run (or one the
//!   receiving stack coalesced) as one buffer plus its segment size, in one `recvmsg`.
//!
//! Each datagram in a run is still sealed on its own (its own header, counter and MAC), so the
//! receiver opens them one by one exactly as before: batching changes the system calls, not
//! the wire format. A receiver without GRO gets the datagrams one by one, so either side can
//! turn it on alone.
//!
//! [`Batcher`] collects sealed datagrams and sends each run with one system call, falling back
//! to one `sendto` per datagram where the kernel or the route refuses GSO. [`recv`] reads one
//! buffer and says how to cut it.

#![warn(missing_docs)]

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, sendto, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};

/// The most datagrams one GSO send may carry (`UDP_MAX_SEGMENTS` in Linux before 6.9).
pub const MAX_SEGMENTS: usize = 64;

/// The most payload bytes one UDP send may carry over IPv4 (65,535 less the IP and UDP
/// headers).
pub const MAX_RUN_BYTES: usize = 65_535 - 20 - 8;

/// What a send or a flush did, for the caller's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: u64,
    /// Datagrams lost to a send error (a full socket buffer, an unreachable route).
    pub failed: u64,
    /// System calls made.
    pub syscalls: u64,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, o: Sent) {
        self.datagrams += o.datagrams;
        self.failed += o.failed;
        self.syscalls += o.syscalls;
    }
}

/// Collects sealed datagrams for one destination at a time and sends each run of them with
/// one `sendmsg` and `UDP_SEGMENT`.
///
/// A run is datagrams of one size, to one destination, of which only the last may be shorter,
/// at most [`MAX_SEGMENTS`] of them and [`MAX_RUN_BYTES`] in all. [`Batcher::push`] sends the
/// run collected so far when the next datagram cannot join it; [`Batcher::flush`] sends
/// what is left. Call `flush` before the caller waits for events, or datagrams wait with it.
#[derive(Debug)]
pub struct Batcher {
    buf: Vec<u8>,
    dest: Option<SocketAddr>,
    stride: usize,
    count: usize,
    /// The last datagram was shorter than the stride: the run ends with it.
    closed: bool,
    gso: bool,
}

impl Default for Batcher {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Batcher {
    /// A batcher; with `gso` false every datagram goes out with its own `sendto` (for kernels
    /// or links that refuse GSO, and to compare).
    pub fn new(gso: bool) -> Self {
        Self {
            buf: Vec::with_capacity(MAX_RUN_BYTES),
            dest: None,
            stride: 0,
            count: 0,
            closed: false,
            gso,
        }
    }

    /// Whether runs go out with GSO (it turns itself off when the kernel refuses it).
    pub fn is_gso(&self) -> bool {
        self.gso
    }

    /// Datagrams waiting to be sent.
    pub fn pending(&self) -> usize {
        self.count
    }

    fn fits(&self, dest: SocketAddr, len: usize) -> bool {
        self.count == 0
            || (self.dest == Some(dest)
                && !self.closed
                && len <= self.stride
                && self.count < MAX_SEGMENTS
                && self.buf.len() + len <= MAX_RUN_BYTES)
    }

    /// Adds one sealed datagram for `dest`, first sending the run collected so far if this
    /// one cannot join it. An empty datagram is sent alone, at once.
    pub fn push(&mut self, sock: &impl AsFd, dest: SocketAddr, datagram: &[u8]) -> Sent {
        let mut sent = Sent::default();
        if !self.gso || datagram.is_empty() || datagram.len() > MAX_RUN_BYTES {
            sent += self.flush(sock);
            sent += send_one(sock, dest, datagram);
            return sent;
        }
        if !self.fits(dest, datagram.len()) {
            sent += self.flush(sock);
        }
        if self.count == 0 {
            self.dest = Some(dest);
            self.stride = datagram.len();
        } else if datagram.len() < self.stride {
            self.closed = true;
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        sent
    }

    /// Sends what has been collected.
    pub fn flush(&mut self, sock: &impl AsFd) -> Sent {
        let Some(dest) = self.dest else {
            return Sent::default();
        };
        let sent = if self.count == 1 {
            send_one(sock, dest, &self.buf)
        } else {
            self.send_run(sock, dest)
        };
        self.buf.clear();
        self.dest = None;
        self.count = 0;
        self.closed = false;
        sent
    }

    fn send_run(&mut self, sock: &impl AsFd, dest: SocketAddr) -> Sent {
        let n = self.count as u64;
        // INVARIANT: a run's stride is one datagram's length, at most MAX_RUN_BYTES < 65,536.
        let segment = u16::try_from(self.stride).expect("stride fits u16");
        let iov = [IoSlice::new(&self.buf)];
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        let addr = SockaddrStorage::from(dest);
        match sendmsg(
            sock.as_fd().as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        ) {
            Ok(_) => Sent {
                datagrams: n,
                failed: 0,
                syscalls: 1,
            },
            // A full buffer or a dead route loses the run, as it would lose the datagrams
            // one by one; the protocols above retransmit.
            Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ECONNREFUSED | Errno::ENETUNREACH) => {
                Sent {
                    datagrams: 0,
                    failed: n,
                    syscalls: 1,
                }
            }
            // The kernel or the device refuses GSO (EIO: no checksum offload on the route;
            // EINVAL: a segment larger than the path MTU, or no UDP_SEGMENT at all): send them
            // one by one, and stop trying where it can never work.
            Err(e) => {
                if matches!(e, Errno::EIO | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) {
                    self.gso = false;
                    tracing::warn!(%dest, error = %e, "the kernel refused UDP GSO; sending one datagram per system call to this destination from now on");
                }
                let mut sent = Sent {
                    syscalls: 1,
                    ..Sent::default()
                };
                for d in self.buf.chunks(self.stride) {
                    sent += send_one(sock, dest, d);
                }
                sent
            }
        }
    }
}

fn send_one(sock: &impl AsFd, dest: SocketAddr, datagram: &[u8]) -> Sent {
    let addr = SockaddrStorage::from(dest);
    let ok = sendto(sock.as_fd().as_raw_fd(), datagram, &addr, MsgFlags::empty()).is_ok();
    Sent {
        datagrams: u64::from(ok),
        failed: u64::from(!ok),
        syscalls: 1,
    }
}

/// Turns UDP GRO on for a socket: [`recv`] may then return runs of datagrams. Returns whether
/// the kernel took it (Linux 5.0 and later); without it every receive is one datagram.
pub fn enable_gro(sock: &impl AsFd) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// One receive: `len` bytes of the buffer hold datagrams of `stride` bytes each (the last may
/// be shorter), all from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// The size of each datagram in the buffer (`len` when it holds one).
    pub stride: usize,
    /// The sender.
    pub from: Option<SocketAddr>,
}

impl Received {
    /// The datagrams in `buf` (the buffer `recv` filled).
    pub fn datagrams<'a>(&self, buf: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        buf[..self.len.min(buf.len())].chunks(self.stride.max(1))
    }
}

/// Receives one datagram, or one run of them on a socket with GRO on. A datagram cut short by
/// a buffer too small is an error (`InvalidData`), never passed on. A non-blocking socket with
/// nothing to read gives `WouldBlock`.
pub fn recv(sock: &impl AsFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(i32);
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "datagram larger than the receive buffer",
        ));
    }
    let mut stride = msg.bytes;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c {
                if let Ok(s) = usize::try_from(s) {
                    if s > 0 {
                        stride = s;
                    }
                }
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        stride: stride.max(1),
        from: msg.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::V4(SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::V6(std::net::SocketAddrV6::from(*v6)))
                })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind rx");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind tx");
        let to = rx.local_addr().expect("addr");
        (rx, tx, to)
    }

    fn datagram(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i * 31 + k) as u8).collect()
    }

    /// Receives until `n` datagrams came; returns them and how many receives it took.
    fn drain(rx: &UdpSocket, n: usize) -> (Vec<Vec<u8>>, usize) {
        let mut buf = vec![0u8; 65_536];
        let mut got = Vec::new();
        let mut calls = 0;
        while got.len() < n && calls < 10 * n + 10 {
            let r = recv(rx, &mut buf).expect("receive");
            calls += 1;
            got.extend(r.datagrams(&buf).map(<[u8]>::to_vec));
        }
        (got, calls)
    }

    #[test]
    fn a_run_arrives_as_the_same_datagrams_with_or_without_gro() {
        for gro in [false, true] {
            let (rx, tx, to) = pair();
            if gro {
                assert!(enable_gro(&rx), "this kernel has UDP_GRO");
            }
            let mut b = Batcher::new(true);
            // 40 full datagrams, a short one that ends the run, then one more run of 3.
            let mut want: Vec<Vec<u8>> = (0..40).map(|i| datagram(i, 1400)).collect();
            want.push(datagram(40, 77));
            want.extend((41..44).map(|i| datagram(i, 900)));
            let mut sent = Sent::default();
            for d in &want {
                sent += b.push(&tx, to, d);
            }
            sent += b.flush(&tx);
            assert!(b.is_gso(), "loopback takes GSO");
            assert_eq!(sent.datagrams, 44);
            assert_eq!(sent.failed, 0);
            assert_eq!(sent.syscalls, 2, "one sendmsg per run");
            let (got, calls) = drain(&rx, want.len());
            assert_eq!(got, want);
            if gro {
                assert!(calls <= 2, "GRO hands a run over in one receive ({calls})");
            } else {
                assert_eq!(calls, 44);
            }
        }
    }

    #[test]
    fn runs_end_at_the_segment_limit_a_new_destination_and_a_longer_datagram() {
        let (rx1, tx, to1) = pair();
        let (rx2, _tx2, to2) = pair();
        let mut b = Batcher::new(true);
        let mut sent = Sent::default();
        for i in 0..MAX_SEGMENTS + 1 {
            sent += b.push(&tx, to1, &datagram(i, 100));
        }
        assert_eq!(sent.syscalls, 1, "the 65th datagram starts a new run");
        assert_eq!(b.pending(), 1);
        sent += b.push(&tx, to2, &datagram(0, 100));
        assert_eq!(b.pending(), 1, "a new destination starts a new run");
        sent += b.push(&tx, to2, &datagram(1, 101));
        assert_eq!(b.pending(), 1, "a longer datagram starts a new run");
        sent += b.flush(&tx);
        assert_eq!(sent.datagrams, MAX_SEGMENTS as u64 + 3);
        assert_eq!(drain(&rx1, MAX_SEGMENTS + 1).0.len(), MAX_SEGMENTS + 1);
        let (got, _) = drain(&rx2, 2);
        assert_eq!(got, vec![datagram(0, 100), datagram(1, 101)]);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_send() {
        let (rx, tx, to) = pair();
        let mut b = Batcher::new(false);
        let mut sent = Sent::default();
        for i in 0..5 {
            sent += b.push(&tx, to, &datagram(i, 500));
        }
        sent += b.flush(&tx);
        assert_eq!(sent.syscalls, 5);
        assert_eq!(drain(&rx, 5).0.len(), 5);
    }

    #[test]
    fn a_datagram_larger_than_the_buffer_is_refused_not_cut() {
        let (rx, tx, to) = pair();
        tx.send_to(&[7u8; 600], to).expect("send");
        let mut small = [0u8; 100];
        let e = recv(&rx, &mut small).expect_err("truncated");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
