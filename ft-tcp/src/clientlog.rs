//! The client log: client bytes (sequence space `C`) that some member of the connection may
//! still lack, kept for hop-by-hop repair (README.md, "How ft mode works"). The primary answers a
//! backup's hole from here at once instead of waiting for the client's retransmission timer.
//!
//! Segments are kept as they arrived (in order or not) and trimmed below the lowest
//! `rcv_nxt` over the members; the total is capped so a member that never reports cannot
//! make the log grow without bound.

use std::collections::BTreeMap;

use crate::seq::SeqNumber;

/// At most this many bytes are kept, entry overhead included; the lowest go first.
pub const MAX_BYTES: usize = 8 << 20;
/// What one stored segment costs besides its payload (map node, `Vec` header), counted
/// against [`MAX_BYTES`] so that many tiny segments cannot hold more memory than the cap.
pub const ENTRY_OVERHEAD: usize = 64;

/// Client segments from the lowest member's `rcv_nxt` up, by position.
///
/// Positions are sequence numbers unwrapped to 64 bits around an anchor that follows the
/// trim point, so the map is ordered although [`SeqNumber`] is not (it wraps). No entry is
/// contained in another: then the last entry starting at or before a position is the one
/// that reaches furthest, and every lookup is one `O(log n)` range query.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    segs: BTreeMap<u64, Vec<u8>>,
    /// (position, sequence number) of one known point.
    anchor: Option<(u64, SeqNumber)>,
    fin: Option<SeqNumber>,
    bytes: usize,
}

/// Where the first anchor sits: far enough from 0 that a segment up to 2^31 below it
/// still has a position.
const ORIGIN: u64 = 1 << 40;

impl ClientLog {
    /// Bytes held, entry overhead included.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.fin.is_none()
    }

    fn pos(&self, seq: SeqNumber) -> u64 {
        let (p, a) = self.anchor.unwrap_or((ORIGIN, seq));
        p.wrapping_add_signed(i64::from(seq.diff(a)))
    }

    /// Records a client segment (`fin`: its FIN follows the payload). A range already held
    /// whole is not stored twice; entries the new one covers are dropped.
    pub fn record(&mut self, seq: SeqNumber, payload: &[u8], fin: bool) {
        let end_seq = seq.plus(payload.len() as u32);
        if fin {
            self.fin = Some(end_seq);
        }
        if payload.is_empty() {
            return;
        }
        if self.anchor.is_none() {
            self.anchor = Some((ORIGIN, seq));
        }
        let (start, end) = (self.pos(seq), self.pos(seq) + payload.len() as u64);
        if let Some((s, b)) = self.segs.range(..=start).next_back() {
            if s + b.len() as u64 >= end {
                return;
            }
        }
        let covered: Vec<u64> = self
            .segs
            .range(start..end)
            .filter(|(s, b)| **s + b.len() as u64 <= end)
            .map(|(s, _)| *s)
            .collect();
        for s in covered {
            if let Some(b) = self.segs.remove(&s) {
                self.bytes -= b.len() + ENTRY_OVERHEAD;
            }
        }
        self.bytes += payload.len() + ENTRY_OVERHEAD;
        self.segs.insert(start, payload.to_vec());
        while self.bytes > MAX_BYTES {
            match self.segs.pop_first() {
                Some((_, b)) => self.bytes -= b.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }

    /// Every member holds everything before `base`: forget the segments that end there.
    pub fn trim(&mut self, base: SeqNumber) {
        if self.anchor.is_some() {
            let b = self.pos(base);
            while let Some(e) = self.segs.first_entry() {
                if *e.key() + e.get().len() as u64 > b {
                    break;
                }
                self.bytes -= e.remove().len() + ENTRY_OVERHEAD;
            }
            // Follow the trim point, so positions stay within 2^31 of the anchor.
            self.anchor = Some((b, base));
        }
        if self.fin.is_some_and(|f| f.lt(base)) {
            self.fin = None;
        }
    }

    /// Segments covering `[from, to)`, each at most `mss` bytes, at most `max` of them, as
    /// `(seq, bytes, fin)`; stops at the first byte not held.
    pub fn segments(
        &self,
        from: SeqNumber,
        to: SeqNumber,
        mss: usize,
        max: usize,
    ) -> Vec<(SeqNumber, Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut cur = from;
        while out.len() < max && cur.lt(to) {
            let at = self.pos(cur);
            let hit = self
                .segs
                .range(..=at)
                .next_back()
                .filter(|(s, b)| at < **s + b.len() as u64);
            match hit {
                Some((s, b)) => {
                    let off = (at - s) as usize;
                    let n = (b.len() - off).min(mss).min(to.since(cur) as usize);
                    let next = cur.plus(n as u32);
                    let fin = self.fin == Some(next);
                    out.push((cur, b[off..off + n].to_vec(), fin));
                    if fin {
                        break;
                    }
                    cur = next;
                }
                None if self.fin == Some(cur) => {
                    out.push((cur, Vec::new(), true));
                    break;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_segment_covering_others_replaces_them_and_wraparound_keeps_order() {
        let mut log = ClientLog::default();
        let base = SeqNumber(u32::MAX - 3);
        log.record(base.plus(2), b"cd", false);
        log.record(base.plus(6), b"gh", false);
        log.record(base, b"abcdefghij", false);
        assert_eq!(log.len(), 10 + ENTRY_OVERHEAD);
        let got = log.segments(base.plus(1), base.plus(9), 100, 10);
        assert_eq!(got, vec![(base.plus(1), b"bcdefghi".to_vec(), false)]);
    }

    proptest! {
        /// The log serves exactly the client bytes it was given, from any point, whatever
        /// the order and overlap of the segments (a model: one byte array).
        #[test]
        fn serves_what_it_was_given(start: u32, cuts in proptest::collection::vec((0usize..2000, 1usize..300), 1..40),
                                    from in 0usize..2000) {
            let data: Vec<u8> = (0..2300).map(|i| (i * 7 + 3) as u8).collect();
            let base = SeqNumber(start);
            let mut held = vec![false; data.len()];
            let mut log = ClientLog::default();
            let mut given = 0;
            let n_cuts = cuts.len();
            for (at, n) in cuts {
                let end = (at + n).min(data.len());
                given += end - at;
                log.record(base.plus(at as u32), &data[at..end], false);
                held[at..end].iter_mut().for_each(|h| *h = true);
            }
            let run = held[from..].iter().take_while(|h| **h).count();
            let got: Vec<u8> = log
                .segments(base.plus(from as u32), base.plus(data.len() as u32), 500, usize::MAX)
                .into_iter()
                .flat_map(|(_, b, _)| b)
                .collect();
            prop_assert_eq!(&got[..], &data[from..from + run]);
            // Never more than it was given (duplicates and covered segments are dropped).
            prop_assert!(log.len() <= given + n_cuts * ENTRY_OVERHEAD);
        }
    }

    #[test]
    fn out_of_order_segments_serve_a_range_and_trim_frees_them() {
        let mut log = ClientLog::default();
        log.record(SeqNumber(110), b"klmno", false);
        log.record(SeqNumber(100), b"abcdefghij", false);
        log.record(SeqNumber(102), b"cde", false);
        assert_eq!(log.len(), 15 + 2 * ENTRY_OVERHEAD, "cde is held already");
        let segs = log.segments(SeqNumber(103), SeqNumber(113), 4, 10);
        let got: Vec<_> = segs.iter().map(|(s, b, _)| (s.0, b.clone())).collect();
        assert_eq!(
            got,
            vec![
                (103, b"defg".to_vec()),
                (107, b"hij".to_vec()),
                (110, b"klm".to_vec())
            ]
        );
        log.trim(SeqNumber(110));
        assert_eq!(
            log.len(),
            5 + ENTRY_OVERHEAD,
            "everything below 110 is gone"
        );
        log.trim(SeqNumber(115));
        assert!(log.is_empty());
        assert!(log
            .segments(SeqNumber(100), SeqNumber(120), 100, 10)
            .is_empty());
    }

    #[test]
    fn a_hole_stops_the_range_and_fin_is_served() {
        let mut log = ClientLog::default();
        log.record(SeqNumber(1), b"ab", false);
        log.record(SeqNumber(5), b"ef", true);
        assert_eq!(log.segments(SeqNumber(1), SeqNumber(8), 10, 10).len(), 1);
        let tail = log.segments(SeqNumber(5), SeqNumber(8), 10, 10);
        assert_eq!(tail, vec![(SeqNumber(5), b"ef".to_vec(), true)]);
        log.trim(SeqNumber(7));
        assert_eq!(
            log.segments(SeqNumber(7), SeqNumber(8), 10, 10),
            vec![(SeqNumber(7), Vec::new(), true)]
        );
    }
}
