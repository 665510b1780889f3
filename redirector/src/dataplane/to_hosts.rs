//! Client to hosts: TUN reads (super-segments split when the TUN offloads), the routing
//! decision, and the datagrams to each host sealed and sent in runs (UDP GSO).

use super::*;

/// Datagrams collected per host during one TUN read, sent in runs (UDP GSO).
#[derive(Debug, Default)]
pub(super) struct PerHost(Vec<(SocketAddr, tunnel_io::Batcher)>);

impl PerHost {
    pub(super) fn push(
        &mut self,
        udp: &UdpSocket,
        to: SocketAddr,
        datagram: &[u8],
        gso: bool,
    ) -> Sent {
        let i = match self.0.iter().position(|(a, _)| *a == to) {
            Some(i) => i,
            None => {
                self.0.push((to, tunnel_io::Batcher::new(gso)));
                self.0.len() - 1
            }
        };
        self.0[i].1.push(udp, to, datagram)
    }

    pub(super) fn flush(&mut self, udp: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        for (_, b) in &mut self.0 {
            sent += b.flush(udp);
        }
        // A host that left keeps no batcher.
        if self.0.len() > 16 {
            self.0.clear();
        }
        sent
    }
}

pub(super) fn count_sent(m: &RedirMetrics, sent: Sent) {
    m.datagrams_out.add(sent.datagrams);
    m.send_calls.add(sent.syscalls);
    if sent.failed > 0 {
        m.send_errors.add(sent.failed);
        tracing::trace!(lost = sent.failed, "tunnel send failed");
    }
}

/// Client packets from the TUN to the hosts. With offload, one read may be a TCP
/// super-segment of up to 64 KiB from the client's kernel, cut here into segments of its MSS;
/// each goes to its hosts in its own sealed datagram, and the datagrams for one host leave in
/// one run.
pub(super) fn to_hosts(tun: &SyncDevice, udp: &UdpSocket, shared: &Shared, opts: DataOpts) {
    let sealer = &shared.sealer;
    let m = &shared.metrics;
    let mut original = vec![0u8; HEADROOM + 65535];
    let mut bufs = vec![vec![0u8; HEADROOM + opts.mtu.max(1500)]; tun_rs::IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
    let mut out = Vec::with_capacity(2048);
    let mut per_host = PerHost::default();
    loop {
        let n = match tun.recv_multiple(&mut original, &mut bufs, &mut sizes, HEADROOM) {
            Ok(n) => n,
            Err(e) => {
                // A malformed super-segment is refused whole; an error of the device itself
                // (it has an OS error code) may repeat, so do not spin on it.
                m.tun_read_errors.inc();
                if e.raw_os_error().is_some() {
                    tracing::warn!(error = %e, "tun read failed");
                    std::thread::sleep(Duration::from_millis(10));
                } else {
                    tracing::debug!(error = %e, "malformed packet from the tun refused");
                }
                continue;
            }
        };
        m.tun_reads.inc();
        for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
            m.tun_in.inc();
            let packet = &buf[HEADROOM..HEADROOM + len];
            let Ok(meta) = TcpMeta::parse(packet) else {
                m.not_tcp.inc();
                continue;
            };
            let route = lock(shared).route_inbound(clock(), &meta);
            match route {
                Route::Host(id, incarnation, addr) => {
                    sealer.seal_into(
                        MsgType::ToHost,
                        ServiceId::from_addr(meta.dst),
                        Epoch(0),
                        Receiver::node(id, incarnation),
                        packet,
                        &mut out,
                    );
                    count_sent(m, per_host.push(udp, addr, &out, opts.udp_gso));
                }
                Route::Members(epoch, addrs) => {
                    // One seal for all members: each host keeps its own replay window, and
                    // takes a group datagram only with an epoch of a view that names it.
                    sealer.seal_into(
                        MsgType::ToHost,
                        ServiceId::from_addr(meta.dst),
                        epoch,
                        Receiver::GROUP,
                        packet,
                        &mut out,
                    );
                    for addr in addrs {
                        count_sent(m, per_host.push(udp, addr, &out, opts.udp_gso));
                    }
                }
                Route::NoService => m.no_service.inc(),
                Route::NoLiveHost => m.no_live_host.inc(),
            }
        }
        count_sent(m, per_host.flush(udp));
    }
}
