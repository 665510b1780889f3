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

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ft_tcp::FlowKey;

/// Stamps the primary repeats in every order datagram (loss of one is then harmless).
const RESEND: usize = 16;
/// A stamp for a connection this replica does not hold is skipped after this long (the
/// replica joined after it opened and cannot follow it).
const UNKNOWN_CONN_WAIT: Duration = Duration::from_millis(200);
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
}

/// What a connection looks like to the sequencer right now.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    /// Client bytes received and not yet given to the backend.
    pub pending: usize,
    /// Bytes the backend has written back so far (an answer moves it).
    pub answered: u64,
}

#[derive(Debug, Clone, Copy)]
struct Turn {
    key: FlowKey,
    left: u32,
    answered_base: u64,
    delivered_at: Option<Instant>,
}

/// The total-order state of one service on one replica.
#[derive(Debug)]
pub struct Sequencer {
    quiet: Duration,
    /// Next stamp to issue (primary) or deliver (backup).
    next: u64,
    queue: BTreeMap<u64, (FlowKey, u32)>,
    turn: Option<Turn>,
    recent: VecDeque<Stamp>,
    fresh: bool,
    waiting_since: Option<Instant>,
    rr: usize,
    /// Stamps skipped for connections this replica does not hold.
    pub skipped: u64,
}

impl Sequencer {
    /// A sequencer waiting at most `quiet` for an answer between connections.
    pub fn new(quiet: Duration) -> Self {
        Sequencer {
            quiet,
            next: 0,
            queue: BTreeMap::new(),
            turn: None,
            recent: VecDeque::new(),
            fresh: false,
            waiting_since: None,
            rr: 0,
            skipped: 0,
        }
    }

    /// Stamps from the primary (repeats and old ones are ignored).
    pub fn on_stamps(&mut self, stamps: &[Stamp]) {
        for s in stamps {
            if s.stamp >= self.next {
                self.queue.insert(s.stamp, (s.key, s.len));
            }
        }
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
        if !self.turn_free(now, &view) {
            return None;
        }
        // Stamps received from a primary come first (a promoted backup finishes them).
        if let Some((&k, &(key, len))) = self.queue.first_key_value() {
            if k != self.next {
                // A stamp is missing: the primary repeats recent stamps, wait for it. A new
                // primary whose old primary's stamp never arrived moves past the gap.
                if primary {
                    self.next = k;
                }
                return None;
            }
            match view(key) {
                Some(v) if v.pending >= len as usize => {
                    self.queue.pop_first();
                    self.next += 1;
                    self.waiting_since = None;
                    return Some(self.start_turn(key, len, v));
                }
                Some(_) => return None,
                None => {
                    let since = *self.waiting_since.get_or_insert(now);
                    if now >= since + UNKNOWN_CONN_WAIT {
                        self.queue.pop_first();
                        self.next += 1;
                        self.skipped += 1;
                        self.waiting_since = None;
                    }
                    return None;
                }
            }
        }
        if !primary || conns.is_empty() {
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
            };
            self.next += 1;
            self.recent.push_back(s);
            if self.recent.len() > RESEND {
                self.recent.pop_front();
            }
            self.fresh = true;
            return Some(self.start_turn(key, len, v));
        }
        None
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

    /// When the current turn's quiet time ends (to wake the loop), if one is running.
    pub fn wake_at(&self) -> Option<Instant> {
        self.turn
            .and_then(|t| t.delivered_at)
            .map(|d| d + self.quiet)
    }

    /// Whether stamps are waiting for bytes or a turn is in progress (poll often).
    pub fn busy(&self) -> bool {
        self.turn.is_some_and(|t| t.left > 0) || !self.queue.is_empty()
    }

    /// Stamps to send the backups: the recent ones, when a new one was issued.
    pub fn take_outbox(&mut self) -> Option<Vec<Stamp>> {
        if !std::mem::take(&mut self.fresh) {
            return None;
        }
        Some(self.recent.iter().copied().collect())
    }

    /// The recent stamps, for a periodic resend (the last one's datagram may be lost).
    pub fn recent(&self) -> Vec<Stamp> {
        self.recent.iter().copied().collect()
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
        s.on_stamps(&stamps[1..]);
        let mut bp: HashMap<FlowKey, ConnView> = HashMap::new();
        bp.insert(
            b,
            ConnView {
                pending: 5,
                answered: 0,
            },
        );
        assert_eq!(s.next_grant(t0, false, &[b], |k| bp.get(&k).copied()), None);
        s.on_stamps(&stamps);
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
        s.on_stamps(&[Stamp {
            stamp: 0,
            key: key(9),
            len: 3,
        }]);
        assert_eq!(s.next_grant(t0, false, &[], |_| None), None);
        assert_eq!(
            s.next_grant(t0 + UNKNOWN_CONN_WAIT, false, &[], |_| None),
            None
        );
        assert_eq!(s.skipped, 1);
        assert!(!s.busy());
    }
}
