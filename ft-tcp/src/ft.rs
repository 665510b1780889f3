//! The FT layer of one connection (README.md, "How ft mode works").
//!
//! It sits between the wire and the replica's own smoltcp [`Endpoint`]:
//!
//! ```text
//!   client packets ──► translate ack (S → local), clamp ──► smoltcp ──► backend bridge
//!                                                              │
//!   client ◄── (primary only) seq local → S, ack/window = gate ◄┘ output; every replica
//!                                                                 keeps it in the shadow queue
//! ```
//!
//! Roles (set by the view, never by the connection itself):
//!
//! ```text
//!            view makes me first member
//!   Backup ───────────────────────────────► Primary
//!     ▲   output suppressed, progress           │ output to the client, ACK gate over
//!     │   reported to every member              │ all members, FT-layer retransmission
//!     └─────────────────────────────────────────┘
//!            view without me (fenced anyway)
//! ```
//!
//! Sequence spaces: `C` (client bytes) is shared by all replicas; `S` is the client's view
//! of our bytes, anchored at `isn_s` (the ISN of the replica that was primary at open); each
//! replica's smoltcp has its own ISN, `delta = isn_s - isn_local`.
//!
//! Call order per event: one of `handle_client_packet`, `handle_progress`, `set_view`, or
//! bridge calls on [`FtConn::endpoint`]; then `poll(now)`; then drain `take_to_client`,
//! `take_progress`; then `poll_at` for the next timer.

use std::collections::BTreeMap;

use smoltcp::time::{Duration, Instant};

use crate::agreement::{Agreement, BlockDigest};
use crate::clientlog::ClientLog;
use crate::endpoint::{Endpoint, EndpointConfig, TcpState};
use crate::packet::FlowKey;
use crate::rewrite::{self, Seg};
use crate::seq::SeqNumber;
use crate::shadow::ShadowQueue;
use crate::speaker::speaker_of;

/// How many times an unchanged progress report is repeated after a change.
const PROGRESS_REPEATS: u8 = 3;

/// Segments repaired at once for a backup that stays behind without reporting a hole.
const STALE_REPAIR_SEGMENTS: usize = 8;

/// A member reports a change of its output position at most this often (a change of how
/// its output ended, at once).
const OUT_REPORT_EVERY: Duration = Duration::from_millis(20);

/// First wait before an exclusion request the authority did not answer is sent again.
const REQUEST_RETRY: Duration = Duration::from_millis(20);
/// Longest wait between exclusion requests.
const REQUEST_RETRY_MAX: Duration = Duration::from_secs(1);

/// How far beyond the most output any member reported the client's ACK may lie before it
/// contradicts an `isn_s` (reports of output lag the output itself). ISNs are random over
/// 2^32, so a wrong `isn_s` still explains an ACK only with odds of about one in 4000.
const ISN_SLACK: u32 = 1 << 20;

/// How many distinct `isn_s` values heard from reports are kept as candidates.
const ISN_CANDIDATES: usize = 8;

/// A member that holds the connection forwards the client's handshake ACK to members that
/// should hold it and never reported it, first this long after the handshake, then at twice
/// the previous interval, at most [`HANDSHAKE_FORWARDS`] times (see
/// [`FtConn::forward_handshake`]).
const HANDSHAKE_FORWARD_AFTER: Duration = Duration::from_millis(100);
/// The speaker's first wait: a member it counts reports within a round trip of the client's
/// ACK, and until it does the speaker may send the client nothing.
const HANDSHAKE_FORWARD_AFTER_SPEAKER: Duration = Duration::from_millis(20);
const HANDSHAKE_FORWARDS: u8 = 7;

/// A replica's id as the FT layer sees it (the cluster's node id).
pub type PeerId = u32;

/// Whether this replica talks to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Talks to the client; gates its ACKs on every member's progress.
    Primary,
    /// Silent; keeps in step and reports progress.
    Backup,
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct FtConfig {
    /// Floor of the FT-layer retransmission timeout (smoltcp's own floor is 1 s).
    pub rto_min: Duration,
    /// Ceiling of the retransmission timeout.
    pub rto_max: Duration,
    /// How long the primary holds its SYN-ACK for backups that have not reported: long
    /// enough for the client's SYN retransmissions (1 s, then 2 s later) to reach a backup
    /// that lost the first SYN, so that every live member holds every connection.
    pub synack_hold_max: Duration,
    /// Progress is re-sent this often even without change (loss of reports is harmless).
    pub progress_every: Duration,
    /// Segments resent at once on promotion or timeout.
    pub burst: usize,
    /// Hop-by-hop repair: the primary sends a backup the client bytes it lacks.
    pub repair: bool,
    /// A backup whose `rcv_nxt` stays behind the primary's this long without reporting a
    /// hole is repaired anyway (its report of the tail was lost, or the tail itself was).
    pub repair_after: Duration,
    /// The same range is not repaired again sooner than this.
    pub repair_retry: Duration,
    /// A member whose output stays behind what another member's backend already produced
    /// this long (its backend stopped, hung or ended early) is treated as failed for the
    /// connection: the speaker hands the connection on, or drops a backup (issue #14).
    pub stall_after: Duration,
}

impl Default for FtConfig {
    fn default() -> Self {
        FtConfig {
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_millis(1000),
            synack_hold_max: Duration::from_millis(3500),
            progress_every: Duration::from_millis(50),
            burst: 64,
            repair: true,
            repair_after: Duration::from_millis(4),
            repair_retry: Duration::from_millis(8),
            stall_after: Duration::from_millis(1000),
        }
    }
}

/// What one replica reports about its copy of a connection; cumulative, so duplicates and
/// losses are harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The reporting replica's smoltcp ISN.
    pub isn_local: SeqNumber,
    /// The client-visible ISN if the reporter knows it.
    pub isn_s: Option<SeqNumber>,
    /// Next client byte expected (C); one past the client's FIN once the reporter took it.
    pub rcv_nxt: SeqNumber,
    /// `rcv_nxt` counts the client's FIN: the client bytes the reporter holds end one
    /// before it ([`Progress::data_rcv`]).
    pub client_fin: bool,
    /// Right edge of its receive window (C).
    pub edge: SeqNumber,
    /// End of the hole after `rcv_nxt` (C): the first client byte seen beyond it, which the
    /// primary repairs up to; equal to `rcv_nxt` when there is no hole.
    pub hole_end: SeqNumber,
    /// End of the reporter's output so far (S), past its FIN if it sent one; `None` until
    /// it knows `isn_s`.
    pub out: Option<SeqNumber>,
    /// How the reporter's backend ended its output.
    pub end: OutputEnd,
}

impl Progress {
    /// Where the client bytes the reporter holds end (C), the client's FIN not counted.
    /// A primary that left a connection stamps its chunks on from here (total order):
    /// counting the FIN as a byte, it stamped one byte nobody would ever deliver, and a
    /// member promoted at that stamp waited for it while the whole service's order stood
    /// still (FT_SEED=1796800000055112 FT_TOTAL=1).
    pub fn data_rcv(&self) -> SeqNumber {
        if self.client_fin {
            self.rcv_nxt.minus(1)
        } else {
            self.rcv_nxt
        }
    }

    /// Where the reporter's output bytes end (S), its FIN not counted.
    pub fn data_end(&self) -> Option<SeqNumber> {
        let out = self.out?;
        Some(if self.end == OutputEnd::Fin {
            out.minus(1)
        } else {
            out
        })
    }
}

/// Why a speaker dropped members from a connection, counted per reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropReasons {
    /// Its backend reset, or ended its output before the others'.
    pub ended: u64,
    /// It stayed more than `stall_after` behind output another member produced (or never
    /// learned the connection's `isn_s`).
    pub stalled: u64,
    /// Its output differed from ours for `stall_after`.
    pub differs: u64,
    /// It never reported the connection within `synack_hold_max` of the open.
    pub silent: u64,
}

/// How a member's backend ended its side of the connection.
///
/// ```text
///   Open ──backend closed in order──► Fin
///     └──backend reset, refused, gone─► Reset   (the member leaves the connection)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputEnd {
    /// Still producing output.
    #[default]
    Open,
    /// Closed in order: a FIN follows the output.
    Fin,
    /// Reset, refused or gone.
    Reset,
}

/// Output agreement of one connection as one replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgreementStatus {
    /// Blocks compared with the primary's.
    pub compared: u64,
    /// Blocks that differed.
    pub mismatched: u64,
    /// (member, bytes): this replica vouches that the member's output equals the
    /// primary's from the start of the stream up to there.
    pub attested: Vec<(PeerId, u64)>,
    /// (member, byte offset of the first block where its output differed).
    pub mismatch_at: Vec<(PeerId, u64)>,
    /// Members whose output differs from the primary's where it matters (not eligible to
    /// take the connection over).
    pub divergent: Vec<PeerId>,
}

/// The primary's repair bookkeeping for one backup.
#[derive(Debug, Clone, Copy)]
struct RepairState {
    /// The backup's `rcv_nxt` as last reported, and since when.
    rcv_nxt: SeqNumber,
    since: Instant,
    /// When a repair from `rcv_nxt` was last sent.
    sent: Option<Instant>,
    /// Repairs sent from this `rcv_nxt` without effect (each doubles the wait, up to 1 s).
    tries: u32,
}

/// The FT layer of one connection on one replica.
pub struct FtConn {
    key: FlowKey,
    cfg: FtConfig,
    ep: Endpoint,
    mss: usize,
    role: Role,
    /// This replica's id.
    me: PeerId,
    /// The other members of this connection: those in the view when it opened and still in
    /// every view since. A replica that leaves the view never returns for this connection
    /// (it missed client bytes while out); one that joins later never had it.
    view_peers: Vec<PeerId>,
    created: Instant,

    client_isn: Option<SeqNumber>,
    client_ws: u8,
    local_isn: Option<SeqNumber>,
    isn_s: Option<SeqNumber>,
    our_ws: u8,
    synack: Option<Vec<u8>>,
    synack_paused: bool,
    /// The client got its SYN-ACK from a SYN cookie (`isn_s` is the cookie): our stack's own
    /// SYN-ACK only teaches us `delta` and never leaves.
    synack_by_cookie: bool,

    client_ack: Option<SeqNumber>,
    client_wnd: u16,
    dupacks: u32,

    local_snd_max: Option<SeqNumber>,
    local_rcv_nxt: Option<SeqNumber>,
    /// Where the client's FIN sits (C), from the last client segment that carried one.
    client_fin_at: Option<SeqNumber>,
    local_edge: Option<SeqNumber>,
    last_ack_given: Option<SeqNumber>,
    shadow: Option<ShadowQueue>,

    peers: BTreeMap<PeerId, Progress>,
    /// Members of our view that report holding the connection but that our gate never
    /// counted (they opened it with a stale view, or our view at open was stale), with the
    /// furthest `rcv_nxt` each reported. Until the authority confirms their exclusion the
    /// view may make one of them the speaker, so the gate waits for them too.
    uncounted: BTreeMap<PeerId, SeqNumber>,
    sent_ack: Option<SeqNumber>,
    sent_edge: Option<SeqNumber>,
    snd_max_s: Option<SeqNumber>,

    rto: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    probe: Option<(SeqNumber, Instant)>,
    rtx_at: Option<Instant>,

    progress_dirty: bool,
    progress_at: Instant,
    progress_repeats: u8,
    more_unsent: bool,
    /// Output waits (in the shadow queue) until every member the gate counts reported our
    /// `isn_s`: see [`FtConn::isn_unconfirmed`].
    output_held: bool,
    last_reported: Option<(SeqNumber, SeqNumber)>,
    reported_hole: Option<SeqNumber>,

    local_hole_end: Option<SeqNumber>,
    log: ClientLog,
    repair: BTreeMap<PeerId, RepairState>,
    repair_at: Option<Instant>,
    repairs_out: Vec<(PeerId, Vec<u8>)>,
    /// When the client's handshake ACK goes next to members never heard from, and how many
    /// times it went.
    handshake_forward_at: Option<Instant>,
    handshake_forwards: u8,
    /// The view this replica holds is older than the client packet that opened the
    /// connection here ([`FtConn::set_view_stale`]).
    view_stale: bool,
    agreement: Option<Agreement>,
    /// The connection's speaker, when it is not this replica (the member whose output ours
    /// is compared with).
    speaker_hint: Option<PeerId>,
    /// The service's current view, primary first (this replica among them).
    view: Vec<PeerId>,
    /// Members the view authority excluded from this connection ([`crate::speaker`]): the
    /// speaker is the first member of `view` not among them.
    excluded: Vec<PeerId>,
    /// Members this replica asked the authority to exclude, until its notice names them.
    requests: Vec<PeerId>,
    request_at: Instant,
    request_wait: Duration,

    /// How this replica's backend ended its output.
    end: OutputEnd,
    /// Our FIN's sequence number in `S`, once our stack sent it.
    fin_s: Option<SeqNumber>,
    /// This replica left the connection (its backend failed, or the speaker dropped it, or
    /// it handed the connection on): it never speaks for it again.
    retired: bool,
    /// The client sent FIN or RST (a retired member's record may go).
    client_done: bool,
    /// Every member's backend reset: the reset goes on to the client.
    abort_wanted: bool,
    /// Output position and end last reported, and when a change may be reported next.
    out_reported: Option<(SeqNumber, OutputEnd)>,
    out_report_at: Instant,
    /// Per member (this replica too) seen behind another's output: the position it has to
    /// reach, and since when it has not.
    lag: BTreeMap<PeerId, (SeqNumber, Instant)>,
    /// Per member, since when its output has differed from ours where it matters.
    diverged: BTreeMap<PeerId, Instant>,
    /// Members that left this connection (at most the view's size).
    departed: Vec<PeerId>,
    /// `isn_s` as the client's first segments suggest it, until a member's report comes.
    isn_s_guess: Option<SeqNumber>,
    /// `isn_s` values members reported, and our own ISN once our SYN-ACK left: what the
    /// client may have accepted.
    isn_heard: Vec<SeqNumber>,
    /// `isn_s` values the client's ACKs disproved: reports carrying them are not believed.
    isn_refuted: Vec<SeqNumber>,
    /// The most output (bytes past the SYN, FIN counted) any member reported or we produced:
    /// the client cannot acknowledge much beyond it.
    most_out: u32,
    /// Members this speaker asked the authority to exclude, until it confirms: the ACK gate
    /// still waits for them (a view could make them the speaker before that).
    dropping: Vec<PeerId>,
    /// The client segment being fed repeats what the client was already acknowledged: the
    /// ACK our stack answers it with must reach the client (the last one was lost).
    ack_owed: bool,

    to_client: Vec<Vec<u8>>,
    scratch: Vec<Vec<u8>>,
    /// Counters for status and tests.
    pub stats: FtStats,
}

/// Per-connection counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FtStats {
    /// Segments resent by the FT layer.
    pub retransmits: u64,
    /// Times this replica was promoted for this connection.
    pub promotions: u64,
    /// ACKs built by the FT layer because the gate moved.
    pub gate_acks: u64,
    /// Client ACKs held back (clamped) for a lagging local stack.
    pub clamped_acks: u64,
    /// Client segments this replica (as primary) sent a backup that missed them.
    pub repairs_sent: u64,
    /// Repair segments this replica received.
    pub repairs_received: u64,
    /// Copies of the client's handshake ACK this replica (a backup) forwarded to a speaker it
    /// never heard report the connection.
    pub handshakes_forwarded: u64,
    /// Times a view's first member was passed over for this connection because its output
    /// differed from the primary's (output agreement).
    pub divergent_skips: u64,
    /// Times this replica, as the speaker, handed the connection to another member because
    /// its own backend ended early, reset or stalled.
    pub handoffs: u64,
    /// Members this replica, as the speaker, dropped from the connection (the sum of the
    /// `dropped` reasons).
    pub members_dropped: u64,
    /// Why it dropped them.
    pub dropped: DropReasons,
    /// Resets our stack made up by itself, never sent (only decided resets leave).
    pub resets_suppressed: u64,
    /// Times this replica left the connection because it was out of the view.
    pub left_out_of_view: u64,
}

impl std::fmt::Debug for FtConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtConn")
            .field("key", &self.key)
            .field("role", &self.role)
            .field("state", &self.ep.state())
            .finish()
    }
}

impl FtConn {
    /// A new connection at its SYN on replica `me`, with the service's view `members`
    /// (primary first, `me` among them). A primary holds its SYN-ACK until the other members
    /// have reported (or `synack_hold_max` passed).
    pub fn new(
        key: FlowKey,
        cfg: FtConfig,
        ep_cfg: EndpointConfig,
        seed: u64,
        now: Instant,
        me: PeerId,
        members: &[PeerId],
    ) -> Self {
        let role = if members.first() == Some(&me) {
            Role::Primary
        } else {
            Role::Backup
        };
        let view_peers: Vec<PeerId> = members.iter().copied().filter(|m| *m != me).collect();
        let mut ep = Endpoint::listen(key.service, ep_cfg, seed, now);
        let synack_paused = role == Role::Primary && !view_peers.is_empty();
        ep.pause_synack(synack_paused);
        // A replica's progress is read off its stack's ACKs; a delayed ACK would hold the
        // primary's gate (and the client's view of its data) back by up to 10 ms.
        ep.set_ack_delay(None);
        FtConn {
            key,
            cfg,
            ep,
            mss: ep_cfg.mtu - 40,
            role,
            me,
            view_peers,
            created: now,
            client_isn: None,
            client_ws: 0,
            local_isn: None,
            isn_s: None,
            our_ws: 0,
            synack: None,
            synack_paused,
            synack_by_cookie: false,
            client_ack: None,
            client_wnd: 0,
            dupacks: 0,
            local_snd_max: None,
            local_rcv_nxt: None,
            client_fin_at: None,
            local_edge: None,
            last_ack_given: None,
            shadow: None,
            peers: BTreeMap::new(),
            uncounted: BTreeMap::new(),
            sent_ack: None,
            sent_edge: None,
            snd_max_s: None,
            rto: Duration::from_millis(200),
            srtt: None,
            rttvar: Duration::ZERO,
            probe: None,
            rtx_at: None,
            progress_dirty: false,
            progress_at: now,
            progress_repeats: 0,
            more_unsent: false,
            output_held: false,
            last_reported: None,
            reported_hole: None,
            local_hole_end: None,
            log: ClientLog::default(),
            repair: BTreeMap::new(),
            repair_at: None,
            repairs_out: Vec::new(),
            handshake_forward_at: None,
            handshake_forwards: 0,
            view_stale: false,
            agreement: None,
            speaker_hint: members.first().copied().filter(|m| *m != me),
            view: members.to_vec(),
            excluded: Vec::new(),
            requests: Vec::new(),
            request_at: now,
            request_wait: REQUEST_RETRY,
            end: OutputEnd::Open,
            fin_s: None,
            retired: false,
            client_done: false,
            abort_wanted: false,
            out_reported: None,
            out_report_at: now,
            lag: BTreeMap::new(),
            diverged: BTreeMap::new(),
            departed: Vec::new(),
            isn_s_guess: None,
            isn_heard: Vec::new(),
            isn_refuted: Vec::new(),
            most_out: 0,
            dropping: Vec::new(),
            ack_owed: false,
            to_client: Vec::new(),
            scratch: Vec::new(),
            stats: FtStats::default(),
        }
    }

    /// A connection whose handshake the client completed against a SYN cookie `isn_s`
    /// ([`crate::syncookie`]): `syn` (the client's SYN as the cookie remembers it) is replayed
    /// into the local stack, whose SYN-ACK only sets `delta`. Every replica that sees the
    /// client's ACK builds the same connection with the same `isn_s`, so there is no SYN-ACK
    /// hold; the primary still acknowledges client bytes only once every member holds them.
    /// Feed the ACK itself with [`FtConn::handle_client_packet`] next.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        key: FlowKey,
        cfg: FtConfig,
        ep_cfg: EndpointConfig,
        seed: u64,
        now: Instant,
        me: PeerId,
        members: &[PeerId],
        syn: &[u8],
        isn_s: SeqNumber,
    ) -> Self {
        let mut c = FtConn::new(key, cfg, ep_cfg, seed, now, me, members);
        c.synack_paused = false;
        c.ep.pause_synack(false);
        c.synack_by_cookie = true;
        c.isn_s = Some(isn_s);
        c.handle_client_packet(now, syn);
        c
    }

    /// What the connection's last ACK to the client must say once it has closed in order,
    /// in the client's sequence spaces: (our next sequence number, the client's next),
    /// and whether the client was told the second yet (the gate may still have held back
    /// the ACK of its FIN when the local stack finished).
    pub fn close_point(&self) -> Option<(SeqNumber, SeqNumber, bool)> {
        let snd = self.local_snd_max?.plus(self.delta()?);
        let rcv = self.local_rcv_nxt?;
        let told = self.role == Role::Backup || self.sent_ack.is_some_and(|a| !a.lt(rcv));
        Some((snd, rcv, told))
    }

    /// Where a client's RST must land to be taken (RFC 5961 §3.2): the next client byte
    /// as this replica, the client (the gate's ACK) or any member knows it, and the right
    /// edge of the window the client was given.
    pub fn rst_window(&self) -> Option<(Vec<SeqNumber>, SeqNumber)> {
        let mut exact: Vec<SeqNumber> = self.local_rcv_nxt.into_iter().collect();
        exact.extend(self.sent_ack);
        exact.extend(self.peers.values().map(|p| p.rcv_nxt));
        let edge = self.sent_edge.or(self.local_edge)?;
        (!exact.is_empty()).then_some((exact, edge))
    }

    /// The challenge ACK answering a suspicious RST or SYN (RFC 5961 §3.2, §4.2): what
    /// the client was last told. `None` at a backup, which never speaks.
    pub fn challenge_ack(&self) -> Option<Vec<u8>> {
        self.ack_to_client(0)
    }

    /// A TCP keep-alive probe (RFC 9293 §3.8.4): an ACK one below what we sent, which the
    /// client answers with an ACK. `None` at a backup.
    pub fn keepalive_probe(&self) -> Option<Vec<u8>> {
        self.ack_to_client(1)
    }

    /// An ACK as the client was last told, `back` below our next sequence number.
    fn ack_to_client(&self, back: u32) -> Option<Vec<u8>> {
        if self.role != Role::Primary {
            return None;
        }
        let (ack, edge) = (self.sent_ack?, self.sent_edge?);
        let seq = self.snd_max_s.or(self.isn_s.map(|i| i.plus(1)))?;
        Some(rewrite::build(
            self.key.service,
            self.key.client,
            seq.minus(back),
            ack,
            self.window_field(ack, edge),
            &[],
            false,
        ))
    }

    /// The connection's 4-tuple.
    pub fn key(&self) -> FlowKey {
        self.key
    }

    /// The local endpoint, for the backend bridge.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.ep
    }

    /// The local endpoint, read-only.
    pub fn endpoint_ref(&self) -> &Endpoint {
        &self.ep
    }

    /// The local endpoint's state.
    pub fn state(&self) -> TcpState {
        self.ep.state()
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes in the shadow queue.
    pub fn shadow_len(&self) -> usize {
        self.shadow.as_ref().map_or(0, ShadowQueue::len)
    }

    /// The client's highest ACK (S).
    pub fn client_ack(&self) -> Option<SeqNumber> {
        self.client_ack
    }

    /// The ACK the primary last sent to the client (C).
    pub fn gate(&self) -> Option<SeqNumber> {
        self.sent_ack
    }

    /// The other members of the connection as this replica counts them (its ACK gate, as
    /// speaker, waits for each).
    pub fn members(&self) -> &[PeerId] {
        &self.view_peers
    }

    /// Every known member's `rcv_nxt` (C), this replica first.
    pub fn member_progress(&self) -> Vec<(Option<PeerId>, SeqNumber)> {
        let mut v: Vec<_> = self.local_rcv_nxt.map(|r| (None, r)).into_iter().collect();
        v.extend(self.peers.iter().map(|(id, p)| (Some(*id), p.rcv_nxt)));
        v
    }

    /// Whether this replica's `rcv_nxt` counts the client's FIN.
    fn local_client_fin(&self, rcv_nxt: SeqNumber) -> bool {
        self.client_fin_at.is_some_and(|f| f.plus(1) == rcv_nxt)
    }

    /// Where the client bytes this replica took end (C), the client's FIN not counted
    /// (see [`Progress::data_rcv`]).
    pub fn local_data_rcv(&self) -> Option<SeqNumber> {
        let r = self.local_rcv_nxt?;
        Some(if self.local_client_fin(r) {
            r.minus(1)
        } else {
            r
        })
    }

    fn delta(&self) -> Option<u32> {
        Some(self.isn_s?.0.wrapping_sub(self.local_isn?.0))
    }

    /// Packets for the client (empty at a backup).
    pub fn take_to_client(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.to_client)
    }

    /// Repair packets for other members: client segments they lack, or the client's
    /// handshake ACK for a speaker never heard report the connection (it may lack it), to be
    /// handed to their [`FtConn::handle_repair`] (a host that lacks the connection takes the
    /// ACK as the client's own).
    pub fn take_repairs(&mut self) -> Vec<(PeerId, Vec<u8>)> {
        std::mem::take(&mut self.repairs_out)
    }

    /// Bytes held for repair.
    pub fn repair_log_len(&self) -> usize {
        self.log.len()
    }

    /// This replica's progress report, when one is due: at once on change, then repeated
    /// a few times (`PROGRESS_REPEATS`) every `progress_every` in case a report was lost.
    /// An idle connection sends nothing, so thousands of idle connections cost nothing.
    pub fn take_progress(&mut self, now: Instant) -> Option<Progress> {
        if self.progress_dirty {
            self.progress_repeats = PROGRESS_REPEATS;
        }
        if self.progress_repeats == 0
            && self
                .view_peers
                .iter()
                .any(|id| !self.peers.contains_key(id))
        {
            // A member we have not heard from may not have heard from us either (it opened
            // the connection late, under loss): keep reporting until it answers, or it drops
            // us as "silent since the open" and may later speak beside us.
            self.progress_repeats = 1;
        }
        if self.progress_repeats == 0 && self.behind_a_member() {
            // We lack client bytes a member holds, and nothing changes here: every report of
            // ours may have been lost. The speaker repairs a member it counts and has one it
            // does not count excluded, but only once it hears from it: until then, that member
            // could be promoted without bytes the client saw acknowledged
            // (FT_SEED=1796000322991061: the SYN-cookie ACK opened the connection at a backup
            // after the speaker, whose view lacked it, had acknowledged more).
            self.progress_repeats = 1;
        }
        let due = self.progress_dirty || (self.progress_repeats > 0 && now >= self.progress_at);
        let rcv_nxt = self.local_rcv_nxt?;
        let out = self.out_s();
        let p = Progress {
            isn_local: self.local_isn?,
            isn_s: self.isn_s,
            rcv_nxt,
            client_fin: self.local_client_fin(rcv_nxt),
            edge: self.local_edge?,
            hole_end: self.local_hole_end.map_or(rcv_nxt, |h| h.max(rcv_nxt)),
            out,
            // "Reset" tells the others this member left: a speaker whose backend failed says
            // so only once it handed the connection on (it may have to wait for a successor).
            end: if self.end == OutputEnd::Reset && !self.retired {
                OutputEnd::Open
            } else {
                self.end
            },
        };
        // Output is reported at most every OUT_REPORT_EVERY; how it ended, at once.
        let out_due = match (out, self.out_reported) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(o), Some((ro, re))) => re != self.end || (ro != o && now >= self.out_report_at),
        };
        if !(due || out_due) {
            return None;
        }
        if let Some(o) = out {
            self.out_reported = Some((o, self.end));
            self.out_report_at = now + OUT_REPORT_EVERY;
        }
        if !due {
            return Some(p);
        }
        if !self.progress_dirty {
            self.progress_repeats -= 1;
        }
        self.progress_dirty = false;
        self.progress_at = now + self.cfg.progress_every;
        self.last_reported = Some((p.rcv_nxt, p.edge));
        self.reported_hole = self.local_hole_end;
        Some(p)
    }

    /// A backup that lacks client bytes another member reported holding.
    fn behind_a_member(&self) -> bool {
        self.role == Role::Backup
            && !self.retired
            && self
                .local_rcv_nxt
                .is_some_and(|r| self.peers.values().any(|p| r.lt(p.rcv_nxt)))
    }

    /// When [`FtConn::poll`] must run next.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if self.retired {
            // Its stack is no longer run: only its reports and requests are due.
            let report = self.progress_dirty || self.progress_repeats > 0;
            let t = report.then_some(self.progress_at);
            let d = (!self.requests.is_empty()).then_some(self.request_at);
            return match (t, d) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let mut t = self.ep.poll_at(now);
        let mut merge = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        merge(self.rtx_at);
        merge(self.handshake_forward_at);
        let unheard = self
            .view_peers
            .iter()
            .any(|id| !self.peers.contains_key(id));
        if self.local_isn.is_some()
            && self.ep.state() != TcpState::Closed
            && (self.progress_repeats > 0
                || self.progress_dirty
                || unheard
                || self.behind_a_member())
        {
            merge(Some(self.progress_at));
        }
        let hold_end = self.created + self.cfg.synack_hold_max;
        if self.synack_paused
            || (now < hold_end
                && self
                    .view_peers
                    .iter()
                    .any(|id| !self.peers.contains_key(id)))
        {
            merge(Some(hold_end));
        }
        if self.more_unsent {
            merge(Some(now));
        }
        merge(self.repair_at);
        if let (Some(o), Some((ro, re))) = (self.out_s(), self.out_reported) {
            if o != ro || re != self.end {
                merge(Some(self.out_report_at));
            }
        }
        if !self.requests.is_empty() {
            merge(Some(self.request_at));
        }
        if self.role == Role::Primary {
            let stall = self.cfg.stall_after;
            merge(self.lag.values().map(|(_, since)| *since + stall).min());
            merge(self.diverged.values().map(|since| *since + stall).min());
        }
        t
    }

    /// This replica's output position (S), past its FIN if it sent one.
    fn out_s(&self) -> Option<SeqNumber> {
        Some(self.local_snd_max?.plus(self.delta()?))
    }

    /// The backend of this replica's connection was reset, refused or went away: this
    /// replica leaves the connection. A backup just says so in its progress; a speaker
    /// hands the connection to the next member (or, when every member's backend reset,
    /// passes the reset on to the client: see [`FtConn::wants_abort`]).
    pub fn on_backend_failed(&mut self, now: Instant) {
        if self.end == OutputEnd::Reset {
            return;
        }
        self.end = OutputEnd::Reset;
        self.progress_dirty = true;
        if self.role == Role::Primary {
            self.decide(now);
        } else {
            self.leave(now);
        }
    }

    /// Whether this replica left the connection (it never speaks for it again).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    /// Whether the client sent FIN or RST since this replica retired.
    pub fn client_done(&self) -> bool {
        self.client_done
    }

    /// Every member's backend reset the connection: the host resets the local stack, whose
    /// RST goes on to the client.
    pub fn wants_abort(&self) -> bool {
        self.abort_wanted
    }

    /// Resets the connection (idle timeout, keep-alive, every member's backend reset): the
    /// local stack's RST goes to the client if this replica speaks. The only way a reset
    /// leaves.
    pub fn abort(&mut self) {
        self.abort_wanted = true;
        self.ep.abort();
    }

    /// Members to ask the view authority to exclude from this connection, when due
    /// ([`crate::speaker`]): repeated with backoff until its notice names them.
    pub fn take_exclusion_requests(&mut self, now: Instant) -> Vec<PeerId> {
        if self.requests.is_empty() || now < self.request_at {
            return Vec::new();
        }
        self.request_at = now + self.request_wait;
        self.request_wait = (self.request_wait * 2).min(REQUEST_RETRY_MAX);
        self.requests.clone()
    }

    /// Asks the authority to exclude `m` (this replica, or, as the speaker, another member).
    fn request_exclusion(&mut self, now: Instant, m: PeerId) {
        if self.excluded.contains(&m) || self.requests.contains(&m) {
            return;
        }
        self.requests.push(m);
        self.request_at = now;
        self.request_wait = REQUEST_RETRY;
    }

    /// The members the view authority excluded from this connection (its notice; the list
    /// only grows). A member excluded is never again counted, waited for, or promoted here;
    /// if it is this replica, it leaves the connection. The speaker is chosen again.
    pub fn handle_exclusions(&mut self, now: Instant, excluded: &[PeerId]) {
        for m in excluded {
            if !self.excluded.contains(m) {
                self.excluded.push(*m);
            }
        }
        let known = &self.excluded;
        self.requests.retain(|m| !known.contains(m));
        if self.excluded.contains(&self.me) && !self.retired {
            tracing::debug!(conn = ?self.key, "excluded from the connection by the view authority");
            self.retire();
        }
        for m in self.excluded.clone() {
            if m != self.me {
                self.forget_member(m);
            }
        }
        self.choose_speaker(now);
        if self.role == Role::Primary {
            self.maybe_gate_ack(now, false);
        }
        self.trim_log();
    }

    /// How many exclusions this replica knows (what it acknowledges to the authority).
    pub fn exclusions_known(&self) -> usize {
        self.excluded.len()
    }

    /// Leaves the connection for good and asks the authority to exclude this replica, so
    /// that the next member speaks.
    fn leave(&mut self, now: Instant) {
        self.retire();
        self.request_exclusion(now, self.me);
    }

    fn retire(&mut self) {
        self.retired = true;
        // Say so: the speaker keeps counting on us (its ACK gate) until it hears it.
        self.end = OutputEnd::Reset;
        self.progress_dirty = true;
        self.role = Role::Backup;
        self.more_unsent = false;
        self.rtx_at = None;
        self.repair_at = None;
        self.to_client.clear();
        self.repairs_out.clear();
    }

    fn forget_member(&mut self, id: PeerId) {
        if self.view_peers.contains(&id) && !self.departed.contains(&id) {
            self.departed.push(id);
        }
        self.dropping.retain(|m| *m != id);
        self.view_peers.retain(|m| *m != id);
        self.peers.remove(&id);
        self.repair.remove(&id);
        self.lag.remove(&id);
        self.diverged.remove(&id);
        if self.speaker_hint == Some(id) {
            self.speaker_hint = None;
        }
    }

    /// Whether member `m`, at output position `out`, has stayed behind `target` (what
    /// another member already produced) for `stall_after`. A member that lacks client
    /// bytes another member holds (`starved`: lost on the way, the client resends them) waits
    /// for its input, not for its backend: its clock starts again.
    fn lagging(
        &mut self,
        now: Instant,
        m: PeerId,
        out: SeqNumber,
        target: SeqNumber,
        starved: bool,
    ) -> bool {
        if !out.lt(target) {
            self.lag.remove(&m);
            return false;
        }
        let e = self.lag.entry(m).or_insert((target, now));
        if starved || !out.lt(e.0) {
            // Waiting for input, or it reached the mark set when it was first seen behind.
            *e = (target, now);
        }
        now - e.1 >= self.cfg.stall_after
    }

    /// Whether our FIN waits for the other members: it goes to the client only once every
    /// member's backend closed at the same point (issue #14).
    fn fin_held(&self) -> bool {
        let Some(f) = self.fin_s else {
            return false;
        };
        self.view_peers.iter().any(|id| {
            !self.dropping.contains(id)
                && !self
                    .peers
                    .get(id)
                    .is_some_and(|p| p.end == OutputEnd::Fin && p.data_end() == Some(f))
        })
    }

    /// Whether a member the gate counts does not hold our `isn_s` yet. Until it does, our
    /// output waits: the client would acknowledge bytes that member cannot place. Promoted
    /// with only the client's ACKs to go by, it would take `isn_s` from an ACK that also
    /// covers output, and send its backend's first bytes where the client expects later ones
    /// (FT_SEED=1795995493970912: a backup cut off while the SYN-ACK and the speaker's report
    /// went out, repaired later, promoted when the speaker crashed). A member that never
    /// learns it leaves after `stall_after` ([`FtConn::decide`]).
    fn isn_unconfirmed(&self) -> bool {
        let Some(i) = self.isn_s else {
            return true;
        };
        self.view_peers.iter().any(|id| {
            !self.dropping.contains(id) && self.peers.get(id).is_none_or(|p| p.isn_s != Some(i))
        })
    }

    /// Sends the output that waited for members to learn `isn_s`, once they all have.
    fn release_output_if_confirmed(&mut self) {
        if self.output_held && !self.isn_unconfirmed() {
            self.output_held = false;
            self.more_unsent = true;
        }
    }

    /// The speaker's decisions (issue #14). Members whose backend reset, ended before the
    /// others, or lags more than `stall_after` behind output another member produced leave
    /// the connection. If that is this replica, the connection goes to the next member in
    /// view order, from the client's last ACK. Our FIN waits (see `fin_held`).
    fn decide(&mut self, now: Instant) {
        if self.role != Role::Primary || self.retired {
            return;
        }
        let Some(own_out) = self.out_s() else {
            return;
        };
        let own_data = self.fin_s.unwrap_or(own_out);
        let mut furthest = own_data;
        for id in &self.view_peers {
            if self.dropping.contains(id) {
                continue;
            }
            if let Some(d) = self.peers.get(id).and_then(Progress::data_end) {
                furthest = furthest.max(d);
            }
        }
        // What a backup must reach: the furthest output, and our FIN (one that never closes
        // must not hold the client's FIN forever). What we must reach: the furthest bytes; a
        // backup's FIN is no reason for us to leave (its backend may have ended early).
        let target = furthest.max(own_out);
        let own_rcv = self.local_rcv_nxt;
        let most_rcv = self
            .view_peers
            .iter()
            .filter_map(|id| self.peers.get(id).map(|p| p.rcv_nxt))
            .chain(own_rcv)
            .reduce(SeqNumber::max);
        let starved = |r: Option<SeqNumber>| match (r, most_rcv) {
            (Some(r), Some(m)) => r.lt(m),
            _ => true,
        };
        let mut leaving = Vec::new();
        for id in self.view_peers.clone() {
            if self.dropping.contains(&id) {
                continue;
            }
            let Some(p) = self.peers.get(&id).copied() else {
                continue;
            };
            let (Some(d), Some(o)) = (p.data_end(), p.out) else {
                // It does not hold our isn_s: it has produced nothing comparable, and our
                // output waits for it (`isn_unconfirmed`). Its clock runs as for a member
                // that produced nothing.
                if let Some(i) = self.isn_s.filter(|i| p.isn_s != Some(*i)) {
                    if self.lagging(now, id, i.plus(1), target, false) {
                        leaving.push(id);
                        self.stats.dropped.stalled += 1;
                    }
                }
                continue;
            };
            let early = match p.end {
                OutputEnd::Reset => true,
                OutputEnd::Fin => d.lt(furthest),
                OutputEnd::Open => false,
            };
            if early {
                leaving.push(id);
                self.stats.dropped.ended += 1;
            } else if self.lagging(now, id, o, target, starved(Some(p.rcv_nxt))) {
                leaving.push(id);
                self.stats.dropped.stalled += 1;
            }
        }
        // A member whose output differs from ours (what the client gets) may not take the
        // connection over: it would splice other bytes into the client's stream. A difference
        // can heal (a `Date:` header that ticked, same length, acknowledged by the client
        // since): the member leaves once it has differed for `stall_after`. Until then, it
        // checks itself when a view would make it the speaker (`choose_speaker`).
        for id in self.view_peers.clone() {
            if self.dropping.contains(&id) || leaving.contains(&id) || !self.divergent(id) {
                self.diverged.remove(&id);
                continue;
            }
            let since = *self.diverged.entry(id).or_insert(now);
            if now - since >= self.cfg.stall_after {
                self.diverged.remove(&id);
                leaving.push(id);
                self.stats.dropped.differs += 1;
            }
        }
        for id in leaving {
            tracing::debug!(conn = ?self.key, member = id, "member dropped from the connection: its backend ended early, stalls or differs");
            self.dropping.push(id);
            self.lag.remove(&id);
            self.stats.members_dropped += 1;
            self.request_exclusion(now, id);
        }
        self.release_output_if_confirmed();
        let resign = self.end == OutputEnd::Reset
            || (self.end == OutputEnd::Fin && own_data.lt(furthest))
            || self.lagging(now, self.me, own_out, furthest, starved(own_rcv));
        if resign {
            // The member that speaks once the authority excludes us: the next one in view
            // order it has not excluded (crate::speaker). We leave only when it can take
            // over, or when nobody can.
            let me = self.me;
            let next = self
                .view
                .iter()
                .copied()
                .find(|m| *m != me && !self.excluded.contains(m));
            // It must be able to speak: a member that never learned isn_s (it missed the
            // handshake and every report since) would answer with a SYN-ACK of its own. Wait
            // for its report instead; ours, sent at every change, teaches it.
            let ready = |id: PeerId| self.peers.get(&id).is_some_and(|p| p.isn_s.is_some());
            match next {
                // Its own exclusion, or ours of it, is on the way: the one after it speaks.
                Some(n) if self.departed.contains(&n) || self.dropping.contains(&n) => {}
                Some(n) if self.view_peers.contains(&n) && !ready(n) => {
                    self.progress_dirty |= self.progress_repeats == 0;
                }
                Some(n) if self.view_peers.contains(&n) => {
                    tracing::debug!(conn = ?self.key, to = n, end = ?self.end, "handing the connection to the next member");
                    self.stats.handoffs += 1;
                    self.leave(now);
                    self.speaker_hint = Some(n);
                    return;
                }
                // Nobody else holds it: every member's backend reset, or ended as ours.
                _ if self.end == OutputEnd::Reset => self.abort_wanted = true,
                _ => {}
            }
        }
        self.maybe_gate_ack(now, false);
        self.trim_log();
    }

    /// A repair packet from the primary: client bytes this replica missed.
    pub fn handle_repair(&mut self, now: Instant, packet: &[u8]) {
        self.stats.repairs_received += 1;
        self.handle_client_packet(now, packet);
        // The speaker repairs what it believes we lack: answer with where we stand, even
        // when the repair brought nothing new (every report of it was lost, and nothing else
        // would make us report again: the speaker repaired forever and held the client's
        // FIN unacknowledged).
        self.progress_dirty |= self.local_rcv_nxt.is_some();
    }

    /// A packet from the client.
    pub fn handle_client_packet(&mut self, now: Instant, packet: &[u8]) {
        let Some(seg) = rewrite::parse(packet) else {
            return;
        };
        if self.retired {
            self.client_done |= seg.fin || seg.rst;
            return;
        }
        if seg.fin && !seg.syn && !seg.rst {
            self.client_fin_at = Some(seg.seq.plus(seg.payload_len as u32));
        }
        if !seg.syn && !seg.rst && (seg.payload_len > 0 || seg.fin) {
            let payload = &packet[seg.payload_off..seg.payload_off + seg.payload_len];
            // Only what a member may still need: not wholly below the lowest member's
            // rcv_nxt, not beyond the window we gave (nobody takes those bytes; a forged
            // segment must not fill the log).
            let needed = self.log_low().is_none_or(|low| low.lt(seg.end()));
            let in_window = self.local_edge.is_none_or(|e| seg.seq.lt(e));
            if needed && in_window {
                self.log.record(seg.seq, payload, seg.fin);
            }
            if self.local_rcv_nxt.is_some_and(|r| r.lt(seg.seq)) {
                // Beyond what we expect: the bytes before it were lost on the way here.
                let h = self.local_hole_end.map_or(seg.seq, |h| h.min(seg.seq));
                self.local_hole_end = Some(h);
            }
        }
        if seg.syn && !seg.ack_flag {
            self.client_isn = Some(seg.seq);
            self.client_ws = seg.wscale.unwrap_or(0);
            if let Some(m) = seg.mss {
                self.mss = self.mss.min(usize::from(m).max(64));
            }
            self.feed(now, packet);
            return;
        }
        if seg.ack_flag && !seg.rst && !self.on_client_isn_evidence(now, seg.ack) {
            return;
        }
        if self.isn_s.is_none() && seg.ack_flag && !seg.rst {
            // The client's ACK of the SYN-ACK tells a replica that missed the primary's report
            // which ISN the client saw. Only a guess: a retransmission of the client's first
            // segment has the same sequence number but may acknowledge output too (a backup
            // that lost the handshake ACK once took isn_s one segment too high and later
            // spliced its output one segment off, FT_SEED=1795954892914097). A member's report
            // is the truth (the speaker's always carries the value it speaks with); the guess
            // (the lowest such ACK) serves only when this replica must speak. Not merely once
            // the opener is gone: a backup that missed the new speaker's handshake took the
            // ACK of a resent first segment, one reply too high, while the speaker's report
            // was on its way; its output never compared with the speaker's, whose FIN it held
            // for ever (FT_SEED=1795980482926440).
            if self.ep.state() == TcpState::SynReceived
                && self.client_isn.map(|c| c.plus(1)) == Some(seg.seq)
            {
                let g = seg.ack.minus(1);
                self.isn_s_guess = Some(self.isn_s_guess.map_or(g, |x| x.min(g)));
                if self.role == Role::Primary {
                    self.adopt_isn_guess();
                }
            }
        }
        let Some(delta) = self.delta() else {
            // Cannot translate yet; the client retransmits, reports teach us isn_s.
            return;
        };
        if seg.ack_flag {
            self.on_client_ack(now, &seg);
        }
        let mut p = packet.to_vec();
        let mut acked = None;
        if seg.ack_flag {
            let local = seg.ack.minus(delta);
            let a = self.clamp_ack(local);
            if a != local {
                self.stats.clamped_acks += 1;
            }
            rewrite::set_ack(&mut p, &seg, a);
            acked = Some(a);
        }
        if seg.fin
            && seg.payload_len > 0
            && self.local_rcv_nxt == Some(seg.seq.plus(seg.payload_len as u32))
        {
            // A retransmission of the client's last bytes and its FIN, the bytes already here:
            // smoltcp judges a segment's place in the window by its bytes alone, answers it
            // with an ACK and drops the FIN (smoltcp 0.14 `socket/tcp.rs`, "segment not in
            // receive window"). Give it the FIN alone, which it takes.
            if let Some(a) = acked {
                p = rewrite::build(
                    self.key.client,
                    self.key.service,
                    seg.seq.plus(seg.payload_len as u32),
                    a,
                    seg.window,
                    &[],
                    true,
                );
            }
        }
        // Client bytes or a FIN we already acknowledged came again: our ACK was lost, and the
        // ACK our stack answers with is owed to the client even if it repeats the last one.
        self.ack_owed =
            (seg.payload_len > 0 || seg.fin) && self.sent_ack.is_some_and(|a| seg.seq.lt(a));
        self.feed(now, &p);
        self.ack_owed = false;
        if let (Some(h), Some(r)) = (self.local_hole_end, self.local_rcv_nxt) {
            if !r.lt(h) {
                self.local_hole_end = None;
            } else if self.reported_hole != Some(h) {
                // A hole: tell the primary at once, it repairs it.
                self.progress_dirty = true;
            }
        }
    }

    /// Whether `isn_s = x` explains a client ACK `ack`: it lies in `[x + 1, x + 1 + what
    /// could have been sent]`.
    fn isn_explains(&self, x: SeqNumber, ack: SeqNumber) -> bool {
        ack.0.wrapping_sub(x.0.wrapping_add(1)) <= self.most_out.saturating_add(ISN_SLACK)
    }

    /// Checks our `isn_s` against a client ACK. The ISN the client accepted is the truth,
    /// and its ACKs prove it: a report's `isn_s` (the opener's, say) may name a SYN-ACK that
    /// never reached the client, whose handshake another member's SYN-ACK completed
    /// (FT_SEED=1796000000001700). When the ACK refutes our `isn_s` and a value another
    /// member reported explains it, we take that value, as long as nothing we did depends on
    /// the old one: our stack, still in SYN-RECEIVED, accepted no translated ACK and produced
    /// no output. Past that, our stack took ACKs translated with a wrong delta (possibly
    /// dropping output the client never got): we leave the connection. Returns whether the
    /// segment may go on to our stack.
    fn on_client_isn_evidence(&mut self, now: Instant, ack: SeqNumber) -> bool {
        let Some(old) = self.isn_s else {
            return true;
        };
        if self.synack_by_cookie || self.isn_explains(old, ack) {
            return true;
        }
        let alt = self
            .isn_heard
            .iter()
            .copied()
            .find(|x| *x != old && !self.isn_refuted.contains(x) && self.isn_explains(*x, ack));
        let unsafe_to_switch = self.ep.state() != TcpState::SynReceived || self.fin_s.is_some();
        let Some(alt) = alt else {
            // Nothing we heard explains it: a forged ACK, or one for output whose reports have
            // not reached us. Our stack must not take it through a delta that may be wrong
            // (clamped, it would complete the handshake): as if lost, until a report tells.
            return self.ep.state() != TcpState::SynReceived;
        };
        if unsafe_to_switch {
            tracing::warn!(conn = ?self.key, ?old, ?alt, "the client accepted another isn_s than ours after our stack used ours: leaving the connection");
            self.isn_refuted.push(old);
            self.leave(now);
            return false;
        }
        tracing::debug!(conn = ?self.key, ?old, ?alt, "the client's ACK refutes our isn_s: taking the one it accepted");
        self.isn_refuted.push(old);
        self.isn_s = Some(alt);
        // Everything kept in S was anchored at the old value: start it again (no output yet).
        self.shadow = None;
        self.agreement = None;
        self.last_ack_given = None;
        self.snd_max_s = None;
        self.probe = None;
        self.rtx_at = None;
        self.dupacks = 0;
        self.out_reported = None;
        self.lag.clear();
        self.diverged.clear();
        for q in self.peers.values_mut() {
            if q.isn_s != Some(alt) {
                // Numbered from the refuted value: not comparable with ours any more.
                q.out = None;
            }
        }
        self.init_shadow();
        true
    }

    /// Notes an `isn_s` value the client may have accepted.
    fn hear_isn(&mut self, x: SeqNumber) {
        if !self.isn_heard.contains(&x) && self.isn_heard.len() < ISN_CANDIDATES {
            self.isn_heard.push(x);
        }
    }

    /// Clamps an ACK (local space) into what smoltcp accepts: not above what it produced, not
    /// below what it was already given (docs/smoltcp-notes.md, "ACK acceptance").
    fn clamp_ack(&mut self, local: SeqNumber) -> SeqNumber {
        let mut a = local;
        if let Some(hi) = self.local_snd_max {
            a = a.min(hi);
        }
        if let Some(lo) = self.last_ack_given {
            a = a.max(lo);
        }
        self.last_ack_given = Some(a);
        a
    }

    fn on_client_ack(&mut self, now: Instant, seg: &Seg) {
        let ack = seg.ack;
        let advanced = self.client_ack.is_none_or(|c| c.lt(ack));
        let in_flight = self.shadow.as_ref().is_some_and(|s| !s.is_empty());
        if advanced {
            self.client_ack = Some(ack);
            self.dupacks = 0;
            if let Some(s) = self.shadow.as_mut() {
                s.ack(ack);
            }
            if let Some((probe, sent)) = self.probe {
                if probe.le(ack) {
                    self.rtt_sample(now - sent);
                    self.probe = None;
                }
            }
            self.rto = self.rto_base();
            let still = self.shadow.as_ref().is_some_and(|s| !s.is_empty());
            self.rtx_at = (self.role == Role::Primary && still).then(|| now + self.rto);
        } else if self.client_ack == Some(ack)
            && seg.payload_len == 0
            && !seg.fin
            && seg.window == self.client_wnd
            && in_flight
            && self.role == Role::Primary
        {
            self.dupacks += 1;
            if self.dupacks == 3 {
                self.retransmit(now, 1);
            }
        }
        self.client_wnd = seg.window;
    }

    fn rto_base(&self) -> Duration {
        let r = match self.srtt {
            Some(s) => s + self.rttvar * 4,
            None => Duration::from_millis(200),
        };
        r.max(self.cfg.rto_min).min(self.cfg.rto_max)
    }

    fn rtt_sample(&mut self, r: Duration) {
        // RFC 6298 §2.
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let err = if s > r { s - r } else { r - s };
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    /// Takes the client's view of `isn_s` (see `handle_client_packet`) when this replica must
    /// speak and no member told it better.
    fn adopt_isn_guess(&mut self) {
        if self.isn_s.is_none() {
            if let Some(g) = self.isn_s_guess {
                self.isn_s = Some(g);
                self.init_shadow();
            }
        }
    }

    fn init_shadow(&mut self) {
        if self.shadow.is_none() {
            if let Some(isn_s) = self.isn_s {
                self.shadow = Some(ShadowQueue::new(isn_s.plus(1)));
                self.agreement = Some(Agreement::new(isn_s.plus(1)));
                // isn_s just became known here: tell the others now (a member without it
                // cannot translate the client's segments, so nothing else may change soon).
                self.progress_dirty = true;
            }
        }
    }

    /// The member whose output the client gets: this replica if primary, else the first
    /// member of the view that holds the connection.
    fn speaker(&self) -> PeerId {
        if self.role == Role::Primary {
            self.me
        } else {
            self.speaker_hint.unwrap_or(self.me)
        }
    }

    /// Digests of this replica's output to send to the other members.
    pub fn take_digests(&mut self) -> Vec<BlockDigest> {
        self.agreement
            .as_mut()
            .map(Agreement::take_outbox)
            .unwrap_or_default()
    }

    /// A digest of member `from`'s output.
    pub fn handle_digest(&mut self, from: PeerId, d: BlockDigest) {
        if !self.view_peers.contains(&from) {
            return;
        }
        let (me, speaker) = (self.me, self.speaker());
        if let Some(a) = self.agreement.as_mut() {
            a.peer_digest(from, d);
            a.compare(me, speaker);
        }
    }

    /// Output agreement so far: blocks compared and mismatched, attestations (member, end
    /// in `S` of its output that matched the primary's) and divergent members (not
    /// eligible to take over now, given the client's ACK).
    pub fn agreement(&self) -> AgreementStatus {
        let Some(a) = self.agreement.as_ref() else {
            return AgreementStatus::default();
        };
        // Members that left the connection too: one excluded because its output differs is
        // still shown as such.
        let mut members: Vec<PeerId> = self.view_peers.clone();
        members.extend(self.departed.iter().copied());
        members.push(self.me);
        AgreementStatus {
            compared: a.compared,
            mismatched: a.mismatched,
            attested: a.attested(),
            mismatch_at: a.mismatches(),
            divergent: members
                .into_iter()
                .filter(|m| a.divergent(*m, self.client_ack))
                .collect(),
        }
    }

    /// Blocks compared and blocks that differed, so far (cheap, for counters).
    pub fn agreement_counts(&self) -> (u64, u64) {
        self.agreement
            .as_ref()
            .map_or((0, 0), |a| (a.compared, a.mismatched))
    }

    fn divergent(&self, m: PeerId) -> bool {
        self.agreement
            .as_ref()
            .is_some_and(|a| a.divergent(m, self.client_ack))
    }

    /// Feeds one packet to the local stack and processes what it sends.
    fn feed(&mut self, now: Instant, packet: &[u8]) {
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.ep.handle_packet(now, packet, &mut out);
        for p in out.drain(..) {
            self.on_local_output(now, p);
        }
        self.scratch = out;
    }

    /// A progress report from another member.
    pub fn handle_progress(&mut self, now: Instant, from: PeerId, p: Progress) {
        if let Some(x) = p.isn_s {
            // Whoever reports it, member or not, tells what the client may have accepted.
            self.hear_isn(x);
            if let Some(o) = p.out {
                self.most_out = self.most_out.max(o.since(x.plus(1)));
            }
        }
        if p.end == OutputEnd::Reset
            && !self.retired
            && speaker_of(&self.view, &self.excluded) == Some(from)
        {
            // The member we take for the speaker left the connection: it was excluded, or
            // asked to be, and we missed the notice (we took the connection on after it was
            // sent). Ask the authority: it answers a request for a member it already
            // excluded with its notice, and refuses it otherwise until it does.
            self.request_exclusion(now, from);
        }
        if self.retired {
            // A member still reporting to us may not know we left (it took the connection
            // on after our last report, e.g. from the client's resent SYN): say so again.
            self.progress_dirty |= self.progress_repeats == 0;
            return;
        }
        self.count_view_members();
        if !self.view_peers.contains(&from) {
            // It holds the connection, but our ACK gate never counted it (it opened the
            // connection with a stale view, or was out of the view for a while): it may lack
            // bytes the client saw acknowledged. The speaker tells it it is no member, before
            // a view could promote it; until the authority confirms, our gate waits for it
            // (a speaker promoted after hearing such a holder as a backup acknowledged bytes
            // it lacked, and was cut off; the holder then spoke without them,
            // FT_SEED=1797200000028465).
            if p.end == OutputEnd::Reset || !self.view.contains(&from) {
                self.uncounted.remove(&from);
            } else if !self.excluded.contains(&from) {
                let r = self.uncounted.entry(from).or_insert(p.rcv_nxt);
                *r = (*r).max(p.rcv_nxt);
                if self.role == Role::Primary && !self.retired {
                    self.request_exclusion(now, from);
                }
            }
            return;
        }
        if self.isn_s.is_some() && p.isn_s != self.isn_s {
            // It cannot translate the client's segments (our reports of isn_s were all lost,
            // and an idle connection sends no more), or holds another isn_s (the client's
            // ACKs will tell it which is right, among the values it heard): tell it ours
            // again, or it may wait for ever.
            self.progress_dirty |= self.progress_repeats == 0;
        }
        if self.isn_s.is_none() {
            if let Some(s) = p.isn_s.filter(|s| !self.isn_refuted.contains(s)) {
                self.isn_s = Some(s);
                self.init_shadow();
                // Re-translate nothing: packets before this were dropped, the client resends.
            }
        }
        let mut p = p;
        if p.isn_s.is_none() && self.peers.get(&from).is_some_and(|e| e.isn_s.is_some()) {
            // A member never forgets isn_s once it learned it: this report was written before
            // the ones we already have (delivered late). Taking its "no isn_s" would wipe the
            // member's output and FIN we recorded, and hold our FIN for a report the member
            // already sent (FT_SEED=1795980482926737). Its other fields are cumulative.
            p.isn_s = self.peers.get(&from).and_then(|e| e.isn_s);
            p.out = None;
        }
        if p.isn_s.is_none() || p.isn_s != self.isn_s {
            // Its output is numbered from another isn_s than ours: not comparable with ours.
            p.out = None;
        }
        let entry = self.peers.entry(from).or_insert(p);
        if entry.isn_s != p.isn_s {
            // It learned or switched its isn_s: what it reported before was in another space.
            entry.isn_s = p.isn_s;
            entry.out = None;
        }
        if entry.rcv_nxt.le(p.rcv_nxt) {
            entry.hole_end = p.hole_end;
        }
        // Cumulative: never move a member backwards on a reordered report.
        entry.rcv_nxt = entry.rcv_nxt.max(p.rcv_nxt);
        entry.edge = entry.edge.max(p.edge);
        entry.isn_local = p.isn_local;
        if let Some(o) = p.out {
            entry.out = Some(entry.out.map_or(o, |e| e.max(o)));
        }
        if p.end != OutputEnd::Open {
            entry.end = p.end;
        }
        if p.end == OutputEnd::Reset {
            // It said itself that it left (its backend failed, or it learned it was dropped):
            // nobody counts on it, or waits for it, from now on.
            self.forget_member(from);
        }
        self.trim_log();
        if self.role == Role::Primary && !self.retired {
            self.decide(now);
            self.release_output_if_confirmed();
            self.maybe_gate_ack(now, false);
            self.maybe_repair(now);
        }
    }

    /// The lowest `rcv_nxt` over the members: every member holds the client bytes before it.
    /// `None` while one has not reported (it may need everything).
    fn log_low(&self) -> Option<SeqNumber> {
        let mut low = self.local_rcv_nxt?;
        for id in &self.view_peers {
            low = low.min(self.peers.get(id)?.rcv_nxt);
        }
        Some(low)
    }

    /// Forgets client bytes every member holds.
    fn trim_log(&mut self) {
        if let Some(low) = self.log_low() {
            self.log.trim(low);
        }
    }

    /// Primary: sends each backup that lacks client bytes we hold those bytes, at once
    /// when it reported a hole, after `repair_after` when it just stays behind.
    fn maybe_repair(&mut self, now: Instant) {
        self.repair_at = None;
        if !self.cfg.repair || self.role != Role::Primary {
            return;
        }
        let (Some(own), Some(client_ack)) = (self.local_rcv_nxt, self.client_ack) else {
            return;
        };
        let mut next: Option<Instant> = None;
        for id in self.view_peers.clone() {
            let Some(p) = self.peers.get(&id).copied() else {
                continue;
            };
            let fresh = RepairState {
                rcv_nxt: p.rcv_nxt,
                since: now,
                sent: None,
                tries: 0,
            };
            let st = self.repair.entry(id).or_insert(fresh);
            if st.rcv_nxt != p.rcv_nxt {
                *st = fresh;
            }
            let hole = p.rcv_nxt.lt(p.hole_end);
            // Up to what we hold and what fits its window; just the hole when it told us one.
            let mut to = own.min(p.edge);
            if hole {
                to = to.min(p.hole_end);
            }
            if !p.rcv_nxt.lt(to) {
                continue;
            }
            let first = if hole {
                st.since
            } else {
                st.since + self.cfg.repair_after
            };
            let backoff = (self.cfg.repair_retry * (1u32 << st.tries.min(7)))
                .min(Duration::from_millis(1000));
            let due = st.sent.map_or(first, |t| t + backoff);
            if now < due {
                next = Some(next.map_or(due, |n: Instant| n.min(due)));
                continue;
            }
            if st.sent.is_some() {
                st.tries += 1;
            }
            st.sent = Some(now);
            let retry = now + self.cfg.repair_retry * (1u32 << st.tries.min(7));
            next = Some(next.map_or(retry, |n: Instant| n.min(retry)));
            // Without a reported hole, the backup may just be busy: send only the first few.
            let max = if hole {
                self.cfg.burst
            } else {
                STALE_REPAIR_SEGMENTS
            };
            for (seq, bytes, fin) in self.log.segments(p.rcv_nxt, to, self.mss, max) {
                let pkt = rewrite::build(
                    self.key.client,
                    self.key.service,
                    seq,
                    client_ack,
                    self.client_wnd,
                    &bytes,
                    fin,
                );
                self.stats.repairs_sent += 1;
                self.repairs_out.push((id, pkt));
            }
        }
        self.repair_at = next;
    }

    /// A new view: the service's live members, primary first. This replica speaks for the
    /// connection when it is the first member of the view the authority has not excluded
    /// from it ([`crate::speaker`]), the same rule by which the redirector admits return
    /// packets.
    pub fn set_view(&mut self, now: Instant, members: &[PeerId]) {
        // Report after every view: a member the speaker no longer counts (it was out of the
        // view for a while, without hearing it) learns so from the speaker's answer, even on
        // a connection where nothing else moves.
        self.progress_dirty |= self.local_rcv_nxt.is_some() && !self.retired;
        self.view = members.to_vec();
        if !members.contains(&self.me) && !self.retired {
            // We are out of the view: the speaker stopped counting us in its ACK gate, and
            // client bytes go on without us. Were we ever made the speaker (back in a later
            // view, every member before us gone) we would lack bytes the client saw
            // acknowledged. The host shows us a view without us also when it learns we were
            // out only from our `since` (we missed that view). No request: the authority
            // does not take one from a non-member, and no speaker waits for us.
            tracing::info!(conn = ?self.key, "out of the view: leaving the connection for good");
            self.stats.left_out_of_view += 1;
            self.retire();
        }
        self.view_peers.retain(|id| members.contains(id));
        self.uncounted.retain(|id, _| members.contains(id));
        let members = &self.view_peers;
        self.peers.retain(|id, _| members.contains(id));
        self.repair.retain(|id, _| members.contains(id));
        self.choose_speaker(now);
        self.count_view_members();
        self.trim_log();
        self.maybe_repair(now);
    }

    /// A speaker the client has not acknowledged yet counts every member of its current view
    /// that did not leave the connection, and holds its SYN-ACK for them. The client has sent
    /// nothing but its SYN, acknowledged nothing but its SYN: a member that holds the SYN
    /// holds everything, and the hold makes sure it does (the client resends its SYN to every
    /// member of the authority's view), or, past `synack_hold_max`, has the authority exclude
    /// it. Without this a speaker whose view was stale at the SYN (or that was promoted before
    /// any SYN-ACK left) answered the client without a member the authority counted; when
    /// the speaker left, that member, now the authority's speaker, had never had the
    /// connection (FT_SEED=1795980482926031, 1795980482925454).
    fn count_view_members(&mut self) {
        if self.role != Role::Primary
            || self.retired
            || self.client_ack.is_some()
            || self.synack_by_cookie
        {
            return;
        }
        let mut added = false;
        for m in self.view.clone() {
            if m != self.me
                && !self.view_peers.contains(&m)
                && !self.excluded.contains(&m)
                && !self.departed.contains(&m)
            {
                self.view_peers.push(m);
                added = true;
            }
        }
        if added && !self.synack_paused {
            // Our SYN-ACK may not have reached the client (a stale epoch is fenced): later
            // copies wait for the new members, as at open.
            self.synack_paused = true;
        }
    }

    /// The members of the next view that were members when the client opened the connection
    /// (their `since` is not after the epoch of the packet that opened it here): the client's
    /// SYN and first segments went to them as to us, and the authority may make any of them
    /// the speaker. A replica whose view was stale at the open did not count them; from now
    /// on its ACK gate does (it waits for them, repairs them, or has them excluded). Call it
    /// before [`FtConn::set_view`]. Without it a backup that had opened the connection with
    /// an older view was promoted and acknowledged client bytes a member it never counted
    /// lacked; that member, the last one left, spoke without them (FT_SEED=1798100000023626
    /// in the cluster sim). Members that left or were excluded stay out.
    pub fn count_members_at_open(&mut self, members: &[PeerId]) {
        if self.retired {
            return;
        }
        for &m in members {
            if m != self.me
                && !self.view_peers.contains(&m)
                && !self.excluded.contains(&m)
                && !self.departed.contains(&m)
                && !self.dropping.contains(&m)
            {
                tracing::debug!(conn = ?self.key, member = m, "a member since before the open, not counted yet: counted");
                self.view_peers.push(m);
                self.uncounted.remove(&m);
                self.progress_dirty = true;
            }
        }
    }

    /// Whether the view this replica holds (the last [`FtConn::set_view`]) is older than the
    /// client packet that opened the connection here. Its first member may then be one the
    /// authority no longer counts first, or one that joined after the client's SYN: the
    /// client's handshake ACK is not forwarded to it ([`FtConn::forward_handshake`]) until a
    /// view at least as new comes. A replica that missed views forwarded it to such a
    /// member, which then held the connection without the bytes the client saw
    /// acknowledged and became its speaker (FT_SEED=1797500000010065 in the cluster sim).
    /// Nor does its ACK gate acknowledge new client bytes meanwhile: a member it does not
    /// count yet may lack them (FT_SEED=1798200000011610 and 1798200000019314).
    pub fn set_view_stale(&mut self, stale: bool) {
        self.view_stale = stale;
    }

    /// Applies the speaker rule to the current view and exclusions, and takes the role.
    fn choose_speaker(&mut self, now: Instant) {
        let chosen = speaker_of(&self.view, &self.excluded);
        let mut speaks = chosen == Some(self.me) && !self.retired;
        if speaks && self.divergent(self.me) {
            // Our output differs from what the client got: we may not splice it into its
            // stream. We leave; the authority makes the next member the speaker.
            tracing::warn!(conn = ?self.key, "output differs from the old speaker's: leaving the connection rather than taking it over");
            self.stats.divergent_skips += 1;
            self.leave(now);
            speaks = false;
        }
        let role = if speaks { Role::Primary } else { Role::Backup };
        self.speaker_hint = chosen.filter(|m| *m != self.me);
        let promoted = role == Role::Primary && self.role == Role::Backup;
        if role == Role::Backup && self.synack_paused {
            // A primary that held its SYN-ACK for members (its view was stale) and is a backup
            // now: its stack must answer the SYN to follow the connection (as a backup's does
            // at once), its output is suppressed anyway.
            self.synack_paused = false;
            self.ep.pause_synack(false);
        }
        if role == Role::Backup && self.role == Role::Primary {
            // Only the speaker may exclude others; a new one decides for itself.
            let me = self.me;
            self.requests.retain(|m| *m == me);
            self.dropping.clear();
        }
        self.role = role;
        if promoted {
            let me = self.me;
            if self
                .view
                .iter()
                .take_while(|m| **m != me)
                .any(|m| self.excluded.contains(m) && self.divergent(*m))
            {
                // A member before us in the view was passed over: its output differed.
                self.stats.divergent_skips += 1;
            }
            self.promote(now);
        } else if role == Role::Primary {
            // A member left: the gate may move at once.
            self.maybe_gate_ack(now, false);
        }
    }

    /// Holds our SYN-ACK until every member of the current view holds the connection (or
    /// `synack_hold_max` passed), and sends it at once if they already do.
    fn hold_synack_for_view(&mut self, now: Instant) {
        self.synack_paused = true;
        self.count_view_members();
        self.release_synack_if_ready(now);
    }

    fn promote(&mut self, now: Instant) {
        self.stats.promotions += 1;
        let uncounted: Vec<PeerId> = self
            .uncounted
            .keys()
            .copied()
            .filter(|id| !self.excluded.contains(id))
            .collect();
        for id in uncounted {
            tracing::debug!(conn = ?self.key, member = id, "a holder our gate never counted: asking to exclude it");
            self.request_exclusion(now, id);
        }
        self.adopt_isn_guess();
        if self.isn_s.is_none() {
            // No SYN-ACK reached anyone yet: ours will be the one, once every member of the
            // new view holds the connection (the same hold as at open).
            self.hold_synack_for_view(now);
            return;
        }
        if self.client_ack.is_none() && !self.synack_by_cookie && self.synack.is_some() {
            // The old speaker's SYN-ACK may not have reached the client: ours waits, as at
            // open, until every member of the new view holds the connection. A member that
            // missed every SYN (it joined as the client sent it) gets the client's next one.
            // Sent at once, the client's ACK made that member one the gate waits for, though
            // it never had the connection (FT_SEED=1796300000000862).
            self.hold_synack_for_view(now);
        }
        // What this replica sent in an earlier term as primary says nothing about where the
        // client stands now: start at its last ACK (issue #10, defect 4).
        self.snd_max_s = None;
        self.maybe_gate_ack(now, true);
        // Everything our stack produced while we were silent is unsent as far as the client
        // is concerned: send it now, as far as the client's window allows.
        self.push_unsent(now);
    }

    /// Sends shadow-queue bytes the client has not been sent by this primary (output our
    /// stack produced while we were a backup, which it will not send again by itself), within
    /// the client's window and at most `burst` segments per call.
    fn push_unsent(&mut self, now: Instant) {
        self.more_unsent = false;
        if self.role != Role::Primary {
            return;
        }
        if self.isn_unconfirmed() {
            self.output_held = true;
            return;
        }
        let (Some(sh), Some((ack, edge)), Some(client_ack)) =
            (self.shadow.as_ref(), self.gate_values(), self.client_ack)
        else {
            return;
        };
        let window = self.window_field(ack, edge);
        let wnd = (u32::from(self.client_wnd) << self.client_ws).max(self.mss as u32);
        let limit = client_ack.plus(wnd);
        let from = self
            .snd_max_s
            .unwrap_or(client_ack)
            .max(client_ack)
            .max(sh.base());
        let end = sh.end();
        let (pkts, from) = self.shadow_segments(from, limit, self.cfg.burst, ack, window);
        self.more_unsent = pkts.len() == self.cfg.burst && from.lt(end) && from.lt(limit);
        for (seq, len, p) in pkts {
            self.note_sent(now, ack, edge, seq, len, false);
            self.to_client.push(p);
        }
    }

    /// Segments of shadow-queue bytes from `from`, one MSS each at most, not beyond `limit`,
    /// at most `max` of them (FIN included where it follows); with the sequence number after
    /// the last.
    fn shadow_segments(
        &self,
        mut from: SeqNumber,
        limit: SeqNumber,
        max: usize,
        ack: SeqNumber,
        window: u16,
    ) -> (Vec<(SeqNumber, u32, Vec<u8>)>, SeqNumber) {
        let mut pkts = Vec::new();
        let Some(sh) = self.shadow.as_ref() else {
            return (pkts, from);
        };
        while pkts.len() < max && from.lt(sh.end()) && from.lt(limit) {
            let room = limit.since(from) as usize;
            let (seq, bytes, fin) = sh.slice(from, self.mss.min(room));
            let fin = fin && !self.fin_held();
            if bytes.is_empty() && !fin {
                break;
            }
            let len = bytes.len() as u32 + u32::from(fin);
            let p = rewrite::build(
                self.key.service,
                self.key.client,
                seq,
                ack,
                window,
                &bytes,
                fin,
            );
            pkts.push((seq, len, p));
            from = seq.plus(len);
        }
        (pkts, from)
    }

    /// Ends the SYN-ACK hold when every view member reported or the hold expired.
    fn release_synack_if_ready(&mut self, now: Instant) {
        if !self.synack_paused {
            return;
        }
        let all_ready = self.view_peers.iter().all(|id| self.peers.contains_key(id));
        if !(all_ready || now >= self.created + self.cfg.synack_hold_max) {
            return;
        }
        self.synack_paused = false;
        match self.synack.clone() {
            // Our stack already produced it (we were a backup then): send it ourselves.
            Some(p) => {
                if self.isn_s.is_none() {
                    self.isn_s = self.local_isn;
                    self.init_shadow();
                }
                // A client that acknowledged an earlier copy (held again for members counted
                // since, see `count_view_members`) needs no other.
                if self.client_ack.is_none() {
                    self.send_synack(p);
                }
            }
            None => self.ep.pause_synack(false),
        }
    }

    fn send_synack(&mut self, mut p: Vec<u8>) {
        if let (Some(seg), Some(isn_s)) = (rewrite::parse(&p), self.isn_s) {
            self.hear_isn(isn_s);
            rewrite::set_seq(&mut p, &seg, isn_s);
            self.to_client.push(p);
        }
    }

    /// Runs timers: smoltcp's, the SYN-ACK hold, the FT retransmission timer, held ACKs.
    pub fn poll(&mut self, now: Instant) {
        if self.retired {
            return;
        }
        if self.role == Role::Primary {
            self.release_synack_if_ready(now);
        }
        if now >= self.created + self.cfg.synack_hold_max
            && self
                .view_peers
                .iter()
                .any(|id| !self.peers.contains_key(id))
        {
            // Members silent since the connection opened never had it (they missed every
            // SYN): the speaker has the authority exclude them, and counts them until it
            // confirms.
            if self.role == Role::Primary {
                let silent: Vec<PeerId> = self
                    .view_peers
                    .iter()
                    .copied()
                    .filter(|id| !self.peers.contains_key(id) && !self.dropping.contains(id))
                    .collect();
                for id in silent {
                    tracing::debug!(conn = ?self.key, member = id, "member silent since the open: asking to exclude it");
                    self.dropping.push(id);
                    self.stats.members_dropped += 1;
                    self.stats.dropped.silent += 1;
                    self.request_exclusion(now, id);
                }
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.ep.poll(now, &mut out);
        for p in out.drain(..) {
            self.on_local_output(now, p);
        }
        self.scratch = out;
        self.release_held_ack(now);
        self.decide(now);
        self.forward_handshake(now);
        if self.role == Role::Primary {
            if let Some(t) = self.rtx_at {
                if now >= t {
                    self.retransmit(now, 4);
                    self.rto = (self.rto * 2).min(self.cfg.rto_max);
                }
            }
            self.push_unsent(now);
            if self.repair_at.is_some_and(|t| now >= t) {
                self.maybe_repair(now);
            }
        }
    }

    /// A member that holds the connection sends the client's handshake ACK, rebuilt, to
    /// members that should hold it and never reported it. With SYN cookies a host keeps
    /// nothing for a SYN: a member that lost the client's ACK lacks the connection, and when
    /// the client speaks second (a server banner), nothing else would ever open it there.
    /// The receiver takes it like the client's own (its cookie must check) through its
    /// repair channel, which only members of its view may use; if it holds the connection,
    /// as an old duplicate.
    ///
    /// - A backup sends it to the speaker it never heard from: the backups that hold the
    ///   connection do not speak, and the client waits for the banner
    ///   (FT_SEED=1796800000016665 in the cluster sim: the speaker lost the client's ACK, a
    ///   restarted backup got it).
    /// - The speaker sends it to the members its ACK gate counts that never reported: the gate
    ///   waits for them, so the client has had nothing acknowledged they lack, and the repair
    ///   that follows brings them the rest. Without it, a promoted speaker waited for a backup
    ///   that had lost the ACK until the stall timeout; cut off meanwhile, it left the
    ///   connection with no holder (FT_SEED=1797500000002967).
    ///
    /// Never to a member nobody counts: one that joined the view after the client's SYN
    /// never had the connection, and opened by a forwarded ACK it would hold it without the
    /// bytes the client saw acknowledged before it came; a later speaker that counted it
    /// could make it the speaker (FT_SEED=1796800000058572 FT_TOTAL=1). A backup's speaker
    /// is the view's first member not excluded, and members that join later come after
    /// those that held the connection, unless the view it holds is older than the connection
    /// ([`FtConn::set_view_stale`]): then nothing is forwarded.
    /// Bounded: [`HANDSHAKE_FORWARDS`] rounds, backing off from [`HANDSHAKE_FORWARD_AFTER`]
    /// ([`HANDSHAKE_FORWARD_AFTER_SPEAKER`] at the speaker).
    fn forward_handshake(&mut self, now: Instant) {
        let (Some(client_isn), Some(isn_s), Some(_)) =
            (self.client_isn, self.isn_s, self.client_ack)
        else {
            return;
        };
        if self.ep.state() == TcpState::SynReceived
            || self.handshake_forwards >= HANDSHAKE_FORWARDS
            || self.retired
            || self.view_stale
        {
            self.handshake_forward_at = None;
            return;
        }
        let silent = |id: &PeerId| !self.peers.contains_key(id);
        let to: Vec<PeerId> = match self.role {
            Role::Backup => self.speaker_hint.filter(silent).into_iter().collect(),
            Role::Primary => self
                .view_peers
                .iter()
                .filter(|id| {
                    silent(id)
                        && !self.departed.contains(id)
                        && !self.dropping.contains(id)
                        && !self.excluded.contains(id)
                })
                .copied()
                .collect(),
        };
        if to.is_empty() {
            self.handshake_forward_at = None;
            return;
        }
        let first_wait = match self.role {
            Role::Backup => HANDSHAKE_FORWARD_AFTER,
            Role::Primary => HANDSHAKE_FORWARD_AFTER_SPEAKER,
        };
        let at = *self.handshake_forward_at.get_or_insert(now + first_wait);
        if now < at {
            return;
        }
        let ack = rewrite::build(
            self.key.client,
            self.key.service,
            client_isn.plus(1),
            isn_s.plus(1),
            self.client_wnd,
            &[],
            false,
        );
        tracing::debug!(conn = ?self.key, members = ?to, "members never reported the connection: forwarding the client's handshake ACK");
        self.stats.handshakes_forwarded += 1;
        for id in to {
            self.repairs_out.push((id, ack.clone()));
        }
        self.handshake_forwards += 1;
        self.handshake_forward_at = Some(now + first_wait * (1u32 << self.handshake_forwards));
    }

    /// The client acknowledged output this replica's stack had not produced yet: give the
    /// stack that ACK now that it has caught up (docs/smoltcp-notes.md, "ACK acceptance":
    /// clamp, then release).
    fn release_held_ack(&mut self, now: Instant) {
        for _ in 0..4 {
            let (Some(delta), Some(client_ack), Some(given), Some(max), Some(rcv)) = (
                self.delta(),
                self.client_ack,
                self.last_ack_given,
                self.local_snd_max,
                self.local_rcv_nxt,
            ) else {
                return;
            };
            let want = client_ack.minus(delta).min(max);
            if !given.lt(want) {
                return;
            }
            self.last_ack_given = Some(want);
            let p = rewrite::build(
                self.key.client,
                self.key.service,
                rcv,
                want,
                self.client_wnd,
                &[],
                false,
            );
            let mut out = std::mem::take(&mut self.scratch);
            out.clear();
            self.ep.handle_packet(now, &p, &mut out);
            for p in out.drain(..) {
                self.on_local_output(now, p);
            }
            self.scratch = out;
        }
    }

    /// One packet smoltcp sent: learn from it, keep its bytes, and (primary) pass it on.
    fn on_local_output(&mut self, now: Instant, mut p: Vec<u8>) {
        let Some(seg) = rewrite::parse(&p) else {
            return;
        };
        if self.retired {
            return;
        }
        if seg.syn && seg.ack_flag {
            self.local_isn = Some(seg.seq);
            // smoltcp echoes window scaling only when the client offered it.
            self.our_ws = seg.wscale.unwrap_or(0);
            self.local_rcv_nxt = Some(seg.ack);
            self.local_edge = Some(seg.ack.plus(u32::from(seg.window)));
            self.local_snd_max = Some(seg.seq.plus(1));
            self.progress_dirty = true;
            self.synack = Some(p.clone());
            if self.isn_s.is_none() && self.role == Role::Primary {
                self.isn_s = Some(seg.seq);
            }
            self.init_shadow();
            if self.role == Role::Primary
                && self.isn_s.is_some()
                && !self.synack_paused
                && !self.synack_by_cookie
            {
                self.send_synack(p);
            }
            return;
        }
        let end = seg.end();
        self.local_snd_max = Some(self.local_snd_max.map_or(end, |m| m.max(end)));
        if let Some(i) = self.local_isn {
            self.most_out = self.most_out.max(end.since(i.plus(1)));
        }
        if seg.ack_flag && !seg.rst {
            let edge = seg.ack.plus(u32::from(seg.window) << self.our_ws);
            let changed = self.local_rcv_nxt != Some(seg.ack) || self.local_edge != Some(edge);
            self.local_rcv_nxt = Some(self.local_rcv_nxt.map_or(seg.ack, |r| r.max(seg.ack)));
            self.local_edge = Some(self.local_edge.map_or(edge, |e| e.max(edge)));
            if changed {
                self.progress_dirty = true;
                self.trim_log();
                if self.role == Role::Primary && self.repair_at.is_none() {
                    // A member now behind us may never say so (every report of it lost):
                    // schedule its repair, which makes it answer with where it stands.
                    self.maybe_repair(now);
                }
            }
        }
        let Some(delta) = self.delta() else {
            return;
        };
        let s_seq = seg.seq.plus(delta);
        if seg.fin && self.fin_s.is_none() {
            self.fin_s = Some(s_seq.plus(seg.payload_len as u32));
            if self.end == OutputEnd::Open {
                self.end = OutputEnd::Fin;
            }
            // The speaker holds its FIN until every member reported one at the same point:
            // report ours with the repeats of a change, not once (a lost report would leave
            // the speaker waiting until its stall clock dropped us).
            self.progress_dirty = true;
        }
        if seg.payload_len > 0 || seg.fin {
            if let Some(sh) = self.shadow.as_mut() {
                let payload = &p[seg.payload_off..seg.payload_off + seg.payload_len];
                sh.push(s_seq, payload, seg.fin);
            }
            let (me, speaker) = (self.me, self.speaker());
            if let Some(a) = self.agreement.as_mut() {
                let payload = &p[seg.payload_off..seg.payload_off + seg.payload_len];
                if a.output(s_seq, payload, seg.fin) {
                    a.compare(me, speaker);
                }
            }
        }
        if self.role == Role::Backup {
            return;
        }
        if seg.payload_len > 0 || seg.fin {
            // Never open a hole: output our stack made while the gate was still closed (a
            // member had not reported yet) was kept in the shadow queue only; send from
            // where the client stands first (issue #10, defect 4).
            let expected = self.snd_max_s.or(self.client_ack);
            if expected.is_some_and(|e| e.lt(s_seq)) {
                self.more_unsent = true;
                return;
            }
            if self.isn_unconfirmed() {
                self.output_held = true;
                return;
            }
        }
        rewrite::set_seq(&mut p, &seg, s_seq);
        if seg.rst {
            // Only a reset we decided on reaches the client ([`FtConn::abort`], or every
            // member's backend reset). One our stack makes up by itself answers what the FT
            // layer fed it (a member promoted before its handshake completed, a clamped
            // ACK): the client's connection lives on at the members.
            if self.abort_wanted {
                self.to_client.push(p);
            } else {
                self.stats.resets_suppressed += 1;
                if self.ack_owed {
                    // The client resent bytes or a FIN we acknowledged, and our stack, which
                    // has moved on (closed: the client acknowledged our FIN), answers with a
                    // reset. Our ACK of them was lost, or fenced while we became the speaker:
                    // the client waits for it, and nothing else would send it again.
                    self.maybe_gate_ack(now, true);
                }
            }
            return;
        }
        let Some((ack, edge)) = self.gate_values() else {
            return;
        };
        let window = self.window_field(ack, edge);
        let pure = seg.payload_len == 0 && !seg.fin;
        let repeated = self.sent_ack == Some(ack) && self.sent_edge == Some(edge);
        if pure && !seg.sack && repeated && self.local_hole_end.is_none() && !self.ack_owed {
            // A repeated pure ACK would count as a duplicate at the client; it is one only
            // when client bytes were lost on their way to us (then the client must see it
            // and retransmit fast), or when the client resent what we acknowledged.
            return;
        }
        if seg.fin && self.fin_held() {
            // Our backend closed; the others' have not yet, at least not at the same point:
            // the bytes go, the FIN waits (issue #14).
            if seg.payload_len == 0 {
                return;
            }
            let payload = &p[seg.payload_off..seg.payload_off + seg.payload_len];
            let q = rewrite::build(
                self.key.service,
                self.key.client,
                s_seq,
                ack,
                window,
                payload,
                false,
            );
            self.note_sent(now, ack, edge, s_seq, seg.payload_len as u32, false);
            self.to_client.push(q);
            return;
        }
        rewrite::set_ack(&mut p, &seg, ack);
        rewrite::set_window(&mut p, &seg, window);
        self.note_sent(now, ack, edge, s_seq, seg.seq_len(), false);
        self.to_client.push(p);
    }

    /// The ACK and right edge the client may see: the minimum over every member holding the
    /// connection, never below what was already sent.
    fn gate_values(&self) -> Option<(SeqNumber, SeqNumber)> {
        let mut ack = self.local_rcv_nxt?;
        let mut edge = self.local_edge?;
        for id in &self.view_peers {
            // A member we have not heard from yet may hold less than anyone: wait for it
            // (one that never had the connection is dropped after the SYN-ACK hold).
            let p = self.peers.get(id)?;
            ack = ack.min(p.rcv_nxt);
            edge = edge.min(p.edge);
        }
        for (id, r) in &self.uncounted {
            if !self.excluded.contains(id) {
                ack = ack.min(*r);
            }
        }
        if self.view_stale {
            // Our view is older than the packet that opened the connection: members that
            // held it from the client's SYN may be missing from the count. Acknowledge no
            // new client byte until a view that new comes and counts them
            // (`FtConn::count_members_at_open`).
            if let Some(held) = self.sent_ack.or(self.client_isn.map(|c| c.plus(1))) {
                ack = ack.min(held);
            }
        }
        if let Some(s) = self.sent_ack {
            ack = ack.max(s);
        }
        if let Some(e) = self.sent_edge {
            edge = edge.max(e);
        }
        Some((ack, edge.max(ack)))
    }

    fn window_field(&self, ack: SeqNumber, edge: SeqNumber) -> u16 {
        (edge.since(ack) >> self.our_ws).min(u32::from(u16::MAX)) as u16
    }

    fn note_sent(
        &mut self,
        now: Instant,
        ack: SeqNumber,
        edge: SeqNumber,
        seq: SeqNumber,
        len: u32,
        retransmission: bool,
    ) {
        self.sent_ack = Some(ack);
        self.sent_edge = Some(edge);
        if len > 0 {
            let end = seq.plus(len);
            let new_data = self.snd_max_s.is_none_or(|m| m.lt(end));
            self.snd_max_s = Some(self.snd_max_s.map_or(end, |m| m.max(end)));
            if retransmission {
                self.probe = None;
            } else if new_data && self.probe.is_none() {
                self.probe = Some((end, now));
            }
            if self.rtx_at.is_none() {
                self.rtx_at = Some(now + self.rto);
            }
        }
    }

    /// Sends an ACK built by the FT layer when the gate moved (or `force`).
    fn maybe_gate_ack(&mut self, now: Instant, force: bool) {
        if self.client_ack.is_none() {
            // The client has not acknowledged a SYN-ACK of ours: it is in SYN-SENT (our
            // SYN-ACK is held, lost, or another member's reached it), where a bare ACK means
            // nothing. Our SYN-ACK, or its retransmission, carries the ACK.
            return;
        }
        let Some((ack, edge)) = self.gate_values() else {
            return;
        };
        if !force && self.sent_ack == Some(ack) && self.sent_edge == Some(edge) {
            return;
        }
        let (Some(delta), Some(snd)) = (self.delta(), self.local_snd_max) else {
            return;
        };
        let mut seq = snd.plus(delta);
        if let (true, Some(f)) = (self.fin_held(), self.fin_s) {
            // The FIN was not sent: the client expects it at `f`.
            seq = seq.min(f);
        }
        if let Some(c) = self.client_ack {
            seq = seq.max(c);
        }
        let window = self.window_field(ack, edge);
        let p = rewrite::build(
            self.key.service,
            self.key.client,
            seq,
            ack,
            window,
            &[],
            false,
        );
        self.stats.gate_acks += 1;
        self.note_sent(now, ack, edge, seq, 0, false);
        self.to_client.push(p);
    }

    /// Resends up to `segments` segments from the client's last ACK.
    fn retransmit(&mut self, now: Instant, segments: usize) {
        let (Some(sh), Some((ack, edge))) = (self.shadow.as_ref(), self.gate_values()) else {
            return;
        };
        if sh.is_empty() {
            self.rtx_at = None;
            return;
        }
        let window = self.window_field(ack, edge);
        let client_wnd = (u32::from(self.client_wnd) << self.client_ws).max(self.mss as u32);
        let from = self.client_ack.unwrap_or(sh.base()).max(sh.base());
        let mut limit = from.plus(client_wnd);
        if self.isn_unconfirmed() {
            // Only what the client was sent: the rest waits for members to learn isn_s.
            limit = limit.min(self.snd_max_s.unwrap_or(from));
        }
        let (pkts, _) = self.shadow_segments(from, limit, segments, ack, window);
        for (seq, len, p) in pkts {
            self.stats.retransmits += 1;
            self.note_sent(now, ack, edge, seq, len, true);
            self.to_client.push(p);
        }
        self.rtx_at = Some(now + self.rto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const CLIENT_ISN: u32 = 1000;

    fn key() -> FlowKey {
        FlowKey {
            client: "198.18.0.2:40000".parse().unwrap(),
            service: "198.19.0.10:80".parse().unwrap(),
        }
    }

    fn syn() -> Vec<u8> {
        let k = key();
        let mut out = Vec::new();
        PacketBuilder::ipv4(k.client.ip().octets(), k.service.ip().octets(), 64)
            .tcp(k.client.port(), k.service.port(), CLIENT_ISN, 65535)
            .syn()
            .write(&mut out, b"")
            .unwrap();
        out
    }

    /// The client's first segment after the handshake, acknowledging `ack`.
    fn first_ack(ack: SeqNumber) -> Vec<u8> {
        let k = key();
        rewrite::build(
            k.client,
            k.service,
            SeqNumber(CLIENT_ISN + 1),
            ack,
            65535,
            &[],
            false,
        )
    }

    fn report(isn_s: SeqNumber) -> Progress {
        Progress {
            isn_local: isn_s,
            isn_s: Some(isn_s),
            rcv_nxt: SeqNumber(CLIENT_ISN + 1),
            client_fin: false,
            edge: SeqNumber(CLIENT_ISN + 1 + 65535),
            hole_end: SeqNumber(CLIENT_ISN + 1),
            out: Some(isn_s.plus(1)),
            end: OutputEnd::Open,
        }
    }

    /// Member 2 of view [0, 1, 2], with the client's SYN.
    fn backup() -> FtConn {
        let t = Instant::from_millis(0);
        let mut c = FtConn::new(
            key(),
            FtConfig::default(),
            EndpointConfig::default(),
            7,
            t,
            2,
            &[0, 1, 2],
        );
        c.handle_client_packet(t, &syn());
        assert_eq!(c.state(), TcpState::SynReceived);
        c
    }

    /// A member's report says whether its `rcv_nxt` counts the client's FIN, so that the
    /// client bytes it holds are known exactly (a primary that left the connection stamps
    /// up to there in total order). A FIN that came before the bytes in front of it (smoltcp
    /// drops an out-of-order FIN) is not counted until it is taken.
    #[test]
    fn a_report_tells_whether_rcv_nxt_counts_the_clients_fin() {
        let t = Instant::from_millis(1);
        let isn_s = SeqNumber(874_374_169);
        let k = key();
        let data = |seq: u32, payload: &[u8], fin: bool| {
            rewrite::build(
                k.client,
                k.service,
                SeqNumber(CLIENT_ISN + 1 + seq),
                isn_s.plus(1),
                65535,
                payload,
                fin,
            )
        };
        let mut c = backup();
        c.handle_progress(t, 0, report(isn_s));
        c.handle_client_packet(t, &first_ack(isn_s.plus(1)));
        assert_eq!(c.state(), TcpState::Established);
        // "world" and the FIN first: out of order.
        c.handle_client_packet(t, &data(5, b"world", true));
        c.poll(t);
        let p = c.take_progress(t).expect("a report is due");
        assert_eq!(
            (p.rcv_nxt, p.client_fin),
            (SeqNumber(CLIENT_ISN + 1), false)
        );
        assert_eq!(p.data_rcv(), SeqNumber(CLIENT_ISN + 1));
        c.handle_client_packet(t, &data(0, b"hello", false));
        c.poll(t);
        let p = c.take_progress(t).expect("a report is due");
        let end = SeqNumber(CLIENT_ISN + 1 + 10);
        assert_eq!(
            (p.rcv_nxt, p.client_fin),
            (end, false),
            "the early FIN was dropped"
        );
        // The client's retransmitted FIN is taken: rcv_nxt counts it, the bytes end before.
        c.handle_client_packet(t, &data(10, b"", true));
        c.poll(t);
        assert_eq!(c.state(), TcpState::CloseWait);
        let p = c.take_progress(t).expect("a report is due");
        assert_eq!((p.rcv_nxt, p.client_fin), (end.plus(1), true));
        assert_eq!(p.data_rcv(), end);
        assert_eq!(c.local_data_rcv(), Some(end));
    }

    /// A backup that holds the connection while the speaker never reported it (it lost the
    /// client's handshake ACK, and the client waits for a banner) forwards the ACK to it,
    /// backing off, until it reports; never to another member, silent or not.
    #[test]
    fn a_backup_forwards_the_handshake_ack_to_a_speaker_never_heard_from() {
        let t = |ms| Instant::from_millis(ms);
        let isn_s = SeqNumber(874_374_169);
        let mut c = backup();
        c.handle_progress(t(1), 1, report(isn_s));
        c.handle_client_packet(t(1), &first_ack(isn_s.plus(1)));
        assert_eq!(c.state(), TcpState::Established);
        let mut sent = Vec::new();
        for ms in (1..=1000).step_by(5) {
            c.poll(t(ms));
            for (to, pkt) in c.take_repairs() {
                sent.push((ms, to, pkt));
            }
        }
        let times: Vec<i64> = sent.iter().map(|(ms, _, _)| *ms).collect();
        assert_eq!(times, [101, 301, 701], "after 100 ms, then backing off");
        assert!(
            sent.iter().all(|(_, to, _)| *to == 0),
            "only to the silent member"
        );
        let seg = rewrite::parse(&sent[0].2).expect("a TCP segment");
        assert_eq!(
            (seg.seq, seg.ack, seg.ack_flag, seg.syn, seg.payload_len),
            (SeqNumber(CLIENT_ISN + 1), isn_s.plus(1), true, false, 0),
            "the client's handshake ACK, which the SYN cookie checks"
        );
        assert_eq!(c.stats.handshakes_forwarded, 3);
        let forwards_none = |c: &mut FtConn, from: i64| {
            for ms in (from..=from + 3000).step_by(5) {
                c.poll(t(ms));
                assert!(c.take_repairs().is_empty());
            }
        };
        // Once the member reports, nothing more goes to it.
        c.handle_progress(t(1001), 0, report(isn_s));
        forwards_none(&mut c, 1001);
        // Never to a silent member that is not the speaker (it may have joined the view
        // after the client's SYN).
        let mut c = backup();
        c.handle_progress(t(1), 0, report(isn_s));
        c.handle_client_packet(t(1), &first_ack(isn_s.plus(1)));
        forwards_none(&mut c, 1);
        // Bounded when the speaker never reports.
        let mut c = backup();
        c.handle_progress(t(1), 1, report(isn_s));
        c.handle_client_packet(t(1), &first_ack(isn_s.plus(1)));
        let mut n = 0;
        for ms in (1..=60_000).step_by(50) {
            c.poll(t(ms));
            n += c.take_repairs().len();
        }
        assert_eq!(n, usize::from(HANDSHAKE_FORWARDS));
    }

    /// A member of the view that reports holding the connection but that our gate never
    /// counted (it opened the connection with a stale view) may be made the speaker until
    /// the authority excludes it: a promoted speaker asks for that, and until the notice
    /// comes acknowledges no client byte that member lacks (FT_SEED=1797200000028465).
    #[test]
    fn a_new_speaker_waits_for_a_holder_its_gate_never_counted_until_it_is_excluded() {
        let t = |ms| Instant::from_millis(ms);
        let isn_s = SeqNumber(874_374_169);
        let k = key();
        let mut c = backup();
        c.handle_progress(t(1), 0, report(isn_s));
        c.handle_progress(t(1), 1, report(isn_s));
        c.handle_client_packet(t(1), &first_ack(isn_s.plus(1)));
        c.set_view(t(2), &[0, 1, 2, 3]);
        // Member 3 joined the view and holds the connection without our gate counting it.
        c.handle_progress(t(3), 3, report(isn_s));
        let hello = rewrite::build(
            k.client,
            k.service,
            SeqNumber(CLIENT_ISN + 1),
            isn_s.plus(1),
            65535,
            b"hello",
            false,
        );
        c.handle_client_packet(t(4), &hello);
        c.poll(t(4));
        let mut with_bytes = report(isn_s);
        with_bytes.rcv_nxt = SeqNumber(CLIENT_ISN + 6);
        c.handle_progress(t(5), 1, with_bytes);
        // 0 crashed: we speak, with 1 and 3 in the view.
        c.set_view(t(6), &[2, 1, 3]);
        assert_eq!(c.role(), Role::Primary);
        assert_eq!(c.take_exclusion_requests(t(6)), vec![3]);
        let acks = |c: &mut FtConn, now| {
            c.poll(now);
            c.take_to_client()
                .iter()
                .filter_map(|p| rewrite::parse(p).map(|s| s.ack))
                .collect::<Vec<_>>()
        };
        let before = acks(&mut c, t(7));
        assert!(!before.is_empty(), "a new speaker sends the gate's ACK");
        assert!(
            before.iter().all(|a| *a == SeqNumber(CLIENT_ISN + 1)),
            "acknowledged bytes member 3 lacks: {before:?}"
        );
        // The authority's notice: 0 and 3 are excluded. Now the bytes are acknowledged.
        c.handle_exclusions(t(8), &[0, 3]);
        let after = acks(&mut c, t(9));
        assert_eq!(after.last(), Some(&SeqNumber(CLIENT_ISN + 6)));
    }

    // The opener (0) reported its ISN but its SYN-ACK never reached the client; member 1's
    // did (FT_SEED=1796000000001700). The client's ACK names 1's, which we heard too.
    #[test]
    fn backup_takes_the_isn_the_client_acknowledged_over_the_openers_report() {
        let t = Instant::from_millis(1);
        let (opener, accepted) = (SeqNumber(874_374_169), SeqNumber(692_847_104));
        let mut c = backup();
        c.handle_progress(t, 0, report(opener));
        assert_eq!(c.isn_s, Some(opener));
        c.handle_progress(t, 1, report(accepted));
        assert_eq!(
            c.isn_s,
            Some(opener),
            "the opener's report stands until refuted"
        );
        c.handle_client_packet(t, &first_ack(accepted.plus(1)));
        assert_eq!(c.isn_s, Some(accepted));
        assert_eq!(c.state(), TcpState::Established);
        assert!(!c.is_retired());
        // A late report of the refuted value changes nothing.
        c.handle_progress(t, 0, report(opener));
        assert_eq!(c.isn_s, Some(accepted));
    }

    // Nothing heard explains the client's ACK yet: our stack must not take it through a
    // delta that may be wrong (clamped, it would complete the handshake). Once the report
    // comes, the client's next segment completes it.
    #[test]
    fn backup_holds_a_contradicting_ack_until_a_report_explains_it() {
        let t = Instant::from_millis(1);
        let (opener, accepted) = (SeqNumber(874_374_169), SeqNumber(692_847_104));
        let mut c = backup();
        c.handle_progress(t, 0, report(opener));
        c.handle_client_packet(t, &first_ack(accepted.plus(1)));
        assert_eq!(c.state(), TcpState::SynReceived);
        assert_eq!(c.isn_s, Some(opener));
        c.handle_progress(t, 1, report(accepted));
        c.handle_client_packet(t, &first_ack(accepted.plus(1)));
        assert_eq!(c.isn_s, Some(accepted));
        assert_eq!(c.state(), TcpState::Established);
    }

    fn is_synack(p: &[u8]) -> bool {
        rewrite::parse(p).is_some_and(|s| s.syn && s.ack_flag)
    }

    // A speaker whose view was stale at the SYN ([1] while the authority's was [1, 3]) sent
    // its SYN-ACK, which the redirector fenced (FT_SEED=1795980482925454). Once it learns the
    // view, and as long as the client acknowledged nothing, it counts 3 and holds further
    // copies of its SYN-ACK until 3 reports (the client's resent SYN reaches 3 too).
    #[test]
    fn speaker_counts_members_of_a_newer_view_until_the_client_acknowledges() {
        let t = Instant::from_millis(0);
        let mut c = FtConn::new(
            key(),
            FtConfig::default(),
            EndpointConfig::default(),
            7,
            t,
            1,
            &[1],
        );
        c.handle_client_packet(t, &syn());
        c.poll(t);
        assert!(c.take_to_client().iter().any(|p| is_synack(p)));
        c.set_view(t, &[1, 3]);
        assert_eq!(c.members(), &[3]);
        // smoltcp resends its SYN-ACK after its RTO: held now.
        let later = Instant::from_millis(1500);
        c.poll(later);
        assert!(!c.take_to_client().iter().any(|p| is_synack(p)));
        let mut p = report(SeqNumber(1));
        p.isn_s = None;
        p.out = None;
        c.handle_progress(later, 3, p);
        c.poll(later);
        assert!(c.take_to_client().iter().any(|p| is_synack(p)));
    }

    // An ACK the report's value explains (the client acknowledged some output) is no
    // contradiction.
    #[test]
    fn an_ack_of_output_does_not_refute_isn_s() {
        let t = Instant::from_millis(1);
        let opener = SeqNumber(874_374_169);
        let mut c = backup();
        let mut p = report(opener);
        p.out = Some(opener.plus(1 + 500));
        c.handle_progress(t, 0, p);
        c.handle_progress(t, 1, report(SeqNumber(692_847_104)));
        c.handle_client_packet(t, &first_ack(opener.plus(1)));
        assert_eq!(c.isn_s, Some(opener));
        assert_eq!(c.state(), TcpState::Established);
    }
}
