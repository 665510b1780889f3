//! The tunnel's I/O: datagrams from the redirector and the members in runs (UDP GRO), to the
//! redirector in runs (UDP GSO), to the members one at a time; sealing; counting what left.

use super::*;

pub(super) fn resize_socket_buffers(udp: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    const WANT: usize = 8 << 20;
    // The Force variants pass net.core.*mem_max as root; fall back quietly otherwise.
    if setsockopt(udp, sockopt::RcvBufForce, &WANT).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &WANT);
    }
    if setsockopt(udp, sockopt::SndBufForce, &WANT).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &WANT);
    }
}

impl Dataplane {
    pub(super) fn drain_udp(&mut self, buf: &mut [u8], dirty: &mut Vec<usize>) {
        for _ in 0..RECV_BATCH {
            // One datagram, or a run of them from a GSO send (tunnel-io).
            let got = match tunnel_io::recv(&self.udp, buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.shared.metrics.dropped_malformed.inc();
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            self.shared.metrics.recv_calls.inc();
            for datagram in got.datagrams(buf) {
                self.on_datagram(datagram, dirty);
            }
        }
        // More may be waiting: mio is edge-triggered, so come back at once.
        let _ = self
            .poll
            .registry()
            .reregister(&mut self.udp, UDP, Interest::READABLE);
    }

    pub(super) fn send_to_client(&mut self, service: SocketAddrV4, packet: &[u8]) {
        self.send_to_authority(service, MsgType::ToClient, packet);
    }

    /// Sends one datagram to the redirector (the view authority), stamped with our view
    /// epoch: it passes return packets only from the current epoch's speaker.
    pub(super) fn send_to_authority(&mut self, service: SocketAddrV4, t: MsgType, payload: &[u8]) {
        let epoch = self.views.get(&service).map_or(Epoch(0), |v| v.epoch);
        self.sealer.seal_into(
            t,
            ServiceId::from_addr(service),
            epoch,
            self.shared.redirector(self.cfg.redirector_id),
            payload,
            &mut self.sealed,
        );
        let sent = self
            .to_authority
            .push(&self.udp, self.cfg.redirector, &self.sealed);
        self.count_sent(sent);
    }

    /// Sends the datagrams still collected for the redirector (before the loop waits).
    pub(super) fn flush_tunnel(&mut self) {
        let sent = self.to_authority.flush(&self.udp);
        self.count_sent(sent);
    }

    pub(super) fn count_sent(&self, sent: tunnel_io::Sent) {
        let m = &self.shared.metrics;
        m.datagrams_out.add(sent.datagrams);
        m.send_calls.add(sent.syscalls);
        if sent.failed > 0 {
            // A full socket buffer loses the packets; TCP retransmits them.
            m.send_errors.add(sent.failed);
            tracing::trace!(lost = sent.failed, "udp send failed");
        }
    }

    pub(super) fn flush_out(&mut self, service: SocketAddrV4) {
        let out = std::mem::take(&mut self.out);
        for p in &out {
            self.send_to_client(service, p);
        }
        self.out = out;
    }

    /// Sends repair packets to the peers that need them.
    pub(super) fn flush_repairs(&mut self) {
        let mut out = std::mem::take(&mut self.repairs_out);
        for (service, to, pkt) in out.drain(..) {
            if self.send_to_member(service, ReplicaId(to), MsgType::Repair, &pkt) {
                self.shared.metrics.ft.repairs_sent.inc();
            }
        }
        self.repairs_out = out;
    }

    /// Sends this iteration's progress reports and output digests to the other members,
    /// batched per datagram.
    pub(super) fn flush_progress(&mut self) {
        if !self.progress_out.is_empty() {
            let mut entries = std::mem::take(&mut self.progress_out);
            entries.sort_by_key(|e| (e.service.ip().octets(), e.service.port()));
            for chunk in entries.chunk_by(|a, b| a.service == b.service) {
                for batch in chunk.chunks(PROGRESS_PER_DATAGRAM) {
                    let sent = self.send_to_members(
                        chunk[0].service,
                        MsgType::Progress,
                        &emit_progress(batch),
                    );
                    self.shared.metrics.ft.progress_sent.add(sent);
                }
            }
            entries.clear();
            self.progress_out = entries;
        }
        for (t, mut entries) in [
            (MsgType::Exclude, std::mem::take(&mut self.exclude_out)),
            (
                MsgType::ExcludedAck,
                std::mem::take(&mut self.excluded_acks),
            ),
        ] {
            for batch in entries.chunks(EXCLUSIONS_PER_DATAGRAM) {
                // The service in the header is only a label here: each entry names its own.
                self.send_to_authority(batch[0].service, t, &emit_exclusions(batch));
                if t == MsgType::Exclude {
                    self.shared.metrics.ft.exclusion_requests.inc();
                }
            }
            entries.clear();
            match t {
                MsgType::Exclude => self.exclude_out = entries,
                _ => self.excluded_acks = entries,
            }
        }
        if !self.digests_out.is_empty() {
            let mut entries = std::mem::take(&mut self.digests_out);
            entries.sort_by_key(|e| (e.service.ip().octets(), e.service.port()));
            for chunk in entries.chunk_by(|a, b| a.service == b.service) {
                for batch in chunk.chunks(DIGESTS_PER_DATAGRAM) {
                    let sent = self.send_to_members(
                        chunk[0].service,
                        MsgType::Digest,
                        &emit_digests(batch),
                    );
                    self.shared.metrics.ft.digests_sent.add(sent);
                }
            }
            entries.clear();
            self.digests_out = entries;
        }
    }

    /// Sends one ack-channel message to every other member of the service's view; returns
    /// how many datagrams left. A type that may go to a group is sealed once for all; any
    /// other is sealed for each member, naming it: receivers drop a group datagram of such a
    /// type as misaddressed (a new primary's sync request sent to the group was dropped so
    /// by every member, and every total-order failover waited `SYNC_MAX` in vain).
    pub(super) fn send_to_members(
        &mut self,
        service: SocketAddrV4,
        t: MsgType,
        payload: &[u8],
    ) -> u64 {
        let Some(v) = self.views.get(&service) else {
            return 0;
        };
        if !t.may_be_group() {
            let others: Vec<ReplicaId> = v
                .members
                .iter()
                .map(|m| m.id)
                .filter(|&id| id != self.me)
                .collect();
            return others
                .into_iter()
                .map(|to| u64::from(self.send_to_member(service, to, t, payload)))
                .sum();
        }
        // One seal for all: each peer checks the epoch against its own view.
        self.sealer.seal_into(
            t,
            ServiceId::from_addr(service),
            v.epoch,
            Receiver::GROUP,
            payload,
            &mut self.sealed,
        );
        let mut sent = 0;
        for m in &v.members {
            if m.id == self.me {
                continue;
            }
            self.shared.metrics.send_calls.inc();
            match self.udp.send_to(&self.sealed, SocketAddr::V4(m.addr)) {
                Ok(_) => {
                    self.shared.metrics.datagrams_out.inc();
                    sent += 1;
                }
                Err(_) => self.shared.metrics.send_errors.inc(),
            }
        }
        sent
    }

    /// Sends one ack-channel message to one member of the service's view.
    /// Returns whether it left (`to` is a member and the kernel took it).
    pub(super) fn send_to_member(
        &mut self,
        service: SocketAddrV4,
        to: ReplicaId,
        t: MsgType,
        payload: &[u8],
    ) -> bool {
        let Some(v) = self.views.get(&service) else {
            return false;
        };
        let Some(peer) = v.member(to).copied() else {
            return false;
        };
        self.sealer.seal_into(
            t,
            ServiceId::from_addr(service),
            v.epoch,
            Receiver::node(peer.id, peer.incarnation),
            payload,
            &mut self.sealed,
        );
        self.shared.metrics.send_calls.inc();
        let sent = self
            .udp
            .send_to(&self.sealed, SocketAddr::V4(peer.addr))
            .is_ok();
        if sent {
            self.shared.metrics.datagrams_out.inc();
        } else {
            self.shared.metrics.send_errors.inc();
        }
        sent
    }
}
