//! Message payloads: host server heartbeats that register services with the redirector.
//!
//! ```text
//! Heartbeat: count (u16) then count entries of
//!   service ip (4) | port (2) | mode (1)
//! ```

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::WireError;

/// How a port is served (`setportopt`'s mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Not served.
    Off,
    /// Each connection goes to one live host server.
    Redirect,
    /// Every replica receives every packet; one talks (the FT issue).
    Ft,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Redirect => 1,
            Mode::Ft => 2,
        }
    }

    fn from_code(c: u8) -> Result<Self, WireError> {
        Ok(match c {
            0 => Mode::Off,
            1 => Mode::Redirect,
            2 => Mode::Ft,
            _ => return Err(WireError::Payload),
        })
    }

    /// The mode's name as users type it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Redirect => "redirect",
            Mode::Ft => "ft",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Mode::Off),
            "redirect" => Ok(Mode::Redirect),
            "ft" => Ok(Mode::Ft),
            other => Err(format!(
                "unknown mode `{other}`: use one of off, redirect, ft"
            )),
        }
    }
}

/// One service a host server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceAd {
    /// The service address clients connect to.
    pub addr: SocketAddrV4,
    /// How it is served.
    pub mode: Mode,
}

/// A host server's heartbeat: "I am alive and serve these services right now" (services
/// whose backend does not answer are left out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// The services this host can serve now.
    pub services: Vec<ServiceAd>,
}

const ENTRY_LEN: usize = 7;

impl Heartbeat {
    /// Serializes into a payload.
    pub fn emit(&self) -> Vec<u8> {
        let n = self.services.len().min(u16::MAX as usize);
        let mut out = Vec::with_capacity(2 + n * ENTRY_LEN);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        for s in &self.services[..n] {
            out.extend_from_slice(&s.addr.ip().octets());
            out.extend_from_slice(&s.addr.port().to_be_bytes());
            out.push(s.mode.code());
        }
        out
    }

    /// Parses a payload; the length must match the count exactly.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < 2 {
            return Err(WireError::Payload);
        }
        let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let body = &b[2..];
        if body.len() != n * ENTRY_LEN {
            return Err(WireError::Payload);
        }
        let services = body
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                Ok(ServiceAd {
                    addr: SocketAddrV4::new(
                        Ipv4Addr::new(e[0], e[1], e[2], e[3]),
                        u16::from_be_bytes([e[4], e[5]]),
                    ),
                    mode: Mode::from_code(e[6])?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Heartbeat { services })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn heartbeat_round_trips(entries in proptest::collection::vec((any::<u32>(), any::<u16>(), 0u8..3), 0..20)) {
            let hb = Heartbeat {
                services: entries
                    .into_iter()
                    .map(|(ip, port, m)| ServiceAd {
                        addr: SocketAddrV4::new(Ipv4Addr::from(ip), port),
                        mode: Mode::from_code(m).unwrap(),
                    })
                    .collect(),
            };
            prop_assert_eq!(Heartbeat::parse(&hb.emit()).unwrap(), hb);
        }

        #[test]
        fn heartbeat_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Heartbeat::parse(&bytes);
        }
    }

    #[test]
    fn heartbeat_with_wrong_length_is_rejected() {
        assert!(Heartbeat::parse(&[0, 1, 1, 2, 3]).is_err());
        assert!(Heartbeat::parse(&[0]).is_err());
        assert_eq!(Heartbeat::parse(&[0, 0]).unwrap(), Heartbeat::default());
    }
}
