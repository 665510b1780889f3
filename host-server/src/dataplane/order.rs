//! Total order in the loop: the primary's stamps, stamp repair and a new primary's sync,
//! and the grants of chunks to backends. The sequencer itself is `crate::order`.

use super::*;

fn order_entry(s: &Stamp) -> OrderEntry {
    OrderEntry {
        stamp: s.stamp,
        client: s.key.client,
        service: s.key.service,
        len: s.len,
        epoch: s.epoch,
    }
}

/// A total-order service's sequencer: its quiet time, and a backup's wait for missing
/// client bytes kept below the speaker's stall clock (see `order.rs`).
pub(super) fn sequencer_for(ft: &FtOpts) -> Sequencer {
    Sequencer::new(Duration::from_millis(u64::from(ft.quiet_ms)))
        .with_stall(Duration::from_millis(u64::from(ft.stall_ms)))
}

impl Dataplane {
    /// Stamps from the service's primary (total order); anyone else's are ignored.
    pub(super) fn on_order(&mut self, from: ReplicaId, entries: &[OrderEntry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let primary = self
            .views
            .get(&first.service)
            .and_then(|v| v.members.first())
            .map(|m| m.id);
        let Some(q) = self.sequencers.get_mut(&first.service) else {
            return;
        };
        let member_answer = primary == Some(self.me) && from != self.me;
        if primary != Some(from) && !member_answer {
            return;
        }
        let stamps: Vec<Stamp> = entries
            .iter()
            .filter(|e| e.service == first.service)
            .map(|e| Stamp {
                stamp: e.stamp,
                key: FlowKey {
                    client: e.client,
                    service: e.service,
                },
                len: e.len,
                epoch: e.epoch,
            })
            .collect();
        if member_answer {
            // A member's answer to this new primary's sync.
            q.on_member_stamps(&stamps, Instant::now());
        } else {
            q.on_stamps(&stamps, Instant::now());
        }
    }

    /// Stamp repair (total order): a backup's request, answered here when this host is the
    /// primary; or the primary's "gone", acted on when it comes from the primary.
    pub(super) fn on_order_repair(
        &mut self,
        from: ReplicaId,
        r: OrderRepair,
        dirty: &mut Vec<usize>,
    ) {
        let primary = self.primary_of(r.service);
        let m = &self.shared.metrics.ft.order;
        let Some(q) = self.sequencers.get_mut(&r.service) else {
            m.repair_ignored.inc();
            tracing::debug!(service = %r.service, from = %from, kind = ?r.kind, "stamp repair for a service without a sequencer here ignored");
            return;
        };
        match r.kind {
            OrderRepairKind::Need if primary == Some(self.me) => match q.on_need(r.from, r.to) {
                NeedAnswer::Stamps(stamps) => {
                    for chunk in stamps.chunks(ORDER_PER_DATAGRAM) {
                        let entries: Vec<OrderEntry> = chunk.iter().map(order_entry).collect();
                        self.send_to_member(r.service, from, MsgType::Order, &emit_order(&entries));
                    }
                }
                NeedAnswer::Gone { oldest, next } => {
                    let gone = OrderRepair {
                        service: r.service,
                        kind: OrderRepairKind::Gone,
                        from: oldest,
                        to: next,
                    };
                    self.send_to_member(r.service, from, MsgType::OrderRepair, &gone.emit());
                }
            },
            // A new primary's sync: the stamps this backup delivered (it is behind if they
            // are forgotten; then it has nothing to add), then where its order stands, which
            // tells the new primary the answer is complete (`Sequencer::on_member_synced`).
            OrderRepairKind::Need if primary == Some(from) && from != self.me => {
                let end = q.delivered_end();
                if let NeedAnswer::Stamps(stamps) = q.on_need(r.from, r.to) {
                    for chunk in stamps.chunks(ORDER_PER_DATAGRAM) {
                        let entries: Vec<OrderEntry> = chunk.iter().map(order_entry).collect();
                        self.send_to_member(r.service, from, MsgType::Order, &emit_order(&entries));
                    }
                }
                let synced = OrderRepair {
                    service: r.service,
                    kind: OrderRepairKind::Synced,
                    from: r.from,
                    to: end,
                };
                self.send_to_member(r.service, from, MsgType::OrderRepair, &synced.emit());
                tracing::debug!(service = %r.service, primary = %from, delivered_end = end, "answered the new primary's sync");
                self.shared.metrics.ft.order.sync_answers.inc();
            }
            OrderRepairKind::Synced if primary == Some(self.me) && from != self.me => {
                tracing::debug!(service = %r.service, member = %from, delivered_end = r.to, "a member answered our sync");
                q.on_member_synced(from.0, r.to);
            }
            OrderRepairKind::Gone if primary == Some(from) && from != self.me => {
                let held: Vec<FlowKey> = self
                    .conns
                    .values()
                    .filter(|c| c.total && c.key.service == r.service)
                    .map(|c| c.key)
                    .collect();
                q.on_gone(r.from, r.to, &held, Instant::now());
                self.abandon_order_losers(r.service, dirty);
            }
            _ => {
                m.repair_ignored.inc();
                tracing::debug!(service = %r.service, from = %from, kind = ?r.kind, ?primary, "stamp repair not from or to the primary of our view ignored");
            }
        }
    }

    /// Makes this member leave the connections its sequencer can no longer follow: as when
    /// its backend fails the connection, it retires from it (it is never promoted for it and
    /// the gate stops waiting for it) and resets its backend side.
    pub(super) fn abandon_order_losers(&mut self, service: SocketAddrV4, dirty: &mut Vec<usize>) {
        let Some(q) = self.sequencers.get_mut(&service) else {
            return;
        };
        let keys = q.take_abandoned();
        if keys.is_empty() {
            return;
        }
        let now = self.stamp(Instant::now());
        for key in keys {
            let Some(&id) = self.flows.get(&key) else {
                continue;
            };
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if let Tcp::Ft(f) = &mut c.tcp {
                if !f.is_retired() {
                    tracing::warn!(client = %key.client, %service, "missed this connection's total order: leaving it");
                    f.on_backend_failed(now);
                }
            }
            // Not a failed backend: no health probe.
            if !c.retired_seen && c.total {
                self.shared.metrics.ft.order.left.inc();
            }
            c.retired_seen = true;
            reset_backend(self.poll.registry(), &mut c.backend);
            dirty.push(id);
        }
    }

    /// Runs every total-order sequencer: grants the next chunk where one may go, sends new
    /// stamps to the backups; returns the connections granted bytes.
    pub(super) fn run_order(&mut self) -> Vec<usize> {
        let mut granted = Vec::new();
        if self.sequencers.is_empty() {
            return granted;
        }
        let now = Instant::now();
        let resend = now >= self.order_resend_at;
        if resend {
            self.order_resend_at = now + ORDER_RESEND_EVERY;
        }
        let services: Vec<SocketAddrV4> = self.sequencers.keys().copied().collect();
        for service in services {
            let view = self.views.get(&service);
            let primary = view
                .and_then(|v| v.members.first())
                .is_some_and(|m| m.id == self.me);
            let behind = view.is_some_and(|v| {
                self.heard_epochs
                    .get(&service)
                    .is_some_and(|&heard| heard > v.epoch)
            });
            if behind {
                // The client's packets carry a newer epoch than our view: another member may
                // be the primary by now, numbering chunks of the same connections. Numbering
                // them too, a primary cut off and back, whose newer views were lost, handed
                // its backend chunks in its own order (FT_SEED=1797400000013768 FT_TOTAL=1 in
                // the cluster sim). A backup in the same place followed the old order for
                // connections opened since, then, at the view that said it had been out,
                // started its order afresh and granted their chunks again
                // (FT_SEED=1798000000003376 FT_TOTAL=1). Nothing is granted until the newer
                // view comes (views are sent again every 50 ms).
                tracing::trace!(%service, "total order held: the view is behind the client's packets");
                continue;
            }
            let keys: Vec<FlowKey> = self
                .conns
                .values()
                .filter(|c| c.total && c.key.service == service)
                .map(|c| c.key)
                .collect();
            // Connections this member left: as the primary it goes on stamping them from
            // where its own stamps ended (bytes delivered plus granted); as a backup it skips
            // their stamps from then on and can never tell where they end. Either way a turn
            // waiting for its backend to take granted bytes is over (`Sequencer::on_left`).
            let seq = self.sequencers.get_mut(&service);
            let mut left = Vec::new();
            for c in self.conns.values_mut() {
                let Tcp::Ft(f) = &c.tcp else { continue };
                if !c.total
                    || c.key.service != service
                    || !f.is_retired()
                    || c.order_pos.is_some()
                    || c.order_lost
                {
                    continue;
                }
                left.push(c.key);
                if !primary {
                    c.order_lost = true;
                    continue;
                }
                // Delivered (client bytes taken, the FIN not counted, minus queued) plus
                // granted and not yet delivered (credit, which a grant for bytes that never
                // came may put past rcv_nxt), plus the stamps that went by while the
                // connection was foreign here (`Sequencer::passed_bytes`).
                let local = f.local_data_rcv();
                let queued = c.tcp.ep_ref().recv_queue() as u32;
                let credit = c.credit as u32;
                let passed = seq.as_deref().map_or(0, |q| q.passed_bytes(c.key)) as u32;
                c.order_pos = local.map(|r| {
                    SeqNumber(
                        r.0.wrapping_sub(queued)
                            .wrapping_add(credit)
                            .wrapping_add(passed),
                    )
                });
                c.order_lost = c.order_pos.is_none();
            }
            if let Some(q) = seq {
                for key in left {
                    q.on_left(key, now);
                }
            }
            let (flows, conns) = (&self.flows, &self.conns);
            let view = |k: FlowKey| {
                let c = conns.get(flows.get(&k)?)?;
                if matches!(&c.tcp, Tcp::Ft(f) if f.is_retired()) {
                    // A member that left a connection (its exclusion, a handoff, a stall) is
                    // fed no more of its client bytes. A backup does not wait at its stamps:
                    // waiting stalled every connection of the service behind one of them
                    // (the soak: a host rejoined after a partition, was dropped from the
                    // connections it had missed, and stalled the service once primary). The
                    // primary stamps it on from the other members' reports: the members that
                    // speak for it and follow it would wait for ever otherwise. Where no member
                    // reported since we hold the connection, the client bytes we got ourselves
                    // (the client sent them; a member that lacks them waits for them).
                    let Tcp::Ft(f) = &c.tcp else { return None };
                    let peer = match (c.peer_rcv, f.local_data_rcv()) {
                        (Some(p), Some(l)) => Some(p.max(l)),
                        (p, l) => p.or(l),
                    };
                    let (true, Some(pos), Some(peer)) = (primary, c.order_pos, peer) else {
                        return None;
                    };
                    return Some(ConnView {
                        pending: if pos.lt(peer) {
                            peer.since(pos) as usize
                        } else {
                            0
                        },
                        answered: c.from_backend,
                    });
                }
                if !matches!(
                    c.backend,
                    Backend::Connecting(..)
                        | Backend::Open {
                            fin_sent: false,
                            ..
                        }
                ) {
                    return None;
                }
                Some(ConnView {
                    pending: c.tcp.ep_ref().recv_queue().saturating_sub(c.credit),
                    answered: c.from_backend,
                })
            };
            let Some(q) = self.sequencers.get_mut(&service) else {
                continue;
            };
            let grant = q.next_grant(now, primary, &keys, view);
            if let Some(why) = q.stuck(now, ORDER_STUCK_AFTER, primary, view) {
                tracing::warn!(%service, "total order has not moved for 2 s: {why}");
            }
            let mut stamps = None;
            let mut need = None;
            let mut sync = None;
            if primary {
                sync = q.poll_sync(now);
                stamps = q.take_outbox();
                if stamps.is_none() && resend {
                    let r = q.recent();
                    stamps = (!r.is_empty()).then_some(r);
                }
            } else {
                need = q.poll_need(now);
            }
            self.shared.metrics.ft.order.add(q.take_stats());
            if let Some((key, len)) = grant {
                if let Some(&id) = self.flows.get(&key) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        if let Some(pos) = c.order_pos.as_mut() {
                            // A connection this primary left: stamped for the others only.
                            *pos = pos.plus(len);
                            q.on_delivered(key, len as usize, now);
                        } else {
                            c.credit += len as usize;
                            granted.push(id);
                        }
                    }
                }
            }
            self.abandon_order_losers(service, &mut granted);
            if let Some(st) = stamps {
                let entries: Vec<OrderEntry> = st.iter().map(order_entry).collect();
                self.send_to_members(service, MsgType::Order, &emit_order(&entries));
            }
            if let Some((from, to)) = sync {
                let r = OrderRepair {
                    service,
                    kind: OrderRepairKind::Need,
                    from,
                    to,
                };
                self.send_to_members(service, MsgType::OrderRepair, &r.emit());
            }
            if let (Some((from, to)), Some(p)) = (need, self.primary_of(service)) {
                let r = OrderRepair {
                    service,
                    kind: OrderRepairKind::Need,
                    from,
                    to,
                };
                self.send_to_member(service, p, MsgType::OrderRepair, &r.emit());
            }
        }
        granted.sort_unstable();
        granted.dedup();
        granted
    }

    /// When the loop must look at the sequencers again.
    pub(super) fn order_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        for q in self.sequencers.values() {
            let t = if q.busy() {
                Some(now + Duration::from_millis(1))
            } else {
                q.wake_at()
            };
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        }
        if !self.sequencers.is_empty() {
            let t = self.order_resend_at;
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        wake
    }
}
