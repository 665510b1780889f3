//! SYN cookies: a host answers every SYN without keeping any state, and builds the
//! connection only when the client's handshake ACK proves the client exists (RFC 4987 §3.6).
//!
//! Why always, not only under pressure as Linux does: smoltcp allocates a connection's socket
//! buffers when the socket is made, and a socket must see the SYN, so the only way to spend
//! nothing on a SYN is not to hand it to smoltcp at all. When the ACK arrives the host replays
//! the SYN (rebuilt from the cookie) into a fresh endpoint and translates sequence numbers by
//! the difference between the cookie and the endpoint's own ISN (`delta`), which the FT layer
//! does for every connection anyway.
//!
//! What Linux loses with cookies, this encoding keeps: the client's MSS (one of four values),
//! its window scale and SACK-permitted. Timestamps are never used: replicas would send
//! different TSvals, and one going backwards after a failover makes Linux drop segments (PAWS).
//!
//! Every replica derives the same secret from the cluster key, so a cookie the primary issued
//! validates on every backup: all replicas learn the ISN the client saw from the ACK itself.
//!
//! Layout of the 32-bit ISN, most significant bit first:
//!
//! ```text
//!  31..30  29..28   27..24         23    22..0
//! +------+--------+--------------+-----+------------------------------------------+
//! | time | mss ix | client wscale| sack| keyed hash (4-tuple, client ISN, time,   |
//! | & 3  |        | (15: none)   |     |  and the 9 option bits)                  |
//! +------+--------+--------------+-----+------------------------------------------+
//! ```
//!
//! `time` counts 64 s periods of wall-clock time; a cookie is valid in the period it was made
//! and the next one (64 to 128 s), so replicas whose clocks differ by less than a period agree.

use std::net::SocketAddrV4;

use etherparse::{PacketBuilder, TcpOptionElement};

use crate::packet::FlowKey;
use crate::rewrite::Seg;
use crate::seq::SeqNumber;

/// MSS values a cookie can carry: the client's MSS is rounded down to one of them (the
/// values Linux uses for IPv4, plus a jumbo-free LAN value).
const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// Seconds per time period.
const PERIOD_SECS: u64 = 64;
const HASH_BITS: u32 = 23;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;

/// The TCP options of a client's SYN that a cookie keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynOpts {
    /// The client's MSS, rounded down to a value the cookie can carry.
    pub mss: u16,
    /// The client's window scale, if it offered one.
    pub wscale: Option<u8>,
    /// Whether the client offered SACK.
    pub sack: bool,
}

impl SynOpts {
    /// The options of a client's SYN (no MSS option: RFC 9293's default 536).
    pub fn of_syn(seg: &Seg) -> SynOpts {
        let mss = seg.mss.unwrap_or(536);
        let ix = MSS_TABLE.iter().rposition(|m| *m <= mss).unwrap_or(0);
        SynOpts {
            mss: MSS_TABLE[ix],
            wscale: seg.wscale.map(|w| w.min(14)),
            sack: seg.sack_permitted,
        }
    }

    fn bits(self) -> u32 {
        let ix = MSS_TABLE.iter().position(|m| *m == self.mss).unwrap_or(0) as u32;
        let ws = u32::from(self.wscale.map_or(15, |w| w.min(14)));
        (ix << 5) | (ws << 1) | u32::from(self.sack)
    }

    fn from_bits(b: u32) -> SynOpts {
        let ws = ((b >> 1) & 0xf) as u8;
        SynOpts {
            mss: MSS_TABLE[((b >> 5) & 3) as usize],
            wscale: (ws != 15).then_some(ws),
            sack: b & 1 != 0,
        }
    }
}

/// Makes and checks SYN cookies with one secret.
#[derive(Clone)]
pub struct CookieJar {
    key: [u8; 32],
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieJar(..)")
    }
}

impl CookieJar {
    /// A jar whose secret is derived from `cluster_key` (every replica gets the same one).
    pub fn from_cluster_key(cluster_key: &[u8]) -> CookieJar {
        CookieJar {
            key: blake3::derive_key("hydranet 2026-11 tcp syn cookie", cluster_key),
        }
    }

    fn hash(&self, key: FlowKey, client_isn: SeqNumber, period: u64, opt_bits: u32) -> u32 {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&key.client.ip().octets());
        h.update(&key.client.port().to_be_bytes());
        h.update(&key.service.ip().octets());
        h.update(&key.service.port().to_be_bytes());
        h.update(&client_isn.0.to_be_bytes());
        h.update(&period.to_be_bytes());
        h.update(&opt_bits.to_be_bytes());
        let out = h.finalize();
        let b = out.as_bytes();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & HASH_MASK
    }

    /// The ISN to answer a SYN with at wall-clock time `now_secs` (seconds since the epoch).
    pub fn isn(
        &self,
        key: FlowKey,
        client_isn: SeqNumber,
        opts: SynOpts,
        now_secs: u64,
    ) -> SeqNumber {
        let period = now_secs / PERIOD_SECS;
        let bits = opts.bits();
        let hash = self.hash(key, client_isn, period, bits);
        SeqNumber((((period & 3) as u32) << 30) | (bits << HASH_BITS) | hash)
    }

    /// Checks the cookie `isn` (the client's ACK number minus one) against the client's ISN
    /// (its sequence number minus one); the SYN's options when it is one this jar made in the
    /// current or the previous period.
    pub fn check(
        &self,
        key: FlowKey,
        client_isn: SeqNumber,
        isn: SeqNumber,
        now_secs: u64,
    ) -> Option<SynOpts> {
        let now_period = now_secs / PERIOD_SECS;
        let tag = u64::from(isn.0 >> 30);
        let bits = (isn.0 >> HASH_BITS) & 0x7f;
        // The newest period at or before now whose low two bits are the tag.
        let back = (now_period & 3).wrapping_sub(tag) & 3;
        if back > 1 {
            return None;
        }
        let period = now_period.checked_sub(back)?;
        (self.hash(key, client_isn, period, bits) == isn.0 & HASH_MASK)
            .then(|| SynOpts::from_bits(bits))
    }
}

/// The window scale smoltcp uses for a receive buffer of `rx_buffer` bytes (its
/// `Socket::new`): the SYN-ACK a cookie goes out in must announce the same.
pub fn window_shift(rx_buffer: usize) -> u8 {
    let log2 = usize::BITS - rx_buffer.leading_zeros();
    // RFC 7323 §2.3: at most 14 (smoltcp would say 15 for a 1 GiB buffer, its maximum).
    log2.saturating_sub(16).min(14) as u8
}

/// The SYN-ACK answering a client's SYN with the cookie `isn`: the options the local stack
/// would send (MSS from `mtu`, window scale and SACK only when the client offered them).
pub fn synack(
    key: FlowKey,
    client_isn: SeqNumber,
    isn: SeqNumber,
    opts: SynOpts,
    mtu: usize,
    rx_buffer: usize,
) -> Vec<u8> {
    let window = u16::try_from(rx_buffer).unwrap_or(u16::MAX);
    let mss = u16::try_from(mtu.saturating_sub(40)).unwrap_or(u16::MAX);
    let ws = opts.wscale.map(|_| window_shift(rx_buffer));
    build(
        key.service,
        key.client,
        isn,
        Some(client_isn.plus(1)),
        window,
        &syn_options(mss, ws, opts.sack),
    )
}

fn syn_options(mss: u16, wscale: Option<u8>, sack: bool) -> Vec<TcpOptionElement> {
    let mut options = vec![TcpOptionElement::MaximumSegmentSize(mss)];
    if let Some(w) = wscale {
        options.push(TcpOptionElement::WindowScale(w));
    }
    if sack {
        options.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
    }
    options
}

/// The client's SYN as the cookie remembers it, to replay into a fresh endpoint.
pub fn rebuild_syn(key: FlowKey, client_isn: SeqNumber, opts: SynOpts) -> Vec<u8> {
    let options = syn_options(opts.mss, opts.wscale, opts.sack);
    build(
        key.client,
        key.service,
        client_isn,
        None,
        u16::MAX,
        &options,
    )
}

fn build(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: SeqNumber,
    ack: Option<SeqNumber>,
    window: u16,
    options: &[TcpOptionElement],
) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), seq.0, window)
        .syn();
    let b = match ack {
        Some(a) => b.ack(a.0),
        None => b,
    };
    // INVARIANT: at most three options (4 + 3 + 2 bytes, padded) always fit the 40 option bytes.
    let b = b.options(options).expect("three options fit");
    let mut out = Vec::with_capacity(64);
    // INVARIANT: writing to a Vec cannot fail.
    b.write(&mut out, &[]).expect("write to a vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite;
    use proptest::prelude::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: SocketAddrV4::new([198, 18, 0, 2].into(), port),
            service: "198.19.0.10:80".parse().unwrap(),
        }
    }

    const OPTS: SynOpts = SynOpts {
        mss: 1460,
        wscale: Some(7),
        sack: true,
    };

    #[test]
    fn cookie_checks_within_two_periods_and_not_after() {
        let jar = CookieJar::from_cluster_key(&[7; 32]);
        let t0 = 1_800_000_000;
        let isn = jar.isn(key(40000), SeqNumber(1000), OPTS, t0);
        for dt in [0, 1, 63, PERIOD_SECS] {
            assert_eq!(
                jar.check(key(40000), SeqNumber(1000), isn, t0 + dt),
                Some(OPTS),
                "{dt} s later"
            );
        }
        let period_end = (t0 / PERIOD_SECS + 2) * PERIOD_SECS;
        assert_eq!(
            jar.check(key(40000), SeqNumber(1000), isn, period_end),
            None
        );
        assert_eq!(
            jar.check(key(40000), SeqNumber(1000), isn, t0 - PERIOD_SECS),
            None,
            "a cookie from the future"
        );
    }

    #[test]
    fn cookie_is_bound_to_tuple_client_isn_and_key() {
        let jar = CookieJar::from_cluster_key(&[7; 32]);
        let other = CookieJar::from_cluster_key(&[8; 32]);
        let t = 1_800_000_000;
        let isn = jar.isn(key(40000), SeqNumber(1000), OPTS, t);
        assert_eq!(jar.check(key(40001), SeqNumber(1000), isn, t), None);
        assert_eq!(jar.check(key(40000), SeqNumber(1001), isn, t), None);
        assert_eq!(other.check(key(40000), SeqNumber(1000), isn, t), None);
        assert_eq!(jar.check(key(40000), SeqNumber(1000), isn.plus(1), t), None);
    }

    #[test]
    fn replicas_with_one_cluster_key_agree() {
        let a = CookieJar::from_cluster_key(&[3; 32]);
        let b = CookieJar::from_cluster_key(&[3; 32]);
        let t = 1_800_000_000;
        let isn = a.isn(key(5), SeqNumber(9), OPTS, t);
        assert_eq!(isn, b.isn(key(5), SeqNumber(9), OPTS, t));
        assert_eq!(b.check(key(5), SeqNumber(9), isn, t + 10), Some(OPTS));
    }

    #[test]
    fn options_round_trip_through_the_syn() {
        let syn = rebuild_syn(key(1), SeqNumber(77), OPTS);
        let seg = rewrite::parse(&syn).unwrap();
        assert!(seg.syn && !seg.ack_flag);
        assert_eq!(seg.seq, SeqNumber(77));
        assert_eq!(SynOpts::of_syn(&seg), OPTS);
        let plain = SynOpts {
            mss: 536,
            wscale: None,
            sack: false,
        };
        let seg = rewrite::parse(&rebuild_syn(key(1), SeqNumber(77), plain)).unwrap();
        assert_eq!(SynOpts::of_syn(&seg), plain);
    }

    #[test]
    fn odd_client_mss_rounds_down() {
        let mut seg = rewrite::parse(&rebuild_syn(key(1), SeqNumber(1), OPTS)).unwrap();
        for (given, kept) in [(9000, 1460), (1459, 1440), (1300, 1300), (100, 536)] {
            seg.mss = Some(given);
            assert_eq!(SynOpts::of_syn(&seg).mss, kept);
        }
    }

    proptest! {
        #[test]
        fn every_cookie_checks_and_a_forgery_rarely_does(port: u16, cisn: u32, t in 1_000_000u64..4_000_000_000,
                mss_ix in 0usize..4, ws in proptest::option::of(0u8..15), sack: bool, forged: u32) {
            let jar = CookieJar::from_cluster_key(&[1; 32]);
            let opts = SynOpts { mss: MSS_TABLE[mss_ix], wscale: ws, sack };
            let isn = jar.isn(key(port), SeqNumber(cisn), opts, t);
            prop_assert_eq!(jar.check(key(port), SeqNumber(cisn), isn, t), Some(opts));
            if forged != isn.0 {
                // 2^-23 per try; proptest's few hundred cases never hit it by chance.
                prop_assert_eq!(jar.check(key(port), SeqNumber(cisn), SeqNumber(forged), t), None);
            }
        }
    }
}
