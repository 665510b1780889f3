//! Reading and rewriting TCP/IPv4 segments in place, with incremental checksum update
//! (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`), and building the segments the FT layer sends
//! on its own (gate ACKs, retransmissions).

use std::net::SocketAddrV4;

use etherparse::PacketBuilder;

use crate::seq::SeqNumber;

/// What the FT layer reads from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seg {
    /// Sequence number.
    pub seq: SeqNumber,
    /// Acknowledgment number (valid with `ack_flag`).
    pub ack: SeqNumber,
    /// SYN.
    pub syn: bool,
    /// ACK flag.
    pub ack_flag: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
    /// Raw window field.
    pub window: u16,
    /// Offset of the TCP header in the packet.
    pub tcp_off: usize,
    /// Offset of the payload in the packet.
    pub payload_off: usize,
    /// Payload bytes.
    pub payload_len: usize,
    /// Window scale option (SYN segments only).
    pub wscale: Option<u8>,
    /// MSS option (SYN segments only).
    pub mss: Option<u16>,
    /// Whether the segment carries a SACK option.
    pub sack: bool,
    /// Whether the segment offers SACK (SACK-permitted option; SYN segments only).
    pub sack_permitted: bool,
}

impl Seg {
    /// Sequence space the segment occupies: payload plus SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload_len as u32 + u32::from(self.syn) + u32::from(self.fin)
    }

    /// First sequence number after the segment.
    pub fn end(&self) -> SeqNumber {
        self.seq.plus(self.seq_len())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IPv4/TCP packet's header fields. `None` for anything malformed (never panics).
pub fn parse(p: &[u8]) -> Option<Seg> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(be16(p, 2));
    if ihl < 20 || total < ihl + 20 || total > p.len() {
        return None;
    }
    let t = ihl;
    let doff = usize::from(p[t + 12] >> 4) * 4;
    if doff < 20 || t + doff > total {
        return None;
    }
    let flags = p[t + 13];
    let mut seg = Seg {
        seq: SeqNumber(be32(p, t + 4)),
        ack: SeqNumber(be32(p, t + 8)),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        ack_flag: flags & 0x10 != 0,
        window: be16(p, t + 14),
        tcp_off: t,
        payload_off: t + doff,
        payload_len: total - t - doff,
        ..Seg::default()
    };
    // Options: kind 0 end, 1 nop, 2 MSS, 3 window scale, 4 SACK-permitted, 5 SACK.
    let mut i = t + 20;
    while i < t + doff {
        match p[i] {
            0 => break,
            1 => i += 1,
            kind => {
                // A kind in the last option byte has no length: the walk ends there (the
                // byte after it is payload or padding, not this option's length).
                if i + 1 >= t + doff {
                    break;
                }
                let len = usize::from(p[i + 1]);
                if len < 2 || i + len > t + doff {
                    break;
                }
                match (kind, len) {
                    (2, 4) => seg.mss = Some(be16(p, i + 2)),
                    (3, 3) => seg.wscale = Some(p[i + 2].min(14)),
                    (4, 2) => seg.sack_permitted = true,
                    (5, _) => seg.sack = true,
                    _ => {}
                }
                i += len;
            }
        }
    }
    Some(seg)
}

fn fold_replace(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

fn replace16(p: &mut [u8], seg: &Seg, at: usize, new: u16) {
    let old = be16(p, at);
    let c = seg.tcp_off + 16;
    let csum = fold_replace(be16(p, c), old, new);
    p[at..at + 2].copy_from_slice(&new.to_be_bytes());
    p[c..c + 2].copy_from_slice(&csum.to_be_bytes());
}

/// Rewrites the sequence number.
pub fn set_seq(p: &mut [u8], seg: &Seg, v: SeqNumber) {
    let at = seg.tcp_off + 4;
    replace16(p, seg, at, (v.0 >> 16) as u16);
    replace16(p, seg, at + 2, v.0 as u16);
}

/// Rewrites the acknowledgment number.
pub fn set_ack(p: &mut [u8], seg: &Seg, v: SeqNumber) {
    let at = seg.tcp_off + 8;
    replace16(p, seg, at, (v.0 >> 16) as u16);
    replace16(p, seg, at + 2, v.0 as u16);
}

/// Rewrites the window field.
pub fn set_window(p: &mut [u8], seg: &Seg, v: u16) {
    replace16(p, seg, seg.tcp_off + 14, v);
}

/// Builds a segment from `src` to `dst` with ACK set.
pub fn build(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: SeqNumber,
    ack: SeqNumber,
    window: u16,
    payload: &[u8],
    fin: bool,
) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), seq.0, window)
        .ack(ack.0);
    if fin {
        b = b.fin();
    }
    if !payload.is_empty() {
        b = b.psh();
    }
    let mut out = Vec::with_capacity(40 + payload.len());
    // INVARIANT: writing to a Vec cannot fail; payloads are at most one MSS.
    b.write(&mut out, payload).expect("write to a vec");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn checksum_ok(p: &[u8]) -> bool {
        let ip = etherparse::Ipv4Slice::from_slice(p).unwrap();
        let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).unwrap();
        let h = tcp.to_header();
        h.calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
            .unwrap()
            == tcp.checksum()
    }

    proptest! {
        #[test]
        fn rewrites_keep_the_checksum_valid(seq: u32, ack: u32, win: u16, nseq: u32, nack: u32, nwin: u16,
                                            payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut p = build("1.2.3.4:80".parse().unwrap(), "5.6.7.8:999".parse().unwrap(),
                SeqNumber(seq), SeqNumber(ack), win, &payload, false);
            let seg = parse(&p).unwrap();
            prop_assert_eq!((seg.seq.0, seg.ack.0, seg.window, seg.payload_len), (seq, ack, win, payload.len()));
            set_seq(&mut p, &seg, SeqNumber(nseq));
            set_ack(&mut p, &seg, SeqNumber(nack));
            set_window(&mut p, &seg, nwin);
            let seg2 = parse(&p).unwrap();
            prop_assert_eq!((seg2.seq.0, seg2.ack.0, seg2.window), (nseq, nack, nwin));
            prop_assert!(checksum_ok(&p));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse(&bytes);
        }
    }
}
