//! The drain after SIGTERM (or SIGINT): a planned departure instead of a crash.
//!
//! ```text
//!   SIGTERM ──► heartbeats offer no service ──► the redirector places no new connection
//!   │                                            here and takes us out of every ft view
//!   ├─► each ft connection another member holds: handed to the next member, as when our
//!   │   backend fails it (no detector timeout, no reset)
//!   ├─► redirect-mode connections, and ft ones nobody else holds: served until they end
//!   └─► exit 0 once none is left (and the redirector had DRAIN_SETTLE to hear us), or
//!       at drain_timeout_s with what is still open logged; a second signal exits at once
//! ```

use super::*;

/// How often the loop looks at the drain while it lasts.
pub(super) const DRAIN_TICK: Duration = Duration::from_millis(10);
/// The least a drain lasts: several heartbeats that offer nothing reach the redirector and
/// its views without us reach the members, before we go quiet.
const DRAIN_SETTLE: Duration = Duration::from_millis(200);

impl Dataplane {
    /// One look at the drain; `true` once the loop may end.
    pub(super) fn drain(&mut self, now: Instant, snow: SInstant) -> bool {
        let began = *self.drain_began.get_or_insert_with(|| {
            let (ft, plain) = self.conns.values().fold((0, 0), |(f, p), c| match c.tcp {
                Tcp::Ft(_) => (f + 1, p),
                Tcp::Plain(_) => (f, p + 1),
            });
            tracing::warn!(
                ft_connections = ft,
                redirect_connections = plain,
                timeout_s = self.cfg.drain_timeout.as_secs(),
                "draining (SIGTERM): every service withdrawn; ft connections go to the next \
                 member, the others are served until they end; exiting then"
            );
            now
        });
        // Hand over every ft connection another member holds (new ones too: a SYN the
        // redirector sent before it heard us). One nobody else holds is served to its end:
        // handing it over would reset the client.
        let handover: Vec<usize> = self
            .conns
            .iter()
            .filter(
                |(_, c)| matches!(&c.tcp, Tcp::Ft(f) if !f.is_retired() && !f.members().is_empty()),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in handover {
            if let Some(Tcp::Ft(f)) = self.conns.get_mut(&id).map(|c| &mut c.tcp) {
                if !f.wants_abort() {
                    f.on_backend_failed(snow);
                }
            }
            self.service(id, snow);
        }
        let open = self
            .conns
            .values()
            .filter(|c| {
                let ended = matches!(
                    c.tcp.ep_ref().state(),
                    TcpState::Closed | TcpState::TimeWait
                );
                !ended && !matches!(&c.tcp, Tcp::Ft(f) if f.is_retired())
            })
            .count();
        let elapsed = now.saturating_duration_since(began);
        if open == 0 && elapsed >= DRAIN_SETTLE {
            tracing::info!(
                after_ms = elapsed.as_millis() as u64,
                "drained: no connection left here; exiting"
            );
            return true;
        }
        if elapsed >= self.cfg.drain_timeout {
            tracing::warn!(
                open,
                after_s = elapsed.as_secs(),
                "drain timeout: exiting with connections still open (their clients see them end)"
            );
            return true;
        }
        false
    }
}
