//! Newtypes for the identifiers that travel in every datagram header.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A daemon's identity in the cluster: the redirector is usually 0, host servers 1..=N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u32);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

impl ReplicaId {
    /// The receiver of a datagram for a group: every member of the service's view
    /// (client packets in ft mode, the ack channel's multicasts). Never a daemon's own id.
    pub const ANY: ReplicaId = ReplicaId(u32::MAX);
}

/// One life of a daemon: a number chosen at start (the wall clock in nanoseconds), so a
/// restarted daemon is a new, larger incarnation. Zero stands for "not known yet".
///
/// A restarted host is never again a member of connections its earlier incarnation held,
/// and datagrams sealed for an earlier incarnation of their receiver are refused (replay
/// protection across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// Not known yet (a host that has not heard from its redirector).
    pub const UNKNOWN: Incarnation = Incarnation(0);
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A view epoch. Redirect mode uses epoch 0. In ft mode a redirector numbers views upward
/// from the wall clock at its start, in microseconds, so that a restarted redirector's epochs
/// stay above everything its earlier life issued (hosts ignore views that are not newer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Epoch(pub u64);

/// A service: the (service ip, port) pair clients connect to, packed as `ip << 16 | port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceId(pub u64);

impl ServiceId {
    /// The id of the service at `addr`.
    pub fn from_addr(addr: SocketAddrV4) -> Self {
        ServiceId((u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port()))
    }

    /// The service address this id stands for.
    pub fn addr(self) -> SocketAddrV4 {
        // Truncation is the packing: the low 16 bits are the port, the next 32 the address.
        SocketAddrV4::new(Ipv4Addr::from((self.0 >> 16) as u32), self.0 as u16)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_id_round_trips_its_address() {
        let addr: SocketAddrV4 = "198.19.0.10:80".parse().unwrap();
        assert_eq!(ServiceId::from_addr(addr).addr(), addr);
    }
}
