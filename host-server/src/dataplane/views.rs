//! Views from the redirector: who is a member (and the primary) of each ft service, what a
//! member leaves when the view changes, and the exclusion notices that say who speaks for a
//! connection.

use super::*;

/// An ft service's view as this host holds it.
#[derive(Debug, Clone)]
pub(super) struct ServiceView {
    pub(super) epoch: Epoch,
    /// Members, primary first, each in its current life.
    pub(super) members: Vec<Member>,
    /// The first epoch of a view that named this host in its current life. A group
    /// datagram stamped with an older epoch was sealed before we joined (recorded before we
    /// restarted, or a peer's message for our earlier life) and is refused.
    pub(super) joined: Epoch,
    /// The life of the authority that sent the view: members' `since` epochs compare only
    /// within one.
    pub(super) authority: Incarnation,
}

impl ServiceView {
    pub(super) fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

impl Dataplane {
    /// The members of the service's current view, primary first.
    pub(super) fn members_of(&self, service: SocketAddrV4) -> Option<Vec<u32>> {
        let v = self.views.get(&service)?;
        Some(v.members.iter().map(|m| m.id.0).collect())
    }

    /// The view authority's notices: the members excluded from connections (who speaks for
    /// them, decided in one place: `ft_tcp::speaker`). Each is acknowledged, also for a
    /// connection this host does not hold, so that the authority stops repeating it.
    pub(super) fn on_excluded(&mut self, entries: &[ExclusionEntry], dirty: &mut Vec<usize>) {
        let now = self.stamp(Instant::now());
        self.shared
            .metrics
            .ft
            .exclusion_notices
            .add(entries.len() as u64);
        for e in entries {
            self.excluded_acks.push(e.clone());
            let key = FlowKey {
                client: e.client,
                service: e.service,
            };
            let Some(&id) = self.flows.get(&key) else {
                continue;
            };
            if let Some(Conn {
                tcp: Tcp::Ft(f), ..
            }) = self.conns.get_mut(&id)
            {
                let was = f.role();
                f.handle_exclusions(now, &e.members);
                if was == Role::Backup && f.role() == Role::Primary {
                    self.shared.metrics.ft.promotions.inc();
                    tracing::info!(client = %e.client, service = %e.service, excluded = ?e.members, "speaking for the connection: the members before us left it");
                }
                dirty.push(id);
            }
        }
    }

    /// A view from the redirector (the authority; checked by the caller): roles change for
    /// every connection of the service.
    ///
    /// Taken only if newer than the one held, and only once a view has named this host in
    /// its current life: views for an earlier life (recorded, or sent before the redirector
    /// heard that we restarted) are not ours, and we never act as the member the old life
    /// was. A member whose life changed restarted, and one whose `since` changed was out of
    /// the view in between (we may have missed the views that said so): it is dropped from
    /// the connections opened before its new `since` (it holds none of them, or missed their
    /// client bytes) and stays a member of those opened since. If that member is this host,
    /// it leaves those connections. A restarted authority numbers `since` afresh, so then
    /// only lives are compared.
    pub(super) fn on_view(
        &mut self,
        service: SocketAddrV4,
        epoch: Epoch,
        authority: Incarnation,
        v: View,
        dirty: &mut Vec<usize>,
    ) {
        let held = self.views.get(&service);
        if held.is_some_and(|h| h.epoch >= epoch) {
            return;
        }
        let named = v
            .member(self.me)
            .is_some_and(|m| m.incarnation == self.sealer.incarnation());
        // Whether the view we held named us (a first view: no view held, no order yet).
        let was_member = held.is_none_or(|h| {
            h.member(self.me)
                .is_some_and(|m| m.incarnation == self.sealer.incarnation())
        });
        let (joined, back) = match held {
            Some(h) => (
                h.joined,
                h.members
                    .iter()
                    .filter_map(|m| {
                        let n = v.member(m.id)?;
                        (n.incarnation != m.incarnation
                            || (h.authority == authority && n.since != m.since))
                            .then_some((m.id.0, n.since))
                    })
                    .collect::<Vec<_>>(),
            ),
            None if named => (epoch, Vec::new()),
            None => {
                tracing::debug!(%service, epoch = epoch.0, "view that does not name this life of ours ignored");
                return;
            }
        };
        let members: Vec<String> = v.members.iter().map(|m| m.id.0.to_string()).collect();
        tracing::info!(%service, epoch = epoch.0, ?members, me = %self.me, "new view");
        if !back.is_empty() {
            let ids: Vec<u32> = back.iter().map(|(id, _)| *id).collect();
            tracing::warn!(%service, members = ?ids, "members restarted or were out of the view since the last view we hold: they leave every connection opened before they came back");
        }
        self.shared.metrics.ft.views.inc();
        if held.is_some_and(|h| h.authority != authority) {
            // Epochs heard from the redirector's earlier life do not compare with this one's.
            self.heard_epochs.remove(&service);
        }
        let old_primary = self.primary_of(service);
        self.views.insert(
            service,
            ServiceView {
                epoch,
                members: v.members,
                joined,
                authority,
            },
        );
        let new_primary = self.primary_of(service);
        // Back in the view: our `since` changed, or the view we held did not name us.
        let rejoined = back.iter().any(|(id, _)| *id == self.me.0) || (!was_member && named);
        let order_afresh = rejoined && self.sequencers.remove(&service).is_some();
        if order_afresh {
            // We were out of the view (a partition outlasted the detector). Our order since
            // then is not the service's: while cut off we may have numbered chunks as its
            // primary. Kept, it numbered the new primary's stamps differently, skipped those
            // below its own count as old, and handed its backend chunks of connections opened
            // after we came back in another order than the other members
            // (FT_SEED=1796800000049148 FT_TOTAL=1 in the cluster sim). The connections we
            // held leave (`apply_members`); we start again as a fresh sequencer does (below).
            tracing::info!(%service, "back in the view after being out: total order starts afresh here");
        }
        if let (Some(old), Some(new), Some(q)) =
            (old_primary, new_primary, self.sequencers.get_mut(&service))
        {
            if old != new {
                // Total order across a failover: see `order.rs`, "Failover".
                q.on_primary_changed(new == self.me, Instant::now());
            }
        }
        {
            let snapshot = self
                .views
                .iter()
                .map(|(s, v)| {
                    (
                        s.to_string(),
                        v.epoch.0,
                        v.members.iter().map(|m| m.id.0).collect(),
                    )
                })
                .collect();
            // INVARIANT: no code panics while holding the lock.
            *self.shared.views.lock().expect("views lock") = snapshot;
        }
        // A total-order service gets its sequencer with its first view, not its first
        // connection: a host that (re)joins hears the primary's stamps, asks for what it
        // missed and is anchored before the connections it must follow carry data.
        if !self.sequencers.contains_key(&service) {
            let ft = {
                // INVARIANT: no code panics while holding the lock.
                let services = self.shared.services.lock().expect("services lock");
                services
                    .serving(service)
                    .filter(|p| p.mode == Mode::Ft && p.ft.total_order)
                    .map(|p| p.ft)
            };
            if let Some(ft) = ft {
                let mut q = sequencer_for(&ft);
                if order_afresh && new_primary == Some(self.me) {
                    // Back as the primary (every other member went while we were out): it
                    // collects what the members delivered, as a new primary does.
                    q.on_primary_changed(true, Instant::now());
                }
                self.sequencers.insert(service, q);
            }
        }
        // Stamps carry the epoch they were issued under; one from before this host joined
        // the view is not its business (`Sequencer::set_epochs`).
        let joined = self
            .views
            .get(&service)
            .and_then(|v| v.member(self.me))
            .map(|m| m.since);
        if let (Some(q), Some(joined)) = (self.sequencers.get_mut(&service), joined) {
            q.set_epochs(epoch.0, joined.0);
        }
        if new_primary == Some(self.me) {
            // A new primary's sync waits for each member's answer (and forgets one that
            // left the view).
            let others: Vec<u32> = self
                .members_of(service)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| *m != self.me.0)
                .collect();
            if let Some(q) = self.sequencers.get_mut(&service) {
                q.sync_members(&others);
            }
        }
        let Some(members) = self.members_of(service) else {
            return;
        };
        self.apply_members(service, epoch, &members, &back, dirty);
    }

    /// Tells every connection of `service` its members (primary first). The members in
    /// `back` (each with the epoch since which it is a member again) restarted or were out
    /// of the view: a connection opened before that sees a view without them first, so
    /// that it drops them for good (or leaves, if one is this host).
    pub(super) fn apply_members(
        &mut self,
        service: SocketAddrV4,
        epoch: Epoch,
        members: &[u32],
        back: &[(u32, Epoch)],
        dirty: &mut Vec<usize>,
    ) {
        let now = self.stamp(Instant::now());
        let since: Vec<(u32, Epoch)> = self
            .views
            .get(&service)
            .map(|v| v.members.iter().map(|m| (m.id.0, m.since)).collect())
            .unwrap_or_default();
        for (id, c) in self.conns.iter_mut() {
            if c.key.service != service {
                continue;
            }
            if let Tcp::Ft(f) = &mut c.tcp {
                let was = f.role();
                let skips = f.stats.divergent_skips;
                let out = f.stats.left_out_of_view;
                if !back.is_empty() {
                    let opened = c.opened;
                    let without: Vec<u32> = members
                        .iter()
                        .copied()
                        .filter(|m| !back.iter().any(|(b, since)| b == m && *since > opened))
                        .collect();
                    if without.len() < members.len() {
                        f.set_view(now, &without);
                    }
                }
                // Members since before the open got the client's SYN as we did: counted,
                // also where our view at the open was stale (`FtConn::count_members_at_open`).
                let at_open: Vec<u32> = since
                    .iter()
                    .filter(|(_, s)| *s <= c.opened)
                    .map(|(m, _)| *m)
                    .collect();
                f.count_members_at_open(&at_open);
                f.set_view(now, members);
                f.set_view_stale(epoch < c.opened);
                if f.stats.divergent_skips > skips {
                    self.shared.metrics.ft.divergent_skips.inc();
                    tracing::warn!(client = %c.key.client, "passed over a member whose output differs from the old primary's");
                }
                if f.stats.left_out_of_view > out {
                    self.shared.metrics.ft.left_out_of_view.inc();
                }
                if was == Role::Backup && f.role() == Role::Primary {
                    self.shared.metrics.ft.promotions.inc();
                }
                dirty.push(*id);
            }
        }
    }

    /// The service's primary in this host's view.
    pub(super) fn primary_of(&self, service: SocketAddrV4) -> Option<ReplicaId> {
        self.views
            .get(&service)
            .and_then(|v| v.members.first())
            .map(|m| m.id)
    }
}
