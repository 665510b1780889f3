//! SYN-ACK retransmission for SYN-cookie handshakes: a small, bounded memory of the SYN-ACKs
//! a host sent, so that a lost handshake ACK does not hang a connection whose server speaks
//! first.
//!
//! With SYN cookies a host keeps nothing for a SYN (see [`crate::syncookie`]); the client's
//! handshake ACK alone builds the connection. When that ACK is lost on the way, the client
//! believes the connection open. If it sends first, its data (which also carries the cookie)
//! opens the connection. If the server speaks first (SMTP, FTP, MySQL, a video streamer's
//! banner) the client waits for bytes that never come: the connection hangs until the
//! application gives up. Linux avoids this by using cookies only when its SYN queue
//! overflows, and otherwise retransmitting the SYN-ACK (`tcp_synack_retries`); a client that
//! gets a SYN-ACK again answers it with an ACK, which opens the connection.
//!
//! This table gives the cookie path that retransmission back, bounded:
//!
//! ```text
//!   SYN ──► cookie SYN-ACK ──► remember (key, SYN-ACK)   if fewer than `cap` are kept
//!                                │ connection opened (handshake ACK, data): forget
//!                                ▼ no: resend after 1 s, 2 s, 4 s (then forget)
//! ```
//!
//! A SYN flood fills the table to `cap` and no further: later SYNs are answered as before,
//! without a retry (counted as `full`), and each remembered SYN-ACK goes out at most
//! [`RETRIES`] more times. Sans-IO: `now` comes in, SYN-ACKs to resend come out.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::packet::FlowKey;

/// The first resend, as Linux's initial SYN-ACK timeout (RFC 6298's 1 s initial RTO).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Resends per SYN-ACK, each after twice the previous wait (1, 2 and 4 s: the client's own
/// connect timeout is usually longer, and its SYN retransmissions come meanwhile anyway).
pub const RETRIES: u8 = 3;
/// SYN-ACKs kept by default (a SYN-ACK is about 60 bytes).
pub const DEFAULT_CAP: usize = 4096;

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// SYN-ACKs remembered for a retry.
    pub kept: u64,
    /// SYN-ACKs sent again.
    pub resent: u64,
    /// SYN-ACKs not remembered because the table was full (answered without a retry).
    pub full: u64,
}

#[derive(Debug)]
struct Entry {
    synack: Vec<u8>,
    due: (Instant, u64),
    sent: u8,
}

/// The SYN-ACKs whose handshake has not completed here yet.
#[derive(Debug)]
pub struct SynAckRetry {
    cap: usize,
    entries: HashMap<FlowKey, Entry>,
    queue: BTreeSet<(Instant, u64, FlowKey)>,
    next_id: u64,
    stats: RetryStats,
}

impl Default for SynAckRetry {
    fn default() -> Self {
        SynAckRetry::new(DEFAULT_CAP)
    }
}

impl SynAckRetry {
    /// A table that keeps at most `cap` SYN-ACKs.
    pub fn new(cap: usize) -> Self {
        SynAckRetry {
            cap,
            entries: HashMap::new(),
            queue: BTreeSet::new(),
            next_id: 0,
            stats: RetryStats::default(),
        }
    }

    /// A SYN-ACK went to the client of `key`: remember it for a retry, if there is room
    /// (returns whether it was kept). A SYN-ACK for a 4-tuple already remembered (the client
    /// resent its SYN) replaces it.
    pub fn sent(&mut self, key: FlowKey, synack: Vec<u8>, now: Instant) -> bool {
        if let Some(old) = self.entries.remove(&key) {
            self.queue.remove(&(old.due.0, old.due.1, key));
        } else if self.entries.len() >= self.cap {
            self.stats.full += 1;
            return false;
        }
        let due = (now + FIRST_RETRY, self.next_id);
        self.next_id += 1;
        self.queue.insert((due.0, due.1, key));
        self.entries.insert(
            key,
            Entry {
                synack,
                due,
                sent: 0,
            },
        );
        self.stats.kept += 1;
        true
    }

    /// The handshake of `key` completed here (or the 4-tuple is otherwise settled): no
    /// retry.
    pub fn opened(&mut self, key: FlowKey) {
        if let Some(e) = self.entries.remove(&key) {
            self.queue.remove(&(e.due.0, e.due.1, key));
        }
    }

    /// The SYN-ACKs due again at `now`, with their 4-tuples; each is rescheduled at twice
    /// its last wait, or forgotten after its last retry. The caller sends them only where
    /// the handshake is still open (no connection for the 4-tuple, still the one to answer).
    pub fn due(&mut self, now: Instant) -> Vec<(FlowKey, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(&(t, id, key)) = self.queue.first() {
            if t > now {
                break;
            }
            self.queue.pop_first();
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            e.sent += 1;
            self.stats.resent += 1;
            if e.sent >= RETRIES {
                // INVARIANT: the entry was just found under this key.
                let e = self.entries.remove(&key).expect("entry present");
                out.push((key, e.synack));
                continue;
            }
            let wait = FIRST_RETRY * (1u32 << e.sent);
            e.due = (t + wait, id);
            self.queue.insert((e.due.0, id, key));
            out.push((key, e.synack.clone()));
        }
        out
    }

    /// When [`SynAckRetry::due`] has something next.
    pub fn wake_at(&self) -> Option<Instant> {
        self.queue.first().map(|(t, _, _)| *t)
    }

    /// SYN-ACKs remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters since the start.
    pub fn stats(&self) -> RetryStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any instant: the table only compares them.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 2), port),
            service: "198.19.0.10:80".parse().unwrap(),
        }
    }

    #[test]
    fn a_synack_is_resent_after_one_two_and_four_seconds_then_forgotten() {
        let t0 = t0();
        let mut r = SynAckRetry::new(8);
        r.sent(key(1), vec![1], t0);
        let mut at = Vec::new();
        for ms in (0..10_000).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            for (k, p) in r.due(now) {
                assert_eq!((k, p), (key(1), vec![1]));
                at.push(ms);
            }
        }
        assert_eq!(at, [1000, 3000, 7000]);
        assert!(r.is_empty());
        assert_eq!(r.wake_at(), None);
        assert_eq!(r.stats().resent, 3);
    }

    #[test]
    fn an_opened_connection_gets_no_resend() {
        let t0 = t0();
        let mut r = SynAckRetry::new(8);
        r.sent(key(1), vec![1], t0);
        r.sent(key(2), vec![2], t0);
        r.opened(key(1));
        let due = r.due(t0 + Duration::from_secs(1));
        assert_eq!(due, vec![(key(2), vec![2])]);
    }

    #[test]
    fn a_flood_fills_the_table_to_its_cap_and_no_further() {
        let t0 = t0();
        let mut r = SynAckRetry::new(100);
        for p in 0..10_000 {
            r.sent(key(p), vec![0; 60], t0);
        }
        assert_eq!(r.len(), 100);
        assert_eq!(r.stats().full, 9_900);
        // Each remembered SYN-ACK goes out at most RETRIES more times.
        let mut n = 0;
        for s in 0..10 {
            n += r.due(t0 + Duration::from_secs(s)).len();
        }
        assert_eq!(n, 100 * usize::from(RETRIES));
        // A resent SYN from a remembered client replaces its entry, not another's.
        let mut r = SynAckRetry::new(1);
        r.sent(key(1), vec![1], t0);
        r.sent(key(1), vec![2], t0 + Duration::from_millis(500));
        assert_eq!(r.due(t0 + Duration::from_secs(1)), vec![]);
        assert_eq!(
            r.due(t0 + Duration::from_millis(1500)),
            vec![(key(1), vec![2])]
        );
    }
}
