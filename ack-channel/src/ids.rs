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

/// A view epoch. Redirect mode uses epoch 0; ft mode numbers views from 1.
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
