//! The shadow queue: a replica's output to the client that the client has not acknowledged,
//! kept in the client's sequence space `S` on every replica. It serves promotion (a new
//! primary resends it at once) and the FT layer's own fast retransmission.

use std::collections::VecDeque;

use crate::seq::SeqNumber;

/// Unacknowledged output bytes from `base`, optionally followed by FIN.
#[derive(Debug, Clone)]
pub struct ShadowQueue {
    base: SeqNumber,
    data: VecDeque<u8>,
    fin: bool,
}

impl ShadowQueue {
    /// An empty queue whose first byte will be `base` (ISN_S + 1).
    pub fn new(base: SeqNumber) -> Self {
        ShadowQueue {
            base,
            data: VecDeque::new(),
            fin: false,
        }
    }

    /// First unacknowledged sequence number.
    pub fn base(&self) -> SeqNumber {
        self.base
    }

    /// Sequence number after the last byte held (after FIN when it is held).
    pub fn end(&self) -> SeqNumber {
        self.base.plus(self.data.len() as u32 + u32::from(self.fin))
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Nothing held (no bytes, no FIN).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty() && !self.fin
    }

    /// Whether FIN is held.
    pub fn has_fin(&self) -> bool {
        self.fin
    }

    /// Records output `payload` at `seq` (then FIN if `fin`). Bytes already held or already
    /// acknowledged are skipped; output after a gap is refused (returns false) since the
    /// stream must stay contiguous.
    pub fn push(&mut self, seq: SeqNumber, payload: &[u8], fin: bool) -> bool {
        let data_end = self.base.plus(self.data.len() as u32);
        if data_end.lt(seq) {
            return false;
        }
        let skip = data_end.since(seq) as usize;
        if skip < payload.len() {
            if self.fin {
                // Bytes after our FIN: the stream disagrees with itself; refuse.
                return false;
            }
            self.data.extend(&payload[skip..]);
        }
        if fin && seq.plus(payload.len() as u32) == self.base.plus(self.data.len() as u32) {
            self.fin = true;
        }
        true
    }

    /// The client acknowledged everything before `ack`.
    pub fn ack(&mut self, ack: SeqNumber) {
        if !self.base.lt(ack) {
            return;
        }
        let n = ack.since(self.base) as usize;
        let drop = n.min(self.data.len());
        self.data.drain(..drop);
        self.base = self.base.plus(drop as u32);
        if n > drop && self.fin {
            self.fin = false;
            self.base = self.base.plus(1);
        } else if n > drop {
            // The client acknowledged bytes this replica has not produced yet (it lags the
            // one that sent them): start the queue at the client's ACK.
            self.base = ack;
        }
    }

    /// Up to `max` bytes from `from` (clamped into the queue), and whether FIN follows them.
    pub fn slice(&self, from: SeqNumber, max: usize) -> (SeqNumber, Vec<u8>, bool) {
        let from = from.max(self.base);
        let off = from.since(self.base) as usize;
        let off = off.min(self.data.len());
        let n = (self.data.len() - off).min(max);
        let bytes: Vec<u8> = self.data.range(off..off + n).copied().collect();
        let fin = self.fin && off + n == self.data.len();
        (self.base.plus(off as u32), bytes, fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_output_is_kept_once_and_acks_trim() {
        let mut q = ShadowQueue::new(SeqNumber(100));
        assert!(q.push(SeqNumber(100), b"hello", false));
        assert!(q.push(SeqNumber(103), b"lo world", false));
        assert_eq!(q.slice(SeqNumber(0), 100).1, b"hello world");
        q.ack(SeqNumber(106));
        assert_eq!(
            q.slice(SeqNumber(0), 3),
            (SeqNumber(106), b"wor".to_vec(), false)
        );
        assert!(!q.push(SeqNumber(200), b"gap", false));
        assert!(q.push(SeqNumber(111), b"", true));
        assert_eq!(q.end(), SeqNumber(112));
        assert_eq!(
            q.slice(SeqNumber(108), 100),
            (SeqNumber(108), b"rld".to_vec(), true)
        );
        q.ack(SeqNumber(112));
        assert!(q.is_empty());
        assert_eq!(q.base(), SeqNumber(112));
    }

    #[test]
    fn a_lagging_replica_starts_at_the_clients_ack() {
        let mut q = ShadowQueue::new(SeqNumber(1));
        q.push(SeqNumber(1), b"ab", false);
        q.ack(SeqNumber(10));
        assert_eq!(q.base(), SeqNumber(10));
        assert!(q.push(SeqNumber(3), b"cdefghijkl", false));
        assert_eq!(q.slice(SeqNumber(0), 100).1, b"jkl");
    }
}
