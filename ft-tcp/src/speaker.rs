//! Who speaks for a connection, decided in one place: the view authority (the redirector).
//!
//! In an ft service the members of a view hold every connection; one of them speaks for each.
//! The speaker of a connection is the first member of the current view that the authority
//! has not *excluded* from it:
//!
//! ```text
//!   speaker(c) = first m in view.members such that m is not in excluded(c)
//! ```
//!
//! A connection has no record here until a member is excluded from it, so a connection
//! nobody left costs nothing and its speaker is the view's primary. A member is excluded
//! when it asks for itself (its backend reset, it ended early, it hands the connection on)
//! or when the connection's speaker asks (the member stalls, its output differs, it never
//! had the connection). Exclusions only grow. The authority answers every accepted request
//! with a *notice* (the whole excluded list) to every member of the view, repeated with
//! backoff until each member acknowledges the list's length. So:
//!
//! - every member computes the same speaker from the same view and the same list, and the
//!   redirector admits the connection's return packets from that member only: two members
//!   that disagree for a moment cannot both reach the client;
//! - a member learns it was dropped from the authority, not from a peer's message that may
//!   be lost, and never speaks for the connection again;
//! - a speaker stops counting a member in its ACK gate only once the authority confirmed
//!   the exclusion: from then on no view can make that member the speaker.
//!
//! Sans-IO: `now` comes in, notices to send come out ([`SpeakerBook::poll_notices`]).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::ft::PeerId;
use crate::packet::{FlowKey, TcpMeta};
use crate::seq::SeqNumber;

/// First wait before a notice is sent again to a member that did not acknowledge it.
const NOTICE_RETRY: Duration = Duration::from_millis(20);
/// Longest wait between notices to one member.
const NOTICE_RETRY_MAX: Duration = Duration::from_secs(1);
/// Most members excluded from one connection (a view never has more members than this).
pub const MAX_EXCLUDED: usize = 32;
/// A record stays this long after both directions' FINs passed: the last retransmissions of
/// a close still go by the connection's speaker.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// A client's SYN for a connection whose record saw no packet for this long starts a new
/// connection on the same 4-tuple (the client reused its port); the old record goes. Linux
/// picks client ports at random: with 60 s, a soak's client reused the port of a connection
/// whose record had not seen both FINs, and the old exclusions fenced the new connection's
/// SYN-ACK on every retry until its connect timed out (counted by
/// `BookStats::syn_on_open_record`). A forged SYN can end the record of a connection idle
/// this long; its members have had the notices long since. A reused port on a record in
/// use meets [`SpeakerBook::admit`]'s handshake rule instead.
pub const SYN_REUSE_IDLE: Duration = Duration::from_secs(5);

/// Why the authority refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The requester is not a member of the service's current view.
    #[error("the requester is not a member of the current view")]
    NotMember,
    /// The requester asked to exclude another member without being the connection's speaker.
    #[error("only a member itself or the connection's speaker may exclude it")]
    NotSpeaker,
    /// The book holds its maximum number of connections.
    #[error("the exclusion table is full")]
    Full,
    /// The connection already has the most exclusions a record holds.
    #[error("too many members excluded from one connection")]
    TooMany,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookStats {
    /// Requests that excluded a member.
    pub excluded: u64,
    /// Requests for a member already excluded (answered with a notice again).
    pub repeated: u64,
    /// Requests refused, by reason.
    pub refused_not_member: u64,
    /// See [`Refused::NotSpeaker`].
    pub refused_not_speaker: u64,
    /// See [`Refused::Full`] and [`Refused::TooMany`].
    pub refused_full: u64,
    /// Notices sent (first sends and repeats).
    pub notices: u64,
    /// Records that expired idle.
    pub expired: u64,
    /// Client SYNs on the 4-tuple of a record still in use: kept (the SYN may be forged)
    /// until the handshake it starts completes (see `reused_ports`).
    pub syn_on_open_record: u64,
    /// Records that went because a new connection's handshake on their 4-tuple completed:
    /// the view's primary answered the client's SYN, and the client acknowledged that answer.
    pub reused_ports: u64,
}

/// A client's SYN on the 4-tuple of a record in use, and the view primary's SYN-ACK to it.
#[derive(Debug, Clone, Copy)]
struct Reuse {
    /// The SYN's sequence number.
    syn: SeqNumber,
    /// The SYN-ACK's sequence number (the new connection's ISN), once one passed.
    isn: Option<SeqNumber>,
}

/// One member still to acknowledge a connection's list: when to send it again, and the
/// wait after that.
#[derive(Debug, Clone, Copy)]
struct Pending {
    member: PeerId,
    at: Instant,
    wait: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Members excluded, in the order they were.
    excluded: Vec<PeerId>,
    /// Members of the view that have not acknowledged the whole list yet.
    pending: Vec<Pending>,
    /// Last packet of the connection seen, or last change.
    touched: Instant,
    /// A FIN passed from the client, and from the speaker.
    fin_in: bool,
    fin_out: bool,
    /// When both had (the record goes [`CLOSE_LINGER`] later).
    closed_at: Option<Instant>,
    /// A new connection starting on the 4-tuple (the client reused its port).
    reuse: Option<Reuse>,
}

/// The authority's record of exclusions, per connection.
#[derive(Debug)]
pub struct SpeakerBook {
    entries: HashMap<FlowKey, Entry>,
    /// Connections with a member still to acknowledge.
    unacked: BTreeSet<FlowKey>,
    capacity: usize,
    /// Counters.
    pub stats: BookStats,
}

impl SpeakerBook {
    /// An empty book that keeps at most `capacity` connections with exclusions.
    pub fn new(capacity: usize) -> Self {
        SpeakerBook {
            entries: HashMap::new(),
            unacked: BTreeSet::new(),
            capacity,
            stats: BookStats::default(),
        }
    }

    /// Connections with at least one exclusion.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection has an exclusion.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The members excluded from a connection.
    pub fn excluded(&self, key: &FlowKey) -> &[PeerId] {
        self.entries.get(key).map_or(&[], |e| &e.excluded)
    }

    /// The member that speaks for `key` given the view's `members` (primary first), if any.
    pub fn speaker(&self, key: &FlowKey, members: &[PeerId]) -> Option<PeerId> {
        speaker_of(members, self.excluded(key))
    }

    /// Whether `sender` may speak for `key` now.
    pub fn may_speak(&self, key: &FlowKey, members: &[PeerId], sender: PeerId) -> bool {
        self.speaker(key, members) == Some(sender)
    }

    /// A packet of the connection passed (from the client: `inbound`; otherwise from its
    /// speaker, admitted): its record is in use, and ends with the connection. A reset either
    /// way ends it at once; FINs both ways end it after [`CLOSE_LINGER`]; a client's SYN on a
    /// record that saw both FINs, or no packet for [`SYN_REUSE_IDLE`], is a new connection
    /// on a reused port and the old record goes (its exclusions would fence the new
    /// connection's speaker). A SYN for a connection in use ends nothing (it may be forged):
    /// it is remembered, and the record goes only once the client acknowledges the view
    /// primary's answer to it ([`SpeakerBook::admit`]), which an attacker off the path
    /// cannot do: it never sees the answer's sequence number.
    pub fn on_segment(&mut self, now: Instant, key: &FlowKey, inbound: bool, seg: &TcpMeta) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        let flags = seg.flags;
        let syn = inbound && flags.syn && !flags.ack;
        let reused = syn
            && (e.closed_at.is_some()
                || now.saturating_duration_since(e.touched) >= SYN_REUSE_IDLE);
        let handshake_done = inbound
            && !flags.syn
            && flags.ack
            && e.reuse.is_some_and(|r| {
                r.isn.is_some_and(|isn| SeqNumber(seg.ack) == isn.plus(1))
                    && SeqNumber(seg.seq) == r.syn.plus(1)
            });
        if handshake_done {
            self.stats.reused_ports += 1;
        }
        if flags.rst || reused || handshake_done {
            self.forget(key);
            return;
        }
        if syn {
            // Not a packet of the connection: it does not keep the record in use.
            self.stats.syn_on_open_record += 1;
            if e.reuse.is_none_or(|r| r.syn != SeqNumber(seg.seq)) {
                e.reuse = Some(Reuse {
                    syn: SeqNumber(seg.seq),
                    isn: None,
                });
            }
            return;
        }
        e.touched = now;
        if flags.fin {
            if inbound {
                e.fin_in = true;
            } else {
                e.fin_out = true;
            }
            if e.fin_in && e.fin_out && e.closed_at.is_none() {
                e.closed_at = Some(now);
            }
        }
    }

    /// The return-path check, with one lookup: whether `sender` speaks for `key` among the
    /// view's `members` (ids, primary first); if it does, its packet counts as
    /// [`SpeakerBook::on_segment`] says (a reset or a close ends the record).
    ///
    /// One more packet passes: the view primary's SYN-ACK to a client SYN that came while
    /// the record was in use. The primary answers a SYN only when it holds no connection of
    /// the 4-tuple it could speak for, so the client reused its port; the old record's
    /// exclusions must not fence the new connection's handshake. The record stays until the
    /// client acknowledges that SYN-ACK ([`SpeakerBook::on_segment`]).
    pub fn admit(
        &mut self,
        now: Instant,
        key: &FlowKey,
        members: impl Iterator<Item = PeerId>,
        sender: PeerId,
        seg: &TcpMeta,
    ) -> bool {
        let mut members = members.peekable();
        let Some(e) = self.entries.get_mut(key) else {
            return members.next() == Some(sender);
        };
        let first = members.peek().copied();
        if let (Some(r), true, true, true) = (
            e.reuse.as_mut(),
            first == Some(sender),
            seg.flags.syn && seg.flags.ack,
            !seg.flags.rst,
        ) {
            if SeqNumber(seg.ack) == r.syn.plus(1) {
                r.isn = Some(SeqNumber(seg.seq));
                return true;
            }
        }
        if members.find(|m| !e.excluded.contains(m)) != Some(sender) {
            return false;
        }
        self.on_segment(now, key, false, seg);
        true
    }

    /// The connection ended (a reset passed): its record may go.
    pub fn forget(&mut self, key: &FlowKey) {
        self.entries.remove(key);
        self.unacked.remove(key);
    }

    /// Member `from` of the view `members` asks to exclude `member` from connection `key`.
    /// Accepted from the member itself or from the connection's speaker. Every member of the
    /// view gets a notice (the requester too, also when the member was already excluded: its
    /// notice may have been lost). `Ok(true)` when the member was newly excluded.
    pub fn handle_request(
        &mut self,
        now: Instant,
        from: PeerId,
        key: FlowKey,
        member: PeerId,
        members: &[PeerId],
    ) -> Result<bool, Refused> {
        let r = self.request(now, from, key, member, members);
        match r {
            Ok(true) => self.stats.excluded += 1,
            Ok(false) => self.stats.repeated += 1,
            Err(Refused::NotMember) => self.stats.refused_not_member += 1,
            Err(Refused::NotSpeaker) => self.stats.refused_not_speaker += 1,
            Err(Refused::Full | Refused::TooMany) => self.stats.refused_full += 1,
        }
        r
    }

    fn request(
        &mut self,
        now: Instant,
        from: PeerId,
        key: FlowKey,
        member: PeerId,
        members: &[PeerId],
    ) -> Result<bool, Refused> {
        if !members.contains(&from) {
            return Err(Refused::NotMember);
        }
        if let Some(e) = self.entries.get_mut(&key) {
            if e.excluded.contains(&member) {
                e.touched = now;
                schedule(e, from, now);
                self.unacked.insert(key);
                return Ok(false);
            }
        }
        if member != from && self.speaker(&key, members) != Some(from) {
            return Err(Refused::NotSpeaker);
        }
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            return Err(Refused::Full);
        }
        let e = self.entries.entry(key).or_insert_with(|| Entry {
            excluded: Vec::new(),
            pending: Vec::new(),
            touched: now,
            fin_in: false,
            fin_out: false,
            closed_at: None,
            reuse: None,
        });
        if e.excluded.len() >= MAX_EXCLUDED {
            return Err(Refused::TooMany);
        }
        e.excluded.push(member);
        e.touched = now;
        // Everyone in the view learns the new list, at once.
        e.pending.clear();
        for m in members {
            schedule(e, *m, now);
        }
        self.unacked.insert(key);
        Ok(true)
    }

    /// Member `from` acknowledges the first `count` exclusions of `key`.
    pub fn handle_ack(&mut self, from: PeerId, key: &FlowKey, count: usize) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if count >= e.excluded.len() {
            e.pending.retain(|p| p.member != from);
        }
        if e.pending.is_empty() {
            self.unacked.remove(key);
        }
    }

    /// Notices due now: (member, connection, excluded list). `members_of` gives a service's
    /// current view. A member out of the view is told once it is back (a host partitioned
    /// from the authority keeps the connections it had, and must learn that it left them),
    /// so its notice stays due, on the same backoff, until it acknowledges or the record
    /// expires.
    pub fn poll_notices<'a>(
        &mut self,
        now: Instant,
        members_of: impl Fn(&FlowKey) -> Option<&'a [PeerId]>,
    ) -> Vec<(PeerId, FlowKey, Vec<PeerId>)> {
        let mut out = Vec::new();
        let mut settled = Vec::new();
        for key in &self.unacked {
            let Some(e) = self.entries.get_mut(key) else {
                settled.push(*key);
                continue;
            };
            let members = members_of(key).unwrap_or(&[]);
            for p in e.pending.iter_mut().filter(|p| now >= p.at) {
                if members.contains(&p.member) {
                    out.push((p.member, *key, e.excluded.clone()));
                }
                p.at = now + p.wait;
                p.wait = (p.wait * 2).min(NOTICE_RETRY_MAX);
            }
            if e.pending.is_empty() {
                settled.push(*key);
            }
        }
        for k in settled {
            self.unacked.remove(&k);
        }
        self.stats.notices += out.len() as u64;
        out
    }

    /// When [`SpeakerBook::poll_notices`] has something to send next.
    pub fn poll_at(&self) -> Option<Instant> {
        self.unacked
            .iter()
            .filter_map(|k| self.entries.get(k))
            .flat_map(|e| e.pending.iter().map(|p| p.at))
            .min()
    }

    /// Drops records of connections idle for `idle` (longer than any connection lives
    /// without a packet: keep-alives touch it).
    pub fn expire(&mut self, now: Instant, idle: Duration) {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            now.saturating_duration_since(e.touched) < idle
                && e.closed_at.is_none_or(|t| now < t + CLOSE_LINGER)
        });
        let entries = &self.entries;
        self.unacked.retain(|k| entries.contains_key(k));
        self.stats.expired += (before - self.entries.len()) as u64;
    }
}

fn schedule(e: &mut Entry, member: PeerId, now: Instant) {
    match e.pending.iter_mut().find(|p| p.member == member) {
        Some(p) => {
            p.at = now;
            p.wait = NOTICE_RETRY;
        }
        None => e.pending.push(Pending {
            member,
            at: now,
            wait: NOTICE_RETRY,
        }),
    }
}

/// The speaker rule, shared by the authority and the members: the first member of the view
/// (primary first) not excluded.
pub fn speaker_of(members: &[PeerId], excluded: &[PeerId]) -> Option<PeerId> {
    members.iter().copied().find(|m| !excluded.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), port),
            service: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 80),
        }
    }

    const VIEW: &[PeerId] = &[1, 2, 3];

    /// Any instant: the book only compares them.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_speaker_is_the_first_member_not_excluded() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
        assert_eq!(b.handle_request(t, 1, key(1), 1, VIEW), Ok(true));
        assert_eq!(b.speaker(&key(1), VIEW), Some(2));
        assert!(b.may_speak(&key(1), VIEW, 2));
        assert!(!b.may_speak(&key(1), VIEW, 1));
        // Other connections are not affected.
        assert_eq!(b.speaker(&key(2), VIEW), Some(1));
        // A view without 2 makes 3 the speaker; excluded 1 never comes back.
        assert_eq!(b.speaker(&key(1), &[1, 3]), Some(3));
    }

    #[test]
    fn only_the_member_itself_or_the_speaker_may_exclude() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        // 3 is not the speaker: it may not drop 2.
        assert_eq!(
            b.handle_request(t, 3, key(1), 2, VIEW),
            Err(Refused::NotSpeaker)
        );
        // A node outside the view may not even drop itself.
        assert_eq!(
            b.handle_request(t, 9, key(1), 9, VIEW),
            Err(Refused::NotMember)
        );
        // The speaker may.
        assert_eq!(b.handle_request(t, 1, key(1), 2, VIEW), Ok(true));
        assert_eq!(b.excluded(&key(1)), &[2]);
        // After 1 leaves, 3 speaks and may drop others.
        assert_eq!(b.handle_request(t, 1, key(1), 1, VIEW), Ok(true));
        assert_eq!(b.speaker(&key(1), VIEW), Some(3));
        assert_eq!(b.stats.refused_not_speaker, 1);
        assert_eq!(b.stats.refused_not_member, 1);
    }

    #[test]
    fn every_member_is_told_until_it_acknowledges() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        b.handle_request(t, 2, key(1), 2, VIEW).unwrap();
        let n = b.poll_notices(t, |_| Some(VIEW));
        assert_eq!(n.len(), 3);
        assert!(n.iter().all(|(_, k, l)| *k == key(1) && l == &vec![2]));
        // Nothing more until the retry is due.
        assert!(b.poll_notices(t, |_| Some(VIEW)).is_empty());
        b.handle_ack(1, &key(1), 1);
        b.handle_ack(2, &key(1), 1);
        // A stale acknowledgement (of an older, shorter list) does not count.
        b.handle_ack(3, &key(1), 0);
        let later = t + NOTICE_RETRY;
        let n = b.poll_notices(later, |_| Some(VIEW));
        assert_eq!(n.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3]);
        // The wait doubles.
        assert!(b
            .poll_notices(later + NOTICE_RETRY, |_| Some(VIEW))
            .is_empty());
        assert_eq!(b.poll_at(), Some(later + 2 * NOTICE_RETRY));
        // 3 leaves the view (a partition): it is not sent to meanwhile...
        let away = later + 2 * NOTICE_RETRY;
        assert!(b.poll_notices(away, |_| Some(&[1, 2])).is_empty());
        // ...and is told once it is back, within the backoff.
        let back = away + 4 * NOTICE_RETRY;
        assert_eq!(
            b.poll_notices(back, |_| Some(VIEW)),
            vec![(3, key(1), vec![2])]
        );
        b.handle_ack(3, &key(1), 1);
        assert_eq!(b.poll_at(), None);
    }

    #[test]
    fn a_repeated_request_is_answered_again() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        b.handle_request(t, 1, key(1), 2, VIEW).unwrap();
        b.poll_notices(t, |_| Some(VIEW));
        for m in VIEW {
            b.handle_ack(*m, &key(1), 1);
        }
        assert_eq!(b.poll_at(), None);
        // The requester never saw its notice (the ack was someone else's); it asks again.
        assert_eq!(b.handle_request(t, 1, key(1), 2, VIEW), Ok(false));
        let n = b.poll_notices(t, |_| Some(VIEW));
        assert_eq!(n, vec![(1, key(1), vec![2])]);
        assert_eq!(b.stats.repeated, 1);
    }

    #[test]
    fn the_table_is_bounded_and_idle_records_expire() {
        let mut b = SpeakerBook::new(2);
        let t = t0();
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        b.handle_request(t, 1, key(2), 1, VIEW).unwrap();
        assert_eq!(b.handle_request(t, 1, key(3), 1, VIEW), Err(Refused::Full));
        // A record already there still takes more.
        assert_eq!(b.handle_request(t, 2, key(1), 2, VIEW), Ok(true));
        b.on_segment(
            t + Duration::from_secs(5),
            &key(2),
            true,
            &seg(false, false, false, false),
        );
        b.expire(t + Duration::from_secs(8), Duration::from_secs(6));
        assert_eq!(b.len(), 1);
        assert_eq!(b.excluded(&key(2)), &[1]);
        assert_eq!(b.stats.expired, 1);
        assert_eq!(b.handle_request(t, 1, key(3), 1, VIEW), Ok(true));
        b.forget(&key(3));
        assert!(b.excluded(&key(3)).is_empty());
    }

    /// A segment of connection `key(1)` (the addresses do not matter to the book).
    fn seg(syn: bool, ack: bool, fin: bool, rst: bool) -> TcpMeta {
        numbered(syn, ack, fin, rst, 1000, 5000)
    }

    fn numbered(syn: bool, ack: bool, fin: bool, rst: bool, seq: u32, ackn: u32) -> TcpMeta {
        let k = key(1);
        TcpMeta {
            src: k.client,
            dst: k.service,
            flags: crate::packet::TcpFlags { syn, ack, fin, rst },
            payload_len: 0,
            seq,
            ack: ackn,
        }
    }

    #[test]
    fn a_record_ends_with_its_connection_and_never_fences_a_new_one_on_the_same_port() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        // A reset either way ends it.
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        b.on_segment(t, &key(1), true, &seg(false, true, false, true));
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
        // FINs both ways end it after the linger; until then the speaker is still 2.
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        b.on_segment(t, &key(1), true, &seg(false, true, true, false));
        b.on_segment(t, &key(1), false, &seg(false, true, true, false));
        b.expire(t + CLOSE_LINGER / 2, Duration::from_secs(3600));
        assert_eq!(b.speaker(&key(1), VIEW), Some(2));
        b.expire(t + CLOSE_LINGER, Duration::from_secs(3600));
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
        // A client SYN on a closed record is a new connection on a reused port.
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        b.on_segment(t, &key(1), true, &seg(false, true, true, false));
        b.on_segment(t, &key(1), false, &seg(false, true, true, false));
        b.on_segment(t, &key(1), true, &seg(true, false, false, false));
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
        // A SYN on a connection in use is ignored (it may be forged)...
        b.handle_request(t, 1, key(2), 1, VIEW).unwrap();
        b.on_segment(t, &key(2), true, &seg(true, false, false, false));
        assert_eq!(b.speaker(&key(2), VIEW), Some(2));
        assert_eq!(b.stats.syn_on_open_record, 1, "and counted");
        // ...unless the connection was idle long enough for the port to be reused.
        let later = t + SYN_REUSE_IDLE;
        b.on_segment(later, &key(2), true, &seg(true, false, false, false));
        assert_eq!(b.speaker(&key(2), VIEW), Some(1));
    }

    #[test]
    fn a_reused_port_gets_its_handshake_through_an_old_record_in_use() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        // Member 1 (the view's primary) was excluded from the old connection; 2 speaks.
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        b.on_segment(t, &key(1), true, &seg(false, true, false, false));
        // The client reused its port: a SYN, and the primary's SYN-ACK to it.
        let syn = numbered(true, false, false, false, 7000, 0);
        b.on_segment(t, &key(1), true, &syn);
        assert_eq!(b.stats.syn_on_open_record, 1);
        let vm = || VIEW.iter().copied();
        // Only the view's primary's SYN-ACK to that very SYN passes.
        let wrong_ack = numbered(true, true, false, false, 90_000, 7002);
        assert!(!b.admit(t, &key(1), vm(), 1, &wrong_ack));
        let synack = numbered(true, true, false, false, 90_000, 7001);
        assert!(!b.admit(t, &key(1), vm(), 3, &synack), "not from a backup");
        assert!(b.admit(t, &key(1), vm(), 1, &synack));
        // Its data does not pass yet: the client has not acknowledged the SYN-ACK, and the
        // old connection's speaker is still 2.
        let data = numbered(false, true, false, false, 90_001, 7001);
        assert!(!b.admit(t, &key(1), vm(), 1, &data));
        assert_eq!(b.speaker(&key(1), VIEW), Some(2));
        // An ACK that does not acknowledge the SYN-ACK (the old connection's, or a guess)
        // ends nothing.
        let old_ack = numbered(false, true, false, false, 1000, 5000);
        b.on_segment(t, &key(1), true, &old_ack);
        assert_eq!(b.speaker(&key(1), VIEW), Some(2));
        // The client's handshake ACK: the new connection is on, the old record goes.
        let ack = numbered(false, true, false, false, 7001, 90_001);
        b.on_segment(t, &key(1), true, &ack);
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
        assert!(b.admit(t, &key(1), vm(), 1, &data));
        assert_eq!(b.stats.reused_ports, 1);
    }

    #[test]
    fn a_forged_syn_on_a_record_in_use_ends_nothing_without_the_handshake_ack() {
        let mut b = SpeakerBook::new(16);
        let t = t0();
        b.handle_request(t, 1, key(1), 1, VIEW).unwrap();
        let syn = numbered(true, false, false, false, 7000, 0);
        b.on_segment(t, &key(1), true, &syn);
        // Only the view's primary answers a new connection's SYN: a SYN-ACK from another
        // member is no handshake of one.
        let synack = numbered(true, true, false, false, 90_000, 7001);
        assert!(!b.admit(t, &key(1), VIEW.iter().copied(), 3, &synack));
        // Repeated SYNs do not keep the record in use (the connection's packets do)...
        for i in 1..4 {
            b.on_segment(t + Duration::from_secs(i), &key(1), true, &syn);
        }
        assert_eq!(b.speaker(&key(1), VIEW), Some(2));
        assert_eq!(b.stats.reused_ports, 0);
        // ...so a SYN once the record's connection was idle long enough ends it.
        b.on_segment(t + SYN_REUSE_IDLE, &key(1), true, &syn);
        assert_eq!(b.speaker(&key(1), VIEW), Some(1));
    }
}
