//! The cluster key, sealing (header + MAC) and opening (parse, verify, replay check).
//!
//! The MAC is AES-128-GMAC (AES-GCM with the whole datagram as associated data and nothing
//! encrypted), about ten times cheaper than the keyed BLAKE3 of wire version 3 with AES-NI.
//! GCM must never see one nonce twice under one key, and every daemon of a cluster shares the
//! cluster key, so each sender life seals with a key of its own, derived from the cluster
//! key, its id and its incarnation ([`ClusterKey::life_key`]); the nonce is the datagram's
//! counter, which that life never repeats. A restarted daemon is a new incarnation, so a new
//! key, and its counter starting at 1 again repeats no nonce.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

use crate::ids::{Epoch, Incarnation, ReplicaId, ServiceId};
use crate::wire::{Datagram, Header, MsgType, WireError, HEADER_LEN, MAC_LEN};

/// Bytes in a cluster key.
pub const KEY_LEN: usize = 32;

/// The secret every daemon of one cluster shares; each sender life's datagram MAC key is
/// derived from it ([`ClusterKey::life_key`]).
#[derive(Clone)]
pub struct ClusterKey([u8; KEY_LEN]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is not there or not readable.
    #[error("cannot read cluster key {path}: {source}; create one with `hydractl keygen --out {path}` and copy it to every node")]
    Read {
        /// The key file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("cluster key {path} is not 64 hex digits; create a new one with `hydractl keygen --out {path}`")]
    Format {
        /// The key file.
        path: String,
    },
    /// No randomness for a new key.
    #[error("cannot draw a random key: {0}")]
    Random(String),
}

impl ClusterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        ClusterKey(bytes)
    }

    /// The raw key, for deriving other secrets from it (e.g. the SYN-cookie secret).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, KeyError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(ClusterKey(k))
    }

    /// The key as 64 lowercase hex digits (the key file's format).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits, surrounding whitespace allowed.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 2 * KEY_LEN || !s.is_ascii() {
            return None;
        }
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ClusterKey(k))
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_hex(&text).ok_or(KeyError::Format { path: shown })
    }

    /// The MAC key of one sender life: AES-128 keyed with the first 16 bytes of BLAKE3's
    /// key derivation over the cluster key, the sender's id and its incarnation.
    fn life_key(&self, sender: ReplicaId, life: Incarnation) -> LifeKey {
        let mut material = [0u8; KEY_LEN + 12];
        material[..KEY_LEN].copy_from_slice(&self.0);
        material[KEY_LEN..KEY_LEN + 4].copy_from_slice(&sender.0.to_be_bytes());
        material[KEY_LEN + 4..].copy_from_slice(&life.0.to_be_bytes());
        let derived = blake3::derive_key(LIFE_KEY_CONTEXT, &material);
        // INVARIANT: 16 bytes is the key length AES-128-GCM takes.
        let key = UnboundKey::new(&AES_128_GCM, &derived[..16]).expect("a 16-byte AES key");
        LifeKey(LessSafeKey::new(key))
    }
}

/// The BLAKE3 key-derivation context of the per-life MAC keys (wire version 4).
const LIFE_KEY_CONTEXT: &str = "hydranet 2026-11 datagram mac key, wire version 4";

/// One sender life's MAC key (see the module documentation).
struct LifeKey(LessSafeKey);

impl LifeKey {
    /// The GMAC tag of `data` (header and payload) under the datagram's `counter` as nonce.
    fn mac(&self, counter: u64, data: &[u8]) -> [u8; MAC_LEN] {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let mut out = [0u8; MAC_LEN];
        // Nothing is encrypted, so sealing fails only for more than 64 GiB of input (the
        // GCM bound), which no datagram comes near; the tag then stays zero and the
        // datagram is refused by its receiver.
        if let Ok(tag) = self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(data),
            &mut [],
        ) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }
}

impl std::fmt::Debug for LifeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LifeKey(..)")
    }
}

/// Whom a datagram is for: one daemon in one of its lives, or the members of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    /// The receiving daemon, or [`ReplicaId::ANY`].
    pub id: ReplicaId,
    /// Its life as the sender knows it.
    pub incarnation: Incarnation,
}

impl Receiver {
    /// Every member of the service's view (only for [`MsgType::may_be_group`] types).
    pub const GROUP: Receiver = Receiver {
        id: ReplicaId::ANY,
        incarnation: Incarnation::UNKNOWN,
    };

    /// One daemon in one life.
    pub fn node(id: ReplicaId, incarnation: Incarnation) -> Self {
        Receiver { id, incarnation }
    }
}

/// Builds authenticated datagrams for one sender in one life, numbering them with a strictly
/// increasing counter.
#[derive(Debug)]
pub struct Sealer {
    key: LifeKey,
    sender: ReplicaId,
    incarnation: Incarnation,
    next_counter: std::sync::atomic::AtomicU64,
}

impl Sealer {
    /// A sealer for `sender` in its life `incarnation`; its first datagram carries counter 1.
    ///
    /// Daemons pass the wall clock in nanoseconds at start as the incarnation, so that a
    /// restarted daemon is a newer one (receivers refuse datagrams from older lives).
    pub fn new(key: ClusterKey, sender: ReplicaId, incarnation: Incarnation) -> Self {
        Sealer {
            key: key.life_key(sender, incarnation),
            sender,
            incarnation,
            next_counter: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A sealer whose first datagram carries `counter`: for tests and fuzz targets that
    /// rebuild a given datagram byte for byte.
    pub fn with_first_counter(
        key: ClusterKey,
        sender: ReplicaId,
        incarnation: Incarnation,
        counter: u64,
    ) -> Self {
        let s = Sealer::new(key, sender, incarnation);
        s.next_counter
            .store(counter, std::sync::atomic::Ordering::Relaxed);
        s
    }

    /// This sender's id.
    pub fn sender(&self) -> ReplicaId {
        self.sender
    }

    /// This sender's life.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// Seals `payload` for `to` into `out` (cleared first). Threads may share one sealer:
    /// each datagram still gets its own counter.
    pub fn seal_into(
        &self,
        msg_type: MsgType,
        service: ServiceId,
        epoch: Epoch,
        to: Receiver,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        // The counter is the GCM nonce: each datagram of this life takes a new one.
        let counter = self
            .next_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let header = Header {
            msg_type,
            flags: 0,
            service,
            epoch,
            sender: self.sender,
            receiver: to.id,
            sender_incarnation: self.incarnation,
            receiver_incarnation: to.incarnation,
            counter,
        };
        out.clear();
        out.resize(Header::buffer_len(payload.len()), 0);
        header.emit(&mut out[..HEADER_LEN]);
        out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let mac = self.key.mac(counter, &out[..HEADER_LEN + payload.len()]);
        let n = out.len();
        out[n - MAC_LEN..].copy_from_slice(&mac);
    }

    /// Seals `payload` for `to` into a new buffer.
    pub fn seal(
        &self,
        msg_type: MsgType,
        service: ServiceId,
        epoch: Epoch,
        to: Receiver,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(msg_type, service, epoch, to, payload, &mut out);
        out
    }
}

/// Why a received datagram was dropped; each is a counter in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// Not a datagram of ours (too short, bad magic, version or type).
    #[error("malformed: {0}")]
    Malformed(WireError),
    /// The MAC does not match: forged, corrupted, or keyed with another cluster's key.
    #[error("bad mac")]
    BadMac,
    /// The counter was seen before or is too old for the replay window.
    #[error("replayed")]
    Replay,
    /// Sealed for another daemon, or for a group when its type names one receiver.
    #[error("addressed to another node")]
    Misaddressed,
    /// Sealed for an earlier life of this daemon (recorded before it restarted), or by an
    /// earlier life of its sender (a process that should be dead).
    #[error("from or for an earlier incarnation")]
    Stale,
}

impl DropReason {
    /// A short stable name for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed(_) => "malformed",
            DropReason::BadMac => "bad_mac",
            DropReason::Replay => "replay",
            DropReason::Misaddressed => "misaddressed",
            DropReason::Stale => "stale",
        }
    }
}

/// Checks received datagrams for one daemon in one life: parse, MAC, addressing, then the
/// sender's incarnation and replay window.
#[derive(Debug)]
pub struct Opener {
    key: ClusterKey,
    me: ReplicaId,
    incarnation: Incarnation,
    senders: HashMap<ReplicaId, SenderLife>,
}

/// The newest life of one sender whose datagram opened: its MAC key and replay window.
#[derive(Debug)]
struct SenderLife {
    life: Incarnation,
    key: LifeKey,
    window: ReplayWindow,
}

impl SenderLife {
    fn new(life: Incarnation, key: LifeKey) -> Self {
        SenderLife {
            life,
            key,
            window: ReplayWindow::default(),
        }
    }
}

impl Opener {
    /// An opener for datagrams sealed with `key` for `me` in its life `incarnation`.
    pub fn new(key: ClusterKey, me: ReplicaId, incarnation: Incarnation) -> Self {
        Opener {
            key,
            me,
            incarnation,
            senders: HashMap::new(),
        }
    }

    /// Verifies `bytes`; on success returns the header and the payload.
    ///
    /// Accepted: datagrams for [`ReplicaId::ANY`] whose type may be a group's, and datagrams
    /// for us that name our life (or, for a heartbeat, any life: a host's first words to a
    /// redirector it has not heard from since one of them started). Whether a group datagram's epoch is fresh is
    /// the caller's to check against its views.
    ///
    /// A sender's newer incarnation starts a new replay window; its older ones are refused.
    /// The window only moves for datagrams whose MAC is good, so forged counters cannot push
    /// it forward and lock a real sender out.
    pub fn open<'a>(&mut self, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), DropReason> {
        let d = Datagram::new_checked(bytes).map_err(DropReason::Malformed)?;
        let header = Header::parse(&d).map_err(DropReason::Malformed)?;
        // The key of the sender life the header names: kept for its newest life that opened,
        // derived afresh for any other (kept only once a datagram of it opens, so forged
        // headers cannot fill the table).
        let mut fresh = None;
        let key = match self.senders.get(&header.sender) {
            Some(s) if s.life == header.sender_incarnation => &s.key,
            _ => fresh.insert(self.key.life_key(header.sender, header.sender_incarnation)),
        };
        let expected = key.mac(header.counter, d.authenticated());
        // Compare without an early exit so timing does not reveal how many bytes matched.
        let diff = expected
            .iter()
            .zip(d.mac())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(DropReason::BadMac);
        }
        if header.receiver == ReplicaId::ANY {
            if !header.msg_type.may_be_group() {
                return Err(DropReason::Misaddressed);
            }
        } else if header.receiver != self.me {
            return Err(DropReason::Misaddressed);
        } else if header.receiver_incarnation != self.incarnation {
            // A heartbeat may name another life of ours: the host has not heard from this
            // one yet (it or we just started). The redirector counts it as no liveness and
            // answers with a welcome.
            if header.msg_type != MsgType::Heartbeat {
                return Err(DropReason::Stale);
            }
        }
        let life = header.sender_incarnation;
        let entry = match (self.senders.entry(header.sender), fresh) {
            (Entry::Occupied(o), None) => o.into_mut(),
            (Entry::Occupied(o), Some(_)) if life < o.get().life => return Err(DropReason::Stale),
            (Entry::Occupied(mut o), Some(key)) => {
                // A newer life of the sender: a new key and a new replay window.
                o.insert(SenderLife::new(life, key));
                o.into_mut()
            }
            (Entry::Vacant(v), Some(key)) => v.insert(SenderLife::new(life, key)),
            // Not reached: only a kept sender's datagram is checked with its kept key.
            (Entry::Vacant(_), None) => return Err(DropReason::BadMac),
        };
        if !entry.window.check_and_update(header.counter) {
            return Err(DropReason::Replay);
        }
        let payload = &bytes[HEADER_LEN..bytes.len() - MAC_LEN];
        Ok((header, payload))
    }
}

/// Bits in a replay window: how far behind the newest counter a datagram may arrive.
pub const REPLAY_WINDOW: u64 = 1024;

/// A sliding replay window (RFC 4303 §3.4.3 style) over one sender's counters.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// The highest counter accepted so far, or `None` before the first.
    top: Option<u64>,
    /// Bit `i` set: counter `top - i` was accepted.
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(&self, back: u64) -> bool {
        self.bits[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.bits[(back / 64) as usize] |= 1 << (back % 64);
    }

    fn shift(&mut self, by: u64) {
        if by >= REPLAY_WINDOW {
            self.bits = Default::default();
            return;
        }
        let words = (by / 64) as usize;
        let bits = by % 64;
        let n = self.bits.len();
        for i in (0..n).rev() {
            let src = i.checked_sub(words);
            let lo = src.map_or(0, |s| self.bits[s]);
            let carry = match src.and_then(|s| s.checked_sub(1)) {
                Some(s) if bits > 0 => self.bits[s] >> (64 - bits),
                _ => 0,
            };
            self.bits[i] = if bits == 0 { lo } else { (lo << bits) | carry };
        }
    }

    /// Accepts `counter` once: true if new and inside the window (and records it).
    pub fn check_and_update(&mut self, counter: u64) -> bool {
        match self.top {
            None => {
                self.top = Some(counter);
                self.set(0);
                true
            }
            Some(top) if counter > top => {
                self.shift(counter - top);
                self.top = Some(counter);
                self.set(0);
                true
            }
            Some(top) => {
                let back = top - counter;
                if back >= REPLAY_WINDOW || self.bit(back) {
                    false
                } else {
                    self.set(back);
                    true
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; KEY_LEN])
    }

    const ME: ReplicaId = ReplicaId(1);
    const MY_LIFE: Incarnation = Incarnation(500);

    fn me() -> Receiver {
        Receiver::node(ME, MY_LIFE)
    }

    fn opener() -> Opener {
        Opener::new(key(1), ME, MY_LIFE)
    }

    #[test]
    fn sealed_datagram_opens_once() {
        let s = Sealer::new(key(1), ReplicaId(3), Incarnation(100));
        let mut o = opener();
        let d = s.seal(MsgType::ToHost, ServiceId(9), Epoch(1), me(), b"hello");
        let (h, p) = o.open(&d).unwrap();
        assert_eq!((h.sender, h.counter, p), (ReplicaId(3), 1, &b"hello"[..]));
        assert_eq!(h.sender_incarnation, Incarnation(100));
        assert_eq!(o.open(&d).unwrap_err(), DropReason::Replay);
    }

    #[test]
    fn a_datagram_for_another_node_or_an_earlier_life_is_refused() {
        let s = Sealer::new(key(1), ReplicaId(3), Incarnation(100));
        let mut o = opener();
        let for_h2 = s.seal(
            MsgType::Repair,
            ServiceId(9),
            Epoch(1),
            Receiver::node(ReplicaId(2), MY_LIFE),
            b"x",
        );
        assert_eq!(o.open(&for_h2).unwrap_err(), DropReason::Misaddressed);
        let for_my_last_life = s.seal(
            MsgType::View,
            ServiceId(9),
            Epoch(1),
            Receiver::node(ME, Incarnation(499)),
            b"x",
        );
        assert_eq!(o.open(&for_my_last_life).unwrap_err(), DropReason::Stale);
        // Only a heartbeat may name an unknown or earlier life (a host's first words to us).
        let unknown = Receiver::node(ME, Incarnation::UNKNOWN);
        let view = s.seal(MsgType::View, ServiceId(9), Epoch(1), unknown, b"x");
        assert_eq!(o.open(&view).unwrap_err(), DropReason::Stale);
        let hb = s.seal(MsgType::Heartbeat, ServiceId(0), Epoch(0), unknown, b"x");
        assert!(o.open(&hb).is_ok());
        let earlier = Receiver::node(ME, Incarnation(499));
        let hb = s.seal(MsgType::Heartbeat, ServiceId(0), Epoch(0), earlier, b"x");
        assert!(o.open(&hb).is_ok());
        // Groups are for the ack channel's multicasts and client packets, not for views.
        let group_view = s.seal(MsgType::View, ServiceId(9), Epoch(1), Receiver::GROUP, b"x");
        assert_eq!(o.open(&group_view).unwrap_err(), DropReason::Misaddressed);
        let progress = s.seal(
            MsgType::Progress,
            ServiceId(9),
            Epoch(1),
            Receiver::GROUP,
            b"",
        );
        assert!(o.open(&progress).is_ok());
    }

    #[test]
    fn a_newer_life_of_a_sender_starts_afresh_and_older_lives_are_refused() {
        let old = Sealer::new(key(1), ReplicaId(3), Incarnation(100));
        let new = Sealer::new(key(1), ReplicaId(3), Incarnation(200));
        let mut o = opener();
        let seal = |s: &Sealer| s.seal(MsgType::Progress, ServiceId(9), Epoch(1), me(), b"");
        let recorded = seal(&old);
        assert!(o.open(&seal(&old)).is_ok());
        // The new life's counters start at 1 again: not replays.
        assert!(o.open(&seal(&new)).is_ok());
        assert!(o.open(&seal(&new)).is_ok());
        assert_eq!(o.open(&seal(&old)).unwrap_err(), DropReason::Stale);
        assert_eq!(o.open(&recorded).unwrap_err(), DropReason::Stale);
    }

    /// GCM must never see one nonce (the counter) twice under one key. Each sender life has a
    /// key of its own, so two lives (a restart) or two senders sealing the same bytes with
    /// the same counter give different MACs, and a datagram whose sender or incarnation is
    /// rewritten does not open.
    #[test]
    fn each_sender_life_has_its_own_mac_key() {
        let seal = |sender: u32, life: u64| {
            Sealer::new(key(1), ReplicaId(sender), Incarnation(life)).seal(
                MsgType::Progress,
                ServiceId(9),
                Epoch(1),
                Receiver::GROUP,
                b"same bytes",
            )
        };
        let (a, restarted, other) = (seal(3, 100), seal(3, 101), seal(4, 100));
        let mac = |d: &[u8]| d[d.len() - MAC_LEN..].to_vec();
        assert_ne!(mac(&a), mac(&restarted));
        assert_ne!(mac(&a), mac(&other));
        assert_ne!(mac(&restarted), mac(&other));
        // The same life seals the same bytes alike (the counter is in the header too).
        assert_eq!(a, seal(3, 100));
        let mut o = opener();
        let mut renamed = a.clone();
        renamed[27] = 4; // sender 3 -> 4
        assert_eq!(o.open(&renamed).unwrap_err(), DropReason::BadMac);
        let mut relived = a.clone();
        relived[39] = 101; // incarnation 100 -> 101
        assert_eq!(o.open(&relived).unwrap_err(), DropReason::BadMac);
        // A forged header naming a new life keeps nothing: the real life still opens.
        assert!(o.open(&a).is_ok());
        assert!(o.open(&restarted).is_ok());
        assert!(o.open(&other).is_ok());
    }

    #[test]
    fn forged_flipped_and_truncated_datagrams_are_dropped() {
        let s = Sealer::new(key(1), ReplicaId(3), Incarnation(1));
        let mut o = opener();
        let d = s.seal(MsgType::ToHost, ServiceId(9), Epoch(1), me(), b"payload");
        let forged = Sealer::new(key(2), ReplicaId(3), Incarnation(1)).seal(
            MsgType::ToHost,
            ServiceId(9),
            Epoch(1),
            me(),
            b"payload",
        );
        assert_eq!(o.open(&forged).unwrap_err(), DropReason::BadMac);
        for i in 0..d.len() {
            let mut f = d.clone();
            f[i] ^= 0x10;
            assert!(o.open(&f).is_err(), "flip at byte {i} accepted");
        }
        for n in 0..d.len() {
            assert!(o.open(&d[..n]).is_err(), "truncation to {n} accepted");
        }
        // The real one still opens: failed attempts did not move the window.
        assert!(o.open(&d).is_ok());
    }

    #[test]
    fn key_hex_round_trips_and_rejects_garbage() {
        let k = key(0xab);
        assert_eq!(ClusterKey::from_hex(&k.to_hex()).unwrap().0, k.0);
        assert!(ClusterKey::from_hex("abc").is_none());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_none());
    }

    #[test]
    fn window_accepts_late_but_not_ancient_or_repeated_counters() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_update(5000));
        assert!(w.check_and_update(4990));
        assert!(!w.check_and_update(4990));
        assert!(!w.check_and_update(5000 - REPLAY_WINDOW));
        assert!(w.check_and_update(5000 - REPLAY_WINDOW + 1));
        assert!(w.check_and_update(1_000_000));
        assert!(!w.check_and_update(5000));
    }

    proptest! {
        /// Model check: the window answers like a set of everything accepted, restricted to
        /// the last REPLAY_WINDOW counters below the highest.
        #[test]
        fn window_matches_a_set_model(ops in proptest::collection::vec(0u64..3000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut top: Option<u64> = None;
            for c in ops {
                let expect = match top {
                    Some(t) if c <= t => t - c < REPLAY_WINDOW && !seen.contains(&c),
                    _ => true,
                };
                prop_assert_eq!(w.check_and_update(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
