//! What arrives on the tunnel, opened and sent where it belongs: client packets, views,
//! exclusion notices, and the members' progress, digests, repairs and order datagrams.

use super::*;

pub(super) fn digest_entry(key: FlowKey, d: BlockDigest) -> DigestEntry {
    DigestEntry {
        client: key.client,
        service: key.service,
        index: d.index,
        len: d.len,
        fin: d.fin,
        digest: d.digest,
    }
}

impl Dataplane {
    /// One datagram from the redirector or a peer (opened here first).
    pub(super) fn on_datagram(&mut self, datagram: &[u8], dirty: &mut Vec<usize>) {
        {
            self.shared.metrics.datagrams_in.inc();
            let m = &self.shared.metrics;
            let (header, payload) = match self.opener.open(datagram) {
                Ok(v) => v,
                Err(reason) => {
                    m.on_drop(reason);
                    tracing::trace!(%reason, "datagram dropped");
                    return;
                }
            };
            let from_authority = header.sender == self.cfg.redirector_id;
            if matches!(
                header.msg_type,
                MsgType::View | MsgType::Welcome | MsgType::Excluded
            ) {
                if !from_authority {
                    m.dropped_not_authority.inc();
                    tracing::debug!(sender = %header.sender, "view, welcome or exclusion notice from a node that is not the redirector dropped");
                    return;
                }
                self.shared.heard_redirector(header.sender_incarnation);
            }
            if header.receiver == ReplicaId::ANY && !self.is_fresh_group(&header) {
                m.dropped_stale.inc();
                tracing::trace!(sender = %header.sender, epoch = header.epoch.0, "group datagram from before we joined, or from a peer's other life, dropped");
                return;
            }
            match header.msg_type {
                MsgType::ToHost => {
                    let service = header.service.addr();
                    // Only an epoch past our view's matters (views only grow), and epochs
                    // compare within one life of the redirector: on the common packet, one
                    // lookup and no write.
                    let ahead = self.views.get(&service).is_some_and(|v| {
                        header.epoch > v.epoch && v.authority == header.sender_incarnation
                    });
                    if from_authority && ahead {
                        let heard = self.heard_epochs.entry(service).or_insert(header.epoch);
                        *heard = (*heard).max(header.epoch);
                    }
                    let packet = payload.to_vec();
                    if let Some(id) = self.on_client_packet(&packet, header.epoch) {
                        dirty.push(id);
                    }
                }
                MsgType::Progress => match parse_progress(payload) {
                    Ok(entries) => self.on_progress(header.sender, &entries, dirty),
                    Err(_) => m.dropped_malformed.inc(),
                },
                MsgType::View => match View::parse(payload) {
                    Ok(v) => self.on_view(
                        header.service.addr(),
                        header.epoch,
                        header.sender_incarnation,
                        v,
                        dirty,
                    ),
                    Err(_) => m.dropped_malformed.inc(),
                },
                // Its news (the redirector's life) was taken above.
                MsgType::Welcome => {}
                MsgType::Repair => {
                    if let Some(id) = self.on_repair(&header, payload) {
                        dirty.push(id);
                    }
                }
                MsgType::Order => match parse_order(payload) {
                    Ok(entries) => self.on_order(header.sender, &entries),
                    Err(_) => m.dropped_malformed.inc(),
                },
                MsgType::Digest => match parse_digests(payload) {
                    Ok(entries) => self.on_digests(header.sender, &entries, dirty),
                    Err(_) => m.dropped_malformed.inc(),
                },
                MsgType::Excluded => match parse_exclusions(payload) {
                    Ok(entries) => self.on_excluded(&entries, dirty),
                    Err(_) => m.dropped_malformed.inc(),
                },
                MsgType::OrderRepair => match OrderRepair::parse(payload) {
                    Ok(r) => self.on_order_repair(header.sender, r, dirty),
                    Err(_) => m.dropped_malformed.inc(),
                },
                MsgType::ToClient
                | MsgType::Heartbeat
                | MsgType::Exclude
                | MsgType::ExcludedAck => m.dropped_unexpected.inc(),
            }
        }
    }

    /// Whether a datagram for the members of a service's view is fresh: its epoch is not
    /// older than the view that first named us in this life, a client packet comes from the
    /// redirector, and a peer's message comes from the life our view names (a peer not in
    /// our view yet joined after it; its messages are checked by the connections).
    pub(super) fn is_fresh_group(&self, h: &Header) -> bool {
        let Some(v) = self.views.get(&h.service.addr()) else {
            return false;
        };
        if h.epoch < v.joined {
            return false;
        }
        if h.msg_type == MsgType::ToHost {
            return h.sender == self.cfg.redirector_id;
        }
        v.member(h.sender)
            .is_none_or(|m| m.incarnation == h.sender_incarnation)
    }

    /// A repair packet from a peer: client bytes this replica missed, for a connection it
    /// holds; or, for one it lacks, the client's handshake ACK, which a member that holds
    /// the connection forwards when we never reported it (`FtConn::forward_handshake`): it
    /// opens the connection here as the client's own would, if its SYN cookie checks. Only
    /// members of the service's view may repair.
    pub(super) fn on_repair(&mut self, from: &Header, packet: &[u8]) -> Option<usize> {
        let m = &self.shared.metrics.ft;
        let Ok(meta) = TcpMeta::parse_checked(packet) else {
            m.repairs_dropped.inc();
            return None;
        };
        let key = meta.inbound_flow();
        let view = self.views.get(&key.service).filter(|v| {
            v.member(from.sender)
                .is_some_and(|m| m.incarnation == from.sender_incarnation)
        });
        let (member, epoch) = (view.is_some(), view.map(|v| v.epoch));
        let id = self.flows.get(&key).copied();
        // A connection this member left on the 4-tuple does not stand in the way: the
        // handshake ACK completes a newer one (`completes_a_newer_handshake`).
        let open_here = id.filter(|&id| !self.is_retired(id));
        if let (None, Some(epoch), false, true, false) = (
            open_here,
            epoch,
            meta.is_syn(),
            meta.flags.ack,
            self.lingering.contains_key(&key),
        ) {
            let id = self
                .on_client_packet(packet, epoch)
                .filter(|&id| !self.is_retired(id));
            let m = &self.shared.metrics.ft;
            match id {
                Some(_) => {
                    tracing::debug!(client = %key.client, member = from.sender.0, "connection opened from the client's handshake ACK a member forwarded");
                    m.forwarded_opens.inc();
                }
                None => m.repairs_dropped.inc(),
            }
            return id;
        }
        let (Some(id), true, false) = (id, member, meta.is_syn()) else {
            m.repairs_dropped.inc();
            return None;
        };
        let now = self.stamp(Instant::now());
        let Some(Conn {
            tcp: Tcp::Ft(f), ..
        }) = self.conns.get_mut(&id)
        else {
            m.repairs_dropped.inc();
            return None;
        };
        m.repairs_received.inc();
        f.handle_repair(now, packet);
        Some(id)
    }

    /// Progress reports from a peer replica.
    pub(super) fn on_progress(
        &mut self,
        from: ReplicaId,
        entries: &[ProgressEntry],
        dirty: &mut Vec<usize>,
    ) {
        let now = self.stamp(Instant::now());
        self.shared
            .metrics
            .ft
            .progress_received
            .add(entries.len() as u64);
        for e in entries {
            let key = FlowKey {
                client: e.client,
                service: e.service,
            };
            let Some(&id) = self.flows.get(&key) else {
                continue;
            };
            if let Some(Conn {
                tcp: Tcp::Ft(f),
                peer_rcv,
                ..
            }) = self.conns.get_mut(&id)
            {
                let p = Progress {
                    isn_local: SeqNumber(e.isn_local),
                    isn_s: e.isn_s.map(SeqNumber),
                    rcv_nxt: SeqNumber(e.rcv_nxt),
                    client_fin: e.client_fin,
                    edge: SeqNumber(e.edge),
                    hole_end: SeqNumber(e.hole_end),
                    out: e.out.map(SeqNumber),
                    end: match e.end {
                        ack_channel::OutputEnd::Open => OutputEnd::Open,
                        ack_channel::OutputEnd::Fin => OutputEnd::Fin,
                        ack_channel::OutputEnd::Reset => OutputEnd::Reset,
                    },
                };
                // Client bytes only: a primary that left the connection stamps up to here.
                let r = p.data_rcv();
                *peer_rcv = Some(peer_rcv.map_or(r, |x| x.max(r)));
                f.handle_progress(now, from.0, p);
                dirty.push(id);
            }
        }
    }

    /// Output digests from a peer replica.
    pub(super) fn on_digests(
        &mut self,
        from: ReplicaId,
        entries: &[DigestEntry],
        dirty: &mut Vec<usize>,
    ) {
        for e in entries {
            let key = FlowKey {
                client: e.client,
                service: e.service,
            };
            let Some(&id) = self.flows.get(&key) else {
                continue;
            };
            if let Some(c) = self.conns.get_mut(&id) {
                if let Tcp::Ft(f) = &mut c.tcp {
                    f.handle_digest(
                        from.0,
                        BlockDigest {
                            index: e.index,
                            len: e.len,
                            fin: e.fin,
                            digest: e.digest,
                        },
                    );
                    note_agreement(&mut c.agreement_seen, f, &self.shared.metrics.ft);
                    dirty.push(id);
                }
            }
        }
    }
}
