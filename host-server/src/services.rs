//! The virtual hosts and port options of this host server (`v_host`, `setportopt`), shared
//! between the admin API, the health checker and the dataplane.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ack_channel::{Mode, ServiceAd};

/// How one port is served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOpt {
    /// The mode.
    pub mode: Mode,
    /// The local backend.
    pub backend: Option<SocketAddrV4>,
    /// Whether the last health check reached the backend.
    pub healthy: bool,
    /// ft detector: heartbeat interval, milliseconds.
    pub hb_ms: u16,
    /// ft detector: silence after which the redirector drops this host from the view, ms.
    pub timeout_ms: u16,
    /// ft replication options.
    pub ft: FtOpts,
    /// Most client connections of this service at once (None: only the host's cap).
    pub max_conns: Option<u32>,
    /// A connection with no byte either way for this long is reset (0: never), seconds.
    pub idle_timeout_s: u32,
    /// TCP keep-alive: after this long without a segment from the client, probe it; reset
    /// after 3 unanswered probes (0: off, the default, as in Linux), seconds.
    pub keepalive_s: u32,
}

/// The idle timeout when none is given: nginx stream's `proxy_timeout` default.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 600;

/// setportopt's ft replication options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FtOpts {
    /// Hop-by-hop repair: the primary sends a backup client bytes it missed at once.
    pub repair: bool,
    /// Total order across the service's connections (`--order total`).
    pub total_order: bool,
    /// Total order: the longest wait for the backend's answer before the next chunk for
    /// another connection, milliseconds.
    pub quiet_ms: u16,
    /// How long a member may lag behind output another member's backend already produced
    /// before it is treated as failed for that connection (issue #14): a stopped, hung or
    /// early-ending backend costs the connection this long, milliseconds (default 1000).
    pub stall_ms: u32,
}

impl FtOpts {
    /// The options as setportopt and the config file give them (`None`: the default);
    /// `order` is `none` or `total`; a `stall_ms` of 0 is refused.
    pub fn from_request(
        repair: Option<bool>,
        order: Option<&str>,
        quiet_ms: Option<u16>,
        stall_ms: Option<u32>,
    ) -> Result<FtOpts, ServiceError> {
        let d = FtOpts::default();
        let total_order = match order {
            None | Some("none") => false,
            Some("total") => true,
            Some(other) => return Err(ServiceError::BadOrder(other.to_string())),
        };
        if stall_ms == Some(0) {
            return Err(ServiceError::ZeroStall);
        }
        Ok(FtOpts {
            repair: repair.unwrap_or(d.repair),
            total_order,
            quiet_ms: quiet_ms.unwrap_or(d.quiet_ms).max(1),
            stall_ms: stall_ms.unwrap_or(d.stall_ms),
        })
    }
}

impl Default for FtOpts {
    fn default() -> Self {
        FtOpts {
            repair: true,
            total_order: false,
            quiet_ms: 100,
            stall_ms: 1000,
        }
    }
}

/// setportopt's detector parameters (HydraNet's `detector_parameters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detector {
    /// Heartbeat interval, milliseconds.
    pub hb_ms: u16,
    /// Failure timeout, milliseconds.
    pub timeout_ms: u16,
}

impl Default for Detector {
    /// 5 ms heartbeats, 25 ms timeout (README.md, "What it guarantees").
    fn default() -> Self {
        Detector {
            hb_ms: 5,
            timeout_ms: 25,
        }
    }
}

/// Why an admin request is refused; the message tells the user what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// setportopt on an IP that is not a vhost here.
    #[error("no virtual host {0} on this host: add it first with `hydractl v_host add {0}`")]
    NoVhost(Ipv4Addr),
    /// A backend outside the loopback range.
    #[error("backend {0} is not on the loopback range: run the backend on 127.0.0.1 and pass --backend 127.0.0.1:PORT")]
    BackendNotLoopback(SocketAddrV4),
    /// A serving mode without a backend.
    #[error("mode {0} needs a backend: pass --backend 127.0.0.1:PORT")]
    NoBackend(&'static str),
    /// Port 0.
    #[error("port 0 is not a service port: pass ip:port with a port from 1 to 65535")]
    PortZero,
    /// An `order` other than none or total.
    #[error("unknown order `{0}`: use none or total")]
    BadOrder(String),
    /// A detector whose timeout does not cover a few heartbeats.
    #[error("detector timeout {timeout_ms} ms must be at least twice the heartbeat interval {hb_ms} ms (and hb at least 1 ms): e.g. --hb 5ms --timeout 25ms")]
    BadDetector {
        /// Heartbeat interval.
        hb_ms: u16,
        /// Timeout.
        timeout_ms: u16,
    },
    /// A stall timeout of zero.
    #[error("stall timeout 0 would fail every member at once: pass at least 1ms (default 1s)")]
    ZeroStall,
    /// A connection cap of zero.
    #[error("max_conns 0 would refuse every client: pass at least 1, or leave it out for no per-service cap")]
    ZeroCap,
    /// del of an unknown vhost.
    #[error("no virtual host {0} on this host: `hydractl v_host list` shows the ones there are")]
    UnknownVhost(Ipv4Addr),
}

/// The table.
#[derive(Debug, Default, Clone)]
pub struct Services {
    vhosts: BTreeMap<Ipv4Addr, ()>,
    ports: BTreeMap<SocketAddrV4, PortOpt>,
}

impl Services {
    /// Creates a virtual host (idempotent).
    pub fn add_vhost(&mut self, ip: Ipv4Addr) {
        self.vhosts.insert(ip, ());
    }

    /// Recalls a virtual host and its port options; existing connections run to their end.
    pub fn del_vhost(&mut self, ip: Ipv4Addr) -> Result<(), ServiceError> {
        self.vhosts
            .remove(&ip)
            .ok_or(ServiceError::UnknownVhost(ip))?;
        self.ports.retain(|addr, _| *addr.ip() != ip);
        Ok(())
    }

    /// The virtual hosts.
    pub fn vhosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vhosts.keys().copied()
    }

    /// `setportopt`.
    pub fn set_port_opt(
        &mut self,
        addr: SocketAddrV4,
        mode: Mode,
        backend: Option<SocketAddrV4>,
        detector: Detector,
        ft: FtOpts,
    ) -> Result<(), ServiceError> {
        if addr.port() == 0 {
            return Err(ServiceError::PortZero);
        }
        if !self.vhosts.contains_key(addr.ip()) {
            return Err(ServiceError::NoVhost(*addr.ip()));
        }
        if mode != Mode::Off && backend.is_none() {
            return Err(ServiceError::NoBackend(mode.as_str()));
        }
        if detector.hb_ms == 0 || u32::from(detector.timeout_ms) < 2 * u32::from(detector.hb_ms) {
            return Err(ServiceError::BadDetector {
                hb_ms: detector.hb_ms,
                timeout_ms: detector.timeout_ms,
            });
        }
        if let Some(b) = backend {
            if !b.ip().is_loopback() {
                return Err(ServiceError::BackendNotLoopback(b));
            }
        }
        let healthy = self
            .ports
            .get(&addr)
            .is_some_and(|p| p.healthy && p.backend == backend);
        self.ports.insert(
            addr,
            PortOpt {
                mode,
                backend,
                healthy,
                hb_ms: detector.hb_ms,
                timeout_ms: detector.timeout_ms,
                ft,
                max_conns: None,
                idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
                keepalive_s: 0,
            },
        );
        Ok(())
    }

    /// Sets what one service's clients may hold: at most `max_conns` connections (`None`:
    /// only the host's cap applies; past the cap a new client's SYN gets no answer and it
    /// retries, as with a full Linux backlog), and how long a connection may stay idle
    /// (`None`: the default, 0: forever), and after how long without a segment from the
    /// client it is probed with TCP keep-alives (`None` or 0: never).
    pub fn set_limits(
        &mut self,
        addr: SocketAddrV4,
        max_conns: Option<u32>,
        idle_timeout_s: Option<u32>,
        keepalive_s: Option<u32>,
    ) -> Result<(), ServiceError> {
        if max_conns == Some(0) {
            return Err(ServiceError::ZeroCap);
        }
        if let Some(p) = self.ports.get_mut(&addr) {
            p.max_conns = max_conns;
            p.idle_timeout_s = idle_timeout_s.unwrap_or(DEFAULT_IDLE_TIMEOUT_S);
            p.keepalive_s = keepalive_s.unwrap_or(0);
        }
        Ok(())
    }

    /// The option of a port, if it is served (vhost present, mode not off).
    pub fn serving(&self, addr: SocketAddrV4) -> Option<&PortOpt> {
        self.ports
            .get(&addr)
            .filter(|p| p.mode != Mode::Off && p.backend.is_some())
    }

    /// All port options.
    pub fn ports(&self) -> impl Iterator<Item = (SocketAddrV4, &PortOpt)> + '_ {
        self.ports.iter().map(|(a, p)| (*a, p))
    }

    /// Records a health-check result.
    pub fn set_healthy(&mut self, addr: SocketAddrV4, backend: SocketAddrV4, healthy: bool) {
        if let Some(p) = self.ports.get_mut(&addr) {
            if p.backend == Some(backend) {
                p.healthy = healthy;
            }
        }
    }

    /// What the heartbeat advertises: served ports whose backend answers.
    pub fn ads(&self) -> Vec<ServiceAd> {
        self.ports
            .iter()
            .filter(|(_, p)| p.mode != Mode::Off && p.healthy)
            .map(|(a, p)| ServiceAd {
                addr: *a,
                mode: p.mode,
                hb_ms: p.hb_ms,
                timeout_ms: p.timeout_ms,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn stall_timeout_defaults_to_one_second_and_refuses_zero() {
        assert_eq!(
            FtOpts::from_request(None, None, None, None)
                .unwrap()
                .stall_ms,
            1000
        );
        assert_eq!(
            FtOpts::from_request(None, None, None, Some(250))
                .unwrap()
                .stall_ms,
            250
        );
        assert_eq!(
            FtOpts::from_request(None, None, None, Some(0)),
            Err(ServiceError::ZeroStall)
        );
    }

    #[test]
    fn setportopt_needs_vhost_loopback_backend_and_port() {
        let mut s = Services::default();
        let svc = a("198.19.0.10:80");
        let be = Some(a("127.0.0.1:8080"));
        assert_eq!(
            s.set_port_opt(
                svc,
                Mode::Redirect,
                be,
                Detector::default(),
                FtOpts::default()
            ),
            Err(ServiceError::NoVhost(*svc.ip()))
        );
        s.add_vhost(*svc.ip());
        assert_eq!(
            s.set_port_opt(
                svc,
                Mode::Redirect,
                Some(a("10.0.0.1:80")),
                Detector::default(),
                FtOpts::default()
            ),
            Err(ServiceError::BackendNotLoopback(a("10.0.0.1:80")))
        );
        assert!(s
            .set_port_opt(
                svc,
                Mode::Redirect,
                None,
                Detector::default(),
                FtOpts::default()
            )
            .is_err());
        assert!(s
            .set_port_opt(
                svc,
                Mode::Ft,
                be,
                Detector {
                    hb_ms: 10,
                    timeout_ms: 15
                },
                FtOpts::default()
            )
            .is_err());
        assert!(s
            .set_port_opt(
                a("198.19.0.10:0"),
                Mode::Redirect,
                be,
                Detector::default(),
                FtOpts::default()
            )
            .is_err());
        s.set_port_opt(
            svc,
            Mode::Redirect,
            be,
            Detector::default(),
            FtOpts::default(),
        )
        .unwrap();
        assert!(s.serving(svc).is_some());
        assert!(s.ads().is_empty(), "not advertised before a health check");
        s.set_healthy(svc, a("127.0.0.1:8080"), true);
        assert_eq!(s.ads().len(), 1);
        s.set_port_opt(svc, Mode::Off, be, Detector::default(), FtOpts::default())
            .unwrap();
        assert!(s.serving(svc).is_none());
        assert!(s.ads().is_empty());
        s.del_vhost(*svc.ip()).unwrap();
        assert_eq!(s.ports().count(), 0);
    }
}
