//! The datagram format shared by the tunnel and the acknowledgement channel.
//!
//! ```text
//!  0       2     3      4       6       8               16              24
//! +-------+-----+------+-------+-------+---------------+---------------+
//! | magic | ver | type | flags | rsvd  | service (u64) | epoch (u64)   |
//! | "HN"  |  4  |      |       |   0   |               |               |
//! +-------+-----+------+-------+-------+---------------+---------------+
//! 24         28           32                    40                    48              56
//! +----------+------------+---------------------+---------------------+---------------+---------+---------+
//! | sender   | receiver   | sender incarnation  | receiver incarnation| counter (u64) | payload | MAC(16) |
//! | (u32)    | (u32)      | (u64)               | (u64)               |               |         |         |
//! +----------+------------+---------------------+---------------------+---------------+---------+---------+
//! ```
//!
//! All integers are big-endian. The MAC covers header and payload. Written in the smoltcp
//! style: [`Datagram`] is a checked view over a byte slice, [`Header`] the parsed
//! representation with `parse`/`emit`.
//!
//! Versions:
//! - 4 (this one): the MAC is AES-128-GMAC under a key per sender life, derived from the
//!   cluster key, the sender id and its incarnation, with the counter as nonce (see
//!   `auth.rs`). The header is that of version 3.
//! - 3: views list each member's `since` (payload only); MAC keyed BLAKE3, truncated.
//! - 2: added the receiver and both incarnations: a datagram names whom it is for (one
//!   daemon, in one of its lives, or [`ReplicaId::ANY`] for the members of a service's
//!   view), so one sealed for h1 is refused by h2, and one sealed for an earlier life of its
//!   receiver is refused after a restart. Version 1 had neither.
//!
//! A daemon speaks one version and drops the others (`malformed`): every node of a cluster
//! is upgraded together.

use crate::ids::{Epoch, Incarnation, ReplicaId, ServiceId};

/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 56;
/// Bytes of the truncated MAC that ends every datagram.
pub const MAC_LEN: usize = 16;
/// The magic number "HN".
pub const MAGIC: u16 = 0x484e;
/// The only version this code speaks.
pub const VERSION: u8 = 4;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const TYPE: usize = 3;
    pub const FLAGS: Range<usize> = 4..6;
    pub const RESERVED: Range<usize> = 6..8;
    pub const SERVICE: Range<usize> = 8..16;
    pub const EPOCH: Range<usize> = 16..24;
    pub const SENDER: Range<usize> = 24..28;
    pub const RECEIVER: Range<usize> = 28..32;
    pub const SENDER_INCARNATION: Range<usize> = 32..40;
    pub const RECEIVER_INCARNATION: Range<usize> = 40..48;
    pub const COUNTER: Range<usize> = 48..56;
}

/// Why bytes are not a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// Shorter than header plus MAC.
    #[error("datagram truncated")]
    Truncated,
    /// The magic number is wrong: not HydraNet traffic.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not speak.
    #[error("unsupported version {0}")]
    Version(u8),
    /// A message type this code does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The reserved bytes are not zero.
    #[error("reserved bits set")]
    Reserved,
    /// A payload that does not parse as its message type.
    #[error("malformed payload")]
    Payload,
}

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// An IPv4 packet from a client, redirector to host server.
    ToHost,
    /// An IPv4 packet for a client, host server to redirector.
    ToClient,
    /// A host server's liveness and service registration, host server to redirector.
    Heartbeat,
    /// Progress reports of ft connections, host server to host server (the ack channel).
    Progress,
    /// A service's view (epoch in the header, members in the payload), redirector to hosts.
    View,
    /// Client bytes a backup missed, primary to backup (hop-by-hop repair): an IPv4 packet
    /// as the client would have sent it.
    Repair,
    /// Digests of connections' output (output agreement), host server to host server.
    Digest,
    /// Stamped chunks of a total-order service, primary to backups.
    Order,
    /// The redirector's answer to a heartbeat that does not name its current incarnation:
    /// "this is who I am now" (no payload; the header says it). Only a heartbeat that names
    /// the redirector's current life counts as liveness, so heartbeats recorded before a
    /// redirector restart cannot keep a dead host in a view.
    Welcome,
    /// Total-order stamp repair: a backup asks the primary for the stamps it misses, or the
    /// primary answers that it no longer keeps them (host to host).
    OrderRepair,
    /// A host asks the view authority to exclude members from a connection: itself, or as
    /// the connection's speaker another member (who speaks is decided in one place).
    Exclude,
    /// The authority's notice to each member of a view: the members excluded from a
    /// connection so far. Repeated until acknowledged.
    Excluded,
    /// A host acknowledges a notice (host to the authority).
    ExcludedAck,
}

impl MsgType {
    fn code(self) -> u8 {
        match self {
            MsgType::ToHost => 1,
            MsgType::ToClient => 2,
            MsgType::Heartbeat => 3,
            MsgType::Progress => 4,
            MsgType::View => 5,
            MsgType::Repair => 6,
            MsgType::Digest => 7,
            MsgType::Order => 8,
            MsgType::Welcome => 10,
            MsgType::OrderRepair => 11,
            MsgType::Exclude => 12,
            MsgType::Excluded => 13,
            MsgType::ExcludedAck => 14,
        }
    }

    fn from_code(code: u8) -> Result<Self, WireError> {
        Ok(match code {
            1 => MsgType::ToHost,
            2 => MsgType::ToClient,
            3 => MsgType::Heartbeat,
            4 => MsgType::Progress,
            5 => MsgType::View,
            6 => MsgType::Repair,
            7 => MsgType::Digest,
            8 => MsgType::Order,
            10 => MsgType::Welcome,
            11 => MsgType::OrderRepair,
            12 => MsgType::Exclude,
            13 => MsgType::Excluded,
            14 => MsgType::ExcludedAck,
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

impl MsgType {
    /// Whether a datagram of this type may be addressed to [`ReplicaId::ANY`], every member
    /// of its service's view: client packets in ft mode and the ack channel's multicasts.
    /// Everything else names one receiver.
    pub fn may_be_group(self) -> bool {
        matches!(
            self,
            MsgType::ToHost | MsgType::Progress | MsgType::Digest | MsgType::Order
        )
    }
}

/// A checked view of a datagram's bytes.
#[derive(Debug)]
pub struct Datagram<T: AsRef<[u8]>> {
    buffer: T,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Datagram<T> {
    /// Wraps bytes without checking them; accessors may panic on a short buffer.
    pub fn new_unchecked(buffer: T) -> Self {
        Datagram { buffer }
    }

    /// Wraps bytes after checking length, magic and version, so that accessors cannot panic.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let d = Datagram { buffer };
        d.check()?;
        Ok(d)
    }

    fn check(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN + MAC_LEN {
            return Err(WireError::Truncated);
        }
        if u16::from_be_bytes([b[0], b[1]]) != MAGIC {
            return Err(WireError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::Version(b[field::VERSION]));
        }
        Ok(())
    }

    /// The bytes the MAC covers: header and payload.
    pub fn authenticated(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - MAC_LEN]
    }

    /// The MAC at the end.
    pub fn mac(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[b.len() - MAC_LEN..]
    }

    /// The payload between header and MAC.
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN..b.len() - MAC_LEN]
    }

    /// The sender's per-datagram counter (replay protection).
    pub fn counter(&self) -> u64 {
        be_u64(&self.buffer.as_ref()[field::COUNTER])
    }

    /// The sender's id.
    pub fn sender(&self) -> ReplicaId {
        ReplicaId(be_u32(&self.buffer.as_ref()[field::SENDER]))
    }

    /// The whole datagram.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Datagram<T> {
    /// The MAC at the end, writable.
    pub fn mac_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let n = b.len();
        &mut b[n - MAC_LEN..]
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let n = b.len();
        &mut b[HEADER_LEN..n - MAC_LEN]
    }
}

/// The parsed header of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub msg_type: MsgType,
    /// Flags, reserved for later messages; zero today.
    pub flags: u16,
    /// The service the datagram belongs to (zero for node-wide messages).
    pub service: ServiceId,
    /// The sender's view epoch for that service.
    pub epoch: Epoch,
    /// Who sent it.
    pub sender: ReplicaId,
    /// Whom it is for: one daemon, or [`ReplicaId::ANY`] for every member of the service's
    /// view.
    pub receiver: ReplicaId,
    /// The sender's current life.
    pub sender_incarnation: Incarnation,
    /// The receiver's life as the sender knows it ([`Incarnation::UNKNOWN`] when the datagram
    /// is for a group, or the sender has not heard from the receiver yet).
    pub receiver_incarnation: Incarnation,
    /// The sender's counter, strictly increasing per sender incarnation.
    pub counter: u64,
}

impl Header {
    /// Parses the header of a checked datagram.
    pub fn parse<T: AsRef<[u8]>>(d: &Datagram<T>) -> Result<Header, WireError> {
        let b = d.buffer.as_ref();
        if b.len() < HEADER_LEN + MAC_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::RESERVED] != [0, 0] {
            return Err(WireError::Reserved);
        }
        Ok(Header {
            msg_type: MsgType::from_code(b[field::TYPE])?,
            flags: u16::from_be_bytes([b[field::FLAGS.start], b[field::FLAGS.start + 1]]),
            service: ServiceId(be_u64(&b[field::SERVICE])),
            epoch: Epoch(be_u64(&b[field::EPOCH])),
            sender: ReplicaId(be_u32(&b[field::SENDER])),
            receiver: ReplicaId(be_u32(&b[field::RECEIVER])),
            sender_incarnation: Incarnation(be_u64(&b[field::SENDER_INCARNATION])),
            receiver_incarnation: Incarnation(be_u64(&b[field::RECEIVER_INCARNATION])),
            counter: be_u64(&b[field::COUNTER]),
        })
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`]; callers size it with [`Header::buffer_len`].
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        buf[field::VERSION] = VERSION;
        buf[field::TYPE] = self.msg_type.code();
        buf[field::FLAGS].copy_from_slice(&self.flags.to_be_bytes());
        buf[field::RESERVED].copy_from_slice(&[0, 0]);
        buf[field::SERVICE].copy_from_slice(&self.service.0.to_be_bytes());
        buf[field::EPOCH].copy_from_slice(&self.epoch.0.to_be_bytes());
        buf[field::SENDER].copy_from_slice(&self.sender.0.to_be_bytes());
        buf[field::RECEIVER].copy_from_slice(&self.receiver.0.to_be_bytes());
        buf[field::SENDER_INCARNATION].copy_from_slice(&self.sender_incarnation.0.to_be_bytes());
        buf[field::RECEIVER_INCARNATION]
            .copy_from_slice(&self.receiver_incarnation.0.to_be_bytes());
        buf[field::COUNTER].copy_from_slice(&self.counter.to_be_bytes());
    }

    /// The size of a whole datagram with `payload_len` bytes of payload.
    pub fn buffer_len(payload_len: usize) -> usize {
        HEADER_LEN + payload_len + MAC_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Header {
        Header {
            msg_type: MsgType::ToClient,
            flags: 0,
            service: ServiceId(0xc613_000a_0050),
            epoch: Epoch(7),
            sender: ReplicaId(2),
            receiver: ReplicaId(3),
            sender_incarnation: Incarnation(0x1112_1314_1516_1718),
            receiver_incarnation: Incarnation(0x2122_2324_2526_2728),
            counter: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn header_bytes_are_as_documented() {
        let mut buf = vec![0u8; Header::buffer_len(0)];
        sample().emit(&mut buf);
        assert_eq!(
            &buf[..HEADER_LEN],
            &[
                b'H', b'N', 4, 2, 0, 0, 0, 0, // magic, version, type, flags, reserved
                0, 0, 0xc6, 0x13, 0, 0x0a, 0, 0x50, // service
                0, 0, 0, 0, 0, 0, 0, 7, // epoch
                0, 0, 0, 2, // sender
                0, 0, 0, 3, // receiver
                0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // sender incarnation
                0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // receiver incarnation
                1, 2, 3, 4, 5, 6, 7, 8, // counter
            ]
        );
    }

    #[test]
    fn short_buffers_are_truncated_not_panics() {
        for n in 0..HEADER_LEN + MAC_LEN {
            assert_eq!(
                Datagram::new_checked(vec![0u8; n]).err(),
                Some(WireError::Truncated)
            );
        }
    }

    #[test]
    fn unknown_type_and_reserved_bits_are_rejected() {
        let mut buf = vec![0u8; Header::buffer_len(0)];
        sample().emit(&mut buf);
        buf[3] = 99;
        let d = Datagram::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&d), Err(WireError::UnknownType(99)));
        // The retired Handoff type is unknown now.
        buf[3] = 9;
        let d = Datagram::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&d), Err(WireError::UnknownType(9)));
        sample().emit(&mut buf);
        buf[7] = 1;
        let d = Datagram::new_checked(&buf[..]).unwrap();
        assert_eq!(Header::parse(&d), Err(WireError::Reserved));
    }

    proptest! {
        #[test]
        fn header_round_trips(t in (1u8..=14).prop_filter("9 is retired", |t| *t != 9), flags: u16, service: u64, epoch: u64, sender: u32, receiver: u32, incs: (u64, u64), counter: u64, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = Header {
                msg_type: MsgType::from_code(t).unwrap(),
                flags,
                service: ServiceId(service),
                epoch: Epoch(epoch),
                sender: ReplicaId(sender),
                receiver: ReplicaId(receiver),
                sender_incarnation: Incarnation(incs.0),
                receiver_incarnation: Incarnation(incs.1),
                counter,
            };
            let mut buf = vec![0u8; Header::buffer_len(payload.len())];
            h.emit(&mut buf);
            buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
            let d = Datagram::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Header::parse(&d).unwrap(), h);
            prop_assert_eq!(d.payload(), &payload[..]);
        }
    }
}
