//! The housekeeping thread: failure detection, views and exclusion notices to the hosts,
//! and the log of what changed.

use super::*;

/// Sends a service's current view to every host offering it in ft mode (members learn their
/// role; a host dropped from the view learns it is out).
pub(super) fn broadcast_view(shared: &Shared, udp: &UdpSocket, service: std::net::SocketAddrV4) {
    let (epoch, view, dests) = {
        let t = lock(shared);
        let Some(v) = t.view(service) else { return };
        let members = v
            .members
            .iter()
            .filter_map(|m| {
                let h = t.host(*m)?;
                match h.addr {
                    SocketAddr::V4(addr) => Some(Member {
                        id: *m,
                        incarnation: h.incarnation,
                        since: v.since.get(m).copied().unwrap_or(v.epoch),
                        addr,
                    }),
                    SocketAddr::V6(_) => None,
                }
            })
            .collect();
        (v.epoch, View { members }, t.ft_hosts(service))
    };
    let payload = view.emit();
    let mut out = Vec::new();
    for (id, incarnation, addr) in dests {
        // One seal per host: a view names its receiver, in its current life.
        shared.sealer.seal_into(
            MsgType::View,
            ServiceId::from_addr(service),
            epoch,
            Receiver::node(id, incarnation),
            &payload,
            &mut out,
        );
        shared.metrics.sent_one(udp.send_to(&out, addr));
    }
}

pub(super) fn log_event(ev: &HostEvent) {
    match ev {
        HostEvent::Down(id) => {
            tracing::warn!(host = %id, "host silent past its timeout; no new connections go to it")
        }
        HostEvent::Up(id, addr) => tracing::info!(host = %id, %addr, "host up"),
        HostEvent::Restarted(id, old, new) => tracing::warn!(
            host = %id, old = %old, new = %new,
            "host restarted: its old life leaves every view, the new one joins at the end"
        ),
        HostEvent::ViewChanged(svc, epoch, members) => {
            let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            tracing::info!(service = %svc, epoch = epoch.0, ?members, "new view (first member is the primary)")
        }
    }
}

/// Sends the exclusion notices that are due.
pub(super) fn send_notices(shared: &Shared, udp: &UdpSocket, now: Instant) {
    let notices = lock(shared).poll_notices(now);
    let mut out = Vec::new();
    for n in notices {
        let payload = emit_exclusions(&[ExclusionEntry {
            client: n.key.client,
            service: n.key.service,
            members: n.excluded,
        }]);
        shared.sealer.seal_into(
            MsgType::Excluded,
            ServiceId::from_addr(n.key.service),
            Epoch(0),
            Receiver::node(n.to, n.incarnation),
            &payload,
            &mut out,
        );
        if shared.metrics.sent_one(udp.send_to(&out, n.addr)) {
            shared.metrics.exclusion_notices.inc();
        }
    }
}

/// How long the detector may wait for a receive queue that is not drained (see
/// [`housekeeping`]) before it judges liveness anyway.
pub(super) const BACKLOG_DEFER_MAX: Duration = Duration::from_millis(25);

/// Whether datagrams wait in the socket's receive queue (the receiving thread is behind).
pub(super) fn backlogged(udp: &UdpSocket) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut one = [0u8; 1];
    recv(
        std::os::fd::AsRawFd::as_raw_fd(udp),
        &mut one,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )
    .is_ok()
}

pub(super) fn housekeeping(shared: &Shared, udp: &UdpSocket) {
    let mut next_refresh = clock();
    let mut behind_since: Option<Instant> = None;
    loop {
        // Fast enough for a 25 ms detector: the check itself costs microseconds.
        std::thread::sleep(Duration::from_millis(2));
        let now = clock();
        // Heartbeats may be sitting unread while the receiving thread is starved (a flood of
        // return packets on 2 busy cores): silence is only evidence once the queue was
        // drained, or after BACKLOG_DEFER_MAX. Overload is not a failure.
        behind_since = if backlogged(udp) {
            Some(behind_since.unwrap_or(now))
        } else {
            None
        };
        if behind_since.is_some_and(|t| now.duration_since(t) < BACKLOG_DEFER_MAX) {
            shared.metrics.detector_deferred.inc();
            continue;
        }
        // INVARIANT: no code panics while holding this lock.
        let heard = std::mem::take(&mut *shared.heard.lock().expect("heard lock"));
        let events = {
            let mut t = lock(shared);
            for (id, at) in heard {
                t.heard_from(id, at);
            }
            let events = t.expire(now);
            let timings = t.take_timings();
            for d in timings.detections {
                shared.metrics.view_change.observe(d);
            }
            for d in timings.pauses {
                shared.metrics.failover_pause.observe(d);
            }
            events
        };
        for ev in events {
            log_event(&ev);
            if let HostEvent::ViewChanged(svc, ..) = ev {
                broadcast_view(shared, udp, svc);
            }
        }
        send_notices(shared, udp, now);
        if now >= next_refresh {
            next_refresh = now + VIEW_REFRESH;
            lock(shared).expire_exclusions(now);
            let services: Vec<_> = lock(shared).views().map(|(s, _)| s).collect();
            for svc in services {
                broadcast_view(shared, udp, svc);
            }
        }
    }
}
