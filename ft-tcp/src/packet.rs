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
        if ip.payload().ip_number != IpNumber::TCP {
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

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = TcpMeta::parse(&bytes);
        }
    }
}
