//! Output agreement (README.md, "Output agreement"): every replica digests its own output to
//! the client in fixed blocks of the client's sequence space `S`, tells the other members,
//! and compares what they tell it with the output of the connection's current primary (the
//! bytes the client actually gets).
//!
//! ```text
//!   S:  isn_s+1 ─┬── block 0 ──┬── block 1 ──┬── … ──┬─ last (partial, at FIN) ─┐
//!                 16 KiB         16 KiB                 n bytes, flagged FIN
//! ```
//!
//! A member's block that differs from the primary's is a *mismatch*. What matters for a
//! takeover is that the new primary's bytes line up with what the client already has, so a
//! member is *divergent* (not eligible to take the connection over) when:
//! - a mismatched block is not wholly acknowledged by the client yet (the member would
//!   resend different bytes than the client may hold), or
//! - the latest block compared for it mismatched (its output has not lined up again since
//!   it differed: a different length shifts every later block), or
//! - its final block at FIN differs (its output has a different length or ending).
//!
//! A mismatch wholly inside bytes the client has acknowledged, with a later block matching
//! again (an HTTP `Date:` header that ticked between replicas, same length), leaves the
//! member eligible. A member whose output is one byte longer shifts every later block, so
//! it never matches again and stays divergent.
//!
//! Matching blocks are *attestations*: "this replica vouches for member X's output up to
//! byte n", which `hydractl status` shows per connection.

use std::collections::{BTreeMap, BTreeSet};

use crate::seq::SeqNumber;

/// Block size in bytes of `S`.
pub const BLOCK: u32 = 16 * 1024;

/// Digests kept per member (older ones are forgotten; a comparison needs both sides).
const KEEP: usize = 256;

/// A digest of one block of a replica's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDigest {
    /// Block number from the start of the stream.
    pub index: u32,
    /// Bytes in the block (`BLOCK`, or fewer for the last block at FIN).
    pub len: u32,
    /// The stream ended (FIN) after this block.
    pub fin: bool,
    /// Truncated BLAKE3 of the block's bytes.
    pub digest: [u8; 16],
}

/// One replica's digests of its own output as it produces it, and what it learned about
/// the other members.
#[derive(Debug, Clone)]
pub struct Agreement {
    /// `S` of the first byte (ISN_S + 1).
    base: SeqNumber,
    /// The current block's bytes so far. A block is hashed whole when it is complete:
    /// BLAKE3 hashes a 16 KiB input several 1 KiB chunks at a time (SIMD), but a segment's
    /// worth at a time one 64-byte block after another, several times slower.
    block: Vec<u8>,
    /// Bytes taken so far (hashed, or waiting in `block`).
    hashed: u64,
    done: bool,
    own: BTreeMap<u32, BlockDigest>,
    /// Own blocks not compared with the primary's yet: a comparison visits only these, not
    /// every digest kept.
    own_unchecked: BTreeSet<u32>,
    outbox: Vec<BlockDigest>,
    peers: BTreeMap<u32, BTreeMap<u32, BlockDigest>>,
    /// Per member: blocks that differed from the primary's (index, end in `S`).
    mismatches: BTreeMap<u32, Vec<(u32, SeqNumber, bool)>>,
    /// Per member: end (`S`) of the highest block that matched the primary's.
    attested: BTreeMap<u32, SeqNumber>,
    /// Per member: the highest block compared, and whether it matched.
    latest: BTreeMap<u32, (u32, bool)>,
    /// Blocks compared, and how many differed (for metrics).
    pub compared: u64,
    /// Blocks that differed.
    pub mismatched: u64,
}

impl Agreement {
    /// Starts digesting output whose first byte is `base` in `S`.
    pub fn new(base: SeqNumber) -> Self {
        Agreement {
            base,
            block: Vec::new(),
            hashed: 0,
            done: false,
            own: BTreeMap::new(),
            own_unchecked: BTreeSet::new(),
            outbox: Vec::new(),
            peers: BTreeMap::new(),
            mismatches: BTreeMap::new(),
            attested: BTreeMap::new(),
            latest: BTreeMap::new(),
            compared: 0,
            mismatched: 0,
        }
    }

    fn end_of(&self, d: &BlockDigest) -> SeqNumber {
        self.base
            .plus(d.index.wrapping_mul(BLOCK))
            .plus(d.len + u32::from(d.fin))
    }

    /// This replica's output: `payload` at `seq` (then FIN when `fin`). Bytes already
    /// digested are skipped; output after a gap is ignored (the stack produces its stream
    /// in order, retransmissions only repeat it). Returns whether a block was completed.
    pub fn output(&mut self, seq: SeqNumber, payload: &[u8], fin: bool) -> bool {
        if self.done {
            return false;
        }
        let at = self.base.plus(self.hashed as u32);
        if at.lt(seq) {
            return false;
        }
        let before = self.outbox.len();
        let skip = at.since(seq) as usize;
        let mut rest = payload.get(skip..).unwrap_or(&[]);
        while !rest.is_empty() {
            let in_block = (self.hashed % u64::from(BLOCK)) as usize;
            let n = rest.len().min(BLOCK as usize - in_block);
            self.block.extend_from_slice(&rest[..n]);
            self.hashed += n as u64;
            rest = &rest[n..];
            if self.hashed.is_multiple_of(u64::from(BLOCK)) {
                self.seal_block(BLOCK, false);
            }
        }
        if fin && seq.plus(payload.len() as u32) == self.base.plus(self.hashed as u32) {
            let len = (self.hashed % u64::from(BLOCK)) as u32;
            self.seal_block(len, true);
            self.done = true;
        }
        self.outbox.len() != before
    }

    fn seal_block(&mut self, len: u32, fin: bool) {
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&blake3::hash(&self.block).as_bytes()[..16]);
        self.block.clear();
        let index = if fin {
            (self.hashed / u64::from(BLOCK)) as u32
        } else {
            (self.hashed / u64::from(BLOCK) - 1) as u32
        };
        let d = BlockDigest {
            index,
            len,
            fin,
            digest,
        };
        self.own.insert(index, d);
        self.own_unchecked.insert(index);
        self.forget_own();
        self.outbox.push(d);
    }

    /// Digests to send to the other members.
    pub fn take_outbox(&mut self) -> Vec<BlockDigest> {
        std::mem::take(&mut self.outbox)
    }

    /// A digest from member `from`.
    pub fn peer_digest(&mut self, from: u32, d: BlockDigest) {
        let m = self.peers.entry(from).or_default();
        m.insert(d.index, d);
        if m.len() > KEEP {
            m.pop_first();
        }
    }

    /// Bounds the own digests kept (and so the unchecked ones).
    fn forget_own(&mut self) {
        while self.own.len() > KEEP {
            if let Some((idx, _)) = self.own.pop_first() {
                self.own_unchecked.remove(&idx);
            }
        }
    }

    /// Compares every member's digests with `primary`'s (`me` is this replica, whose
    /// digests are its own) and records matches and mismatches; forgets compared blocks.
    ///
    /// Runs for every digest that arrives, so it visits only what can be new: a peer's
    /// digests go once compared, of our own only those not compared yet are visited (ours
    /// stay: other members compare against them later), and only within the reference's
    /// window.
    pub fn compare(&mut self, me: u32, primary: u32) {
        // The reference is lent out of `self` (it is not changed below) rather than copied.
        let reference = if primary == me {
            std::mem::take(&mut self.own)
        } else {
            match self.peers.get_mut(&primary) {
                Some(m) => std::mem::take(m),
                None => return,
            }
        };
        // Only blocks the reference holds can be compared now, and it holds a window of the
        // newest (`KEEP`): a member that lagged past it left digests below the window that
        // no comparison can use, so the walk covers the window alone.
        let mut results = Vec::new();
        if let (Some(&lo), Some(&hi)) = (reference.keys().next(), reference.keys().next_back()) {
            for (&m, theirs) in self.peers.iter_mut() {
                if m == primary {
                    continue;
                }
                let hits: Vec<u32> = theirs
                    .range(lo..=hi)
                    .map(|(idx, _)| *idx)
                    .filter(|idx| reference.contains_key(idx))
                    .collect();
                for idx in hits {
                    if let (Some(d), Some(r)) = (theirs.remove(&idx), reference.get(&idx)) {
                        // The speaker's output ended inside this block and theirs goes on:
                        // the client got a prefix of the block, which a digest of the whole
                        // cannot vouch for either way. The speaker ended early (issue #14);
                        // that is no fault.
                        if !ended_before(r, &d) {
                            results.push((m, d, *r == d));
                        }
                    }
                }
            }
            if primary != me {
                let hits: Vec<u32> = self
                    .own_unchecked
                    .range(lo..=hi)
                    .copied()
                    .filter(|idx| reference.contains_key(idx))
                    .collect();
                for idx in hits {
                    self.own_unchecked.remove(&idx);
                    if let (Some(d), Some(r)) = (self.own.get(&idx), reference.get(&idx)) {
                        if !ended_before(r, d) {
                            results.push((me, *d, r == d));
                        }
                    }
                }
            }
        }
        if primary == me {
            self.own = reference;
        } else if let Some(m) = self.peers.get_mut(&primary) {
            *m = reference;
        }
        for (m, d, same) in results {
            self.record(m, &d, same);
        }
    }

    fn record(&mut self, m: u32, d: &BlockDigest, same: bool) {
        let end = self.end_of(d);
        self.compared += 1;
        let l = self.latest.entry(m).or_insert((d.index, same));
        if d.index >= l.0 {
            *l = (d.index, same);
        }
        if same {
            let a = self.attested.entry(m).or_insert(end);
            *a = (*a).max(end);
        } else {
            self.mismatched += 1;
            let v = self.mismatches.entry(m).or_default();
            if !v.iter().any(|x| x.0 == d.index) {
                v.push((d.index, end, d.fin));
            }
        }
    }

    /// Whether member `m` must not take the connection over, given the client's ACK.
    pub fn divergent(&self, m: u32, client_ack: Option<SeqNumber>) -> bool {
        let Some(v) = self.mismatches.get(&m) else {
            return false;
        };
        let still = self.latest.get(&m).is_some_and(|l| !l.1);
        still
            || v.iter()
                .any(|&(_, end, fin)| fin || client_ack.is_none_or(|a| a.lt(end)))
    }

    /// Members with any mismatch: (member, byte offset in the output stream where its
    /// first mismatched block starts).
    pub fn mismatches(&self) -> Vec<(u32, u64)> {
        self.mismatches
            .iter()
            .filter_map(|(m, v)| {
                let first = v.iter().map(|x| x.0).min()?;
                Some((*m, u64::from(first) * u64::from(BLOCK)))
            })
            .collect()
    }

    /// Attestations: (member, bytes of its output from the start of the stream up to the
    /// end of its highest block that matched the primary's, FIN counted as one).
    pub fn attested(&self) -> Vec<(u32, u64)> {
        self.attested
            .iter()
            .map(|(m, e)| (*m, u64::from(e.since(self.base))))
            .collect()
    }
}

/// Whether the reference output `r` (the speaker's) ended inside the block `d` covers while
/// `d`'s output goes on past it.
fn ended_before(r: &BlockDigest, d: &BlockDigest) -> bool {
    r.fin && (!d.fin || d.len > r.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(a: &mut Agreement, data: &[u8], fin: bool) {
        for (i, c) in data.chunks(1000).enumerate() {
            let last = (i + 1) * 1000 >= data.len();
            a.output(SeqNumber(1 + (i * 1000) as u32), c, fin && last);
        }
    }

    fn exchange(a: &mut Agreement, a_id: u32, b: &mut Agreement, b_id: u32) {
        for d in a.take_outbox() {
            b.peer_digest(a_id, d);
        }
        for d in b.take_outbox() {
            a.peer_digest(b_id, d);
        }
    }

    #[test]
    fn equal_output_is_attested_block_by_block() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let (mut p, mut b) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        stream(&mut p, &data, true);
        // Retransmitted and overlapping output is digested once.
        b.output(SeqNumber(1), &data[..500], false);
        stream(&mut b, &data, true);
        exchange(&mut p, 1, &mut b, 2);
        p.compare(1, 1);
        b.compare(2, 1);
        assert_eq!(p.attested(), vec![(2, 50_001)]);
        assert_eq!(b.attested(), vec![(2, 50_001)]);
        assert!(p.mismatches().is_empty() && !p.divergent(2, None));
        assert_eq!(p.compared, 4);
    }

    #[test]
    fn one_extra_byte_makes_a_member_divergent_until_the_end() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let mut longer = vec![42u8];
        longer.extend_from_slice(&data);
        let (mut p, mut b) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        stream(&mut p, &data, true);
        stream(&mut b, &longer, true);
        exchange(&mut p, 1, &mut b, 2);
        p.compare(1, 1);
        b.compare(2, 1);
        assert!(p.divergent(2, None));
        assert!(
            p.divergent(2, Some(SeqNumber(1 + 40_001))),
            "the final block differs: divergent even when everything is acknowledged"
        );
        let (mut p2, mut b2) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        stream(&mut p2, &data, false);
        stream(&mut b2, &longer, false);
        exchange(&mut p2, 1, &mut b2, 2);
        p2.compare(1, 1);
        assert!(
            p2.divergent(2, Some(SeqNumber(1 + 40_000))),
            "shifted output never lines up again: divergent though the client acknowledged it"
        );
        assert!(
            b.divergent(2, None),
            "a member knows it differs from the primary"
        );
        assert_eq!(p.mismatches(), vec![(2, 0)]);
    }

    #[test]
    fn a_same_length_difference_the_client_acknowledged_leaves_a_member_eligible() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
        let mut ticked = data.clone();
        ticked[100] ^= 1;
        let (mut p, mut b) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        stream(&mut p, &data[..BLOCK as usize], false);
        stream(&mut b, &ticked[..BLOCK as usize], false);
        exchange(&mut p, 1, &mut b, 2);
        p.compare(1, 1);
        assert!(
            p.divergent(2, Some(SeqNumber(1 + BLOCK))),
            "no block has matched since the difference"
        );
        p.output(SeqNumber(1 + BLOCK), &data[BLOCK as usize..], false);
        b.output(SeqNumber(1 + BLOCK), &ticked[BLOCK as usize..], false);
        exchange(&mut p, 1, &mut b, 2);
        p.compare(1, 1);
        assert!(p.divergent(2, Some(SeqNumber(100))), "not acknowledged yet");
        assert!(!p.divergent(2, Some(SeqNumber(1 + BLOCK))));
        assert_eq!(p.attested(), vec![(2, 2 * u64::from(BLOCK))]);
    }

    #[test]
    fn comparing_as_digests_trickle_in_counts_each_block_once_on_both_sides() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let (mut p, mut b) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        // The backup runs ahead of the primary, then behind; both compare after every piece.
        for (k, piece) in data.chunks(7_000).enumerate() {
            let at = SeqNumber(1 + (k * 7_000) as u32);
            let last = (k + 1) * 7_000 >= data.len();
            b.output(at, piece, last);
            exchange(&mut p, 1, &mut b, 2);
            p.compare(1, 1);
            b.compare(2, 1);
            p.output(at, piece, last);
            exchange(&mut p, 1, &mut b, 2);
            p.compare(1, 1);
            b.compare(2, 1);
        }
        let blocks = data.len().div_ceil(BLOCK as usize) as u64;
        assert_eq!(
            p.compared, blocks,
            "the primary compared each backup block once"
        );
        assert_eq!(
            b.compared, blocks,
            "the backup compared each own block once"
        );
        assert_eq!(p.attested(), vec![(2, 300_001)]);
        assert_eq!(b.attested(), vec![(2, 300_001)]);
        assert!(!p.divergent(2, None) && !b.divergent(2, None));
    }

    #[test]
    fn a_member_that_lagged_past_the_window_is_compared_again_once_it_catches_up() {
        let blocks = KEEP + 50;
        let data: Vec<u8> = (0..blocks * BLOCK as usize)
            .map(|i| (i % 239) as u8)
            .collect();
        let (mut p, mut b) = (Agreement::new(SeqNumber(1)), Agreement::new(SeqNumber(1)));
        let mut watcher = Agreement::new(SeqNumber(1));
        // The primary's digests of every block reach the watcher first...
        stream(&mut p, &data, false);
        for d in p.take_outbox() {
            watcher.peer_digest(1, d);
        }
        watcher.compare(3, 1);
        // ...then the backup's, far behind: its first 50 blocks fell out of the window.
        stream(&mut b, &data, false);
        for d in b.take_outbox() {
            watcher.peer_digest(2, d);
            watcher.compare(3, 1);
        }
        assert_eq!(
            watcher.compared, KEEP as u64,
            "the blocks inside the window, once each"
        );
        assert_eq!(
            watcher.attested(),
            vec![(2, (blocks as u64) * u64::from(BLOCK))]
        );
        assert!(watcher.mismatches().is_empty());
    }
}
