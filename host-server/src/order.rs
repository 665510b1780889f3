//! Total order across the connections of one ft service (`setportopt --order total`).
//!
//! The primary decides which connection's client bytes its backend gets next and stamps
//! each chunk `(stamp, connection, length)`; every replica, the primary included, hands its
//! backend exactly those chunks in stamp order. Delivering in the same order is not enough
//! for a server that reads many sockets in one event-loop turn, so after a chunk the next
//! chunk for another connection waits until the backend answered on the connection that got
//! the last one, or until `quiet` passed:
//!
//! ```text
//!   stamp k: conn A, 31 bytes ──► backend ──► answer on A (or quiet time) ──► stamp k+1: conn B …
//! ```
//!
//! A deterministic single-threaded server (redis) then sees the same commands in the same
//! order, one at a time, on every replica. The cost: one backend round trip (or `quiet`)
//! between chunks of different connections, for the whole service.
//!
//! Sans-IO: the host server asks [`Sequencer::next_grant`] what to deliver, reports what it
//! delivered and what the backend answered, and ships [`Sequencer::take_outbox`] to the
//! backups, which feed [`Sequencer::on_stamps`].
//!
//! Stamp repair (issue 12, finding 3). The primary repeats its last [`RESEND`] stamps in every
//! order datagram; a backup that misses more (a long loss burst, a rejoin, a restart) would
//! wait for ever, its receive windows would fill and the primary's ACK gate would close the
//! client's window. So:
//!
//! ```text
//!   backup: first missing stamp is `next`  ──need [next, to)──►  primary (or any member
//!                                                                 that became primary)
//!           ◄── the stamps, as Order datagrams ────────────────  kept in `history`
//!           ◄── gone (oldest kept, its next) ─────────────────── when `next` is forgotten
//! ```
//!
//! - Every replica keeps the last [`HISTORY`] stamps it issued or processed, contiguous, so
//!   that a backup promoted to primary can answer too. Older stamps are forgotten (counted).
//! - A backup asks ([`Sequencer::poll_need`]) for at most [`NEED_MAX`] stamps at a time,
//!   again every [`NEED_RETRY`] while it still misses them.
//! - Gone: the stamps `[next, oldest)` are lost for this replica. It cannot tell which
//!   connections had chunks among them, so it stops following every connection it holds now
//!   (they are *abandoned*: the host makes this member leave them, as when its backend fails,
//!   so it is never promoted for them and the primary's gate stops waiting for it), and moves
//!   to the primary's *next* stamp, skipping what the primary still keeps: none of it is for
//!   a connection it follows. (Moving to `oldest` instead left it at the very edge of the
//!   primary's history: with the primary stamping on, the next stamp it missed was gone again
//!   at once, and it fell ever further behind; in the soak every restarted host then refused
//!   hundreds of thousands of stamps and, once promoted, stalled the service.) The
//!   connections opened after that are followed from their first chunk: the replica was
//!   anchored before the primary stamped them. A fresh sequencer (a restarted host) starts at
//!   0 and goes through the same steps, so a late joiner starts at a defined point instead of
//!   waiting. While the primary still keeps stamp 0 (its first [`HISTORY`] stamps), the
//!   fresh replica walks the kept history instead: it is anchored below the first stamp it
//!   hears, so the stamps of connections it does not hold are passed at once, not after
//!   [`UNKNOWN_CONN_WAIT`] per repair answer. (Waiting there, a host restarted in the soak
//!   walked 750 stamps a second behind a primary stamping 2,500, while holding the
//!   connections opened since it came back: their stamps waited behind the walk, and it got
//!   "gone" and left them.) Nor are the connections of stamps issued before it joined the
//!   view marked foreign: they opened before it was here, and a mark made during the walk,
//!   up to a minute after their stamps, outlived them and made the client's new connection
//!   on a reused 4-tuple foreign. Every stamp carries the view epoch it was issued under,
//!   and the host tells the sequencer the epoch since which it is a member
//!   ([`Sequencer::set_epochs`]): a stamp issued since then is marked like any other, also
//!   when it was heard late, in the walk (a restarted host whose first view came late).
//! - A stamp for a connection this replica does not hold is skipped (at once when it was
//!   issued before this replica last anchored, or when the replica holds the connection but
//!   has left it; otherwise after [`UNKNOWN_CONN_WAIT`], the SYN may be under way), and the
//!   connection is remembered as *foreign* for [`FOREIGN_TTL`]: if it shows up here later,
//!   its first chunks went by, so it is abandoned too.
//! - A replica waits a bounded time at a stamp for client bytes it lacks. They come by repair
//!   or from the client when its connection's speaker counts it; when the speaker does not
//!   (this replica holds a connection whose start it missed, or whose bytes it missed while
//!   out of the view, and its exclusion is not through yet) they never come, and every later
//!   stamp waits behind them. Past the bound it leaves that connection (abandoned, as above)
//!   and moves on; a new primary at a stamp it adopted passes the stamp on as it is (the
//!   members that have the bytes deliver them). A backup's bound ([`BACKUP_STARVED_MAX`], or
//!   half the service's stall time, [`Sequencer::with_stall`]) runs from the stamp's
//!   arrival, so connections missed together cost one wait, not one each; and it stays below
//!   the speaker's stall clock. (The soak, after a heal: a backup held two such connections
//!   and waited 2 s at each. Its order stood still for 4 s, so the primary's stall clock
//!   (1 s) dropped it from every connection opened after the heal, and it fell so far behind
//!   that the stamps it needed next were gone: it left every connection it held.)
//! - Bounds: the queue holds stamps in `[next, next + QUEUE_MAX)` only (later ones are
//!   refused and counted; repair fetches them when their turn comes), the history
//!   [`HISTORY`], the foreign set [`FOREIGN_MAX`] (oldest evicted, counted). Every outcome is
//!   counted in [`OrderStats`], which the host adds to its `/metrics`.
//!
//! Failover (issue 12, the total-order stall). The old primary's last stamps reach the
//! backups unevenly: one backup may have delivered stamps the new primary never received.
//! Were the new primary to number its own chunks from where it stands, that backup would
//! ignore them as old, and then wait for ever for bytes it had already handed its backend
//! under the old stamps (its windows fill, the gate closes every client's window). So:
//!
//! ```text
//!   view: B1 primary ──► B1 syncs for SYNC_WAIT: asks every member for [next, …) ──► adopts
//!                        the stamps they delivered, issues nothing new meanwhile; then a
//!                        stamp nobody has is issued void (no connection, no bytes)
//!                   ──► B2 drops the old primary's stamps it has not delivered (the new
//!                        primary decides them again), answers B1 from its history
//! ```
//!
//! - A backup answers a sync request only from the primary of its current view, and once it
//!   knows that view it delivers none of the old primary's stamps: its answer covers all it
//!   delivered.
//! - The sync lasts [`SYNC_WAIT`] past the last answer that brought stamps the new primary
//!   lacks, up to [`SYNC_MAX`]: a new primary far behind a member (it rejoined after a
//!   partition) catches up, [`QUEUE_MAX`] stamps at a time, before it numbers anything.
//! - It also lasts until every member of the view answered completely: a member sends the
//!   stamps asked for, then "synced" with the stamp it delivered up to
//!   ([`Sequencer::on_member_synced`]); the sync waits until it holds every stamp below
//!   that, asking again every [`NEED_RETRY`]. Ending on time alone, a new primary whose
//!   member's answer was lost numbered that member's delivered stamps anew, and the
//!   member's backend had already taken chunks in an order the others never would (the
//!   redis failover test: digests differed). A member that does not answer by
//!   [`SYNC_MAX`] is left behind, counted (`sync_incomplete`).
//! - Safety net: a backup that hears the primary stamp a number it already processed as a
//!   different chunk has diverged (its answer did not reach the sync by [`SYNC_MAX`]). It
//!   leaves every connection it holds, as after "gone", instead of waiting for bytes that
//!   never come.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ft_tcp::FlowKey;

/// Stamps the primary repeats in every order datagram (loss of one is then harmless).
pub const RESEND: usize = 16;
/// Stamps every replica keeps to answer repair requests: about ten seconds of stamps at
/// the rate the redis-benchmark failover test reaches (6,000 a second, 20 connections, 2
/// cores), so that a backup held up for a while (a starving stamp, a failover, a loss burst,
/// a busy machine not scheduling it) still finds the stamps it needs instead of "gone",
/// which makes it leave every connection it holds. (4,096 lasted 0.7 s at that rate.) A
/// stamp takes 24 bytes: 1.5 MB per service.
pub const HISTORY: usize = 65536;
/// Stamps a backup queues ahead of the next one it delivers; later ones are refused.
pub const QUEUE_MAX: u64 = 1024;
/// Stamps asked for in one repair request (and answered at most).
pub const NEED_MAX: u64 = 256;
/// A repair request still unanswered is sent again after this long.
pub const NEED_RETRY: Duration = Duration::from_millis(20);
/// A stamp for a connection this replica does not hold is skipped after this long (the
/// replica joined after it opened and cannot follow it).
pub const UNKNOWN_CONN_WAIT: Duration = Duration::from_millis(200);
/// How long a new primary waits at a stamp it adopted for client bytes it lacks before it
/// leaves that connection and passes the stamp on (the client's retransmission, after the
/// failover, brings them).
pub const STARVED_MAX: Duration = Duration::from_secs(2);
/// How long after a stamp arrived a backup waits for the client bytes it lacks before it
/// leaves that connection and moves on. The bytes come by repair (milliseconds) or from the
/// client when this replica is one its speaker counts; when it is not (it holds a connection
/// it missed the start of, or missed bytes of while out of the view, and its speaker has not
/// had it excluded yet), they never come, and every later stamp of the service waits behind
/// it. The whole service's order stands still meanwhile, so the bound must stay well below
/// the speaker's stall clock (`stall_ms`, 1 s by default), which otherwise drops this
/// backup from every connection with output pending; [`Sequencer::with_stall`] keeps it at
/// half that.
pub const BACKUP_STARVED_MAX: Duration = Duration::from_millis(500);
/// The least a backup waits at the head of its order for a stamp's bytes, however long ago
/// the stamp arrived: bytes held back behind the wait (a full receive buffer) come by repair
/// once it moves.
pub const STARVED_HEAD_MIN: Duration = Duration::from_millis(100);
/// How long a connection stays foreign (long past any SYN still in flight; shorter than
/// a client's TIME-WAIT, so a reused 4-tuple is a new connection).
pub const FOREIGN_TTL: Duration = Duration::from_secs(30);
/// Foreign connections remembered at most.
pub const FOREIGN_MAX: usize = 8192;
/// How long a new primary collects the stamps its members delivered before it issues any;
/// again after each answer that brought stamps it lacks, up to [`SYNC_MAX`].
pub const SYNC_WAIT: Duration = Duration::from_millis(100);
/// The longest a new primary goes on collecting while its members still bring stamps it
/// lacks (it issues none meanwhile: the service pauses). A new primary that was behind (it
/// rejoined after a partition) adopts at most [`NEED_MAX`] stamps an answer and delivers
/// them one backend round trip each: 100 ms covered a few hundred stamps, and a backup
/// thousands ahead then saw it number them again and left every connection it held.
pub const SYNC_MAX: Duration = Duration::from_secs(2);
/// The most bytes one chunk carries.
const MAX_CHUNK: usize = 64 * 1024;

/// One stamped chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Position in the service's total order.
    pub stamp: u64,
    /// The connection.
    pub key: FlowKey,
    /// Bytes of the connection's client stream, following its previous chunk.
    pub len: u32,
    /// The view epoch of the primary that issued it ([`Sequencer::set_epochs`]).
    pub epoch: u64,
}

/// What a connection looks like to the sequencer right now.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    /// Client bytes received and not yet given to the backend.
    pub pending: usize,
    /// Bytes the backend has written back so far (an answer moves it).
    pub answered: u64,
}

/// The primary's answer to a repair request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeedAnswer {
    /// The stamps asked for that exist (possibly none yet).
    Stamps(Vec<Stamp>),
    /// The first stamp asked for is forgotten: the oldest kept, and the next to be issued.
    Gone {
        /// Oldest stamp kept (the next one when none is).
        oldest: u64,
        /// The next stamp the primary issues.
        next: u64,
    },
}

/// Events since the host last looked ([`Sequencer::take_stats`]), for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderStats {
    /// Stamps skipped: their connection is not followed here.
    pub skipped: u64,
    /// Stamps refused because the queue was full (fetched again by repair later).
    pub refused: u64,
    /// Repair requests made.
    pub asked: u64,
    /// Stamps sent in answer to repair requests.
    pub served: u64,
    /// Repair answers "gone" that made this replica move past stamps it never had.
    pub gone: u64,
    /// Connections this replica stopped following (it leaves them).
    pub abandoned: u64,
    /// Stamps forgotten from the history (it is full).
    pub forgotten: u64,
    /// Foreign connections forgotten before their time because the set was full.
    pub foreign_evicted: u64,
    /// Stamps a new primary adopted from a member's answer to its sync.
    pub adopted: u64,
    /// Stamps a new primary issued void: no member it heard had them.
    pub voided: u64,
    /// The old primary's undelivered stamps a backup dropped at a failover.
    pub dropped: u64,
    /// Times this backup found it delivered a stamp the primary numbers differently.
    pub diverged: u64,
    /// Connections this replica left after waiting at one of their stamps for client bytes
    /// that did not come ([`STARVED_MAX`], [`BACKUP_STARVED_MAX`]).
    pub starved: u64,
    /// Syncs of a new primary that ended at [`SYNC_MAX`] without every member's complete
    /// answer (a member that does not answer may then find its past numbered differently).
    pub sync_incomplete: u64,
}

#[derive(Debug, Clone, Copy)]
struct Turn {
    key: FlowKey,
    left: u32,
    answered_base: u64,
    delivered_at: Option<Instant>,
}

/// The total-order state of one service on one replica.
///
/// Call order, each loop turn: [`Sequencer::on_stamps`] / [`Sequencer::on_gone`] /
/// [`Sequencer::on_need`] as datagrams come; then [`Sequencer::next_grant`], then
/// [`Sequencer::take_abandoned`] (leave those connections), [`Sequencer::take_outbox`]
/// (primary) or [`Sequencer::poll_need`] (backup), and [`Sequencer::take_stats`].
#[derive(Debug)]
pub struct Sequencer {
    quiet: Duration,
    /// Next stamp to issue (primary) or deliver (backup).
    next: u64,
    /// Stamps received, in `[next, next + QUEUE_MAX)`, with when they came.
    queue: BTreeMap<u64, (FlowKey, u32, u64, Instant)>,
    turn: Option<Turn>,
    /// The last stamps issued or processed here, contiguous, ending at `next - 1`.
    history: VecDeque<Stamp>,
    fresh: bool,
    rr: usize,
    /// One past the highest stamp heard from the primary.
    heard: u64,
    /// Stamps below this were issued before this replica last anchored: a connection it does
    /// not hold among them is not one it can follow.
    anchored_below: u64,
    /// Stamps below this were issued before this sequencer existed (a fresh replica walking
    /// the primary's history): their connections opened before this replica was here and
    /// are never marked foreign (see the module doc).
    fresh_below: u64,
    /// The view epoch this replica stamps with as the primary, and the epoch since which it
    /// is a member of the view ([`Sequencer::set_epochs`]; `None` until the host says).
    epoch: u64,
    joined: Option<u64>,
    /// The last repair request: when, and from which stamp.
    asked: Option<(Instant, u64)>,
    /// Connections not followed here, and since when.
    foreign: HashMap<FlowKey, Instant>,
    /// Bytes of the stamps of a foreign connection that went by here (see
    /// [`Sequencer::passed_bytes`]); only for connections in `foreign`.
    passed: HashMap<FlowKey, u64>,
    abandoned: Vec<FlowKey>,
    /// A new primary collects its members' stamps until then (see the module doc).
    sync_until: Option<Instant>,
    /// When the current sync began (it lasts at most [`SYNC_MAX`]).
    sync_began: Option<Instant>,
    /// The members a new primary's sync waits for, with the stamp each said it delivered
    /// up to (exclusive) once its answer came ([`Sequencer::sync_members`],
    /// [`Sequencer::on_member_synced`]); `None` until the members are known.
    sync_wait: Option<HashMap<u32, Option<u64>>>,
    /// The stamp the primary numbers differently from what this backup processed.
    diverged: bool,
    /// `next` when it last moved, and since when it has not (for [`Sequencer::stuck`]).
    moved: Option<(u64, Instant)>,
    /// Whether the current stay at `moved` was reported already.
    stuck_told: bool,
    /// The stamp this replica waits at for its connection's bytes, and since when.
    starving: Option<(u64, Instant)>,
    /// A backup's bound on that wait, from the stamp's arrival.
    backup_starved_max: Duration,
    /// Connections this replica made the host leave and still holds (a primary goes on
    /// stamping them for the other members): left once, not again at every turn.
    left: HashSet<FlowKey>,
    stats: OrderStats,
}

/// The key of a void stamp: no connection has client address 0.0.0.0:0.
fn is_void(key: FlowKey) -> bool {
    key.client.port() == 0 && key.client.ip().is_unspecified()
}

impl Sequencer {
    /// A sequencer waiting at most `quiet` for an answer between connections.
    pub fn new(quiet: Duration) -> Self {
        Sequencer {
            quiet,
            next: 0,
            queue: BTreeMap::new(),
            turn: None,
            history: VecDeque::new(),
            fresh: false,
            rr: 0,
            heard: 0,
            anchored_below: 0,
            fresh_below: 0,
            epoch: 0,
            joined: None,
            asked: None,
            foreign: HashMap::new(),
            passed: HashMap::new(),
            abandoned: Vec::new(),
            sync_until: None,
            sync_began: None,
            sync_wait: None,
            diverged: false,
            moved: None,
            stuck_told: false,
            starving: None,
            backup_starved_max: BACKUP_STARVED_MAX,
            left: HashSet::new(),
            stats: OrderStats::default(),
        }
    }

    /// Bounds a backup's wait for a stamp's bytes by half the service's stall time (the
    /// speaker drops a member whose output lags that long), at most [`BACKUP_STARVED_MAX`].
    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.backup_starved_max = BACKUP_STARVED_MAX.min(stall / 2);
        self
    }

    /// What holds this sequencer up, once per stay, when it has work (stamps queued or
    /// missing, a turn running) and `next` has not moved for `after`: for the log.
    /// `view` is the same view [`Sequencer::next_grant`] takes.
    pub fn stuck(
        &mut self,
        now: Instant,
        after: Duration,
        primary: bool,
        view: impl Fn(FlowKey) -> Option<ConnView>,
    ) -> Option<String> {
        if !self.busy() {
            // Idle is not stuck: the clock starts when there is work.
            self.moved = Some((self.next, now));
            self.stuck_told = false;
            return None;
        }
        let since = match self.moved {
            Some((n, t)) if n == self.next => t,
            _ => {
                self.moved = Some((self.next, now));
                self.stuck_told = false;
                now
            }
        };
        if self.stuck_told || !self.busy() || now < since + after {
            return None;
        }
        self.stuck_told = true;
        let head = self
            .queue
            .first_key_value()
            .map(|(k, (key, len, _, came))| {
                let v = view(*key).map(|v| (v.pending, v.answered));
                format!(
                    "stamp {k} for {} ({len} bytes, came {:?} ago; here pending/answered {v:?})",
                    key.client,
                    now.saturating_duration_since(*came)
                )
            });
        let turn = self.turn.map(|t| {
            format!(
                "{} ({} bytes left, delivered {:?} ago, answered base {})",
                t.key.client,
                t.left,
                t.delivered_at.map(|d| now.saturating_duration_since(d)),
                t.answered_base
            )
        });
        Some(format!(
            "primary {primary}, next {}, heard {}, queued {}, head {head:?}, turn {turn:?}, \
             syncing {}, anchored below {}, asked {:?}",
            self.next,
            self.heard,
            self.queue.len(),
            self.sync_until.is_some(),
            self.anchored_below,
            self.asked
                .map(|(t, f)| (f, now.saturating_duration_since(t))),
        ))
    }

    /// The service's primary changed. A new primary (`me_primary`) collects its members'
    /// stamps for [`SYNC_WAIT`] (longer while they bring more, see [`SYNC_MAX`]) before it
    /// issues any; a backup drops the old primary's stamps
    /// it has not delivered, which the new primary decides again.
    pub fn on_primary_changed(&mut self, me_primary: bool, now: Instant) {
        self.asked = None;
        if me_primary {
            self.sync_until = Some(now + SYNC_WAIT);
            self.sync_began = Some(now);
            self.sync_wait = None;
            return;
        }
        self.sync_until = None;
        self.stats.dropped += self.queue.len() as u64;
        self.queue.clear();
        self.heard = self.next;
    }

    /// Whether this (new) primary is still collecting its members' stamps: for
    /// [`SYNC_WAIT`] past the last answer that brought stamps, and until every member of
    /// its view answered and every stamp a member delivered is here; never past
    /// [`SYNC_MAX`]. Ending sooner, when a member's answer was lost, it issued again, as new
    /// or void, stamps that member had delivered: its past then differed from the primary's
    /// and it left every connection it held, but its backend had taken chunks in an order
    /// the others had not (the total-order soak: redis digests differed).
    fn is_syncing(&mut self, now: Instant) -> bool {
        let Some(until) = self.sync_until else {
            return false;
        };
        let capped = self.sync_began.is_some_and(|b| now >= b + SYNC_MAX);
        let complete = self.sync_complete();
        if capped || (now >= until && complete) {
            if !complete {
                self.stats.sync_incomplete += 1;
                tracing::warn!(
                    waiting = ?self.sync_wait,
                    "total order: a member's answer to the new primary's sync did not come in time"
                );
            }
            self.sync_until = None;
            self.sync_wait = None;
            return false;
        }
        true
    }

    /// The first stamp from `next` on that is not queued here.
    fn first_missing(&self) -> u64 {
        let mut k = self.next;
        while self.queue.contains_key(&k) {
            k += 1;
        }
        k
    }

    /// Every member the sync waits for answered, and everything it delivered is here.
    fn sync_complete(&self) -> bool {
        let Some(wait) = self.sync_wait.as_ref() else {
            // Members not known yet (a caller that never names them waits SYNC_WAIT only).
            return true;
        };
        let have = self.first_missing();
        wait.values().all(|end| end.is_some_and(|e| e <= have))
    }

    /// The members of this new primary's view (itself excluded): the sync waits for each
    /// one's answer. Called at every view while the sync lasts: a member that left the view
    /// is no longer waited for.
    pub fn sync_members(&mut self, members: &[u32]) {
        if self.sync_until.is_none() {
            return;
        }
        match self.sync_wait.as_mut() {
            None => self.sync_wait = Some(members.iter().map(|&m| (m, None)).collect()),
            Some(w) => w.retain(|m, _| members.contains(m)),
        }
    }

    /// A member's answer to this new primary's sync is complete: it delivered the old
    /// primary's stamps up to `end` (exclusive), and sent those from the sync's `from` on.
    pub fn on_member_synced(&mut self, member: u32, end: u64) {
        if let Some(e) = self.sync_wait.as_mut().and_then(|w| w.get_mut(&member)) {
            *e = Some(e.map_or(end, |x| x.max(end)));
        }
    }

    /// Where this replica's order stands: the stamps before this one were delivered or
    /// passed here (a backup's answer to a new primary's sync names it).
    pub fn delivered_end(&self) -> u64 {
        self.next
    }

    /// A new primary's request to every member: the stamps `[from, to)` from its first
    /// missing one, again every [`NEED_RETRY`] while the sync lasts.
    pub fn poll_sync(&mut self, now: Instant) -> Option<(u64, u64)> {
        if !self.is_syncing(now) {
            return None;
        }
        let from = self.first_missing();
        if self
            .asked
            .is_some_and(|(t, f)| f == from && now < t + NEED_RETRY)
        {
            return None;
        }
        self.asked = Some((now, from));
        Some((from, from + NEED_MAX))
    }

    /// A member's answer to this new primary's sync: stamps it delivered under the old
    /// primary. Taken only while the sync lasts.
    pub fn on_member_stamps(&mut self, stamps: &[Stamp], now: Instant) {
        if !self.is_syncing(now) {
            return;
        }
        let mut more = false;
        for s in stamps {
            if s.stamp < self.next {
                continue;
            }
            // Beyond the queue's bound: there is more to collect once the queue drains.
            more = true;
            if s.stamp - self.next >= QUEUE_MAX {
                continue;
            }
            if self
                .queue
                .insert(s.stamp, (s.key, s.len, s.epoch, now))
                .is_none()
            {
                self.stats.adopted += 1;
            }
            self.heard = self.heard.max(s.stamp + 1);
        }
        if let (true, Some(until), Some(began)) = (more, self.sync_until, self.sync_began) {
            // A member is ahead: keep collecting (see SYNC_MAX).
            self.sync_until = Some(until.max((now + SYNC_WAIT).min(began + SYNC_MAX)));
        }
    }

    /// Stamps from the primary (repeats and old ones are ignored; those too far ahead are
    /// refused and counted).
    pub fn on_stamps(&mut self, stamps: &[Stamp], now: Instant) {
        if self.heard == 0 && self.next == 0 && self.history.is_empty() {
            // Fresh: every stamp issued before the first one heard was issued before this
            // replica was here (see the module doc).
            if let Some(first) = stamps.iter().map(|s| s.stamp).min() {
                self.anchored_below = self.anchored_below.max(first);
                self.fresh_below = first;
            }
        }
        for s in stamps {
            self.heard = self.heard.max(s.stamp.saturating_add(1));
            if s.stamp < self.next {
                let oldest = self.history.front().map_or(self.next, |h| h.stamp);
                let had = s
                    .stamp
                    .checked_sub(oldest)
                    .and_then(|i| self.history.get(i as usize));
                if had.is_some_and(|h| h.key != s.key || h.len != s.len) {
                    self.diverged = true;
                }
                continue;
            }
            if s.stamp - self.next >= QUEUE_MAX {
                self.stats.refused += 1;
                continue;
            }
            self.queue
                .entry(s.stamp)
                .or_insert((s.key, s.len, s.epoch, now));
        }
    }

    /// The stamps a backup misses first, to ask the primary for: `[from, to)`, at most
    /// [`NEED_MAX`], when the next stamp to deliver is known to exist and is not here; again
    /// after [`NEED_RETRY`] while unanswered.
    pub fn poll_need(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self.heard <= self.next || self.queue.contains_key(&self.next) {
            return None;
        }
        if self
            .asked
            .is_some_and(|(t, from)| from == self.next && now < t + NEED_RETRY)
        {
            return None;
        }
        let end = self.queue.first_key_value().map_or(self.heard, |(&k, _)| k);
        let to = end.min(self.next + NEED_MAX);
        self.asked = Some((now, self.next));
        self.stats.asked += 1;
        Some((self.next, to))
    }

    /// A backup asks for the stamps `[from, to)`: the ones kept (at most [`NEED_MAX`]), or
    /// gone when `from` is forgotten.
    pub fn on_need(&mut self, from: u64, to: u64) -> NeedAnswer {
        let oldest = self.history.front().map_or(self.next, |s| s.stamp);
        if from < oldest {
            return NeedAnswer::Gone {
                oldest,
                next: self.next,
            };
        }
        let to = to.min(self.next).min(from.saturating_add(NEED_MAX));
        let stamps: Vec<Stamp> = (from..to)
            // INVARIANT: the history is contiguous from `oldest` to `next - 1`, and
            // `oldest <= from < to <= next`.
            .filter_map(|n| self.history.get((n - oldest) as usize).copied())
            .collect();
        self.stats.served += stamps.len() as u64;
        NeedAnswer::Stamps(stamps)
    }

    /// The primary no longer keeps the stamps before `oldest` (it issues `next` next). When
    /// this replica still needs one of them, it stops following the connections it holds
    /// (`held`) and moves on to `next`: the kept stamps in between are all for connections
    /// it does not follow.
    pub fn on_gone(&mut self, oldest: u64, next: u64, held: &[FlowKey], now: Instant) {
        if oldest <= self.next {
            return;
        }
        self.stats.gone += 1;
        tracing::warn!(
            next = self.next,
            oldest,
            primary_next = next,
            held = held.len(),
            "the primary no longer keeps the stamps this replica needs: leaving every connection held"
        );
        for &key in held {
            self.forget_conn(key, now);
        }
        self.stats.skipped += next.saturating_sub(self.next.max(oldest));
        self.next = next;
        self.heard = self.heard.max(next);
        self.anchored_below = self.anchored_below.max(next);
        self.queue = self.queue.split_off(&next);
        self.history.clear();
        self.turn = None;
        self.asked = None;
    }

    /// Marks `key` foreign and abandoned (the host makes this member leave it if held).
    fn forget_conn(&mut self, key: FlowKey, now: Instant) {
        self.foreign.insert(key, now);
        if self.left.insert(key) {
            self.abandoned.push(key);
            self.stats.abandoned += 1;
        }
        self.bound_foreign(now);
    }

    /// The host's view of the service: its epoch (stamps this replica issues carry it) and
    /// the epoch since which this replica is a member (its `since` in that view). A stamp
    /// heard in the walk of a fresh replica, issued under that epoch or a later one, was
    /// issued while this replica was here: its connection is marked foreign like any other.
    /// Guessed from the first stamp heard alone, a host that restarted and got its first
    /// view late (it heard its first stamps late too) took the connections opened since it
    /// joined for older ones, and followed one whose first chunk it had passed when the
    /// client's retransmission opened it there (FT_SEED=1797200000019720 FT_TOTAL=1).
    pub fn set_epochs(&mut self, epoch: u64, joined: u64) {
        self.epoch = epoch;
        self.joined = Some(joined);
    }

    /// Whether stamp `k`, issued under `epoch`, was issued before this replica was here:
    /// before the first stamp it heard (a fresh replica walking the primary's history), and
    /// under an epoch before it joined. The epoch alone does not tell: a primary whose view
    /// is late stamps with an older epoch than a member that joined meanwhile (taking the
    /// epoch alone, a backup followed a connection whose first chunks it had passed,
    /// FT_SEED=1797400000005112 FT_TOTAL=1). Not marking a connection foreign that then
    /// shows up here breaks the order; marking one that does not costs a member.
    fn issued_before_me(&self, k: u64, epoch: u64) -> bool {
        k < self.fresh_below && self.joined.is_none_or(|j| epoch < j)
    }

    /// Bytes of `key`'s stamps that went by here while it was foreign (before this replica
    /// held it, or after it left it): where the stamps of a connection end that a primary
    /// never followed. A primary that holds such a connection and leaves it stamps it on for
    /// the members from there, not from the bytes its own backend got: counted from those
    /// alone, it stamped the connection again from its start, and the members that had
    /// delivered the first chunks waited for ever for bytes past the client's last
    /// (FT_SEED=1796800000063244 FT_TOTAL=1 in the cluster sim).
    pub fn passed_bytes(&self, key: FlowKey) -> u64 {
        self.passed.get(&key).copied().unwrap_or(0)
    }

    /// A stamp of a foreign connection went by.
    fn pass_foreign(&mut self, s: Stamp) {
        if self.foreign.contains_key(&s.key) {
            *self.passed.entry(s.key).or_default() += u64::from(s.len);
        }
        self.skip(s);
    }

    fn is_foreign(&self, key: FlowKey, now: Instant) -> bool {
        self.foreign
            .get(&key)
            .is_some_and(|t| now < *t + FOREIGN_TTL)
    }

    /// Connections this replica stopped following since the last call: the host makes this
    /// member leave each (it is then never promoted for it, and no gate waits for it).
    pub fn take_abandoned(&mut self) -> Vec<FlowKey> {
        std::mem::take(&mut self.abandoned)
    }

    /// Events since the last call.
    pub fn take_stats(&mut self) -> OrderStats {
        std::mem::take(&mut self.stats)
    }

    /// Whether the current chunk is done and the backend answered or was quiet long enough.
    fn turn_free(&self, now: Instant, view: &impl Fn(FlowKey) -> Option<ConnView>) -> bool {
        let Some(t) = self.turn else {
            return true;
        };
        if t.left > 0 {
            // A connection that vanished (closed, reset) gives up its turn.
            return view(t.key).is_none();
        }
        let answered = view(t.key).is_none_or(|v| v.answered > t.answered_base);
        answered || t.delivered_at.is_some_and(|d| now >= d + self.quiet)
    }

    fn remember(&mut self, s: Stamp) {
        if self.history.back().is_some_and(|b| b.stamp + 1 != s.stamp) {
            self.history.clear();
        }
        self.history.push_back(s);
        if self.history.len() > HISTORY {
            self.history.pop_front();
            self.stats.forgotten += 1;
        }
    }

    /// The connection that may hand its backend bytes now, and how many: at a primary the
    /// next connection with bytes waiting (round robin), stamped; at a backup the next
    /// stamp once its bytes are here. `conns` lists the service's connections here.
    pub fn next_grant(
        &mut self,
        now: Instant,
        primary: bool,
        conns: &[FlowKey],
        view: impl Fn(FlowKey) -> Option<ConnView>,
    ) -> Option<(FlowKey, u32)> {
        // Connections no longer held are left for good (a 4-tuple that comes back is a new
        // connection, foreign or not).
        if !self.left.is_empty() {
            let held: HashSet<&FlowKey> = conns.iter().collect();
            self.left.retain(|k| held.contains(k));
        }
        // A connection held and followed here that went foreign (its first chunks went by
        // before it was here): leave it, once (a primary's view still shows a connection it
        // left, which it stamps on for the other members).
        for &key in conns {
            if view(key).is_some() && self.is_foreign(key, now) && !self.left.contains(&key) {
                tracing::warn!(client = %key.client, "this connection's first stamps went by before it was here: leaving it");
                self.forget_conn(key, now);
            }
        }
        if std::mem::take(&mut self.diverged) {
            // Our past differs from the primary's: none of the connections held now can be
            // followed; connections opened from here on can (as after "gone").
            tracing::warn!(
                next = self.next,
                "delivered stamps the primary numbers differently: leaving every connection held"
            );
            self.stats.diverged += 1;
            for &key in conns {
                self.forget_conn(key, now);
            }
            self.anchored_below = self.anchored_below.max(self.heard);
            // The queued stamps are the primary's: passed (foreign) or followed (new).
            self.history.clear();
            self.turn = None;
            self.asked = None;
        }
        if !self.turn_free(now, &view) {
            return None;
        }
        let syncing = primary && self.is_syncing(now);
        // Stamps received from a primary come first (a promoted backup finishes them).
        while let Some((&k, &(key, len, epoch, came))) = self.queue.first_key_value() {
            if k != self.next {
                // A stamp is missing: a backup asks for it (`poll_need`). A new primary whose
                // old primary's stamp never arrived moves past the gap.
                // After its sync, a new primary issues the stamps nobody it heard has as
                // void, so that the backups, which drop what they did not deliver, pass them.
                if primary && !syncing {
                    let void = FlowKey {
                        client: std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
                        service: key.service,
                    };
                    while self.next < k {
                        self.remember(Stamp {
                            stamp: self.next,
                            key: void,
                            len: 0,
                            epoch: self.epoch,
                        });
                        self.next += 1;
                        self.stats.voided += 1;
                    }
                    self.fresh = true;
                    continue;
                }
                return None;
            }
            let stamp = Stamp {
                stamp: k,
                key,
                len,
                epoch,
            };
            if is_void(key) {
                self.skip(stamp);
                continue;
            }
            match view(key) {
                // Abandoned above: its bytes are not ours to deliver.
                Some(_) if self.is_foreign(key, now) => self.pass_foreign(stamp),
                Some(v) if v.pending >= len as usize => {
                    self.queue.pop_first();
                    self.next += 1;
                    self.remember(stamp);
                    // A new primary's adopted stamps go out again to the backups.
                    self.fresh |= primary;
                    return Some(self.start_turn(key, len, v));
                }
                Some(_) => {
                    // Without the bytes: they come (repair, the client), or this replica is
                    // not counted for the connection and they never do.
                    let since = match self.starving {
                        Some((s, t)) if s == k => t,
                        _ => {
                            self.starving = Some((k, now));
                            now
                        }
                    };
                    // A new primary waits for the client's retransmission from when the
                    // stamp is its turn. A backup's bytes had their time from the stamp's
                    // arrival: a stamp that waited behind another's bytes does not wait as
                    // long again (see the module doc).
                    let until = if primary {
                        since + STARVED_MAX
                    } else {
                        (came + self.backup_starved_max).max(since + STARVED_HEAD_MIN)
                    };
                    if now < until {
                        return None;
                    }
                    tracing::warn!(client = %key.client, stamp = k, waited = ?now.saturating_duration_since(came), "no client bytes for this connection's stamp: leaving it");
                    self.starving = None;
                    self.stats.starved += 1;
                    self.forget_conn(key, now);
                    if !primary {
                        self.skip(stamp);
                        continue;
                    }
                    // A new primary finishing an adopted stamp: the members that have the
                    // bytes deliver it, so it goes out as it is; granted here without a turn,
                    // it counts where this primary's stamps of the connection end (it stamps
                    // the connection on for them, see the host).
                    self.queue.pop_first();
                    self.next += 1;
                    self.remember(stamp);
                    self.fresh = true;
                    return Some((key, len));
                }
                None => {
                    // Held but left, foreign already, or issued before this replica
                    // anchored: never followed here. Otherwise its SYN may be on the way (the
                    // wait runs from the stamp's arrival, so a batch of them waits once).
                    let never = conns.contains(&key)
                        || self.is_foreign(key, now)
                        || k < self.anchored_below;
                    if !never && now < came + UNKNOWN_CONN_WAIT {
                        return None;
                    }
                    // A connection whose stamp was issued before this replica was here
                    // cannot show up here (its SYN went by): nothing to remember. Marking it
                    // now, up to a minute after the stamp (a fresh replica walks the kept
                    // history), made a client's later connection on the same 4-tuple
                    // foreign on every replica that had walked it: all of them left it.
                    if !self.issued_before_me(k, epoch)
                        && !conns.contains(&key)
                        && !self.is_foreign(key, now)
                    {
                        self.foreign.insert(key, now);
                        self.passed.remove(&key);
                        self.bound_foreign(now);
                    }
                    self.pass_foreign(stamp);
                }
            }
        }
        if !primary || syncing || conns.is_empty() {
            return None;
        }
        for i in 0..conns.len() {
            let key = conns[(self.rr + i) % conns.len()];
            let Some(v) = view(key) else { continue };
            if v.pending == 0 {
                continue;
            }
            self.rr = (self.rr + i + 1) % conns.len();
            let len = v.pending.min(MAX_CHUNK) as u32;
            let s = Stamp {
                stamp: self.next,
                key,
                len,
                epoch: self.epoch,
            };
            self.next += 1;
            self.heard = self.heard.max(self.next);
            self.remember(s);
            self.fresh = true;
            return Some(self.start_turn(key, len, v));
        }
        None
    }

    fn skip(&mut self, s: Stamp) {
        self.queue.pop_first();
        self.next += 1;
        self.stats.skipped += 1;
        self.remember(s);
    }

    fn bound_foreign(&mut self, now: Instant) {
        if self.foreign.len() > FOREIGN_MAX {
            self.foreign.retain(|_, t| now < *t + FOREIGN_TTL);
            let foreign = &self.foreign;
            self.passed.retain(|k, _| foreign.contains_key(k));
        }
        while self.foreign.len() > FOREIGN_MAX {
            // INVARIANT: the map is not empty (it is over its bound).
            let (&oldest, _) = self
                .foreign
                .iter()
                .min_by_key(|(_, t)| **t)
                .expect("a full map has a minimum");
            self.foreign.remove(&oldest);
            self.passed.remove(&oldest);
            self.stats.foreign_evicted += 1;
        }
    }

    fn start_turn(&mut self, key: FlowKey, len: u32, v: ConnView) -> (FlowKey, u32) {
        self.turn = Some(Turn {
            key,
            left: len,
            answered_base: v.answered,
            delivered_at: None,
        });
        (key, len)
    }

    /// The granted connection handed its backend `n` more bytes.
    pub fn on_delivered(&mut self, key: FlowKey, n: usize, now: Instant) {
        if let Some(t) = self.turn.as_mut().filter(|t| t.key == key) {
            t.left = t.left.saturating_sub(n as u32);
            if t.left == 0 && t.delivered_at.is_none() {
                t.delivered_at = Some(now);
            }
        }
    }

    /// This replica left `key` (its backend failed it, or it missed its order). Bytes a turn
    /// granted it and its backend never took count as delivered: the stamp stands for the
    /// members that follow the connection, and this replica's backend will get none of them.
    /// (Otherwise the turn waited for them for ever: the soak's primary granted a new
    /// connection 85 bytes, its backend refused the connect, and the service's order stood
    /// still until a view made another host primary.)
    pub fn on_left(&mut self, key: FlowKey, now: Instant) {
        if let Some(t) = self.turn.as_mut().filter(|t| t.key == key && t.left > 0) {
            t.left = 0;
            t.delivered_at = Some(now);
        }
    }

    /// When the current turn's quiet time ends (to wake the loop), if one is running.
    pub fn wake_at(&self) -> Option<Instant> {
        self.turn
            .and_then(|t| t.delivered_at)
            .map(|d| d + self.quiet)
    }

    /// Whether stamps are waiting for bytes or a turn is in progress (poll often).
    pub fn busy(&self) -> bool {
        self.turn.is_some_and(|t| t.left > 0) || !self.queue.is_empty() || self.heard > self.next
    }

    /// Stamps to send the backups: the recent ones, when a new one was issued.
    pub fn take_outbox(&mut self) -> Option<Vec<Stamp>> {
        if !std::mem::take(&mut self.fresh) {
            return None;
        }
        Some(self.recent())
    }

    /// The recent stamps, for a periodic resend (the last one's datagram may be lost).
    pub fn recent(&self) -> Vec<Stamp> {
        let skip = self.history.len().saturating_sub(RESEND);
        self.history.iter().skip(skip).copied().collect()
    }

    /// Stamps queued here (bounded by [`QUEUE_MAX`]).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddrV4;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new([198, 18, 0, 2].into(), port),
            service: SocketAddrV4::new([198, 19, 0, 10].into(), 80),
        }
    }

    #[test]
    fn a_backup_follows_the_primarys_order_and_waits_for_answers() {
        let t0 = Instant::now();
        let (a, b) = (key(1), key(2));
        let mut p = Sequencer::new(Duration::from_millis(2));
        let mut pend: HashMap<FlowKey, ConnView> = HashMap::new();
        pend.insert(
            a,
            ConnView {
                pending: 10,
                answered: 0,
            },
        );
        pend.insert(
            b,
            ConnView {
                pending: 5,
                answered: 0,
            },
        );
        let g1 = p
            .next_grant(t0, true, &[a, b], |k| pend.get(&k).copied())
            .unwrap();
        assert_eq!(g1, (a, 10));
        assert_eq!(
            p.next_grant(t0, true, &[a, b], |k| pend.get(&k).copied()),
            None
        );
        p.on_delivered(a, 10, t0);
        pend.get_mut(&a).unwrap().pending = 0;
        assert_eq!(
            p.next_grant(t0, true, &[a, b], |k| pend.get(&k).copied()),
            None,
            "no answer yet, quiet time not over"
        );
        pend.get_mut(&a).unwrap().answered = 3;
        let g2 = p
            .next_grant(t0, true, &[a, b], |k| pend.get(&k).copied())
            .unwrap();
        assert_eq!(g2, (b, 5));
        let stamps = p.take_outbox().unwrap();
        assert_eq!(stamps.len(), 2);

        // The backup got b's bytes first, a's later; it still delivers a, then b.
        let mut s = Sequencer::new(Duration::from_millis(2));
        s.on_stamps(&stamps[1..], t0);
        let mut bp: HashMap<FlowKey, ConnView> = HashMap::new();
        bp.insert(
            b,
            ConnView {
                pending: 5,
                answered: 0,
            },
        );
        assert_eq!(s.next_grant(t0, false, &[b], |k| bp.get(&k).copied()), None);
        s.on_stamps(&stamps, t0);
        bp.insert(
            a,
            ConnView {
                pending: 4,
                answered: 0,
            },
        );
        assert_eq!(
            s.next_grant(t0, false, &[a, b], |k| bp.get(&k).copied()),
            None,
            "a's bytes not all here"
        );
        bp.get_mut(&a).unwrap().pending = 10;
        assert_eq!(
            s.next_grant(t0, false, &[a, b], |k| bp.get(&k).copied()),
            Some((a, 10))
        );
        s.on_delivered(a, 10, t0);
        let later = t0 + Duration::from_millis(3);
        assert_eq!(
            s.next_grant(later, false, &[a, b], |k| bp.get(&k).copied()),
            Some((b, 5)),
            "quiet time passed without an answer"
        );
    }

    #[test]
    fn a_stamp_for_a_connection_this_replica_lacks_is_skipped_after_a_while() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(Duration::from_millis(2));
        s.on_stamps(
            &[Stamp {
                stamp: 0,
                key: key(9),
                len: 3,
                epoch: 0,
            }],
            t0,
        );
        assert_eq!(s.next_grant(t0, false, &[], |_| None), None);
        assert_eq!(
            s.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[], |_| None),
            None
        );
        assert_eq!(s.take_stats().skipped, 1);
        assert!(!s.busy());
    }

    #[test]
    fn a_backup_leaves_a_connection_whose_bytes_never_come_and_moves_on() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(Duration::from_millis(2));
        let (a, b) = (key(1), key(2));
        s.on_stamps(
            &[
                Stamp {
                    stamp: 0,
                    key: a,
                    len: 52,
                    epoch: 0,
                },
                Stamp {
                    stamp: 1,
                    key: b,
                    len: 7,
                    epoch: 0,
                },
            ],
            t0,
        );
        // `a` is held here but its 52 bytes never arrive; `b`'s 7 bytes are here.
        let view = |k: FlowKey| if k == a { pending(0) } else { pending(7) };
        assert_eq!(s.next_grant(t0, false, &[a, b], view), None);
        let later = t0 + BACKUP_STARVED_MAX - Duration::from_millis(1);
        assert_eq!(s.next_grant(later, false, &[a, b], view), None);
        // Past the bound: it leaves `a` (the host makes it retire) and `b` goes on.
        let t1 = t0 + BACKUP_STARVED_MAX;
        assert_eq!(s.next_grant(t1, false, &[a, b], view), Some((b, 7)));
        assert_eq!(s.take_abandoned(), vec![a]);
        let st = s.take_stats();
        assert_eq!((st.starved, st.skipped), (1, 1));
    }

    /// The soak after a heal: a backup holds connections whose bytes it missed while out of
    /// the view, and the primary stamps them among the connections opened since.
    #[test]
    fn a_backup_missing_several_connections_bytes_leaves_them_before_the_stall_clock_runs_out() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(1);
        let mut s = Sequencer::new(Duration::ZERO).with_stall(stall);
        let missed = [key(1), key(2), key(3), key(4)];
        let fresh = key(9);
        let stamps: Vec<Stamp> = missed
            .iter()
            .chain([&fresh])
            .enumerate()
            .map(|(i, &k)| Stamp {
                stamp: i as u64,
                key: k,
                len: 20,
                epoch: 0,
            })
            .collect();
        s.on_stamps(&stamps, t0);
        let conns: Vec<FlowKey> = missed.iter().copied().chain([fresh]).collect();
        let view = |k: FlowKey| if k == fresh { pending(20) } else { pending(0) };
        // Step the clock as the host's loop does and see when `fresh` gets its turn.
        let mut t = t0;
        let granted_at = loop {
            if let Some(g) = s.next_grant(t, false, &conns, view) {
                assert_eq!(g, (fresh, 20));
                break t;
            }
            assert!(t < t0 + 10 * stall, "the order never moved");
            t += Duration::from_millis(1);
        };
        // Waiting a full bound at each of them stood the order still for 4 x 2 s: the
        // speaker's stall clock dropped this backup from `fresh` and every other live
        // connection, and the stamps it needed next were gone.
        assert!(
            granted_at - t0 < stall,
            "the order stood still {:?}, past the stall clock ({stall:?})",
            granted_at - t0
        );
        let mut left = s.take_abandoned();
        left.sort_by_key(|k| k.client.port());
        assert_eq!(left, missed.to_vec());
        assert_eq!(s.take_stats().starved, 4);
    }

    #[test]
    fn a_backup_still_waits_a_little_at_a_stamp_that_arrived_long_ago() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(Duration::ZERO);
        let (a, b) = (key(1), key(2));
        s.on_stamps(
            &[
                Stamp {
                    stamp: 0,
                    key: a,
                    len: 5,
                    epoch: 0,
                },
                Stamp {
                    stamp: 1,
                    key: b,
                    len: 5,
                    epoch: 0,
                },
            ],
            t0,
        );
        let none = |_: FlowKey| pending(0);
        // The host's loop looks at once: the wait at `a`'s stamp starts.
        assert_eq!(s.next_grant(t0, false, &[a, b], none), None);
        let t1 = t0 + BACKUP_STARVED_MAX;
        assert_eq!(s.next_grant(t1, false, &[a, b], none), None);
        assert_eq!(s.take_abandoned(), vec![a]);
        // `b`'s stamp is at the head now: its bytes, held back behind the wait, get a moment
        // to come by repair.
        let t2 = t1 + STARVED_HEAD_MIN - Duration::from_millis(1);
        assert_eq!(s.next_grant(t2, false, &[a, b], none), None);
        let bytes = |k: FlowKey| if k == b { pending(5) } else { pending(0) };
        assert_eq!(s.next_grant(t2, false, &[a, b], bytes), Some((b, 5)));
        assert!(s.take_abandoned().is_empty());
    }

    #[test]
    fn the_stall_time_bounds_a_backups_wait_for_bytes() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(Duration::ZERO).with_stall(Duration::from_millis(200));
        let a = key(1);
        s.on_stamps(
            &[Stamp {
                stamp: 0,
                key: a,
                len: 5,
                epoch: 0,
            }],
            t0,
        );
        let none = |_: FlowKey| pending(0);
        assert_eq!(s.next_grant(t0, false, &[a], none), None);
        let t1 = t0 + Duration::from_millis(99);
        assert_eq!(s.next_grant(t1, false, &[a], none), None);
        assert!(s.take_abandoned().is_empty());
        let _ = s.next_grant(t0 + Duration::from_millis(100), false, &[a], none);
        assert_eq!(s.take_abandoned(), vec![a]);
    }

    /// The redis-benchmark failover: the surviving backup fell behind at about 6,000 stamps
    /// a second and got "gone", which made it leave all 20 connections.
    #[test]
    fn a_backup_held_up_five_seconds_at_six_thousand_stamps_a_second_still_gets_its_stamps() {
        let t0 = Instant::now();
        let a = key(1);
        let p = &mut primary_with(30_000, a, t0);
        let mut b = Sequencer::new(Duration::ZERO);
        // It delivered the first 10 and then stood still while the primary stamped on.
        b.on_stamps(&stamps_of(p.on_need(0, 10)), t0);
        for _ in 0..10 {
            let (k, n) = b.next_grant(t0, false, &[a], |_| pending(1)).unwrap();
            b.on_delivered(k, n as usize, t0);
        }
        b.on_stamps(&p.recent(), t0);
        let (from, to) = b.poll_need(t0).unwrap();
        assert_eq!(from, 10);
        assert_eq!(stamps_of(p.on_need(from, to)).len(), (to - from) as usize);
    }

    #[test]
    fn a_connection_left_for_going_foreign_is_left_once() {
        let t0 = Instant::now();
        let (held, late) = (key(1), key(5));
        let mut p = Sequencer::new(Duration::ZERO);
        // `late`'s first stamp went by before this replica held it (it became foreign), then
        // this replica became primary and holds it, left, and stamps it on for the others:
        // its view still shows it.
        p.on_stamps(
            &[Stamp {
                stamp: 0,
                key: late,
                len: 4,
                epoch: 0,
            }],
            t0,
        );
        let t1 = t0 + UNKNOWN_CONN_WAIT;
        let only_held = |k: FlowKey| if k == held { pending(0) } else { None };
        assert_eq!(p.next_grant(t1, false, &[held], only_held), None);
        assert_eq!(p.take_stats().skipped, 1);
        p.on_primary_changed(true, t1);
        let t2 = t1 + SYNC_WAIT;
        for i in 0..3 {
            let _ = p.next_grant(t2, true, &[held, late], |_| pending(0));
            let left = p.take_abandoned();
            if i == 0 {
                assert_eq!(left, vec![late]);
            } else {
                assert!(left.is_empty(), "left again at turn {i}: {left:?}");
            }
        }
        assert_eq!(p.take_stats().abandoned, 1);
    }

    #[test]
    fn a_new_primary_passes_on_an_adopted_stamp_whose_bytes_it_never_gets() {
        let t0 = Instant::now();
        let mut s = Sequencer::new(Duration::from_millis(2));
        let a = key(1);
        s.on_stamps(
            &[Stamp {
                stamp: 0,
                key: a,
                len: 52,
                epoch: 0,
            }],
            t0,
        );
        s.on_primary_changed(true, t0);
        let view = |_: FlowKey| pending(0);
        let t1 = t0 + SYNC_WAIT;
        assert_eq!(s.next_grant(t1, true, &[a], view), None);
        let t2 = t1 + STARVED_MAX;
        // It leaves the connection and grants the stamp as it is, which goes to the backups.
        assert_eq!(s.next_grant(t2, true, &[a], view), Some((a, 52)));
        assert_eq!(s.take_abandoned(), vec![a]);
        assert_eq!(
            s.take_outbox(),
            Some(vec![Stamp {
                stamp: 0,
                key: a,
                len: 52,
                epoch: 0
            }])
        );
    }

    fn pending(n: usize) -> Option<ConnView> {
        Some(ConnView {
            pending: n,
            answered: 0,
        })
    }

    /// A primary that issued `n` one-byte chunks for connection `k` (no quiet wait).
    fn primary_with(n: u64, k: FlowKey, t0: Instant) -> Sequencer {
        let mut p = Sequencer::new(Duration::ZERO);
        for _ in 0..n {
            let g = p.next_grant(t0, true, &[k], |_| pending(1));
            assert_eq!(g, Some((k, 1)));
            p.on_delivered(k, 1, t0);
        }
        p
    }

    fn stamps_of(a: NeedAnswer) -> Vec<Stamp> {
        match a {
            NeedAnswer::Stamps(s) => s,
            other => panic!("expected stamps, got {other:?}"),
        }
    }

    #[test]
    fn a_backup_past_the_resent_stamps_asks_for_the_gap_and_catches_up() {
        let t0 = Instant::now();
        let a = key(1);
        let mut p = primary_with(100, a, t0);
        let mut b = Sequencer::new(Duration::ZERO);
        // Only the last RESEND stamps ever arrived: 84..100.
        b.on_stamps(&p.recent(), t0);
        assert_eq!(b.next_grant(t0, false, &[a], |_| pending(100)), None);
        assert_eq!(b.poll_need(t0), Some((0, 84)));
        assert_eq!(
            b.poll_need(t0),
            None,
            "asked already, not yet time to ask again"
        );
        let got = stamps_of(p.on_need(0, 84));
        assert_eq!(got.len(), 84);
        assert_eq!(got[0].stamp, 0);
        b.on_stamps(&got, t0);
        let mut delivered = 0;
        while let Some((k, n)) = b.next_grant(t0, false, &[a], |_| pending(100 - delivered)) {
            assert_eq!(k, a);
            b.on_delivered(k, n as usize, t0);
            delivered += n as usize;
        }
        assert_eq!(delivered, 100, "every stamp delivered, in order");
        assert!(!b.busy());
        assert_eq!(b.poll_need(t0), None);
        assert!(b.take_abandoned().is_empty());
        let st = b.take_stats();
        assert_eq!((st.asked, st.gone, st.abandoned), (1, 0, 0));
        assert_eq!(p.take_stats().served, 84);
    }

    #[test]
    fn an_unanswered_request_is_sent_again_after_the_retry_time() {
        let t0 = Instant::now();
        let mut p = primary_with(40, key(1), t0);
        let mut b = Sequencer::new(Duration::ZERO);
        b.on_stamps(&p.recent(), t0);
        assert_eq!(b.poll_need(t0), Some((0, 24)));
        assert_eq!(b.poll_need(t0 + NEED_RETRY), Some((0, 24)));
        assert_eq!(stamps_of(p.on_need(0, 24)).len(), 24);
    }

    #[test]
    fn a_late_joiner_whose_stamps_are_forgotten_leaves_what_it_holds_and_follows_new_conns() {
        let t0 = Instant::now();
        let (old, held, new) = (key(1), key(2), key(3));
        let mut p = primary_with(HISTORY as u64 + 500, old, t0);
        assert_eq!(
            p.take_stats().forgotten,
            500,
            "the history stays at its bound"
        );
        let mut b = Sequencer::new(Duration::ZERO);
        // The joiner holds `held` (opened before it heard the primary); it hears the
        // recent stamps, all of `old`, which it does not hold.
        b.on_stamps(&p.recent(), t0);
        let view = |k: FlowKey| (k == held).then(|| pending(0)).flatten();
        assert_eq!(b.next_grant(t0, false, &[held], view), None);
        let (from, to) = b.poll_need(t0).unwrap();
        assert_eq!(from, 0);
        let NeedAnswer::Gone { oldest, next } = p.on_need(from, to) else {
            panic!("stamp 0 is forgotten");
        };
        assert_eq!((oldest, next), (500, HISTORY as u64 + 500));
        b.on_gone(oldest, next, &[held], t0);
        assert_eq!(
            b.take_abandoned(),
            vec![held],
            "it cannot know held's chunks"
        );
        // It moves to the primary's next stamp at once: the kept history is all for
        // connections it does not follow, and fetching it would leave it at the very edge of
        // what the primary keeps.
        assert_eq!(b.next_grant(t0, false, &[held], |_| None), None);
        assert_eq!(b.poll_need(t0), None, "nothing left to ask for");
        assert_eq!(b.take_stats().skipped, HISTORY as u64);
        assert!(!b.busy());
        // A connection opened after the joiner anchored is followed from its first chunk.
        let g = p.next_grant(t0, true, &[new], |_| pending(7));
        assert_eq!(g, Some((new, 7)));
        b.on_stamps(&p.take_outbox().unwrap(), t0);
        assert_eq!(
            b.next_grant(t0, false, &[held, new], |k| (k == new)
                .then(|| pending(7))
                .flatten()),
            Some((new, 7))
        );
        assert!(b.take_abandoned().is_empty());
    }

    #[test]
    fn a_fresh_replica_walks_the_kept_history_without_waiting_at_connections_it_never_had() {
        let t0 = Instant::now();
        let (old, new) = (key(1), key(3));
        let mut p = primary_with(3000, old, t0);
        let mut b = Sequencer::new(Duration::ZERO);
        b.on_stamps(&p.recent(), t0);
        // The primary keeps stamp 0: the fresh replica fetches the history, each answer's
        // stamps (all for `old`, which it never held) passed at once.
        let mut asked = 0;
        while let Some((from, to)) = b.poll_need(t0) {
            b.on_stamps(&stamps_of(p.on_need(from, to)), t0);
            assert_eq!(b.next_grant(t0, false, &[new], |_| None), None);
            asked += 1;
            assert!(asked <= 3000 / NEED_MAX + 1, "the walk does not end");
        }
        // The recent stamps it heard first (not below its anchor) wait for a SYN that may
        // be under way, once.
        assert_eq!(
            b.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[new], |_| None),
            None
        );
        assert!(!b.busy(), "it reached the primary");
        assert_eq!(b.take_stats().skipped, 3000);
        // A connection it holds from here on is followed from its first chunk.
        let g = p.next_grant(t0, true, &[new], |_| pending(7));
        assert_eq!(g, Some((new, 7)));
        b.on_stamps(&p.take_outbox().unwrap(), t0);
        let view = |k: FlowKey| (k == new).then(|| pending(7)).flatten();
        assert_eq!(b.next_grant(t0, false, &[new], view), Some((new, 7)));
        assert!(b.take_abandoned().is_empty());
    }

    #[test]
    fn a_primary_that_leaves_a_connection_mid_turn_goes_on_with_the_others() {
        let t0 = Instant::now();
        let (a, b) = (key(1), key(2));
        let mut p = Sequencer::new(Duration::from_millis(2));
        let both = |_: FlowKey| pending(85);
        assert_eq!(p.next_grant(t0, true, &[a, b], both), Some((a, 85)));
        // `a`'s backend refuses the connect before it took the bytes: this primary leaves
        // `a` and stamps it on for the other members (its view still shows it, nothing
        // pending); `b` has bytes waiting.
        let view = |k: FlowKey| if k == a { pending(0) } else { pending(85) };
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            p.next_grant(t1, true, &[a, b], view),
            None,
            "the turn waits for bytes a's backend never takes"
        );
        p.on_left(a, t1);
        assert_eq!(p.next_grant(t1, true, &[a, b], view), None, "quiet time");
        let t2 = t1 + Duration::from_millis(2);
        assert_eq!(p.next_grant(t2, true, &[a, b], view), Some((b, 85)));
    }

    /// Seed-1 soak: every host had restarted within 30 s and walked the primary's history,
    /// marking a connection closed a minute before foreign; the client's next connection on
    /// the same port was left by all three replicas and reset.
    #[test]
    fn a_fresh_replica_walking_the_history_does_not_make_a_reused_four_tuple_foreign() {
        let t0 = Instant::now();
        let (old, live) = (key(1), key(2));
        // `old` had its chunks a minute ago and closed; `live` has had them since.
        let mut p = primary_with(600, old, t0);
        for _ in 0..600 {
            assert_eq!(
                p.next_grant(t0, true, &[live], |_| pending(1)),
                Some((live, 1))
            );
            p.on_delivered(live, 1, t0);
        }
        let mut b = Sequencer::new(Duration::ZERO);
        let t1 = t0 + Duration::from_secs(60);
        b.on_stamps(&p.recent(), t1);
        while let Some((from, to)) = b.poll_need(t1) {
            b.on_stamps(&stamps_of(p.on_need(from, to)), t1);
            assert_eq!(b.next_grant(t1, false, &[], |_| None), None);
        }
        // The recent stamps it heard first wait for a SYN that may be under way.
        let t1 = t1 + UNKNOWN_CONN_WAIT;
        assert_eq!(b.next_grant(t1, false, &[], |_| None), None);
        assert!(!b.busy());
        // The client opens a new connection from the same port: both replicas hold it.
        let t2 = t1 + Duration::from_secs(1);
        let g = p.next_grant(t2, true, &[old, live], |k| {
            (k == old).then(|| pending(9)).flatten()
        });
        assert_eq!(g, Some((old, 9)));
        b.on_stamps(&p.take_outbox().unwrap(), t2);
        assert_eq!(
            b.next_grant(t2, false, &[old], |_| pending(9)),
            Some((old, 9))
        );
        assert!(
            b.take_abandoned().is_empty(),
            "it follows the new connection"
        );
    }

    #[test]
    fn a_gone_answer_for_stamps_already_had_changes_nothing() {
        let t0 = Instant::now();
        let a = key(1);
        let mut b = Sequencer::new(Duration::ZERO);
        b.on_gone(0, 10, &[a], t0);
        assert!(b.take_abandoned().is_empty());
        assert_eq!(b.take_stats().gone, 0);
    }

    #[test]
    fn a_full_queue_refuses_stamps_and_repair_brings_them_when_their_turn_comes() {
        let t0 = Instant::now();
        let a = key(1);
        let n = QUEUE_MAX + 10;
        let mut p = primary_with(n, a, t0);
        let mut b = Sequencer::new(Duration::ZERO);
        // Stamp 0 is lost; 1..n arrive (as repeated datagrams would bring them).
        let all = stamps_of(p.on_need(0, NEED_MAX));
        let mut rest = Vec::new();
        let mut from = NEED_MAX;
        while from < n {
            rest.extend(stamps_of(p.on_need(from, from + NEED_MAX)));
            from += NEED_MAX;
        }
        b.on_stamps(&all[1..], t0);
        b.on_stamps(&rest, t0);
        assert_eq!(
            b.queued() as u64,
            QUEUE_MAX - 1,
            "only [next, next + QUEUE_MAX) kept"
        );
        assert_eq!(b.take_stats().refused, 10);
        // The gap at 0 is asked for; then the refused ones, once they are within the bound.
        let (f, t) = b.poll_need(t0).unwrap();
        assert_eq!((f, t), (0, 1));
        b.on_stamps(&stamps_of(p.on_need(f, t)), t0);
        let mut delivered = 0u64;
        loop {
            if let Some((k, len)) = b.next_grant(t0, false, &[a], |_| pending(1)) {
                b.on_delivered(k, len as usize, t0);
                delivered += 1;
                continue;
            }
            let Some((f, t)) = b.poll_need(t0) else { break };
            b.on_stamps(&stamps_of(p.on_need(f, t)), t0);
        }
        assert_eq!(delivered, n);
        assert!(b.take_abandoned().is_empty());
    }

    #[test]
    fn a_connection_whose_stamps_went_by_before_it_was_here_is_abandoned_when_it_shows_up() {
        let t0 = Instant::now();
        let late = key(5);
        let mut b = Sequencer::new(Duration::ZERO);
        b.on_stamps(
            &[Stamp {
                stamp: 0,
                key: late,
                len: 4,
                epoch: 0,
            }],
            t0,
        );
        assert_eq!(
            b.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[], |_| None),
            None
        );
        assert_eq!(b.take_stats().skipped, 1);
        // Its SYN arrives late: its first chunk was skipped, so it is not followed here.
        assert_eq!(
            b.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[late], |_| pending(4)),
            None
        );
        assert_eq!(b.take_abandoned(), vec![late]);
        assert_eq!(b.take_stats().abandoned, 1);
    }

    /// A stamp says under which epoch it was issued: a replica that joined the view at
    /// epoch 6 but heard its first stamps late (its first view came late) still marks a
    /// connection stamped at epoch 6, which it then missed, foreign, and leaves it when the
    /// client's retransmission opens it there; one stamped before epoch 6 opened before it
    /// was here, and is not marked (FT_SEED=1797200000019720 FT_TOTAL=1).
    #[test]
    fn a_stamp_issued_after_this_replica_joined_marks_its_connection_foreign() {
        let t0 = Instant::now();
        let (old, missed, later) = (key(1), key(2), key(3));
        let mut b = Sequencer::new(Duration::ZERO);
        b.set_epochs(6, 6);
        let s = |stamp, key, epoch| Stamp {
            stamp,
            key,
            len: 10,
            epoch,
        };
        // The recent stamps first, then the kept history from stamp 0 (a repair answer).
        b.on_stamps(&[s(2, later, 6)], t0);
        b.on_stamps(&[s(0, old, 5), s(1, missed, 6)], t0);
        assert_eq!(b.next_grant(t0, false, &[], |_| None), None);
        let t = t0 + UNKNOWN_CONN_WAIT;
        assert_eq!(b.next_grant(t, false, &[], |_| None), None);
        assert_eq!(b.take_stats().skipped, 3);
        // Both show up (a reused 4-tuple for `old`, the client's retransmission for
        // `missed`): only `missed` is left.
        assert_eq!(
            b.next_grant(t, false, &[old, missed], |_| pending(10)),
            None
        );
        assert_eq!(b.take_abandoned(), vec![missed]);
    }

    /// A replica that holds a connection whose first stamps went by knows where those stamps
    /// end: as the primary that leaves it, it stamps the connection on for the members from
    /// there (FT_SEED=1796800000063244 FT_TOTAL=1).
    #[test]
    fn the_stamps_of_a_connection_that_went_by_here_are_counted() {
        let t0 = Instant::now();
        let (late, other) = (key(5), key(6));
        let mut b = Sequencer::new(Duration::ZERO);
        let s = |stamp, key, len| Stamp {
            stamp,
            key,
            len,
            epoch: 0,
        };
        b.on_stamps(&[s(0, late, 1380), s(1, other, 7), s(2, late, 5520)], t0);
        let t = t0 + UNKNOWN_CONN_WAIT;
        assert_eq!(
            b.next_grant(t, false, &[other], |k| (k == other).then_some(ConnView {
                pending: 7,
                answered: 0
            })),
            Some((other, 7))
        );
        b.on_delivered(other, 7, t);
        assert_eq!(
            b.next_grant(t, false, &[other], |k| (k == other).then_some(ConnView {
                pending: 0,
                answered: 1
            })),
            None
        );
        assert_eq!(b.take_stats().skipped, 2);
        assert_eq!(b.passed_bytes(late), 6900);
        assert_eq!(b.passed_bytes(other), 0, "granted here: not passed");
        // It shows up and is left; the count stays for the host to stamp it on from.
        assert_eq!(
            b.next_grant(t, false, &[other, late], |_| pending(100)),
            None
        );
        assert_eq!(b.take_abandoned(), vec![late]);
        assert_eq!(b.passed_bytes(late), 6900);
    }

    #[test]
    fn the_foreign_set_stays_at_its_bound() {
        let t0 = Instant::now();
        let mut b = Sequencer::new(Duration::ZERO);
        let stamps: Vec<Stamp> = (0..FOREIGN_MAX as u64 + 3)
            .map(|i| Stamp {
                stamp: i,
                key: FlowKey {
                    client: SocketAddrV4::new(
                        [198, 18, (i >> 16) as u8, (i >> 8) as u8].into(),
                        i as u16,
                    ),
                    service: SocketAddrV4::new([198, 19, 0, 10].into(), 80),
                },
                len: 1,
                epoch: 0,
            })
            .collect();
        for c in stamps.chunks(1000) {
            b.on_stamps(c, t0);
            let _ = b.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[], |_| None);
        }
        let st = b.take_stats();
        assert_eq!(st.skipped, FOREIGN_MAX as u64 + 3);
        assert_eq!(st.foreign_evicted, 3);
        assert!(b.foreign.len() <= FOREIGN_MAX);
    }

    /// One replica in the failover tests: its sequencer, the client bytes that reached it
    /// per connection, and what its backend got, in order.
    struct Replica {
        q: Sequencer,
        received: HashMap<FlowKey, usize>,
        /// The connections in the order they opened (the grant order must not depend on
        /// hashing).
        conns: Vec<FlowKey>,
        delivered: HashMap<FlowKey, usize>,
        log: Vec<(FlowKey, u32)>,
    }

    impl Replica {
        fn new() -> Self {
            Replica {
                q: Sequencer::new(Duration::ZERO),
                received: HashMap::new(),
                conns: Vec::new(),
                delivered: HashMap::new(),
                log: Vec::new(),
            }
        }

        fn client_sends(&mut self, k: FlowKey, n: usize) {
            if !self.conns.contains(&k) {
                self.conns.push(k);
            }
            *self.received.entry(k).or_default() += n;
        }

        /// Grants and delivers until the sequencer says wait.
        fn run(&mut self, now: Instant, primary: bool) {
            loop {
                let conns = self.conns.clone();
                let (rx, dl) = (&self.received, &self.delivered);
                let view = |k: FlowKey| {
                    Some(ConnView {
                        pending: rx.get(&k)? - dl.get(&k).copied().unwrap_or(0),
                        answered: 0,
                    })
                };
                let Some((k, n)) = self.q.next_grant(now, primary, &conns, view) else {
                    return;
                };
                *self.delivered.entry(k).or_default() += n as usize;
                self.log.push((k, n));
                self.q.on_delivered(k, n as usize, now);
            }
        }
    }

    /// A primary that stamped A's 10 bytes and then B's 10 bytes; backup 2 got and
    /// delivered both stamps, backup 1 only the first (the old primary died before its
    /// datagram with stamp 1 reached backup 1).
    fn uneven_failover(t0: Instant) -> (Replica, Replica, FlowKey, FlowKey) {
        let (a, b) = (key(1), key(2));
        let mut p = Replica::new();
        let (mut b1, mut b2) = (Replica::new(), Replica::new());
        for r in [&mut p, &mut b1, &mut b2] {
            r.client_sends(a, 10);
            r.client_sends(b, 10);
        }
        p.q.rr = 0;
        p.run(t0, true);
        let stamps = p.q.take_outbox().unwrap();
        assert_eq!(stamps.len(), 2);
        let first = if stamps[0].key == a { a } else { b };
        let other = if first == a { b } else { a };
        b1.q.on_stamps(&stamps[..1], t0);
        b2.q.on_stamps(&stamps, t0);
        b1.run(t0, false);
        b2.run(t0, false);
        assert_eq!(b1.log, vec![(first, 10)]);
        assert_eq!(b2.log, vec![(first, 10), (other, 10)]);
        (b1, b2, first, other)
    }

    #[test]
    fn a_new_primary_adopts_the_stamps_a_backup_delivered_and_both_keep_delivering() {
        let t0 = Instant::now();
        let (mut b1, mut b2, first, other) = uneven_failover(t0);
        // The view makes backup 1 the primary.
        let t1 = t0 + Duration::from_millis(30);
        b1.q.on_primary_changed(true, t1);
        b2.q.on_primary_changed(false, t1);
        // More client bytes on `first` reach both.
        b1.client_sends(first, 5);
        b2.client_sends(first, 5);
        b1.run(t1, true);
        assert_eq!(
            b1.log.len(),
            1,
            "nothing new is stamped while the sync lasts"
        );
        let (from, to) = b1.q.poll_sync(t1).unwrap();
        assert_eq!(from, 1);
        b1.q.on_member_stamps(&stamps_of(b2.q.on_need(from, to)), t1);
        b1.run(t1, true);
        assert_eq!(b1.log, b2.log, "stamp 1 adopted: `other`'s 10 bytes");
        // After the sync the new primary stamps on from where the furthest member stands.
        let t2 = t1 + SYNC_WAIT;
        b1.run(t2, true);
        b2.q.on_stamps(&b1.q.take_outbox().unwrap(), t2);
        b2.run(t2, false);
        assert_eq!(b1.log, vec![(first, 10), (other, 10), (first, 5)]);
        assert_eq!(
            b2.log, b1.log,
            "both backends got the same chunks in the same order"
        );
        assert!(!b2.q.busy(), "backup 2 is not left waiting for bytes");
        assert!(b2.q.take_abandoned().is_empty());
        assert_eq!(b1.q.take_stats().adopted, 1);
        assert_eq!(b2.q.take_stats().diverged, 0);
    }

    /// Seed-1 soak: the primary died while a backup healed from a partition was 2,900
    /// stamps behind the other (here 1,500, more than a queue holds, at a stamp a
    /// millisecond); made primary, it collected for 100 ms, stamped on from where it stood,
    /// and the other backup, which had delivered those numbers, left every connection.
    /// A new primary issues nothing until every member of its view answered its sync
    /// completely: an answer whose stamps were lost is asked again and waited for; a member
    /// that never answers holds it up to SYNC_MAX, counted; one that left the view is not
    /// waited for.
    #[test]
    fn a_new_primary_waits_for_every_members_complete_answer() {
        let t0 = Instant::now();
        let k = key(1);
        let mut old = primary_with(3, k, t0);
        let stamps = stamps_of(old.on_need(0, 3));
        assert_eq!(stamps.len(), 3);
        // Backup 2 delivered the old primary's 3 stamps.
        let mut b2 = Sequencer::new(Duration::ZERO);
        b2.on_stamps(&stamps, t0);
        for _ in 0..3 {
            assert_eq!(b2.next_grant(t0, false, &[k], |_| pending(1)), Some((k, 1)));
            b2.on_delivered(k, 1, t0);
        }
        assert_eq!(b2.delivered_end(), 3);
        // Backup 1, which got none, is the primary of [1, 2, 3] now.
        let t1 = t0 + Duration::from_millis(30);
        let mut p = Sequencer::new(Duration::ZERO);
        p.on_primary_changed(true, t1);
        p.sync_members(&[2, 3]);
        // Member 2's "synced" came, its stamps were lost; member 3 delivered nothing.
        p.on_member_synced(2, 3);
        p.on_member_synced(3, 0);
        let t = t1 + SYNC_WAIT + Duration::from_millis(1);
        assert_eq!(
            p.poll_sync(t),
            Some((0, NEED_MAX)),
            "asks again from stamp 0"
        );
        assert_eq!(
            p.next_grant(t, true, &[k], |_| pending(5)),
            None,
            "issues nothing"
        );
        p.on_member_stamps(&stamps, t);
        // Complete: the adopted stamps go first, numbered as backup 2 delivered them.
        let t = t + SYNC_WAIT + Duration::from_millis(1);
        assert_eq!(p.poll_sync(t), None);
        assert_eq!(p.next_grant(t, true, &[k], |_| pending(5)), Some((k, 1)));
        assert_eq!(p.take_stats().sync_incomplete, 0);
        // A member that never answers holds the sync up to its bound.
        let mut p = Sequencer::new(Duration::ZERO);
        p.on_primary_changed(true, t1);
        p.sync_members(&[2, 3]);
        p.on_member_synced(2, 0);
        assert!(p
            .poll_sync(t1 + SYNC_MAX - Duration::from_millis(1))
            .is_some());
        assert_eq!(p.poll_sync(t1 + SYNC_MAX), None);
        assert_eq!(p.take_stats().sync_incomplete, 1);
        // One that left the view is not waited for.
        let mut p = Sequencer::new(Duration::ZERO);
        p.on_primary_changed(true, t1);
        p.sync_members(&[2, 3]);
        p.on_member_synced(2, 0);
        p.sync_members(&[2]);
        assert_eq!(p.poll_sync(t1 + SYNC_WAIT), None);
        assert_eq!(p.take_stats().sync_incomplete, 0);
    }

    #[test]
    fn a_new_primary_far_behind_a_backup_collects_until_it_caught_up() {
        let t0 = Instant::now();
        let (a, b) = (key(1), key(2));
        let n = 1600usize;
        let mut p = Replica::new();
        let (mut b1, mut b2) = (Replica::new(), Replica::new());
        // Backup 1's backend answers nothing: each chunk waits the quiet time, 1 ms, as a
        // backend round trip would.
        b1.q = Sequencer::new(Duration::from_millis(1));
        for i in 0..n {
            let k = if i % 2 == 0 { a } else { b };
            for r in [&mut p, &mut b1, &mut b2] {
                r.client_sends(k, 1);
            }
            p.run(t0, true);
        }
        let mut stamps = Vec::new();
        while let NeedAnswer::Stamps(s) = p.q.on_need(stamps.len() as u64, n as u64) {
            if s.is_empty() {
                break;
            }
            stamps.extend(s);
        }
        assert_eq!(stamps.len(), n);
        // Backup 1 got the first 100 stamps (then a partition), backup 2 all of them.
        b1.q.on_stamps(&stamps[..100], t0);
        for i in 0..200 {
            b1.run(t0 + Duration::from_millis(i), false);
        }
        for c in stamps.chunks(QUEUE_MAX as usize / 2) {
            b2.q.on_stamps(c, t0);
            b2.run(t0, false);
        }
        assert_eq!((b1.log.len(), b2.log.len()), (100, n));
        // The primary dies; backup 1 is the new primary.
        let t1 = t0 + Duration::from_millis(30);
        b1.q.on_primary_changed(true, t1);
        b2.q.on_primary_changed(false, t1);
        // The loop turns every millisecond: sync requests, answers, deliveries.
        let mut t = t1;
        while t < t1 + SYNC_MAX + SYNC_WAIT {
            if let Some((from, to)) = b1.q.poll_sync(t) {
                b1.q.on_member_stamps(&stamps_of(b2.q.on_need(from, to)), t);
            }
            b1.run(t, true);
            t += Duration::from_millis(1);
        }
        assert_eq!(b1.log, b2.log, "it adopted all backup 2 delivered");
        // Stamped on from there, backup 2 follows.
        b1.client_sends(a, 5);
        b2.client_sends(a, 5);
        b1.run(t, true);
        b2.q.on_stamps(&b1.q.take_outbox().unwrap(), t);
        b2.run(t, false);
        assert_eq!(b2.log, b1.log);
        assert_eq!(b2.q.take_stats().diverged, 0);
        assert!(b2.q.take_abandoned().is_empty());
    }

    #[test]
    fn a_stamp_nobody_delivered_is_issued_void_and_every_backup_passes_it() {
        let t0 = Instant::now();
        let (a, b, c) = (key(1), key(2), key(3));
        let mut p = Replica::new();
        let (mut b1, mut b2) = (Replica::new(), Replica::new());
        for r in [&mut p, &mut b1, &mut b2] {
            r.client_sends(a, 4);
        }
        p.run(t0, true);
        // Stamp 1 (b) reaches no backup; stamp 2 (c) reaches both, whose bytes for c are
        // still on their way. Then the primary dies.
        p.client_sends(b, 6);
        p.run(t0, true);
        p.client_sends(c, 7);
        p.run(t0, true);
        let st = p.q.take_outbox().unwrap();
        assert_eq!(st.iter().map(|s| s.key).collect::<Vec<_>>(), vec![a, b, c]);
        for r in [&mut b1, &mut b2] {
            r.q.on_stamps(&[st[0], st[2]], t0);
            r.run(t0, false);
        }
        let t1 = t0 + Duration::from_millis(30);
        b1.q.on_primary_changed(true, t1);
        b2.q.on_primary_changed(false, t1);
        assert_eq!(
            b2.q.take_stats().dropped,
            1,
            "stamp 2 was not delivered at backup 2"
        );
        let (from, to) = b1.q.poll_sync(t1).unwrap();
        assert_eq!(from, 1);
        b1.q.on_member_stamps(&stamps_of(b2.q.on_need(from, to)), t1);
        // The client's retransmissions bring b's and c's bytes.
        for r in [&mut b1, &mut b2] {
            r.client_sends(b, 6);
            r.client_sends(c, 7);
        }
        let t2 = t1 + SYNC_WAIT;
        b1.run(t2, true);
        assert_eq!(b1.q.take_stats().voided, 1);
        b2.q.on_stamps(&b1.q.recent(), t2);
        b2.run(t2, false);
        assert_eq!(b2.log, b1.log);
        assert_eq!(
            b1.log[..2],
            [(a, 4), (c, 7)],
            "stamp 2 kept its place, void 1 passed"
        );
        assert!(!b2.q.busy());
        assert!(b2.q.take_abandoned().is_empty());
    }

    #[test]
    fn a_backup_that_missed_the_sync_leaves_its_connections_instead_of_stalling() {
        let t0 = Instant::now();
        let (mut b1, mut b2, first, other) = uneven_failover(t0);
        let t1 = t0 + Duration::from_millis(30);
        b1.q.on_primary_changed(true, t1);
        b2.q.on_primary_changed(false, t1);
        // Backup 2's answer to the sync is lost: the new primary stamps on from 1, which
        // backup 2 delivered as `other`'s 10 bytes (unless by chance the same chunk).
        b1.client_sends(first, 5);
        b2.client_sends(first, 5);
        let t2 = t1 + SYNC_WAIT;
        b1.run(t2, true);
        assert_eq!(
            b1.log[1],
            (first, 5),
            "stamp 1: another chunk than backup 2's"
        );
        assert_eq!(b2.log[1], (other, 10));
        b2.q.on_stamps(&b1.q.take_outbox().unwrap(), t2);
        b2.run(t2, false);
        let mut left = b2.q.take_abandoned();
        left.sort_by_key(|k| k.client.port());
        assert_eq!(left, vec![key(1), key(2)], "it cannot follow them any more");
        assert_eq!(b2.q.take_stats().diverged, 1);
        assert!(!b2.q.busy(), "no wait for bytes that never come");
        // A connection opened from here on is followed from its first chunk.
        let d = key(4);
        b1.client_sends(d, 3);
        b2.client_sends(d, 3);
        b1.run(t2, true);
        b2.q.on_stamps(&b1.q.take_outbox().unwrap(), t2);
        b2.run(t2, false);
        assert_eq!(b2.log.last(), Some(&(d, 3)));
    }
}
