//! Classification of IPv4/TCP packets by 4-tuple and flags.

use std::net::SocketAddrV4;

use etherparse::{IpNumber, Ipv4Slice, PacketBuilder, TcpSlice};

/// Why a packet cannot be classified; callers count and drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Not a well-formed IPv4 packet.
    #[error("not a well-formed ipv4 packet")]
    Ipv4,
    /// A fragment: HydraNet does not reassemble (TCP sends with DF).
    #[error("ipv4 fragment")]
    Fragment,
    /// Not TCP.
    #[error("not tcp")]
    NotTcp,
    /// A truncated or malformed TCP header.
    #[error("malformed tcp header")]
    Tcp,
    /// The IPv4 header checksum or the TCP checksum is wrong: the packet was damaged (or
    /// forged carelessly) and no layer may act on it.
    #[error("bad ipv4 or tcp checksum")]
    Checksum,
}

/// The ones' complement sum of `data` (RFC 1071) added to `acc`, unfolded. Words start at
/// even offsets of `data`.
fn sum_words(data: &[u8], mut acc: u64) -> u64 {
    // A 32-bit big-endian word is hi * 2^16 + lo, and 2^16 = 1 modulo 2^16 - 1: summing
    // 32-bit words and folding at the end gives the 16-bit ones' complement sum.
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether an IPv4/TCP packet's IPv4 header checksum and TCP checksum (with the pseudo
/// header, RFC 9293 §3.1) are both right. `false` for anything that does not parse.
pub fn checksums_ok(p: &[u8]) -> bool {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl + 20 || total > p.len() {
        return false;
    }
    if fold(sum_words(&p[..ihl], 0)) != 0xffff {
        return false;
    }
    let tcp_len = (total - ihl) as u64;
    // Pseudo header: source and destination address, protocol 6, TCP length.
    let pseudo = sum_words(&p[12..20], 6 + tcp_len);
    fold(sum_words(&p[ihl..total], pseudo)) == 0xffff
}

/// The TCP flags HydraNet's routing cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// One connection seen from the service: the client's address and the service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The service address and port.
    pub service: SocketAddrV4,
}

impl FlowKey {
    /// A stable hash for spreading connections over hosts (FNV-1a over the 4-tuple), the same
    /// on every redirector so that they agree without coordination.
    pub fn flow_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&self.client.ip().octets());
        eat(&self.client.port().to_be_bytes());
        eat(&self.service.ip().octets());
        eat(&self.service.port().to_be_bytes());
        h
    }
}

/// What HydraNet reads from a TCP/IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// Flags.
    pub flags: TcpFlags,
    /// Bytes of TCP payload.
    pub payload_len: usize,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when `flags.ack`).
    pub ack: u32,
}

impl TcpMeta {
    /// Parses an IPv4 packet carrying TCP. Never panics on any input.
    pub fn parse(packet: &[u8]) -> Result<TcpMeta, PacketError> {
        let ip = Ipv4Slice::from_slice(packet).map_err(|_| PacketError::Ipv4)?;
        let h = ip.header();
        if h.more_fragments() || h.fragments_offset().value() != 0 {
            return Err(PacketError::Fragment);
        }
        // The header's own protocol field: etherparse would skip an IPsec AH and hand over
        // the TCP inside, which nothing downstream can check or rewrite.
        if h.protocol() != IpNumber::TCP || ip.payload().ip_number != IpNumber::TCP {
            return Err(PacketError::NotTcp);
        }
        let tcp = TcpSlice::from_slice(ip.payload().payload).map_err(|_| PacketError::Tcp)?;
        Ok(TcpMeta {
            src: SocketAddrV4::new(h.source_addr(), tcp.source_port()),
            dst: SocketAddrV4::new(h.destination_addr(), tcp.destination_port()),
            flags: TcpFlags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            },
            payload_len: tcp.payload().len(),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
        })
    }

    /// [`TcpMeta::parse`], for a packet from the network that a stack will act on: also
    /// checks the IPv4 header checksum and the TCP checksum.
    pub fn parse_checked(packet: &[u8]) -> Result<TcpMeta, PacketError> {
        let meta = TcpMeta::parse(packet)?;
        if !checksums_ok(packet) {
            return Err(PacketError::Checksum);
        }
        Ok(meta)
    }

    /// The flow of a packet travelling from the client to the service.
    pub fn inbound_flow(&self) -> FlowKey {
        FlowKey {
            client: self.src,
            service: self.dst,
        }
    }

    /// The flow of a packet travelling from the service to the client.
    pub fn outbound_flow(&self) -> FlowKey {
        FlowKey {
            client: self.dst,
            service: self.src,
        }
    }

    /// The RST a closed port answers this segment with (RFC 9293 §3.10.7.1), or `None` if
    /// the segment is itself an RST.
    pub fn reset_reply(&self) -> Option<Vec<u8>> {
        if self.flags.rst {
            return None;
        }
        let b = PacketBuilder::ipv4(self.dst.ip().octets(), self.src.ip().octets(), 64);
        let b = if self.flags.ack {
            b.tcp(self.dst.port(), self.src.port(), self.ack, 0).rst()
        } else {
            let len =
                self.payload_len as u32 + u32::from(self.flags.syn) + u32::from(self.flags.fin);
            b.tcp(self.dst.port(), self.src.port(), 0, 0)
                .rst()
                .ack(self.seq.wrapping_add(len))
        };
        let mut out = Vec::with_capacity(40);
        // INVARIANT: writing into a Vec cannot fail and the packet has no payload to overflow.
        b.write(&mut out, &[]).expect("write to a vec");
        Some(out)
    }

    /// A connection-opening SYN (not a SYN-ACK).
    pub fn is_syn(&self) -> bool {
        self.flags.syn && !self.flags.ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn syn() -> Vec<u8> {
        let b = PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64)
            .tcp(40000, 80, 1234, 65535)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, b"").unwrap();
        out
    }

    #[test]
    fn syn_is_classified_with_its_flow() {
        let m = TcpMeta::parse(&syn()).unwrap();
        assert!(m.is_syn());
        assert_eq!(m.inbound_flow().client, "198.18.0.2:40000".parse().unwrap());
        assert_eq!(m.inbound_flow().service, "198.19.0.10:80".parse().unwrap());
        assert_eq!(m.payload_len, 0);
    }

    #[test]
    fn udp_and_fragments_are_refused() {
        let mut udp = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .udp(1, 2)
            .write(&mut udp, b"x")
            .unwrap();
        assert_eq!(TcpMeta::parse(&udp), Err(PacketError::NotTcp));
        let mut frag = syn();
        frag[6] |= 0x20; // more fragments
        assert_eq!(TcpMeta::parse(&frag), Err(PacketError::Fragment));
    }

    #[test]
    fn reset_reply_answers_ack_with_its_ack_and_syn_with_ack() {
        let m = TcpMeta::parse(&syn()).unwrap();
        let r = TcpMeta::parse(&m.reset_reply().unwrap()).unwrap();
        assert!(r.flags.rst && r.flags.ack);
        assert_eq!((r.src, r.dst, r.ack), (m.dst, m.src, 1235));
        let r2 = TcpMeta::parse(&r.reset_reply().unwrap_or_default());
        assert!(r2.is_err(), "never answer an RST");
    }

    fn data_segment(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64)
            .tcp(40000, 80, 1234, 65535)
            .ack(99)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn a_damaged_segment_fails_the_checked_parse() {
        let good = data_segment(b"hello, odd length");
        assert!(TcpMeta::parse_checked(&good).is_ok());
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(TcpMeta::parse_checked(&bad), Err(PacketError::Checksum));
        assert!(
            TcpMeta::parse(&bad).is_ok(),
            "the unchecked parse still reads it"
        );
        let mut bad_ip = good.clone();
        bad_ip[8] ^= 0x40; // TTL: only the IPv4 header checksum covers it
        assert_eq!(TcpMeta::parse_checked(&bad_ip), Err(PacketError::Checksum));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = TcpMeta::parse(&bytes);
            let _ = TcpMeta::parse_checked(&bytes);
        }

        #[test]
        fn checksum_agrees_with_etherparse_and_catches_any_one_byte_change(
                payload in proptest::collection::vec(any::<u8>(), 0..1500), at: usize, xor in 1u8..) {
            let good = data_segment(&payload);
            prop_assert!(checksums_ok(&good));
            let mut bad = good.clone();
            // Every byte but the IPv4 total length (which would change what is summed).
            let i = at % bad.len();
            prop_assume!(i != 2 && i != 3);
            bad[i] ^= xor;
            prop_assert!(!checksums_ok(&bad));
        }
    }
}
