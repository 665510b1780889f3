//! The flow table of redirect mode: which host each connection is pinned to. Bounded, and
//! forgotten in O(1) work per entry. Pure: every method takes `now`.
//!
//! A SYN flood from random source addresses (issue #10) asks for one entry per SYN. Three
//! rules keep that harmless (README.md, "Hostile clients: SYN cookies and bounds"):
//!
//! - The table holds at most `max` entries. When it is full, a new pin first takes the place
//!   of an entry already past its idle time, then of the oldest half-open entry (one that
//!   never saw more than its SYN), then of the oldest closed one. Open connections are never
//!   evicted; with nothing to evict, [`FlowTable::pin`] says so and the caller routes by hash
//!   without pinning, so new connections still work.
//! - Each phase has its own idle time: [`HALF_OPEN_FLOW_TTL`] for half-open entries,
//!   [`CLOSED_FLOW_TTL`] once FINs went both ways or an RST passed, [`IDLE_FLOW_TTL`] for open
//!   connections.
//! - Nothing walks the table. The entries of each phase sit in a doubly linked list (indices
//!   into a slab) ordered by last activity: a packet moves its entry to the tail, so the
//!   entries past their idle time are at the heads, and [`FlowTable::expire`] removes at most
//!   `budget` of them per call.
//!
//! The index is a std `HashMap`, whose per-process random SipHash keys keep an attacker who
//! chooses the 4-tuples from aiming them at one bucket.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ack_channel::ReplicaId;
use ft_tcp::{FlowKey, TcpFlags};

/// Idle time after which an entry that only ever saw a SYN is forgotten: a real client
/// completes its handshake in a round trip, a spoofed SYN never does.
pub const HALF_OPEN_FLOW_TTL: Duration = Duration::from_secs(10);
/// Idle time after which a closed (FIN both ways, or RST) connection is forgotten.
pub const CLOSED_FLOW_TTL: Duration = Duration::from_secs(5);
/// Idle time after which an open connection is forgotten.
pub const IDLE_FLOW_TTL: Duration = Duration::from_secs(900);
/// The default bound on entries: ten seconds of a 26,000 SYN/s flood, about 25 MB.
pub const DEFAULT_MAX_FLOWS: usize = 262_144;
/// The largest bound a configuration may ask for (each entry costs about 100 bytes).
pub const MAX_MAX_FLOWS: usize = 1 << 24;

/// Where a pinned connection is in its life, as far as the flags of its packets tell.
///
/// ```text
///            client SYN                 client non-SYN
///   (none) ─────────────> HalfOpen ───────────────────────> Open { fin_in, fin_out }
///                            │                                  │
///                            │ RST either way                   │ FIN both ways, or RST
///                            v                                  v
///                          Closed <─────────────────────────────┘
/// ```
///
/// A host's SYN-ACK does not move a half-open entry: the host answers every SYN, spoofed or
/// not. Only the client's next segment shows that someone is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Saw the client's SYN and nothing from the client since.
    HalfOpen,
    /// The client spoke after its SYN; `fin_in`/`fin_out` say who has finished sending.
    Open {
        /// The client sent a FIN.
        fin_in: bool,
        /// The host sent a FIN.
        fin_out: bool,
    },
    /// FIN both ways, or an RST either way.
    Closed,
}

impl Phase {
    /// The open phase, or closed once both sides have finished.
    fn open(fin_in: bool, fin_out: bool) -> Phase {
        if fin_in && fin_out {
            Phase::Closed
        } else {
            Phase::Open { fin_in, fin_out }
        }
    }

    /// The phase after a packet from the client.
    fn on_inbound(self, flags: TcpFlags) -> Phase {
        let syn = flags.syn && !flags.ack;
        match self {
            _ if flags.rst => Phase::Closed,
            Phase::HalfOpen if syn => Phase::HalfOpen,
            Phase::HalfOpen => Phase::open(flags.fin, false),
            Phase::Open { fin_in, fin_out } => Phase::open(fin_in || flags.fin, fin_out),
            Phase::Closed => Phase::Closed,
        }
    }

    /// The phase after a packet from the pinned host, or `None` if it leaves the entry alone.
    fn on_outbound(self, flags: TcpFlags) -> Option<Phase> {
        match self {
            _ if flags.rst => Some(Phase::Closed),
            // Its SYN-ACK (and retransmissions of it) must not keep a spoofed SYN's entry.
            Phase::HalfOpen => None,
            Phase::Open { fin_in, fin_out } => Some(Phase::open(fin_in, fin_out || flags.fin)),
            Phase::Closed => Some(Phase::Closed),
        }
    }

    /// How long an entry in this phase may stay silent.
    pub fn ttl(self) -> Duration {
        match self {
            Phase::HalfOpen => HALF_OPEN_FLOW_TTL,
            Phase::Open { .. } => IDLE_FLOW_TTL,
            Phase::Closed => CLOSED_FLOW_TTL,
        }
    }

    /// The phase's name in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self.class() {
            Class::HalfOpen => "half_open",
            Class::Open => "open",
            Class::Closed => "closed",
        }
    }

    fn class(self) -> Class {
        match self {
            Phase::HalfOpen => Class::HalfOpen,
            Phase::Open { .. } => Class::Open,
            Phase::Closed => Class::Closed,
        }
    }
}

/// A phase without its flags: which list an entry is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    HalfOpen = 0,
    Open = 1,
    Closed = 2,
}

/// One number per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerPhase {
    /// Half-open entries.
    pub half_open: u64,
    /// Open connections.
    pub open: u64,
    /// Closed connections.
    pub closed: u64,
}

impl PerPhase {
    fn slot(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::HalfOpen => &mut self.half_open,
            Class::Open => &mut self.open,
            Class::Closed => &mut self.closed,
        }
    }

    /// `(label, value)` pairs for `/metrics`.
    pub fn labelled(&self) -> [(&'static str, u64); 3] {
        [
            ("half_open", self.half_open),
            ("open", self.open),
            ("closed", self.closed),
        ]
    }
}

/// What happened to entries, for `/metrics`. `pinned = len + expired + evicted` at all times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Entries created: a client's SYN pinned, or a host's data re-pinned.
    pub pinned: u64,
    /// Entries forgotten after their phase's idle time, by phase.
    pub expired: PerPhase,
    /// Entries removed before their time to make room for a new pin, by phase (never open).
    pub evicted: PerPhase,
    /// Client SYNs routed by hash without an entry: the table was full of open connections.
    pub unpinned_syns: u64,
    /// Host replies passed without an entry: the table was full of open connections.
    pub unpinned_replies: u64,
    /// Client packets other than a SYN for a flow without an entry, routed by hash.
    pub unknown_flow_packets: u64,
}

/// A connection's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The host it is pinned to.
    pub host: ReplicaId,
    /// Where it is in its life.
    pub phase: Phase,
    /// Its last packet that counts as activity (see [`FlowTable::on_outbound`]).
    pub last_seen: Instant,
}

/// "No slot": the end of a list.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    flow: Flow,
    prev: u32,
    next: u32,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// The bounded flow table. See the module documentation for its rules.
#[derive(Debug)]
pub struct FlowTable {
    index: HashMap<FlowKey, u32>,
    /// Entries, live or on `free`; a slot's index never changes while it is live.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Per [`Class`], oldest activity at the head.
    lists: [List; 3],
    max: usize,
    per_host: BTreeMap<ReplicaId, usize>,
    stats: FlowStats,
    /// Entries `expire` looked at, to pin its cost in tests.
    #[cfg(test)]
    inspected: usize,
}

impl FlowTable {
    /// A table of at most `max` entries (clamped to `1..=MAX_MAX_FLOWS`).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, MAX_MAX_FLOWS);
        FlowTable {
            index: HashMap::with_capacity(max.min(4096)),
            slots: Vec::with_capacity(max.min(4096)),
            free: Vec::new(),
            lists: [List::EMPTY; 3],
            max,
            per_host: BTreeMap::new(),
            stats: FlowStats::default(),
            #[cfg(test)]
            inspected: 0,
        }
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Entries now, by phase.
    pub fn by_phase(&self) -> PerPhase {
        PerPhase {
            half_open: self.lists[Class::HalfOpen as usize].len as u64,
            open: self.lists[Class::Open as usize].len as u64,
            closed: self.lists[Class::Closed as usize].len as u64,
        }
    }

    /// Entries per pinned host.
    pub fn per_host(&self) -> &BTreeMap<ReplicaId, usize> {
        &self.per_host
    }

    /// What happened so far.
    pub fn stats(&self) -> &FlowStats {
        &self.stats
    }

    /// For the routing decision's own counters.
    pub(crate) fn stats_mut(&mut self) -> &mut FlowStats {
        &mut self.stats
    }

    /// The entry of a connection.
    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.index.get(key).map(|&i| &self.slots[i as usize].flow)
    }

    /// Pins `key` to `host` in `phase`, replacing its entry if it has one. A new entry in a
    /// full table takes the place of one past its idle time, else of the oldest half-open,
    /// else of the oldest closed entry; if every entry is an open connection, nothing is
    /// pinned and this returns `false`: the caller routes without an entry and counts it.
    pub fn pin(&mut self, now: Instant, key: FlowKey, host: ReplicaId, phase: Phase) -> bool {
        if let Some(&i) = self.index.get(&key) {
            let old = self.slots[i as usize].flow.host;
            if old != host {
                self.count_host(old, false);
                self.count_host(host, true);
                self.slots[i as usize].flow.host = host;
            }
            // The same connection placed again (a SYN after a close, or its host died): not
            // a new entry, so `pinned` does not count it.
            self.update(now, i, phase);
            return true;
        }
        if !self.make_room(now) {
            return false;
        }
        let slot = Slot {
            key,
            flow: Flow {
                host,
                phase,
                last_seen: now,
            },
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                // Fits in a u32: every slot is live or free, and `make_room` keeps the live
                // ones at most `max` <= MAX_MAX_FLOWS, far below NIL.
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, i);
        self.link_tail(phase.class(), i);
        self.count_host(host, true);
        self.stats.pinned += 1;
        true
    }

    /// A packet from the client on a pinned connection: its phase moves (see [`Phase`]) and
    /// the entry counts as active.
    pub fn on_inbound(&mut self, now: Instant, key: &FlowKey, flags: TcpFlags) {
        if let Some(&i) = self.index.get(key) {
            let next = self.slots[i as usize].flow.phase.on_inbound(flags);
            self.update(now, i, next);
        }
    }

    /// A packet from the pinned host. It closes the entry on RST and records its FIN; it
    /// counts as activity except on a half-open entry (a host answers spoofed SYNs too).
    pub fn on_outbound(&mut self, now: Instant, key: &FlowKey, flags: TcpFlags) {
        if let Some(&i) = self.index.get(key) {
            if let Some(next) = self.slots[i as usize].flow.phase.on_outbound(flags) {
                self.update(now, i, next);
            }
        }
    }

    /// Forgets entries silent past their phase's idle time, at most `budget` of them, and
    /// returns how many. The work is O(removed + 3), whatever the table's size.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let mut removed = 0;
        for class in [Class::Closed, Class::HalfOpen, Class::Open] {
            while removed < budget {
                let head = self.lists[class as usize].head;
                if head == NIL || !self.is_due(head, now) {
                    break;
                }
                self.remove(head);
                *self.stats.expired.slot(class) += 1;
                removed += 1;
            }
        }
        removed
    }

    fn is_due(&mut self, i: u32, now: Instant) -> bool {
        #[cfg(test)]
        {
            self.inspected += 1;
        }
        let f = &self.slots[i as usize].flow;
        now.saturating_duration_since(f.last_seen) >= f.phase.ttl()
    }

    /// Frees a slot if the table is full; `false` if every entry is an open connection that
    /// is not yet due.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.index.len() < self.max {
            return true;
        }
        if self.expire(now, 1) == 1 {
            return true;
        }
        for class in [Class::HalfOpen, Class::Closed] {
            let head = self.lists[class as usize].head;
            if head != NIL {
                self.remove(head);
                *self.stats.evicted.slot(class) += 1;
                return true;
            }
        }
        false
    }

    /// Sets an entry's phase and marks it active now: it goes to the tail of its phase's list.
    fn update(&mut self, now: Instant, i: u32, phase: Phase) {
        self.unlink(i);
        let f = &mut self.slots[i as usize].flow;
        f.phase = phase;
        // Threads read the clock before taking the lock: never move an entry back in time.
        f.last_seen = f.last_seen.max(now);
        self.link_tail(phase.class(), i);
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let Slot { key, flow, .. } = self.slots[i as usize];
        self.index.remove(&key);
        self.count_host(flow.host, false);
        self.free.push(i);
    }

    fn count_host(&mut self, host: ReplicaId, add: bool) {
        if add {
            *self.per_host.entry(host).or_default() += 1;
        } else if let Some(n) = self.per_host.get_mut(&host) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }

    fn link_tail(&mut self, class: Class, i: u32) {
        let list = &mut self.lists[class as usize];
        let tail = list.tail;
        list.tail = i;
        if tail == NIL {
            list.head = i;
        }
        list.len += 1;
        if tail != NIL {
            self.slots[tail as usize].next = i;
        }
        let s = &mut self.slots[i as usize];
        s.prev = tail;
        s.next = NIL;
    }

    fn unlink(&mut self, i: u32) {
        let class = self.slots[i as usize].flow.phase.class();
        let Slot { prev, next, .. } = self.slots[i as usize];
        let list = &mut self.lists[class as usize];
        if prev == NIL {
            list.head = next;
        }
        if next == NIL {
            list.tail = prev;
        }
        list.len -= 1;
        if prev != NIL {
            self.slots[prev as usize].next = next;
        }
        if next != NIL {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    /// SplitMix64: a seeded stream, so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    fn key(n: u32) -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new(Ipv4Addr::from(0xc612_8000 | (n >> 16)), n as u16),
            service: "198.19.0.10:80".parse().unwrap(),
        }
    }

    const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };
    const FIN: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    };
    const RST: TcpFlags = TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    };

    const H1: ReplicaId = ReplicaId(1);
    const H2: ReplicaId = ReplicaId(2);

    impl FlowTable {
        /// Every structural invariant: lists and index agree, lists are ordered by activity,
        /// counts and the stats balance hold, the bound holds.
        fn check(&self) {
            assert!(
                self.len() <= self.max,
                "{} entries over the bound {}",
                self.len(),
                self.max
            );
            let mut seen = 0;
            let mut hosts = BTreeMap::<ReplicaId, usize>::new();
            for class in [Class::HalfOpen, Class::Open, Class::Closed] {
                let list = self.lists[class as usize];
                let (mut i, mut prev, mut n) = (list.head, NIL, 0);
                let mut last = None;
                while i != NIL {
                    let s = &self.slots[i as usize];
                    assert_eq!(s.prev, prev);
                    assert_eq!(s.flow.phase.class(), class);
                    assert_eq!(self.index.get(&s.key), Some(&i));
                    assert!(
                        last.is_none_or(|l| l <= s.flow.last_seen),
                        "list out of order"
                    );
                    last = Some(s.flow.last_seen);
                    *hosts.entry(s.flow.host).or_default() += 1;
                    (prev, i, n) = (i, s.next, n + 1);
                }
                assert_eq!(list.tail, prev);
                assert_eq!(list.len, n);
                seen += n;
            }
            assert_eq!(seen, self.len());
            assert_eq!(seen + self.free.len(), self.slots.len());
            assert_eq!(hosts, self.per_host);
            let st = &self.stats;
            let gone = |p: &PerPhase| p.half_open + p.open + p.closed;
            assert_eq!(
                st.pinned,
                self.len() as u64 + gone(&st.expired) + gone(&st.evicted)
            );
            assert_eq!(st.evicted.open, 0, "an open connection was evicted");
        }
    }

    #[test]
    fn the_phase_follows_the_flags() {
        let t0 = crate::dataplane::clock();
        let mut t = FlowTable::new(10);
        let phase = |t: &FlowTable, n| t.get(&key(n)).map(|f| f.phase);
        t.pin(t0, key(1), H1, Phase::HalfOpen);
        t.on_inbound(t0, &key(1), SYN);
        t.on_outbound(t0, &key(1), SYN_ACK);
        assert_eq!(
            phase(&t, 1),
            Some(Phase::HalfOpen),
            "SYN retransmit, SYN-ACK"
        );
        t.on_inbound(t0, &key(1), ACK);
        let open = Phase::Open {
            fin_in: false,
            fin_out: false,
        };
        assert_eq!(phase(&t, 1), Some(open));
        t.on_outbound(t0, &key(1), FIN);
        t.on_inbound(t0, &key(1), ACK);
        assert_eq!(
            phase(&t, 1),
            Some(Phase::Open {
                fin_in: false,
                fin_out: true
            })
        );
        t.on_inbound(t0, &key(1), FIN);
        assert_eq!(phase(&t, 1), Some(Phase::Closed), "FIN both ways");
        for (n, rst_from_client) in [(2, true), (3, false)] {
            t.pin(t0, key(n), H1, Phase::HalfOpen);
            if rst_from_client {
                t.on_inbound(t0, &key(n), RST);
            } else {
                t.on_outbound(t0, &key(n), RST);
            }
            assert_eq!(phase(&t, n), Some(Phase::Closed));
        }
        t.check();
    }

    #[test]
    fn half_open_entries_expire_after_ten_seconds_closed_after_five_open_after_fifteen_minutes() {
        let t0 = crate::dataplane::clock();
        let mut t = FlowTable::new(10);
        for n in 1..=3 {
            t.pin(t0, key(n), H1, Phase::HalfOpen);
        }
        t.on_inbound(t0, &key(2), ACK);
        t.on_inbound(t0, &key(3), RST);
        let alive = |t: &FlowTable| (1..=3).filter(|n| t.get(&key(*n)).is_some()).count();
        assert_eq!(
            t.expire(t0 + CLOSED_FLOW_TTL - Duration::from_millis(1), 100),
            0
        );
        assert_eq!(t.expire(t0 + CLOSED_FLOW_TTL, 100), 1);
        assert!(t.get(&key(3)).is_none(), "the reset connection went first");
        // Its SYN-ACK retransmissions do not keep a SYN-only entry alive.
        t.on_outbound(t0 + Duration::from_secs(9), &key(1), SYN_ACK);
        assert_eq!(t.expire(t0 + HALF_OPEN_FLOW_TTL, 100), 1);
        assert!(t.get(&key(1)).is_none(), "the half-open entry went next");
        assert_eq!(alive(&t), 1);
        assert_eq!(
            t.expire(t0 + IDLE_FLOW_TTL - Duration::from_secs(1), 100),
            0
        );
        assert_eq!(t.expire(t0 + IDLE_FLOW_TTL, 100), 1);
        assert_eq!(
            t.stats().expired,
            PerPhase {
                half_open: 1,
                open: 1,
                closed: 1
            }
        );
        t.check();
    }

    #[test]
    fn activity_postpones_expiry() {
        let t0 = crate::dataplane::clock();
        let mut t = FlowTable::new(10);
        t.pin(t0, key(1), H1, Phase::HalfOpen);
        t.on_inbound(t0, &key(1), ACK);
        let later = t0 + IDLE_FLOW_TTL - Duration::from_secs(1);
        t.on_outbound(later, &key(1), ACK);
        assert_eq!(t.expire(t0 + IDLE_FLOW_TTL, 100), 0);
        assert_eq!(t.expire(later + IDLE_FLOW_TTL, 100), 1);
    }

    #[test]
    fn expire_does_bounded_work_per_call_whatever_the_table_holds() {
        let t0 = crate::dataplane::clock();
        let mut t = FlowTable::new(200_000);
        // 100,000 open connections that are not due, then 50,000 half-open that are.
        for n in 0..100_000 {
            t.pin(t0 + HALF_OPEN_FLOW_TTL, key(n), H1, Phase::HalfOpen);
            t.on_inbound(t0 + HALF_OPEN_FLOW_TTL, &key(n), ACK);
        }
        for n in 100_000..150_000 {
            t.pin(t0, key(n), H2, Phase::HalfOpen);
        }
        let now = t0 + HALF_OPEN_FLOW_TTL;
        let mut calls = 0;
        loop {
            t.inspected = 0;
            let removed = t.expire(now, 1000);
            assert!(removed <= 1000);
            assert!(
                t.inspected <= 1000 + 3,
                "one call looked at {} entries",
                t.inspected
            );
            calls += 1;
            if removed == 0 {
                break;
            }
        }
        assert_eq!(calls, 51, "50 full calls, then one that finds nothing due");
        assert_eq!(t.len(), 100_000);
        assert_eq!(t.per_host().get(&H2), None);
        t.check();
    }

    #[test]
    fn a_full_table_evicts_the_oldest_half_open_then_closed_and_never_an_open_connection() {
        let t0 = crate::dataplane::clock();
        let ms = Duration::from_millis;
        let mut t = FlowTable::new(4);
        // 0 and 1 open, 2 closed, 3 half-open and the newest: phase comes before age.
        for n in 0..=2 {
            t.pin(t0, key(n), H1, Phase::HalfOpen);
            t.on_inbound(t0 + ms(1), &key(n), ACK);
        }
        t.on_inbound(t0 + ms(1), &key(2), RST);
        t.pin(t0 + ms(2), key(3), H1, Phase::HalfOpen);
        assert!(t.pin(t0 + ms(3), key(10), H2, Phase::HalfOpen));
        assert!(t.get(&key(3)).is_none(), "the half-open entry goes first");
        assert!(t.pin(t0 + ms(4), key(11), H2, Phase::HalfOpen));
        assert!(
            t.get(&key(10)).is_none(),
            "then the next oldest half-open one"
        );
        t.on_inbound(t0 + ms(5), &key(11), ACK);
        assert!(t.pin(t0 + ms(6), key(12), H2, Phase::HalfOpen));
        assert!(t.get(&key(2)).is_none(), "then the closed one");
        t.on_inbound(t0 + ms(7), &key(12), ACK);
        // Four open connections: nothing to evict, nothing pinned.
        assert!(!t.pin(t0 + ms(8), key(13), H2, Phase::HalfOpen));
        assert!(t.get(&key(13)).is_none());
        assert_eq!(
            t.stats().evicted,
            PerPhase {
                half_open: 2,
                open: 0,
                closed: 1
            }
        );
        // An entry past its idle time makes room and counts as expired, not evicted.
        assert!(t.pin(t0 + ms(1) + IDLE_FLOW_TTL, key(14), H2, Phase::HalfOpen));
        assert_eq!(t.stats().expired.open, 1);
        assert_eq!(t.stats().evicted.open, 0);
        t.check();
    }

    #[test]
    fn pinning_a_known_connection_again_moves_it_to_the_new_host_without_a_new_entry() {
        let t0 = crate::dataplane::clock();
        let mut t = FlowTable::new(2);
        t.pin(t0, key(1), H1, Phase::HalfOpen);
        t.on_inbound(t0, &key(1), RST);
        t.pin(t0, key(2), H1, Phase::HalfOpen);
        assert!(t.pin(t0, key(1), H2, Phase::HalfOpen));
        assert_eq!(t.get(&key(1)).unwrap().host, H2);
        assert_eq!(t.get(&key(1)).unwrap().phase, Phase::HalfOpen);
        assert_eq!(t.len(), 2);
        assert_eq!(t.stats().evicted, PerPhase::default());
        assert_eq!(t.per_host().get(&H1), Some(&1));
        assert_eq!(t.per_host().get(&H2), Some(&1));
        t.check();
    }

    /// Random pins, packets, expiry and time steps on a small table; every invariant is
    /// checked after every step. `FT_SEED=<n>` replays one seed.
    #[test]
    fn random_operations_keep_every_invariant() {
        let seeds: Vec<u64> = match std::env::var("FT_SEED") {
            Ok(s) => vec![s.parse().expect("FT_SEED is a number")],
            Err(_) => (1..=20).collect(),
        };
        for seed in seeds {
            let mut rng = Rng(seed);
            let mut t = FlowTable::new(1 + (rng.next() % 64) as usize);
            let mut now = crate::dataplane::clock();
            for step in 0..5_000 {
                let k = key((rng.next() % 100) as u32);
                let host = ReplicaId(1 + (rng.next() % 3) as u32);
                let flags = [SYN, SYN_ACK, ACK, FIN, RST][(rng.next() % 5) as usize];
                match rng.next() % 8 {
                    0 | 1 => {
                        let before = t.get(&k).is_some() || t.len() < t.max();
                        let open = t.by_phase().open as usize == t.len();
                        let pinned = t.pin(now, k, host, Phase::HalfOpen);
                        assert!(pinned || (!before && open), "seed {seed} step {step}");
                    }
                    2 | 3 => t.on_inbound(now, &k, flags),
                    4 => t.on_outbound(now, &k, flags),
                    5 => {
                        let budget = (rng.next() % 8) as usize;
                        assert!(t.expire(now, budget) <= budget);
                    }
                    _ => now += Duration::from_millis(rng.next() % 3_000),
                }
                t.check();
            }
        }
    }
}
