//! The client log: client bytes (sequence space `C`) that some member of the connection may
//! still lack, kept for hop-by-hop repair (DESIGN.md, "Repair"). The primary answers a
//! backup's hole from here at once instead of waiting for the client's retransmission timer.
//!
//! Segments are kept as they arrived (in order or not) and trimmed below the lowest
//! `rcv_nxt` over the members; the total is capped so a member that never reports cannot
//! make the log grow without bound.

use std::collections::VecDeque;

use crate::seq::SeqNumber;

/// At most this many bytes are kept; the oldest go first.
pub const MAX_BYTES: usize = 8 << 20;

/// Client segments from the lowest member's `rcv_nxt` up.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    segs: VecDeque<(SeqNumber, Vec<u8>)>,
    fin: Option<SeqNumber>,
    bytes: usize,
}

impl ClientLog {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.fin.is_none()
    }

    /// Records a client segment (`fin`: its FIN follows the payload). A range already held
    /// whole is not stored twice.
    pub fn record(&mut self, seq: SeqNumber, payload: &[u8], fin: bool) {
        let end = seq.plus(payload.len() as u32);
        if fin {
            self.fin = Some(end);
        }
        if payload.is_empty() {
            return;
        }
        let held = self
            .segs
            .iter()
            .any(|(s, b)| s.le(seq) && end.le(s.plus(b.len() as u32)));
        if held {
            return;
        }
        self.bytes += payload.len();
        self.segs.push_back((seq, payload.to_vec()));
        while self.bytes > MAX_BYTES {
            match self.segs.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    /// Every member holds everything before `base`: forget it (from the front; a segment
    /// that arrived late goes with the one in front of it).
    pub fn trim(&mut self, base: SeqNumber) {
        while let Some((s, b)) = self.segs.front() {
            if base.lt(s.plus(b.len() as u32)) {
                break;
            }
            self.bytes -= b.len();
            self.segs.pop_front();
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
            let hit = self
                .segs
                .iter()
                .find(|(s, b)| s.le(cur) && cur.lt(s.plus(b.len() as u32)));
            match hit {
                Some((s, b)) => {
                    let off = cur.since(*s) as usize;
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

    #[test]
    fn out_of_order_segments_serve_a_range_and_trim_frees_them() {
        let mut log = ClientLog::default();
        log.record(SeqNumber(110), b"klmno", false);
        log.record(SeqNumber(100), b"abcdefghij", false);
        log.record(SeqNumber(102), b"cde", false);
        assert_eq!(log.len(), 15);
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
        assert_eq!(log.len(), 15, "the late segment waits behind the early one");
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
