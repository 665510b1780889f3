//! The host's counters for `/metrics`: what the loop counts, and how it is rendered.

use super::*;

/// Counters the admin API exposes at `/metrics`.
#[derive(Debug, Default)]
pub struct HostMetrics {
    /// How long backend connects took (connect to connected).
    pub backend_connect: control::metrics::Histogram,
    /// Heartbeats that reused the last beat's services because the services lock was busy.
    pub heartbeat_ads_reused: Counter,
    /// Connections dropped because the client completed a new handshake on their 4-tuple.
    pub conns_superseded: Counter,
    /// Datagrams received.
    pub datagrams_in: Counter,
    /// System calls that received datagrams (one per run with UDP GRO).
    pub recv_calls: Counter,
    /// Datagrams dropped: malformed.
    pub dropped_malformed: Counter,
    /// Datagrams dropped: bad MAC.
    pub dropped_bad_mac: Counter,
    /// Datagrams dropped: replayed counter.
    pub dropped_replay: Counter,
    /// Datagrams dropped: sealed for another node.
    pub dropped_misaddressed: Counter,
    /// Datagrams dropped: sealed for an earlier life of this host, from an earlier life of
    /// a peer, or for a group with an epoch from before this host joined its view.
    pub dropped_stale: Counter,
    /// Views and welcomes from a sender that is not the view authority (the redirector).
    pub dropped_not_authority: Counter,
    /// Datagrams of a type a host does not take.
    pub dropped_unexpected: Counter,
    /// Tunnelled packets that are not IPv4/TCP.
    pub packets_not_tcp: Counter,
    /// Tunnelled packets whose IPv4 or TCP checksum is wrong (never acted on).
    pub packets_bad_checksum: Counter,
    /// SYNs for a service this host does not serve.
    pub packets_no_service: Counter,
    /// Non-SYN packets of no known connection (answered with RST).
    pub packets_unknown_flow: Counter,
    /// Datagrams sent.
    pub datagrams_out: Counter,
    /// Datagrams the kernel refused to send.
    pub send_errors: Counter,
    /// System calls that sent datagrams (one per run to the redirector with UDP GSO:
    /// `tunnel_io::Batcher`).
    pub send_calls: Counter,
    /// Open connections.
    pub conns_active: Counter,
    /// Connections reset because nothing moved for the service's idle timeout.
    pub idle_timeouts: Counter,
    /// TCP keep-alive probes sent.
    pub keepalive_probes: Counter,
    /// Connections reset after unanswered keep-alive probes.
    pub keepalive_resets: Counter,
    /// Connections closed in order and remembered only by their last sequence numbers.
    pub conns_lingering: Counter,
    /// ACKs sent for closed connections (a client's retransmitted FIN).
    pub linger_acks: Counter,
    /// RSTs sent for segments of connections that were reset.
    pub linger_resets: Counter,
    /// Challenge ACKs sent for an RST or SYN that was not exactly in place (RFC 5961).
    pub challenge_acks: Counter,
    /// RSTs and SYNs on open connections dropped (RFC 5961: out of window, or over the
    /// challenge ACK limit).
    pub rst_syn_dropped: Counter,
    /// Connections ever opened.
    pub conns_total: Counter,
    /// Backend connects that failed (client got RST).
    pub backend_connect_failures: Counter,
    /// Connections the client reset.
    pub client_resets: Counter,
    /// Connections the backend reset.
    pub backend_resets: Counter,
    /// SYNs answered with a SYN cookie (no state kept).
    pub syn_cookies_sent: Counter,
    /// Handshake ACKs whose cookie checked: connections built.
    pub syn_cookies_accepted: Counter,
    /// Cookie SYN-ACKs sent again because their handshake had not completed.
    pub synacks_resent: Counter,
    /// Cookie SYN-ACKs not remembered for a resend: the table was full (a SYN flood).
    pub synacks_unkept: Counter,
    /// SYNs (and handshake ACKs) refused because the host is at `max_conns`.
    pub syn_dropped_host_cap: Counter,
    /// SYNs (and handshake ACKs) refused because the service is at its `max_conns`.
    pub syn_dropped_service_cap: Counter,
    /// ft machinery.
    pub ft: FtMetrics,
}

impl HostMetrics {
    /// Counts a datagram the opener refused.
    pub(super) fn on_drop(&self, reason: DropReason) {
        match reason {
            DropReason::Malformed(_) => self.dropped_malformed.inc(),
            DropReason::BadMac => self.dropped_bad_mac.inc(),
            DropReason::Replay => self.dropped_replay.inc(),
            DropReason::Misaddressed => self.dropped_misaddressed.inc(),
            DropReason::Stale => self.dropped_stale.inc(),
        }
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        e.build_info(
            "hydra-host",
            env!("CARGO_PKG_VERSION"),
            ack_channel::wire::VERSION,
        );
        e.histogram(
            "hydra_backend_connect_seconds",
            "How long connects to the local backend took, one per client connection",
            &self.backend_connect,
        );
        let c = "counter";
        e.sample(
            "hydra_datagrams_received_total",
            c,
            "UDP datagrams received",
            "",
            self.datagrams_in.get(),
        );
        e.sample(
            "hydra_recv_calls_total",
            c,
            "System calls that received datagrams (one per run of datagrams with UDP GRO)",
            "",
            self.recv_calls.get(),
        );
        for (reason, v) in [
            ("malformed", &self.dropped_malformed),
            ("bad_mac", &self.dropped_bad_mac),
            ("replay", &self.dropped_replay),
            ("misaddressed", &self.dropped_misaddressed),
            ("stale", &self.dropped_stale),
            ("not_authority", &self.dropped_not_authority),
            ("unexpected_type", &self.dropped_unexpected),
        ] {
            e.sample(
                "hydra_datagrams_dropped_total",
                c,
                "UDP datagrams dropped before use, by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        for (reason, v) in [
            ("not_tcp", &self.packets_not_tcp),
            ("bad_checksum", &self.packets_bad_checksum),
            ("no_service", &self.packets_no_service),
            ("unknown_flow", &self.packets_unknown_flow),
        ] {
            e.sample(
                "hydra_packets_dropped_total",
                c,
                "Tunnelled client packets not delivered to a connection, by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        e.sample(
            "hydra_datagrams_sent_total",
            c,
            "UDP datagrams sent",
            "",
            self.datagrams_out.get(),
        );
        e.sample(
            "hydra_send_errors_total",
            c,
            "UDP sends the kernel refused",
            "",
            self.send_errors.get(),
        );
        e.sample(
            "hydra_send_calls_total",
            c,
            "System calls that sent datagrams (one per run of datagrams to the redirector with UDP GSO)",
            "",
            self.send_calls.get(),
        );
        e.sample(
            "hydra_conns_superseded_total",
            c,
            "Connections left behind here whose 4-tuple a client reused for a new handshake",
            "",
            self.conns_superseded.get(),
        );
        e.sample(
            "hydra_heartbeat_ads_reused_total",
            c,
            "Heartbeats that repeated the last beat's services because the services lock was busy",
            "",
            self.heartbeat_ads_reused.get(),
        );
        e.sample(
            "hydra_connections_active",
            "gauge",
            "Client connections open",
            "",
            self.conns_active.get(),
        );
        e.sample(
            "hydra_connections_lingering",
            "gauge",
            "Connections closed in order, kept only as sequence numbers to answer retransmitted FINs",
            "",
            self.conns_lingering.get(),
        );
        e.sample(
            "hydra_idle_timeouts_total",
            c,
            "Connections reset after the service's idle timeout (an abandoned client)",
            "",
            self.idle_timeouts.get(),
        );
        e.sample(
            "hydra_keepalive_probes_total",
            c,
            "TCP keep-alive probes sent to silent clients",
            "",
            self.keepalive_probes.get(),
        );
        e.sample(
            "hydra_keepalive_resets_total",
            c,
            "Connections reset after KEEPALIVE_PROBES unanswered keep-alive probes",
            "",
            self.keepalive_resets.get(),
        );
        e.sample(
            "hydra_linger_acks_total",
            c,
            "ACKs sent for connections already closed (the client's FIN came again)",
            "",
            self.linger_acks.get(),
        );
        e.sample(
            "hydra_linger_resets_total",
            c,
            "RSTs sent for segments of connections already reset (the client had not heard)",
            "",
            self.linger_resets.get(),
        );
        e.sample(
            "hydra_challenge_acks_total",
            c,
            "Challenge ACKs sent for an RST or SYN not exactly in place (RFC 5961)",
            "",
            self.challenge_acks.get(),
        );
        e.sample(
            "hydra_rst_syn_ignored_total",
            c,
            "RSTs and SYNs on open connections ignored (RFC 5961: out of window, or a challenge)",
            "",
            self.rst_syn_dropped.get(),
        );
        e.sample(
            "hydra_connections_total",
            c,
            "Client connections accepted",
            "",
            self.conns_total.get(),
        );
        e.sample(
            "hydra_backend_connect_failures_total",
            c,
            "Backend connects that failed",
            "",
            self.backend_connect_failures.get(),
        );
        e.sample(
            "hydra_resets_total",
            c,
            "Connections ended by a reset, by side",
            "side=\"client\"",
            self.client_resets.get(),
        );
        e.sample(
            "hydra_resets_total",
            c,
            "Connections ended by a reset, by side",
            "side=\"backend\"",
            self.backend_resets.get(),
        );
        e.sample(
            "hydra_syn_cookies_total",
            c,
            "SYN cookies: sent (every SYN is answered statelessly) and accepted (handshake ACKs that built a connection)",
            "result=\"sent\"",
            self.syn_cookies_sent.get(),
        );
        e.sample(
            "hydra_syn_cookies_total",
            c,
            "SYN cookies: sent (every SYN is answered statelessly) and accepted (handshake ACKs that built a connection)",
            "result=\"accepted\"",
            self.syn_cookies_accepted.get(),
        );
        for (result, v) in [
            ("resent", &self.synacks_resent),
            ("unkept", &self.synacks_unkept),
        ] {
            e.sample(
                "hydra_synack_retries_total",
                c,
                "Cookie SYN-ACKs sent again because the handshake had not completed after 1, 2 or 4 s (resent), or not remembered for that because the table was full (unkept)",
                &format!("result=\"{result}\""),
                v.get(),
            );
        }
        for (reason, v) in [
            ("host_cap", &self.syn_dropped_host_cap),
            ("service_cap", &self.syn_dropped_service_cap),
        ] {
            e.sample(
                "hydra_syn_dropped_total",
                c,
                "New connections refused (SYN or handshake ACK left unanswered), by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        e.sample(
            "hydra_ft_views_total",
            c,
            "Views received that changed this host's view",
            "",
            self.ft.views.get(),
        );
        e.sample(
            "hydra_ft_progress_sent_total",
            c,
            "Progress datagrams sent to peers",
            "",
            self.ft.progress_sent.get(),
        );
        e.sample(
            "hydra_ft_progress_received_total",
            c,
            "Progress entries received from peers",
            "",
            self.ft.progress_received.get(),
        );
        e.sample(
            "hydra_ft_promotions_total",
            c,
            "Connections this host took over as the new primary",
            "",
            self.ft.promotions.get(),
        );
        e.sample(
            "hydra_packets_dropped_total",
            c,
            "Tunnelled client packets not delivered to a connection, by reason",
            "reason=\"ft_unknown_flow\"",
            self.ft.ft_unknown_flow.get(),
        );
        e.sample(
            "hydra_ft_repairs_total",
            c,
            "Hop-by-hop repair packets (client bytes a backup missed), by direction",
            "dir=\"sent\"",
            self.ft.repairs_sent.get(),
        );
        e.sample(
            "hydra_ft_repairs_total",
            c,
            "Hop-by-hop repair packets (client bytes a backup missed), by direction",
            "dir=\"received\"",
            self.ft.repairs_received.get(),
        );
        e.sample(
            "hydra_ft_repairs_total",
            c,
            "Hop-by-hop repair packets (client bytes a backup missed), by direction",
            "dir=\"dropped\"",
            self.ft.repairs_dropped.get(),
        );
        e.sample(
            "hydra_ft_forwarded_opens_total",
            c,
            "Connections built from the client's handshake ACK as a member forwarded it (this host had missed the client's own)",
            "",
            self.ft.forwarded_opens.get(),
        );
        let o = &self.ft.order;
        for (what, help, v) in [
            (
                "skipped",
                "Stamps skipped: their connection is not followed here",
                &o.skipped,
            ),
            (
                "refused",
                "Stamps refused: the queue was at its bound (repaired later)",
                &o.refused,
            ),
            (
                "asked",
                "Stamp repair requests sent to the primary",
                &o.asked,
            ),
            (
                "served",
                "Stamps sent in answer to repair requests",
                &o.served,
            ),
            (
                "gone",
                "Repair answers \"gone\": moved past stamps never had",
                &o.gone,
            ),
            (
                "abandoned",
                "Connections this member left: it missed their order",
                &o.abandoned,
            ),
            (
                "forgotten",
                "Stamps dropped from the history at its bound",
                &o.forgotten,
            ),
            (
                "foreign_evicted",
                "Foreign connections forgotten at the set's bound",
                &o.foreign_evicted,
            ),
            (
                "adopted",
                "Stamps a new primary adopted from its members at a failover",
                &o.adopted,
            ),
            (
                "voided",
                "Stamps a new primary issued void: no member had them",
                &o.voided,
            ),
            (
                "dropped",
                "Old primary's undelivered stamps dropped at a failover",
                &o.dropped,
            ),
            (
                "diverged",
                "Times this backup's delivered stamps differed from the primary's",
                &o.diverged,
            ),
            (
                "starved",
                "Connections this member left after waiting at their stamp for client bytes that did not come",
                &o.starved,
            ),
            (
                "sync_incomplete",
                "New primaries' syncs that ended at their bound without every member's complete answer",
                &o.sync_incomplete,
            ),
            (
                "left",
                "Total-order connections this host left, for any reason (its backend misses their later chunks)",
                &o.left,
            ),
            (
                "sync_answers",
                "Answers this member sent to a new primary's sync",
                &o.sync_answers,
            ),
            (
                "repair_ignored",
                "Stamp-repair messages ignored: not from or to the primary of this host's view, or no sequencer for the service here",
                &o.repair_ignored,
            ),
        ] {
            e.sample(&format!("hydra_order_{what}_total"), c, help, "", v.get());
        }
        e.sample(
            "hydra_ft_digests_sent_total",
            c,
            "Output-digest datagrams sent to peers (output agreement)",
            "",
            self.ft.digests_sent.get(),
        );
        e.sample(
            "hydra_ft_blocks_compared_total",
            c,
            "Output blocks of ft connections compared with the primary's, by result",
            "result=\"equal\"",
            self.ft
                .blocks_compared
                .get()
                .saturating_sub(self.ft.blocks_mismatched.get()),
        );
        e.sample(
            "hydra_ft_blocks_compared_total",
            c,
            "Output blocks of ft connections compared with the primary's, by result",
            "result=\"different\"",
            self.ft.blocks_mismatched.get(),
        );
        e.sample(
            "hydra_ft_divergent_skips_total",
            "counter",
            "Takeovers that passed over a member whose output differed from the primary's",
            "",
            self.ft.divergent_skips.get(),
        );
        e.sample(
            "hydra_ft_handoffs_total",
            "counter",
            "Connections handed to another member because this host's backend ended early, reset or stalled",
            "",
            self.ft.handoffs.get(),
        );
        for (reason, v) in [
            ("ended", &self.ft.dropped_ended),
            ("stalled", &self.ft.dropped_stalled),
            ("differs", &self.ft.dropped_differs),
            ("silent", &self.ft.dropped_silent),
        ] {
            e.sample(
                "hydra_ft_members_dropped_total",
                "counter",
                "Members dropped from a connection by this host as its speaker, by reason: its \
                 backend reset or ended early, it stalled, its output differed, or it never \
                 reported the connection",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        e.sample(
            "hydra_ft_exclusion_requests_total",
            "counter",
            "Exclusion requests sent to the view authority (a member leaving a connection, or dropped by its speaker)",
            "",
            self.ft.exclusion_requests.get(),
        );
        e.sample(
            "hydra_ft_exclusion_notices_total",
            "counter",
            "Exclusion notices from the view authority (who speaks for a connection)",
            "",
            self.ft.exclusion_notices.get(),
        );
        e.sample(
            "hydra_ft_left_out_of_view_total",
            "counter",
            "Connections this host left because it was out of the view (back in it, it never speaks for them)",
            "",
            self.ft.left_out_of_view.get(),
        );
        e.sample(
            "hydra_ft_divergent_members",
            "gauge",
            "Members (per connection) whose output differs from the primary's where it matters",
            "",
            self.ft.divergent_members.get(),
        );
        e.finish()
    }
}

/// Adds what a connection compared since `seen` to the host's counters.
pub(super) fn note_agreement(seen: &mut (u64, u64), f: &FtConn, m: &FtMetrics) {
    let now = f.agreement_counts();
    m.blocks_compared.add(now.0.saturating_sub(seen.0));
    m.blocks_mismatched.add(now.1.saturating_sub(seen.1));
    *seen = now;
}

/// Counters of the ft machinery, for `/metrics`.
#[derive(Debug, Default)]
pub struct FtMetrics {
    /// Views received that changed something.
    pub views: Counter,
    /// Progress datagrams sent to peers.
    pub progress_sent: Counter,
    /// Progress entries received from peers.
    pub progress_received: Counter,
    /// Promotions to primary (per connection).
    pub promotions: Counter,
    /// Packets of ft services for connections this host does not hold.
    pub ft_unknown_flow: Counter,
    /// Repair packets sent to backups that missed client bytes.
    pub repairs_sent: Counter,
    /// Repair packets received from the primary.
    pub repairs_received: Counter,
    /// Repair packets for no ft connection here, or from a node outside the view.
    pub repairs_dropped: Counter,
    /// Connections built from the client's handshake ACK as a member forwarded it (this
    /// host had missed the client's own).
    pub forwarded_opens: Counter,
    /// Digest datagrams sent to peers.
    pub digests_sent: Counter,
    /// Output blocks compared with the primary's (output agreement).
    pub blocks_compared: Counter,
    /// Output blocks that differed from the primary's.
    pub blocks_mismatched: Counter,
    /// Takeovers that passed over a member whose output differed.
    pub divergent_skips: Counter,
    /// (connection, member) pairs now divergent, at the last snapshot.
    pub divergent_members: Counter,
    /// Connections this host handed to another member as their speaker, because its own
    /// backend ended early, reset or stalled (issue #14).
    pub handoffs: Counter,
    /// Members this host, as a connection's speaker, dropped from it because their backend
    /// reset or ended early.
    pub dropped_ended: Counter,
    /// ... because they stalled (more than the stall time behind another member's output).
    pub dropped_stalled: Counter,
    /// ... because their output differed from ours for the stall time.
    pub dropped_differs: Counter,
    /// ... because they never reported the connection after its open.
    pub dropped_silent: Counter,
    /// Exclusion requests sent to the view authority.
    pub exclusion_requests: Counter,
    /// Exclusion notices received from the view authority.
    pub exclusion_notices: Counter,
    /// Connections this host left because it was out of the view (it missed their client
    /// bytes while out; back in the view, it never speaks for them).
    pub left_out_of_view: Counter,
    /// Total order (see `order.rs`): what the sequencers did and where they hit a bound.
    pub order: OrderMetrics,
}

/// Total-order counters: stamp repair, and each bound's outcome (issue 12, finding 3).
#[derive(Debug, Default)]
pub struct OrderMetrics {
    /// Stamps skipped: their connection is not followed here.
    pub skipped: Counter,
    /// Stamps refused: the backup's queue was at its bound (repair fetches them later).
    pub refused: Counter,
    /// Repair requests sent to the primary.
    pub asked: Counter,
    /// Stamps sent in answer to repair requests.
    pub served: Counter,
    /// Repair answers "gone": this backup moved past stamps it never had.
    pub gone: Counter,
    /// Connections this backup stopped following, and left.
    pub abandoned: Counter,
    /// Stamps forgotten from the history (at its bound).
    pub forgotten: Counter,
    /// Foreign connections forgotten early (the set at its bound).
    pub foreign_evicted: Counter,
    /// Stamps a new primary adopted from its members at a failover.
    pub adopted: Counter,
    /// Stamps a new primary issued void (no member it heard had them).
    pub voided: Counter,
    /// The old primary's undelivered stamps a backup dropped at a failover.
    pub dropped: Counter,
    /// Times a backup found its delivered stamps differ from the primary's.
    pub diverged: Counter,
    /// Connections a backup left after waiting at their stamp for bytes that did not come.
    pub starved: Counter,
    /// New primaries' syncs that ended without every member's complete answer.
    pub sync_incomplete: Counter,
    /// Total-order connections this host left, for any reason (its backend then misses
    /// their later chunks).
    pub left: Counter,
    /// Answers this member sent to a new primary's sync (`Synced`).
    pub sync_answers: Counter,
    /// Stamp-repair messages ignored: not from the primary of our view (or, a request, not
    /// to it), or for a service without a sequencer here.
    pub repair_ignored: Counter,
}

impl OrderMetrics {
    pub(super) fn add(&self, s: OrderStats) {
        self.skipped.add(s.skipped);
        self.refused.add(s.refused);
        self.asked.add(s.asked);
        self.served.add(s.served);
        self.gone.add(s.gone);
        self.abandoned.add(s.abandoned);
        self.forgotten.add(s.forgotten);
        self.foreign_evicted.add(s.foreign_evicted);
        self.adopted.add(s.adopted);
        self.voided.add(s.voided);
        self.dropped.add(s.dropped);
        self.diverged.add(s.diverged);
        self.starved.add(s.starved);
        self.sync_incomplete.add(s.sync_incomplete);
    }
}
