//! The host server's packet loop: one thread, one UDP socket, one smoltcp endpoint and one
//! backend socket per client connection, all driven by `mio`.
//!
//! Per event the loop touches only the connection concerned (a `HashMap` lookup by 4-tuple),
//! so the per-packet cost does not grow with the number of connections. Timers live in an
//! ordered set keyed by deadline.
//!
//! The bridge between a client connection and its backend keeps backpressure both ways: bytes
//! move from the backend only into free space of the endpoint's send buffer, and from the
//! endpoint only as fast as the backend socket accepts them (the rest stays in smoltcp's
//! receive buffer, shrinking the window the client sees). Half-close travels both ways (a
//! client FIN becomes `shutdown(Write)` on the backend socket, a backend EOF becomes a FIN),
//! and so does reset (client RST aborts the backend socket with SO_LINGER 0; a backend reset
//! or refused connect aborts the client connection with RST).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::order::{ConnView, NeedAnswer, OrderStats, Sequencer, Stamp};
use ack_channel::{
    emit_digests, emit_exclusions, emit_order, emit_progress, parse_digests, parse_exclusions,
    parse_order, parse_progress, DigestEntry, DropReason, Epoch, ExclusionEntry, Header, Heartbeat,
    Incarnation, Member, Mode, MsgType, Opener, OrderEntry, OrderRepair, OrderRepairKind,
    ProgressEntry, Receiver, ReplicaId, Sealer, ServiceId, View, DIGESTS_PER_DATAGRAM,
    EXCLUSIONS_PER_DATAGRAM, ORDER_PER_DATAGRAM, PROGRESS_PER_DATAGRAM,
};
use control::metrics::{Counter, Exposition};
use ft_tcp::agreement::BlockDigest;
use ft_tcp::synack_retry::SynAckRetry;
use ft_tcp::syncookie::{self, CookieJar, SynOpts};
use ft_tcp::{
    rewrite, DropReasons, Endpoint, EndpointConfig, FlowKey, FtConfig, FtConn, OutputEnd,
    PacketError, PlainConn, Progress, Role, SeqNumber, TcpMeta, TcpState,
};
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use smoltcp::time::{Duration as SDuration, Instant as SInstant};

use crate::services::{FtOpts, Services};

const UDP: Token = Token(0);
/// Datagrams read per wake-up before the loop services timers again.
const RECV_BATCH: usize = 256;
/// How often the connection table snapshot for `status` is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);
/// How often a total-order primary repeats its recent stamps.
const ORDER_RESEND_EVERY: Duration = Duration::from_millis(20);
/// A total-order sequencer with work that has not moved for this long is logged (what holds
/// it up), once per stay.
const ORDER_STUCK_AFTER: Duration = Duration::from_secs(2);
/// The most connections listed one by one in `status`.
const SNAPSHOT_MAX: usize = 1000;
/// How often idle connections are looked for, and how many are reset at most each time:
/// small, frequent batches, so that thousands of connections abandoned together are reset
/// without one burst of RSTs crowding out everyone else's packets.
const REAP_EVERY: Duration = Duration::from_millis(100);
const REAP_BATCH: usize = 256;
/// How long a connection that closed in order is remembered after its endpoint is gone
/// (smoltcp keeps TIME-WAIT 10 s, Linux 60 s): the client's retransmitted FINs still get
/// their ACK, a stray segment of the old connection gets silence, not a reset.
const LINGER: Duration = Duration::from_secs(15);
/// Unanswered keep-alive probes before a connection is reset (Linux's tcp_keepalive_probes
/// is 9, over 75 s intervals; ours come every third of the keep-alive time).
const KEEPALIVE_PROBES: u32 = 3;
/// Challenge ACKs a host sends per second at most (RFC 5961 §7; Linux's
/// tcp_challenge_ack_limit was 1000): an attacker's guesses must not make us a reflector.
const CHALLENGE_ACKS_PER_SEC: u32 = 1000;
/// Expired linger records dropped per loop iteration at most (expiry is amortised).
const LINGER_EXPIRE_BATCH: usize = 256;

/// Counters the admin API exposes at `/metrics`.
#[derive(Debug, Default)]
pub struct HostMetrics {
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
    fn on_drop(&self, reason: DropReason) {
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

/// One connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    /// Client `ip:port`.
    pub client: String,
    /// Service `ip:port`.
    pub service: String,
    /// TCP state of the client connection.
    pub state: String,
    /// Whether the backend socket is connected.
    pub backend_connected: bool,
    /// Bytes waiting for the backend.
    pub to_backend: usize,
    /// Bytes queued for the client, unacknowledged.
    pub to_client: usize,
    /// The FT layer's state, in ft mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ft: Option<FtStatus>,
}

/// The FT layer of one connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FtStatus {
    /// This replica's role for the connection.
    pub role: &'static str,
    /// The ACK last sent to the client (primary): every member holds the bytes before it.
    pub gate: Option<u32>,
    /// The client's latest ACK of our bytes.
    pub client_ack: Option<u32>,
    /// Unacknowledged output kept for failover and retransmission.
    pub shadow_bytes: usize,
    /// Each member's next expected client byte (node id, rcv_nxt).
    pub members: Vec<(u32, u32)>,
    /// Segments resent by the FT layer.
    pub retransmits: u64,
    /// Promotions of this replica for this connection.
    pub promotions: u64,
    /// Repair segments sent (as primary).
    pub repairs_sent: u64,
    /// Repair segments received.
    pub repairs_received: u64,
    /// Client bytes held for repair.
    pub repair_log_bytes: usize,
    /// Output agreement as this replica sees it.
    pub agreement: AgreementView,
}

/// Output agreement of one connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgreementView {
    /// Output blocks compared with the primary's.
    pub blocks_compared: u64,
    /// Blocks that differed.
    pub blocks_different: u64,
    /// Attestations: (member, bytes): this replica vouches that the member's output equals
    /// the primary's from the start of the stream up to that many bytes.
    pub attests: Vec<(u32, u64)>,
    /// (member, byte offset of the first 16 KiB block where its output differed).
    pub differs_from_byte: Vec<(u32, u64)>,
    /// Members not eligible to take this connection over: their output differs from the
    /// primary's in bytes the client has not acknowledged, or in length.
    pub divergent: Vec<u32>,
}

/// State shared between the dataplane, the admin API and the health checker.
#[derive(Debug, Default)]
pub struct Shared {
    /// vhosts and port options.
    pub services: Mutex<Services>,
    /// Counters.
    pub metrics: HostMetrics,
    /// The last connection snapshot.
    pub conns: Mutex<Vec<ConnStatus>>,
    /// The ft views this host holds: service, epoch, members (primary first).
    pub views: Mutex<Vec<(String, u64, Vec<u32>)>>,
    /// How many connections are in each TCP state (all of them, not only those listed).
    pub conn_states: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Services whose backend the health checker should probe now (a connection to it was
    /// refused or reset), and the signal that wakes it.
    pub health_now: (Mutex<Vec<SocketAddrV4>>, std::sync::Condvar),
    /// This host's life (the wall clock at start, in nanoseconds).
    pub incarnation: Incarnation,
    /// The redirector's life as last heard (0: not yet), named in heartbeats and in
    /// packets for clients.
    pub redirector_incarnation: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Notes the redirector's life from one of its views or welcomes (the opener lets no
    /// older life through after a newer one).
    pub fn heard_redirector(&self, life: Incarnation) {
        self.redirector_incarnation
            .fetch_max(life.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The redirector `id` in the life last heard of, as a receiver.
    pub fn redirector(&self, id: ReplicaId) -> Receiver {
        Receiver::node(
            id,
            Incarnation(
                self.redirector_incarnation
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        )
    }

    /// Asks the health checker to probe `service`'s backend now.
    pub fn poke_health(&self, service: SocketAddrV4) {
        // INVARIANT: no code panics while holding the lock.
        let mut q = self.health_now.0.lock().expect("health lock");
        if !q.contains(&service) {
            q.push(service);
        }
        self.health_now.1.notify_one();
    }

    /// Waits up to `timeout` for a poke; returns the services poked.
    pub fn wait_health(&self, timeout: Duration) -> Vec<SocketAddrV4> {
        // INVARIANT: no code panics while holding the lock.
        let q = self.health_now.0.lock().expect("health lock");
        let (mut q, _) = self
            .health_now
            .1
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .expect("health lock");
        std::mem::take(&mut *q)
    }
}

/// Settings of the dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The redirector.
    pub redirector: SocketAddr,
    /// The redirector's id: the only sender whose views and welcomes are taken.
    pub redirector_id: ReplicaId,
    /// Where the redirector and peers reach us (named in heartbeats).
    pub advertise: SocketAddrV4,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Endpoint tunables.
    pub endpoint: EndpointConfig,
    /// Most connections on this host at once.
    pub max_conns: u32,
    /// Send runs of datagrams to the redirector with UDP GSO.
    pub udp_gso: bool,
    /// Makes and checks SYN cookies (secret derived from the cluster key).
    pub cookies: CookieJar,
}

/// A connection's TCP side: plain (redirect mode) or with the FT layer (ft mode).
enum Tcp {
    Plain(Box<PlainConn>),
    Ft(Box<FtConn>),
}

impl Tcp {
    fn ep(&mut self) -> &mut Endpoint {
        match self {
            Tcp::Plain(p) => p.endpoint(),
            Tcp::Ft(f) => f.endpoint(),
        }
    }

    fn ep_ref(&self) -> &Endpoint {
        match self {
            Tcp::Plain(p) => p.endpoint_ref(),
            Tcp::Ft(f) => f.endpoint_ref(),
        }
    }
}

/// Seconds of wall-clock time: SYN cookies are valid for a period of it, on every replica.
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A connection that is over, reduced to what TCP still needs to answer its late segments.
/// Its endpoint, buffers and backend socket are gone.
enum Ending {
    /// Closed in order: the sequence numbers of its last ACK (client space), for the
    /// client's retransmitted FIN.
    Closed {
        /// Our next sequence number (after our FIN).
        snd_nxt: SeqNumber,
        /// The client's next sequence number (after its FIN).
        rcv_nxt: SeqNumber,
    },
    /// Reset (by either side, or for being idle): later data gets an RST, as from a Linux
    /// port with no socket (RFC 9293 §3.10.7.1), and never silence.
    Reset,
    /// This replica left an ft connection that lives on at other members (its backend
    /// failed, or it was handed on): its late segments are none of our business, and a
    /// cookie-valid one must not open it again here.
    Silent,
}

struct Linger {
    ending: Ending,
    until: Instant,
}

/// The backend side of a connection's bridge.
///
/// ```text
///   Connecting --connected--> Open { eof, fin_sent } --eof && fin_sent--> Finished
///       |                       |
///       +-- refused, reset, ----+--> Aborted (the client is reset too, if it is not yet)
///           client reset, idle
/// ```
enum Backend {
    /// The non-blocking connect is under way.
    Connecting(TcpStream),
    /// Connected; `eof`: the backend closed its side (a FIN went to the client);
    /// `fin_sent`: the client's FIN was passed on (`shutdown(Write)`).
    Open {
        stream: TcpStream,
        eof: bool,
        fin_sent: bool,
    },
    /// Both directions closed in order; the socket is gone.
    Finished,
    /// Closed with a reset, or never connected; the socket is gone.
    Aborted,
}

impl Backend {
    /// Moves to `next` (Finished or Aborted), handing back the socket to close.
    fn end(&mut self, next: Backend) -> Option<TcpStream> {
        match std::mem::replace(self, next) {
            Backend::Connecting(s) | Backend::Open { stream: s, .. } => Some(s),
            Backend::Finished | Backend::Aborted => None,
        }
    }
}

struct Conn {
    key: FlowKey,
    /// The epoch of the client packet that opened it here. A member back in the view since
    /// a later epoch (it was out, or restarted) was no member of it then, or left it since.
    opened: Epoch,
    tcp: Tcp,
    backend: Backend,
    /// Readiness of the backend socket, as the poller last reported it.
    readable: bool,
    writable: bool,
    deadline: Option<SInstant>,
    /// Output-agreement counts already added to the metrics.
    agreement_seen: (u64, u64),
    /// Handoffs and dropped members already added to the metrics.
    handoffs_seen: (u64, DropReasons),
    /// This host left the connection (ft), and the health checker was asked to look.
    retired_seen: bool,
    /// The service is in total order: client bytes reach the backend only as granted.
    total: bool,
    /// Client bytes the sequencer granted and the backend has not taken yet.
    credit: usize,
    /// The furthest client byte (C) another member reported holding for this connection,
    /// its `rcv_nxt` without the client's FIN.
    peer_rcv: Option<SeqNumber>,
    /// Total order, at the primary, once this member left the connection: where in C its
    /// stamps end. It stamps the connection on for the members that still follow it, from
    /// their reports (its own stack is fed no more).
    order_pos: Option<SeqNumber>,
    /// This member left the connection while a backup: it skipped the connection's stamps
    /// since, and does not know where they end (it never stamps it).
    order_lost: bool,
    /// Bytes the backend has written back (the sequencer's sign of an answer).
    from_backend: u64,
    /// When a byte last moved either way (or the connection opened): for the idle timeout.
    last_active: Instant,
    /// When the last segment came from the client: for keep-alive.
    last_client_rx: Instant,
    /// Keep-alive probes sent since then.
    probes: u32,
}

/// The packet loop.
pub struct Dataplane {
    poll: Poll,
    udp: UdpSocket,
    cfg: DataplaneConfig,
    opener: Opener,
    sealer: Arc<Sealer>,
    shared: Arc<Shared>,
    flows: HashMap<FlowKey, usize>,
    conns: HashMap<usize, Conn>,
    /// Connections per service (for the caps).
    per_service: HashMap<SocketAddrV4, u32>,
    /// Connections that closed in order, by 4-tuple.
    lingering: HashMap<FlowKey, Linger>,
    /// The cookie SYN-ACKs sent whose handshake has not completed here, sent again after 1,
    /// 2 and 4 s (`ft_tcp::synack_retry`: a lost handshake ACK must not hang a connection
    /// whose server speaks first).
    synacks: SynAckRetry,
    /// The same, oldest first (every record lives `LINGER`), for amortised expiry.
    linger_queue: VecDeque<(Instant, FlowKey)>,
    /// Challenge ACKs left this second, and when the second began.
    challenges: (u32, Instant),
    next_id: usize,
    timers: BTreeSet<(SInstant, usize)>,
    start: Instant,
    seed: u64,
    out: Vec<Vec<u8>>,
    sealed: Vec<u8>,
    /// Datagrams to the redirector, sent in runs (UDP GSO) at the end of each loop iteration.
    to_authority: tunnel_io::Batcher,
    me: ReplicaId,
    /// The latest view of each ft service.
    views: HashMap<SocketAddrV4, ServiceView>,
    /// The newest epoch the redirector's client packets carried, per ft service: above the
    /// view's, the view we hold is behind (a newer one is on its way or was lost).
    heard_epochs: HashMap<SocketAddrV4, Epoch>,
    /// Progress reports waiting to be sent this loop iteration.
    progress_out: Vec<ProgressEntry>,
    /// Repair packets for peers: service, peer id, packet.
    repairs_out: Vec<(SocketAddrV4, u32, Vec<u8>)>,
    /// Digests of our output waiting to be sent this loop iteration.
    digests_out: Vec<DigestEntry>,
    /// Exclusion requests to the view authority, waiting to be sent this loop iteration.
    exclude_out: Vec<ExclusionEntry>,
    /// Acknowledgements of the authority's exclusion notices, likewise.
    excluded_acks: Vec<ExclusionEntry>,
    /// Total-order sequencers of the services in `--order total`.
    sequencers: HashMap<SocketAddrV4, Sequencer>,
    /// When the primary repeats its recent stamps next (the last datagram may be lost).
    order_resend_at: Instant,
}

/// An ft service's view as this host holds it.
#[derive(Debug, Clone)]
struct ServiceView {
    epoch: Epoch,
    /// Members, primary first, each in its current life.
    members: Vec<Member>,
    /// The first epoch of a view that named this host in its current life. A group
    /// datagram stamped with an older epoch was sealed before we joined (recorded before we
    /// restarted, or a peer's message for our earlier life) and is refused.
    joined: Epoch,
    /// The life of the authority that sent the view: members' `since` epochs compare only
    /// within one.
    authority: Incarnation,
}

impl ServiceView {
    fn member(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

fn digest_entry(key: FlowKey, d: BlockDigest) -> DigestEntry {
    DigestEntry {
        client: key.client,
        service: key.service,
        index: d.index,
        len: d.len,
        fin: d.fin,
        digest: d.digest,
    }
}

/// Adds what a connection compared since `seen` to the host's counters.
fn note_agreement(seen: &mut (u64, u64), f: &FtConn, m: &FtMetrics) {
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
    fn add(&self, s: OrderStats) {
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

fn resize_socket_buffers(udp: &UdpSocket) {
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
fn sequencer_for(ft: &FtOpts) -> Sequencer {
    Sequencer::new(Duration::from_millis(u64::from(ft.quiet_ms)))
        .with_stall(Duration::from_millis(u64::from(ft.stall_ms)))
}

/// The last ACK of a connection that closed in order (our next sequence number, the
/// client's next), for its FIN when it comes again.
fn last_ack(key: FlowKey, snd_nxt: SeqNumber, rcv_nxt: SeqNumber) -> Vec<u8> {
    rewrite::build(key.service, key.client, snd_nxt, rcv_nxt, 0, &[], false)
}

/// Ends the backend side with a reset (if it still has a socket) and stops polling it.
fn reset_backend(registry: &mio::Registry, backend: &mut Backend) {
    if let Some(mut s) = backend.end(Backend::Aborted) {
        abort_backend(&s);
        let _ = registry.deregister(&mut s);
    }
}

fn abort_backend(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    // SO_LINGER 0: close sends RST instead of FIN (how a reset crosses the bridge).
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(stream, sockopt::Linger, &linger);
}

/// Moves bytes across one connection's bridge: the backend's connect, bytes both ways with
/// backpressure, half-close both ways. Returns (reset the client, reset the backend).
fn bridge(
    c: &mut Conn,
    sequencers: &mut HashMap<SocketAddrV4, Sequencer>,
    m: &HostMetrics,
) -> (bool, bool) {
    if let Backend::Connecting(s) = &c.backend {
        if c.writable {
            match (s.take_error(), s.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    if let Some(stream) = c.backend.end(Backend::Aborted) {
                        c.backend = Backend::Open {
                            stream,
                            eof: false,
                            fin_sent: false,
                        };
                    }
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => c.writable = false,
                _ => {
                    m.backend_connect_failures.inc();
                    tracing::warn!(client = %c.key.client, "backend refused the connection; resetting the client");
                    return (true, true);
                }
            }
        }
    }
    let closed = c.tcp.ep_ref().state() == TcpState::Closed;
    let Backend::Open {
        stream: s,
        eof,
        fin_sent,
    } = &mut c.backend
    else {
        return match c.backend {
            // Never connected (the connect failed at once): reset the client.
            Backend::Aborted => (!closed, false),
            // The client went away while the connect was under way.
            Backend::Connecting(_) => (false, closed),
            Backend::Finished | Backend::Open { .. } => (false, false),
        };
    };
    // Backend -> client, only into free send-buffer space (backpressure).
    while c.readable && !*eof && c.tcp.ep().may_send() && c.tcp.ep().send_space() > 0 {
        let mut res = Ok(0);
        c.tcp.ep().send_from(|buf| {
            res = s.read(buf);
            *res.as_ref().unwrap_or(&0)
        });
        match res {
            Ok(0) => {
                *eof = true;
                c.tcp.ep().close();
            }
            Ok(n) => {
                c.from_backend += n as u64;
                c.last_active = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                m.backend_resets.inc();
                return (true, true);
            }
        }
    }
    // Client -> backend, as fast as the backend takes it (in total order, only the bytes
    // the service's sequencer granted).
    while c.writable && !*fin_sent && c.tcp.ep().recv_queue() > 0 && (!c.total || c.credit > 0) {
        let mut res = Ok(0);
        let limit = if c.total { c.credit } else { usize::MAX };
        c.tcp.ep().recv_into(|buf| {
            let n = buf.len().min(limit);
            res = s.write(&buf[..n]);
            *res.as_ref().unwrap_or(&0)
        });
        match res {
            Ok(n) if c.total => {
                c.credit -= n.min(c.credit);
                if let Some(q) = sequencers.get_mut(&c.key.service) {
                    q.on_delivered(c.key, n, Instant::now());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                m.backend_resets.inc();
                return (true, true);
            }
        }
    }
    // Client half-close -> backend half-close, once everything was delivered.
    let state = c.tcp.ep().state();
    if !*fin_sent
        && c.tcp.ep().recv_queue() == 0
        && !c.tcp.ep().may_recv()
        && !matches!(
            state,
            TcpState::Listen | TcpState::SynReceived | TcpState::Closed
        )
    {
        let _ = s.shutdown(Shutdown::Write);
        *fin_sent = true;
    }
    if state == TcpState::Closed && !(*fin_sent && *eof) {
        // The client reset the connection: reset the backend's too.
        m.client_resets.inc();
        return (false, true);
    }
    (false, false)
}

impl Dataplane {
    /// Binds the UDP socket. `seed` varies smoltcp's initial sequence numbers between runs.
    pub fn new(
        cfg: DataplaneConfig,
        opener: Opener,
        sealer: Sealer,
        shared: Arc<Shared>,
        seed: u64,
    ) -> io::Result<Self> {
        let me = sealer.sender();
        let sealer = Arc::new(sealer);
        let poll = Poll::new()?;
        let std_udp = std::net::UdpSocket::bind(cfg.listen)?;
        std_udp.set_nonblocking(true)?;
        // Heartbeats leave from their own thread through the same socket (same source
        // address, which the redirector hands to peers), so that a busy packet loop never
        // delays them into a false failure detection.
        // (A dup shares O_NONBLOCK with the packet loop's socket: it stays non-blocking; a
        // full send buffer loses one heartbeat, counted as a send error.)
        let hb_udp = std_udp.try_clone()?;
        {
            let (sealer, shared, cap) = (sealer.clone(), shared.clone(), cfg.heartbeat);
            let to = HeartbeatTo {
                addr: cfg.redirector,
                id: cfg.redirector_id,
                me: cfg.advertise,
            };
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || heartbeat_loop(&hb_udp, &sealer, &shared, to, cap))?;
        }
        let mut udp = UdpSocket::from_std(std_udp);
        resize_socket_buffers(&udp);
        // Runs of datagrams the redirector sends with GSO arrive as one buffer.
        if !tunnel_io::enable_gro(&udp) {
            tracing::info!("UDP GRO not available: datagrams are received one by one");
        }
        let udp_gso = cfg.udp_gso;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        Ok(Dataplane {
            poll,
            udp,
            cfg,
            opener,
            sealer,
            shared,
            flows: HashMap::new(),
            conns: HashMap::new(),
            per_service: HashMap::new(),
            lingering: HashMap::new(),
            synacks: SynAckRetry::default(),
            linger_queue: VecDeque::new(),
            challenges: (CHALLENGE_ACKS_PER_SEC, Instant::now()),
            next_id: 1,
            timers: BTreeSet::new(),
            start: Instant::now(),
            seed,
            out: Vec::new(),
            sealed: Vec::new(),
            to_authority: tunnel_io::Batcher::new(udp_gso),
            me,
            views: HashMap::new(),
            heard_epochs: HashMap::new(),
            progress_out: Vec::new(),
            repairs_out: Vec::new(),
            digests_out: Vec::new(),
            exclude_out: Vec::new(),
            excluded_acks: Vec::new(),
            sequencers: HashMap::new(),
            order_resend_at: Instant::now(),
        })
    }

    fn stamp(&self, t: Instant) -> SInstant {
        SInstant::from_micros(t.saturating_duration_since(self.start).as_micros() as i64)
    }

    /// Runs forever (until an unrecoverable I/O error of the poller).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 65536];
        let mut next_snapshot = Instant::now();
        let mut next_reap = Instant::now();
        let mut dirty: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            let mut wake = next_snapshot.min(next_reap);
            if let Some((t, _)) = self.timers.first() {
                let t = self.start + Duration::from_micros(t.total_micros().max(0) as u64);
                wake = wake.min(t);
            }
            if let Some(t) = self.order_wake(now) {
                wake = wake.min(t);
            }
            if let Some(t) = self.synacks.wake_at() {
                wake = wake.min(t);
            }
            let timeout = wake.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            dirty.clear();
            let mut udp_ready = false;
            for ev in events.iter() {
                if ev.token() == UDP {
                    udp_ready = true;
                    continue;
                }
                let id = ev.token().0;
                if let Some(c) = self.conns.get_mut(&id) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.readable = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        c.writable = true;
                    }
                    dirty.push(id);
                }
            }
            if udp_ready {
                self.drain_udp(&mut buf, &mut dirty);
            }
            let now = Instant::now();
            let snow = self.stamp(now);
            while let Some(&(t, id)) = self.timers.first() {
                if t > snow {
                    break;
                }
                self.timers.pop_first();
                if let Some(c) = self.conns.get_mut(&id) {
                    c.deadline = None;
                    dirty.push(id);
                }
            }
            dirty.sort_unstable();
            dirty.dedup();
            for &id in &dirty {
                self.service(id, snow);
            }
            for id in self.run_order() {
                self.service(id, snow);
            }
            // The connections' packets first: progress reports to the members below cost a
            // system call each, and a reply to the client should not wait for them.
            self.flush_tunnel();
            self.flush_progress();
            self.expire_lingers(now);
            self.resend_synacks(now);
            if now >= next_reap {
                self.reap_idle(now, snow);
                next_reap = now + REAP_EVERY;
            }
            if now >= next_snapshot {
                self.snapshot();
                next_snapshot = now + SNAPSHOT_EVERY;
            }
            self.flush_tunnel();
        }
    }

    fn drain_udp(&mut self, buf: &mut [u8], dirty: &mut Vec<usize>) {
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

    /// One datagram from the redirector or a peer (opened here first).
    fn on_datagram(&mut self, datagram: &[u8], dirty: &mut Vec<usize>) {
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
    fn is_fresh_group(&self, h: &Header) -> bool {
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

    /// Delivers one client packet; returns the connection it touched.
    /// A client packet the redirector sent under view `epoch`.
    fn on_client_packet(&mut self, packet: &[u8], epoch: Epoch) -> Option<usize> {
        let m = &self.shared.metrics;
        // Checked before anything acts on it: a damaged ACK must not move the FT layer's
        // client_ack, damaged bytes must not enter the repair log.
        let meta = match TcpMeta::parse_checked(packet) {
            Ok(meta) => meta,
            Err(PacketError::Checksum) => {
                m.packets_bad_checksum.inc();
                tracing::trace!("client packet with a bad checksum dropped");
                return None;
            }
            Err(_) => {
                m.packets_not_tcp.inc();
                return None;
            }
        };
        let key = meta.inbound_flow();
        let mut existing = self.flows.get(&key).copied();
        // A linger record never stands beside a live connection of its 4-tuple: look for one
        // only when there is none (not on every packet of an open connection).
        if existing.is_none() && self.lingering.contains_key(&key) && !self.on_lingering(key, &meta)
        {
            return None;
        }
        let wall = Instant::now();
        let now = self.stamp(wall);
        if let Some(id) = existing {
            let state = self.conns.get(&id).map(|c| c.tcp.ep_ref().state());
            if meta.is_syn() && matches!(state, Some(TcpState::TimeWait | TcpState::Closed)) {
                // A new SYN on a 4-tuple whose old connection is over: the client reused the
                // port.
                self.remove(id);
                existing = None;
            } else if meta.is_syn() && self.is_retired(id) {
                // A new SYN on the 4-tuple of a connection this member left: it never speaks
                // for that one again, and the client's FIN or RST that would have ended it
                // here may never come (we were out of the view when the client closed). Kept,
                // it swallowed the SYN (a member that left has no challenge ACK to send): when
                // this member was the view's primary, nobody answered, and the client's
                // connect timed out (the soak, seed 961789355045568426, 12 s after a
                // partition). A forged SYN costs nothing here: we left that connection.
                tracing::debug!(client = %key.client, "SYN on the 4-tuple of a connection this member left: it goes, the SYN is a new connection");
                self.shared.metrics.conns_superseded.inc();
                self.remove(id);
                existing = None;
            } else if self.completes_a_newer_handshake(id, key, &meta) {
                // The client reused the 4-tuple of a connection we still hold: another member
                // already reset it (replicas reap idle connections in their own order), the
                // client's port was free again, and this segment completes a handshake with
                // our SYN cookie. The old connection is over for the client; ours was left
                // behind. Without this a backup fed the new connection's segments to the old
                // one and reported the old one's progress under the same 4-tuple: the new
                // connection stalled at the primary's gate.
                tracing::debug!(client = %key.client, "4-tuple reused by a new connection: the old one was left behind here");
                self.shared.metrics.conns_superseded.inc();
                self.remove(id);
                existing = None;
            }
        }
        let id = match existing {
            Some(id) => id,
            None if meta.is_syn() => {
                self.on_syn(key, packet);
                return None;
            }
            None => self.on_handshake_ack(key, &meta, now, epoch)?,
        };
        if (meta.flags.rst || meta.is_syn()) && !self.screen_rst_syn(id, &meta) {
            return None;
        }
        let c = self.conns.get_mut(&id)?;
        if meta.payload_len > 0 || meta.flags.fin {
            c.last_active = wall;
        }
        c.last_client_rx = wall;
        c.probes = 0;
        self.out.clear();
        match &mut c.tcp {
            Tcp::Plain(ep) => ep.handle_packet(now, packet, &mut self.out),
            Tcp::Ft(f) => f.handle_client_packet(now, packet),
        }
        self.flush_out(key.service);
        Some(id)
    }

    /// A repair packet from a peer: client bytes this replica missed, for a connection it
    /// holds; or, for one it lacks, the client's handshake ACK, which a member that holds
    /// the connection forwards when we never reported it (`FtConn::forward_handshake`): it
    /// opens the connection here as the client's own would, if its SYN cookie checks. Only
    /// members of the service's view may repair.
    fn on_repair(&mut self, from: &Header, packet: &[u8]) -> Option<usize> {
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

    /// The members of the service's current view, primary first.
    fn members_of(&self, service: SocketAddrV4) -> Option<Vec<u32>> {
        let v = self.views.get(&service)?;
        Some(v.members.iter().map(|m| m.id.0).collect())
    }

    /// A segment for a connection that is over. Closed in order: a retransmitted FIN (or
    /// data) gets the last ACK again. Reset: anything but an RST gets an RST. In ft mode only
    /// the primary answers. An RST or a new SYN ends the record. Returns whether the segment
    /// goes on as one of no known connection (a SYN).
    fn on_lingering(&mut self, key: FlowKey, meta: &TcpMeta) -> bool {
        if meta.flags.rst || meta.is_syn() {
            self.lingering.remove(&key);
            return meta.is_syn();
        }
        let speaks = self
            .members_of(key.service)
            .is_none_or(|m| m.first() == Some(&self.me.0));
        let m = &self.shared.metrics;
        let reply = match self.lingering.get(&key).map(|l| &l.ending) {
            _ if !speaks => None,
            Some(Ending::Closed { snd_nxt, rcv_nxt }) if meta.flags.fin || meta.payload_len > 0 => {
                m.linger_acks.inc();
                Some(last_ack(key, *snd_nxt, *rcv_nxt))
            }
            Some(Ending::Reset) => {
                m.linger_resets.inc();
                meta.reset_reply()
            }
            Some(Ending::Silent) => None,
            _ => None,
        };
        if let Some(p) = reply {
            self.send_to_client(key.service, &p);
        }
        false
    }

    /// Remembers a connection that is over by what its late segments need. One that closed
    /// in order sends its last ACK at once if the client has not had it (the FT gate held
    /// it back).
    fn linger(&mut self, key: FlowKey, ending: Ending, told: bool) {
        let until = Instant::now() + LINGER;
        if let (false, Ending::Closed { snd_nxt, rcv_nxt }) = (told, &ending) {
            self.send_to_client(key.service, &last_ack(key, *snd_nxt, *rcv_nxt));
            self.shared.metrics.linger_acks.inc();
        }
        self.lingering.insert(key, Linger { ending, until });
        self.linger_queue.push_back((until, key));
    }

    /// Forgets linger records whose time is up, a bounded number per call.
    fn expire_lingers(&mut self, now: Instant) {
        for _ in 0..LINGER_EXPIRE_BATCH {
            match self.linger_queue.front() {
                Some(&(t, key)) if t <= now => {
                    self.linger_queue.pop_front();
                    // A record replaced since (the 4-tuple closed again) lives on.
                    if self.lingering.get(&key).is_some_and(|l| l.until <= now) {
                        self.lingering.remove(&key);
                    }
                }
                _ => break,
            }
        }
    }

    /// RFC 5961 for an RST or a SYN on an open connection: only an RST at exactly the next
    /// expected sequence number reaches the stack; one elsewhere in the window, and any
    /// SYN, gets a challenge ACK (from the primary only, at most CHALLENGE_ACKS_PER_SEC per
    /// second); the rest is dropped. Returns whether the segment goes on to the stack.
    fn screen_rst_syn(&mut self, id: usize, meta: &TcpMeta) -> bool {
        use ft_tcp::rfc5961::{screen_rst, Screen};
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let (window, challenge) = match &c.tcp {
            Tcp::Plain(p) => (p.rst_window(), p.challenge_ack()),
            Tcp::Ft(f) => (f.rst_window(), f.challenge_ack()),
        };
        let verdict = match (meta.flags.rst, window) {
            (true, Some((exact, edge))) => screen_rst(SeqNumber(meta.seq), &exact, edge),
            // Nothing sent yet: nothing an attacker could aim at either.
            (true, None) => Screen::Accept,
            (false, _) => Screen::Challenge,
        };
        match verdict {
            Screen::Accept => return true,
            Screen::Drop => {}
            Screen::Challenge => {
                let now = Instant::now();
                if now.duration_since(self.challenges.1) >= Duration::from_secs(1) {
                    self.challenges = (CHALLENGE_ACKS_PER_SEC, now);
                }
                if let (Some(p), true) = (challenge, self.challenges.0 > 0) {
                    self.challenges.0 -= 1;
                    self.send_to_client(c.key.service, &p);
                    self.shared.metrics.challenge_acks.inc();
                }
            }
        }
        self.shared.metrics.rst_syn_dropped.inc();
        false
    }

    /// A client's SYN: answered with a SYN cookie and forgotten (nothing is kept or connected
    /// before the handshake completes). In ft mode only the view's first member answers; the
    /// others build the connection from the client's ACK like it.
    fn on_syn(&mut self, key: FlowKey, packet: &[u8]) {
        let m = &self.shared.metrics;
        let Some(seg) = rewrite::parse(packet) else {
            m.packets_not_tcp.inc();
            return;
        };
        let opt = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services.serving(key.service).map(|p| (p.mode, p.max_conns))
        };
        let Some((mode, max)) = opt else {
            m.packets_no_service.inc();
            tracing::debug!(service = %key.service, "SYN for a service not served here");
            return;
        };
        if mode == Mode::Ft {
            match self.views.get(&key.service) {
                None => {
                    // No view yet: the redirector does not count this host as a member.
                    m.ft.ft_unknown_flow.inc();
                    return;
                }
                Some(v) if v.members.first().map(|x| x.id) != Some(self.me) => return,
                Some(_) => {}
            }
        }
        if !self.has_room(key.service, max, false) {
            return;
        }
        let opts = SynOpts::of_syn(&seg);
        let isn = self.cfg.cookies.isn(key, seg.seq, opts, wall_secs());
        let ep = self.cfg.endpoint;
        let synack = syncookie::synack(key, seg.seq, isn, opts, ep.mtu, ep.rx_buffer);
        self.send_to_client(key.service, &synack);
        if !self.synacks.sent(key, synack, Instant::now()) {
            self.shared.metrics.synacks_unkept.inc();
        }
        self.shared.metrics.syn_cookies_sent.inc();
    }

    /// Sends again the cookie SYN-ACKs whose handshake is still open here: the client, if it
    /// took the first one and its ACK was lost, answers with that ACK again, which opens the
    /// connection. Only while this host still answers the service's SYNs (in ft mode, its
    /// view's primary) and holds no connection of the 4-tuple.
    fn resend_synacks(&mut self, now: Instant) {
        for (key, synack) in self.synacks.due(now) {
            if self.flows.contains_key(&key) {
                continue;
            }
            let answers = match self.views.get(&key.service) {
                Some(v) => v.members.first().map(|m| m.id) == Some(self.me),
                None => {
                    // INVARIANT: no code panics while holding the lock.
                    let services = self.shared.services.lock().expect("services lock");
                    services
                        .serving(key.service)
                        .is_some_and(|p| p.mode != Mode::Ft)
                }
            };
            if answers {
                tracing::trace!(client = %key.client, "handshake not completed: SYN-ACK sent again");
                self.send_to_client(key.service, &synack);
                self.shared.metrics.synacks_resent.inc();
            }
        }
    }

    /// Whether connection `id` is one this member left (ft): it never speaks for it again.
    fn is_retired(&self, id: usize) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| matches!(&c.tcp, Tcp::Ft(f) if f.is_retired()))
    }

    /// Whether `meta`, for the 4-tuple of connection `id`, lies far outside that connection's
    /// receive window and is the handshake ACK of a SYN cookie of ours (the BLAKE3 check runs
    /// only for such strays).
    fn completes_a_newer_handshake(&self, id: usize, key: FlowKey, meta: &TcpMeta) -> bool {
        if meta.is_syn() || meta.flags.rst || !meta.flags.ack {
            return false;
        }
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let window = match &c.tcp {
            Tcp::Plain(p) => p.rst_window(),
            Tcp::Ft(f) => f.rst_window(),
        };
        let Some((exact, edge)) = window else {
            return false;
        };
        // A segment of the old connection is within a window of its expected bytes (1 MiB
        // of slack for old duplicates); a new connection's ISN is random.
        let seq = SeqNumber(meta.seq);
        const SLACK: u32 = 1 << 20;
        let near = exact
            .iter()
            .any(|e| e.minus(SLACK).le(seq) && seq.lt(edge.plus(SLACK)));
        if near {
            return false;
        }
        let client_isn = SeqNumber(meta.seq.wrapping_sub(1));
        let isn_s = SeqNumber(meta.ack.wrapping_sub(1));
        self.cfg
            .cookies
            .check(key, client_isn, isn_s, wall_secs())
            .is_some()
    }

    /// A non-SYN segment of no known connection: the handshake ACK of a SYN this service
    /// answered (the cookie checks), or a stray.
    fn on_handshake_ack(
        &mut self,
        key: FlowKey,
        meta: &TcpMeta,
        now: SInstant,
        epoch: Epoch,
    ) -> Option<usize> {
        let cookie = (meta.flags.ack && !meta.flags.rst).then(|| {
            let client_isn = SeqNumber(meta.seq.wrapping_sub(1));
            let isn_s = SeqNumber(meta.ack.wrapping_sub(1));
            let opts = self
                .cfg
                .cookies
                .check(key, client_isn, isn_s, wall_secs())?;
            Some((syncookie::rebuild_syn(key, client_isn, opts), isn_s))
        });
        if let Some(Some((syn, isn_s))) = cookie {
            return self.open(key, now, &syn, isn_s, epoch);
        }
        if self.views.contains_key(&key.service) {
            // ft: another replica may hold it; never reset a connection we lack.
            self.shared.metrics.ft.ft_unknown_flow.inc();
            return None;
        }
        self.shared.metrics.packets_unknown_flow.inc();
        if let Some(rst) = meta.reset_reply() {
            self.send_to_client(key.service, &rst);
        }
        None
    }

    /// Whether one more connection of `service` fits under the host's and the service's caps
    /// (counted when not). A backup (`slack`) takes a few more than the primary allows: it
    /// may still hold connections the primary has already forgotten, and it must not miss
    /// one the primary accepted.
    fn has_room(&self, service: SocketAddrV4, max: Option<u32>, slack: bool) -> bool {
        let extra = |cap: u32| if slack { cap + (cap / 8).max(16) } else { cap };
        let m = &self.shared.metrics;
        if self.conns.len() >= extra(self.cfg.max_conns) as usize {
            m.syn_dropped_host_cap.inc();
            tracing::debug!(%service, cap = self.cfg.max_conns, "host at max_conns: new connection refused");
            return false;
        }
        let n = self.per_service.get(&service).copied().unwrap_or(0);
        if max.is_some_and(|cap| n >= extra(cap)) {
            m.syn_dropped_service_cap.inc();
            tracing::debug!(%service, cap = ?max, "service at max_conns: new connection refused");
            return false;
        }
        true
    }

    /// Builds a connection whose client completed the handshake against the cookie `isn_s`
    /// (`syn` is its SYN, rebuilt from the cookie), and connects to the backend: the first
    /// moment anything is spent on it.
    fn open(
        &mut self,
        key: FlowKey,
        now: SInstant,
        syn: &[u8],
        isn_s: SeqNumber,
        epoch: Epoch,
    ) -> Option<usize> {
        let opt = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services
                .serving(key.service)
                .map(|p| (p.backend, p.mode, p.ft, p.max_conns))
        };
        let Some((Some(backend), mode, ft_opts, max)) = opt else {
            self.shared.metrics.packets_no_service.inc();
            tracing::debug!(service = %key.service, "handshake for a service not served here");
            return None;
        };
        let primary = self
            .members_of(key.service)
            .is_none_or(|m| m.first() == Some(&self.me.0));
        if !self.has_room(key.service, max, !primary) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let seed = self.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let tcp = if mode == Mode::Ft {
            let (Some(members), Some(view_epoch)) = (
                self.members_of(key.service),
                self.views.get(&key.service).map(|v| v.epoch),
            ) else {
                // No view yet: the redirector does not count this host as a member.
                self.shared.metrics.ft.ft_unknown_flow.inc();
                return None;
            };
            let ft_cfg = FtConfig {
                repair: ft_opts.repair,
                stall_after: SDuration::from_millis(u64::from(ft_opts.stall_ms)),
                ..FtConfig::default()
            };
            let mut f = FtConn::accept(
                key,
                ft_cfg,
                self.cfg.endpoint,
                seed,
                now,
                self.me.0,
                &members,
                syn,
                isn_s,
            );
            f.set_view_stale(view_epoch < epoch);
            Tcp::Ft(Box::new(f))
        } else {
            let Some(p) = PlainConn::accept(key, self.cfg.endpoint, seed, now, syn, isn_s) else {
                tracing::warn!(client = %key.client, "local stack did not answer a rebuilt SYN");
                return None;
            };
            Tcp::Plain(Box::new(p))
        };
        self.shared.metrics.syn_cookies_accepted.inc();
        self.synacks.opened(key);
        let mut conn = Conn {
            key,
            opened: epoch,
            tcp,
            backend: Backend::Aborted,
            readable: false,
            writable: false,
            deadline: None,
            agreement_seen: (0, 0),
            handoffs_seen: (0, DropReasons::default()),
            retired_seen: false,
            total: mode == Mode::Ft && ft_opts.total_order,
            credit: 0,
            peer_rcv: None,
            order_pos: None,
            order_lost: false,
            from_backend: 0,
            last_active: Instant::now(),
            last_client_rx: Instant::now(),
            probes: 0,
        };
        if conn.total {
            self.sequencers
                .entry(key.service)
                .or_insert_with(|| sequencer_for(&ft_opts));
        }
        match TcpStream::connect(SocketAddr::V4(backend)) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    tracing::warn!(error = %e, "cannot register backend socket");
                    self.shared.metrics.backend_connect_failures.inc();
                } else {
                    conn.backend = Backend::Connecting(s);
                }
            }
            Err(e) => {
                // Stays Aborted: the first service() resets the client.
                tracing::warn!(%backend, error = %e, "backend connect failed");
                self.shared.metrics.backend_connect_failures.inc();
            }
        }
        tracing::debug!(client = %key.client, service = %key.service, %backend, "connection opened");
        self.shared.metrics.conns_total.inc();
        self.shared.metrics.conns_active.add(1);
        *self.per_service.entry(key.service).or_insert(0) += 1;
        self.flows.insert(key, id);
        self.conns.insert(id, conn);
        Some(id)
    }

    fn remove(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            if let Some(d) = c.deadline {
                self.timers.remove(&(d, id));
            }
            if let Some(mut s) = c.backend.end(Backend::Aborted) {
                let _ = self.poll.registry().deregister(&mut s);
            }
            self.flows.remove(&c.key);
            if let Some(n) = self.per_service.get_mut(&c.key.service) {
                *n = n.saturating_sub(1);
            }
            let active = self.shared.metrics.conns_active.get();
            self.shared
                .metrics
                .conns_active
                .set(active.saturating_sub(1));
            tracing::debug!(client = %c.key.client, "connection closed");
        }
    }

    /// Moves bytes across the bridge, runs the endpoint, reschedules its timer.
    fn service(&mut self, id: usize, now: SInstant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let (abort_client, drop_backend_hard) =
            bridge(c, &mut self.sequencers, &self.shared.metrics);
        let mut backend_failed = false;
        match &mut c.tcp {
            // ft: a failed backend is a failed member for this connection, not the end of
            // the client's connection: the other members' backends carry on (issue #14).
            Tcp::Ft(f) if abort_client => {
                if !f.is_retired() {
                    backend_failed = true;
                }
                f.on_backend_failed(now);
            }
            tcp if abort_client => tcp.ep().abort(),
            _ => {}
        }
        if abort_client || drop_backend_hard {
            reset_backend(self.poll.registry(), &mut c.backend);
        }
        if let Tcp::Ft(f) = &mut c.tcp {
            if f.is_retired() && !matches!(c.backend, Backend::Aborted | Backend::Finished) {
                reset_backend(self.poll.registry(), &mut c.backend);
            }
            if f.wants_abort() && f.state() != TcpState::Closed {
                // Every member's backend reset: so is the client's connection.
                f.abort();
            }
        }
        self.out.clear();
        match &mut c.tcp {
            Tcp::Plain(ep) => ep.poll(now, &mut self.out),
            Tcp::Ft(f) => {
                f.poll(now);
                self.out.extend(f.take_to_client());
                if let Some(p) = f.take_progress(now) {
                    self.progress_out.push(ProgressEntry {
                        client: c.key.client,
                        service: c.key.service,
                        isn_local: p.isn_local.0,
                        isn_s: p.isn_s.map(|s| s.0),
                        rcv_nxt: p.rcv_nxt.0,
                        client_fin: p.client_fin,
                        edge: p.edge.0,
                        hole_end: p.hole_end.0,
                        out: p.out.map(|o| o.0),
                        end: match p.end {
                            OutputEnd::Open => ack_channel::OutputEnd::Open,
                            OutputEnd::Fin => ack_channel::OutputEnd::Fin,
                            OutputEnd::Reset => ack_channel::OutputEnd::Reset,
                        },
                    });
                }
                let exclude = f.take_exclusion_requests(now);
                if !exclude.is_empty() {
                    self.exclude_out.push(ExclusionEntry {
                        client: c.key.client,
                        service: c.key.service,
                        members: exclude,
                    });
                }
                let seen = (f.stats.handoffs, f.stats.dropped);
                let ft = &self.shared.metrics.ft;
                ft.handoffs.add(seen.0.saturating_sub(c.handoffs_seen.0));
                let (now_d, was) = (seen.1, c.handoffs_seen.1);
                ft.dropped_ended.add(now_d.ended.saturating_sub(was.ended));
                ft.dropped_stalled
                    .add(now_d.stalled.saturating_sub(was.stalled));
                ft.dropped_differs
                    .add(now_d.differs.saturating_sub(was.differs));
                ft.dropped_silent
                    .add(now_d.silent.saturating_sub(was.silent));
                if seen.0 > c.handoffs_seen.0 {
                    tracing::warn!(client = %c.key.client, service = %c.key.service, "this host's backend ended early, reset or stalls: connection handed to the next member");
                }
                c.handoffs_seen = seen;
                if f.is_retired() && !c.retired_seen {
                    // Our backend failed this connection (ended early, reset, stalled): is
                    // it down? A refused probe takes the host out of the view at once.
                    c.retired_seen = true;
                    backend_failed = true;
                    if c.total {
                        self.shared.metrics.ft.order.left.inc();
                    }
                }
                for (to, pkt) in f.take_repairs() {
                    self.repairs_out.push((c.key.service, to, pkt));
                }
                for d in f.take_digests() {
                    self.digests_out.push(digest_entry(c.key, d));
                }
                note_agreement(&mut c.agreement_seen, f, &self.shared.metrics.ft);
            }
        }
        let state = c.tcp.ep_ref().state();
        if matches!(
            c.backend,
            Backend::Open {
                eof: true,
                fin_sent: true,
                ..
            }
        ) {
            // Both directions closed in order: the backend socket is no longer needed.
            if let Some(mut s) = c.backend.end(Backend::Finished) {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        let (service, key) = (c.key.service, c.key);
        // Closed in order both ways: keep only the sequence numbers of the last ACK.
        let close = match &c.tcp {
            Tcp::Plain(p) => p.close_point().map(|(s, r)| (s, r, true)),
            Tcp::Ft(f) => f.close_point(),
        }
        .filter(|_| {
            matches!(c.backend, Backend::Finished)
                && matches!(state, TcpState::TimeWait | TcpState::Closed)
        });
        let retired = matches!(&c.tcp, Tcp::Ft(f) if f.is_retired());
        let retired_done = matches!(&c.tcp, Tcp::Ft(f) if f.is_retired() && f.client_done());
        let finished = state == TcpState::Closed || close.is_some() || retired_done;
        let next = if finished {
            None
        } else {
            match &mut c.tcp {
                Tcp::Plain(ep) => ep.poll_at(now),
                Tcp::Ft(f) => f.poll_at(now),
            }
        };
        let old = c.deadline;
        c.deadline = next;
        if let Some(d) = old {
            self.timers.remove(&(d, id));
        }
        if let Some(d) = next {
            self.timers.insert((d, id));
        }
        self.flush_out(service);
        self.flush_repairs();
        if backend_failed {
            self.backend_failed(service);
        }
        if finished {
            self.remove(id);
            match close {
                _ if retired => self.linger(key, Ending::Silent, true),
                Some((snd_nxt, rcv_nxt, told)) => {
                    self.linger(key, Ending::Closed { snd_nxt, rcv_nxt }, told)
                }
                None => self.linger(key, Ending::Reset, true),
            }
        }
    }

    /// Sends repair packets to the peers that need them.
    fn flush_repairs(&mut self) {
        let mut out = std::mem::take(&mut self.repairs_out);
        for (service, to, pkt) in out.drain(..) {
            if self.send_to_member(service, ReplicaId(to), MsgType::Repair, &pkt) {
                self.shared.metrics.ft.repairs_sent.inc();
            }
        }
        self.repairs_out = out;
    }

    fn flush_out(&mut self, service: SocketAddrV4) {
        let out = std::mem::take(&mut self.out);
        for p in &out {
            self.send_to_client(service, p);
        }
        self.out = out;
    }

    fn send_to_client(&mut self, service: SocketAddrV4, packet: &[u8]) {
        self.send_to_authority(service, MsgType::ToClient, packet);
    }

    /// Sends one datagram to the redirector (the view authority), stamped with our view
    /// epoch: it passes return packets only from the current epoch's speaker.
    fn send_to_authority(&mut self, service: SocketAddrV4, t: MsgType, payload: &[u8]) {
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
    fn flush_tunnel(&mut self) {
        let sent = self.to_authority.flush(&self.udp);
        self.count_sent(sent);
    }

    fn count_sent(&self, sent: tunnel_io::Sent) {
        let m = &self.shared.metrics;
        m.datagrams_out.add(sent.datagrams);
        m.send_calls.add(sent.syscalls);
        if sent.failed > 0 {
            // A full socket buffer loses the packets; TCP retransmits them.
            m.send_errors.add(sent.failed);
            tracing::trace!(lost = sent.failed, "udp send failed");
        }
    }

    /// Progress reports from a peer replica.
    fn on_progress(&mut self, from: ReplicaId, entries: &[ProgressEntry], dirty: &mut Vec<usize>) {
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

    /// The view authority's notices: the members excluded from connections (who speaks for
    /// them, decided in one place: `ft_tcp::speaker`). Each is acknowledged, also for a
    /// connection this host does not hold, so that the authority stops repeating it.
    fn on_excluded(&mut self, entries: &[ExclusionEntry], dirty: &mut Vec<usize>) {
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

    /// A connection's backend was refused or reset: if the backend no longer accepts
    /// connections, the service is withdrawn now rather than at the next health check, so
    /// the redirector takes this host out of the view (issue #14).
    fn backend_failed(&mut self, service: SocketAddrV4) {
        self.shared.poke_health(service);
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
    fn on_view(
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
    fn apply_members(
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

    /// Sends this iteration's progress reports and output digests to the other members,
    /// batched per datagram.
    fn flush_progress(&mut self) {
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
    fn send_to_members(&mut self, service: SocketAddrV4, t: MsgType, payload: &[u8]) -> u64 {
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

    /// Stamps from the service's primary (total order); anyone else's are ignored.
    fn on_order(&mut self, from: ReplicaId, entries: &[OrderEntry]) {
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

    /// Sends one ack-channel message to one member of the service's view.
    /// Returns whether it left (`to` is a member and the kernel took it).
    fn send_to_member(
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

    /// The service's primary in this host's view.
    fn primary_of(&self, service: SocketAddrV4) -> Option<ReplicaId> {
        self.views
            .get(&service)
            .and_then(|v| v.members.first())
            .map(|m| m.id)
    }

    /// Stamp repair (total order): a backup's request, answered here when this host is the
    /// primary; or the primary's "gone", acted on when it comes from the primary.
    fn on_order_repair(&mut self, from: ReplicaId, r: OrderRepair, dirty: &mut Vec<usize>) {
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
    fn abandon_order_losers(&mut self, service: SocketAddrV4, dirty: &mut Vec<usize>) {
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
    fn run_order(&mut self) -> Vec<usize> {
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
                    Backend::Connecting(_)
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
    fn order_wake(&self, now: Instant) -> Option<Instant> {
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

    /// Output digests from a peer replica.
    fn on_digests(&mut self, from: ReplicaId, entries: &[DigestEntry], dirty: &mut Vec<usize>) {
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

    /// Resets connections idle for longer than their service's idle timeout (an abandoned
    /// client, gone without FIN or RST, would otherwise hold its buffers and backend
    /// connection forever), and probes silent clients with TCP keep-alives where the
    /// service asks for them, resetting after KEEPALIVE_PROBES unanswered ones. Runs every
    /// REAP_EVERY, at most REAP_BATCH resets each time. Every replica counts probes alike
    /// (they all see the client's answers), so they reset together; only the primary sends.
    fn reap_idle(&mut self, now: Instant, snow: SInstant) {
        let limits: HashMap<SocketAddrV4, (u32, u32)> = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services
                .ports()
                .map(|(a, p)| (a, (p.idle_timeout_s, p.keepalive_s)))
                .collect()
        };
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let mut reset = Vec::new();
        let mut probe = Vec::new();
        for (id, c) in &self.conns {
            let Some(&(idle, keepalive)) = limits.get(&c.key.service) else {
                continue;
            };
            if reset.len() >= REAP_BATCH {
                break;
            }
            if idle > 0 && now.duration_since(c.last_active) >= secs(idle) {
                reset.push((*id, false));
                continue;
            }
            if keepalive == 0 {
                continue;
            }
            let every = secs((keepalive / 3).max(1));
            let due = secs(keepalive) + every * c.probes;
            if now.duration_since(c.last_client_rx) < due {
                continue;
            }
            if c.probes >= KEEPALIVE_PROBES {
                reset.push((*id, true));
            } else {
                probe.push(*id);
            }
        }
        for id in probe {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.probes += 1;
            let p = match &c.tcp {
                Tcp::Plain(p) => p.keepalive_probe(),
                Tcp::Ft(f) => f.keepalive_probe(),
            };
            if let Some(p) = p {
                let service = c.key.service;
                self.send_to_client(service, &p);
                self.shared.metrics.keepalive_probes.inc();
            }
        }
        for (id, by_keepalive) in reset {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if by_keepalive {
                tracing::debug!(client = %c.key.client, service = %c.key.service, "keep-alive unanswered: resetting the connection");
                self.shared.metrics.keepalive_resets.inc();
            } else {
                tracing::debug!(client = %c.key.client, service = %c.key.service, "idle timeout: resetting the connection");
                self.shared.metrics.idle_timeouts.inc();
            }
            match &mut c.tcp {
                Tcp::Ft(f) => f.abort(),
                Tcp::Plain(p) => p.endpoint().abort(),
            }
            reset_backend(self.poll.registry(), &mut c.backend);
            self.service(id, snow);
        }
    }

    fn snapshot(&mut self) {
        let list: Vec<ConnStatus> = self
            .conns
            .values()
            .take(SNAPSHOT_MAX)
            .map(|c| ConnStatus {
                client: c.key.client.to_string(),
                service: c.key.service.to_string(),
                state: c.tcp.ep_ref().state().to_string(),
                backend_connected: matches!(c.backend, Backend::Open { .. }),
                to_backend: c.tcp.ep_ref().recv_queue(),
                to_client: c.tcp.ep_ref().send_queue(),
                ft: match &c.tcp {
                    Tcp::Plain(_) => None,
                    Tcp::Ft(f) => Some(FtStatus {
                        role: match f.role() {
                            Role::Primary => "primary",
                            Role::Backup => "backup",
                        },
                        gate: f.gate().map(|g| g.0),
                        client_ack: f.client_ack().map(|a| a.0),
                        shadow_bytes: f.shadow_len(),
                        members: f
                            .member_progress()
                            .into_iter()
                            .map(|(id, r)| (id.map_or(self.me.0, |i| i), r.0))
                            .collect(),
                        retransmits: f.stats.retransmits,
                        promotions: f.stats.promotions,
                        repairs_sent: f.stats.repairs_sent,
                        repairs_received: f.stats.repairs_received,
                        repair_log_bytes: f.repair_log_len(),
                        agreement: {
                            let a = f.agreement();
                            AgreementView {
                                blocks_compared: a.compared,
                                blocks_different: a.mismatched,
                                attests: a.attested,
                                differs_from_byte: a.mismatch_at,
                                divergent: a.divergent,
                            }
                        },
                    }),
                },
            })
            .collect();
        self.shared
            .metrics
            .conns_lingering
            .set(self.lingering.len() as u64);
        let mut states = std::collections::BTreeMap::new();
        for c in self.conns.values() {
            *states
                .entry(c.tcp.ep_ref().state().to_string())
                .or_insert(0u64) += 1;
        }
        // INVARIANT: no code panics while holding the lock.
        *self.shared.conn_states.lock().expect("conn_states lock") = states;
        let divergent: usize = self
            .conns
            .values()
            .map(|c| match &c.tcp {
                Tcp::Ft(f) => f.agreement().divergent.len(),
                Tcp::Plain(_) => 0,
            })
            .sum();
        self.shared
            .metrics
            .ft
            .divergent_members
            .set(divergent as u64);
        // INVARIANT: no code panics while holding the lock.
        *self.shared.conns.lock().expect("conns lock") = list;
    }
}

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
struct HeartbeatTo {
    addr: SocketAddr,
    id: ReplicaId,
    me: SocketAddrV4,
}

/// Sends a heartbeat at the shortest interval any service's detector asks for (at most
/// `cap`), forever. Each names the redirector's life we last heard of: until one does, the
/// redirector only answers with a welcome.
fn heartbeat_loop(
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
