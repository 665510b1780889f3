//! The heartbeat thread: liveness to the redirector at the detectors' interval, under the
//! real-time scheduler.

use super::*;

/// Puts the calling thread under the real-time FIFO scheduler, as keepalived does for its
/// VRRP thread (`vrrp_rt_priority`): a heartbeat every 5 ms against a 25 ms timeout must not
/// wait behind busy threads on a loaded machine, or a live replica leaves the view (a SYN
/// flood on 2 cores did exactly that). The thread sleeps almost all the time, so it takes
/// nothing from anyone. Without the privilege (not root, no CAP_SYS_NICE) it stays as it is,
/// with a warning.
pub fn realtime_priority(thread: &str) {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    let set = ThreadPriorityValue::try_from(50u8)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            set_thread_priority_and_policy(
                thread_native_id(),
                ThreadPriority::Crossplatform(v),
                ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
            )
            .map_err(|e| format!("{e:?}"))
        });
    match set {
        Ok(()) => tracing::debug!(thread, "real-time priority (SCHED_FIFO)"),
        Err(e) => {
            tracing::warn!(thread, error = %e, "cannot raise the thread to real-time priority; under heavy load heartbeats may be late and the failure detector may suspect this host falsely")
        }
    }
}

/// Where heartbeats go, and the address they name as ours.
pub(super) struct HeartbeatTo {
    pub(super) addr: SocketAddr,
    pub(super) id: ReplicaId,
    pub(super) me: SocketAddrV4,
}

/// Sends a heartbeat at the shortest interval any service's detector asks for (at most
/// `cap`), forever. Each names the redirector's life we last heard of: until one does, the
/// redirector only answers with a welcome.
pub(super) fn heartbeat_loop(
    udp: &std::net::UdpSocket,
    sealer: &Sealer,
    shared: &Shared,
    to: HeartbeatTo,
    cap: Duration,
) {
    realtime_priority("heartbeat");
    let mut sealed = Vec::new();
    // INVARIANT: no code panics while holding the lock.
    let mut ads = shared.services.lock().expect("services lock").ads();
    loop {
        // The packet loop takes this lock for every SYN (20,000 times a second in a flood) at
        // normal priority: waiting for it would hand this real-time thread's punctuality to
        // whatever preempted the holder (priority inversion; both backups of an ft3 lab once
        // fell out of the view together, 2 s into a flood). When the lock is busy, the
        // services are those of the last beat: they change only on setportopt or health.
        match shared.services.try_lock() {
            Ok(services) => ads = services.ads(),
            Err(std::sync::TryLockError::WouldBlock) => shared.metrics.heartbeat_ads_reused.inc(),
            Err(std::sync::TryLockError::Poisoned(_)) => {}
        }
        if shared.is_draining() {
            // Draining (SIGTERM): offer nothing. The redirector places no new connection
            // here and takes us out of every ft view, as when every backend is down; the
            // heartbeats go on, so we stay a live host while open connections finish.
            ads.clear();
        }
        let hb = Heartbeat {
            addr: to.me,
            services: ads.clone(),
        };
        let every = hb
            .services
            .iter()
            .filter(|s| s.mode == Mode::Ft)
            .map(|s| Duration::from_millis(u64::from(s.hb_ms.max(1))))
            .min()
            .unwrap_or(cap)
            .min(cap);
        sealer.seal_into(
            MsgType::Heartbeat,
            ServiceId(0),
            Epoch(0),
            shared.redirector(to.id),
            &hb.emit(),
            &mut sealed,
        );
        let redirector = to.addr;
        shared.metrics.send_calls.inc();
        match udp.send_to(&sealed, redirector) {
            Ok(_) => shared.metrics.datagrams_out.inc(),
            Err(e) => {
                shared.metrics.send_errors.inc();
                tracing::debug!(error = %e, %redirector, "heartbeat not sent");
            }
        }
        std::thread::sleep(every);
    }
}
