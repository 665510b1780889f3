//! The host server's TOML configuration.
//!
//! ```toml
//! node_id = 1
//! listen = "198.18.1.2:7000"        # UDP: tunnel and ack channel
//! # advertise = "198.18.1.2:7000"   # where others send to, if listen is 0.0.0.0
//! redirector = "198.18.1.1:7000"    # where heartbeats and client-bound packets go
//! redirector_id = 0                 # its node_id: the only sender of views taken
//! key_file = "/etc/hydranet/cluster.key"
//! admin_socket = "/run/hydranet/host.sock"
//! vhosts = ["198.19.0.10"]
//!
//! [[service]]
//! addr = "198.19.0.10:80"
//! mode = "redirect"                # or "ft"
//! backend = "127.0.0.1:8080"
//! hb_ms = 5                         # ft detector (setportopt --hb), optional
//! timeout_ms = 25                   # ft detector (setportopt --timeout), optional
//! repair = true                     # ft hop-by-hop repair (setportopt --repair), optional
//! order = "total"                   # ft total order across connections, optional
//! quiet_ms = 100                    # total order: longest wait for an answer, optional
//! stall_ms = 1000                   # ft: a member lagging this far behind is failed, optional
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// This host's id in the cluster (1..).
    pub node_id: u32,
    /// UDP address for the tunnel.
    pub listen: SocketAddr,
    /// The address the redirector and the peers send to (named in every heartbeat, under
    /// the MAC); defaults to `listen`, which must then be a specific IPv4 address.
    #[serde(default)]
    pub advertise: Option<SocketAddrV4>,
    /// The redirector's UDP address.
    pub redirector: SocketAddr,
    /// The redirector's `node_id`: the only sender whose views this host takes (the view
    /// authority).
    #[serde(default)]
    pub redirector_id: u32,
    /// The cluster key file (64 hex digits).
    pub key_file: PathBuf,
    /// The admin API's Unix socket.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Where to serve `GET /metrics` over plain HTTP for Prometheus (e.g. "0.0.0.0:9100");
    /// none by default (then `/metrics` is on the admin socket only).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Heartbeat interval to the redirector, milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Largest inner IP packet; 100 bytes of tunnel overhead (IPv4 20, UDP 8, HydraNet
    /// header 56, MAC 16) must fit the link MTU: 1400 on a 1500-byte link.
    #[serde(default = "default_mtu")]
    pub mtu: usize,
    /// Per-connection socket buffer bytes (each direction).
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer: usize,
    /// Send runs of datagrams to the redirector with one system call each (UDP GSO, Linux
    /// 4.18 and later). Turns itself off if the kernel refuses it; `false` sends every
    /// datagram with its own `sendto`.
    #[serde(default = "default_true")]
    pub udp_gso: bool,
    /// Most client connections on this host at once, all services together. Each
    /// established connection holds two `socket_buffer`s; past the cap new clients' SYNs get
    /// no answer and are counted (`hydra_syn_dropped_total{reason="host_cap"}`).
    #[serde(default = "default_max_conns")]
    pub max_conns: u32,
    /// After SIGTERM (or SIGINT), how long the host drains before it exits anyway, seconds:
    /// it withdraws every service at once (the redirector places no new connection here and
    /// takes it out of every ft view), hands each ft connection to the next member, and
    /// waits for its redirect-mode connections to end. A second signal exits at once.
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u64,
    /// Virtual hosts to create at start.
    #[serde(default)]
    pub vhosts: Vec<Ipv4Addr>,
    /// Port options to set at start.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// One `[[service]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service `ip:port`.
    pub addr: SocketAddrV4,
    /// `redirect`, `ft` or `off`.
    pub mode: String,
    /// The local backend.
    pub backend: Option<SocketAddrV4>,
    /// ft detector heartbeat interval, milliseconds (default 5).
    pub hb_ms: Option<u16>,
    /// ft detector timeout, milliseconds (default 25).
    pub timeout_ms: Option<u16>,
    /// ft hop-by-hop repair (default on).
    #[serde(default)]
    pub repair: Option<bool>,
    /// ft order across connections: `none` (default) or `total`.
    #[serde(default)]
    pub order: Option<String>,
    /// Total order: longest wait for the backend's answer, milliseconds (default 2).
    #[serde(default)]
    pub quiet_ms: Option<u16>,
    /// ft: how long a member may lag behind output another member's backend already
    /// produced before it is treated as failed for that connection, milliseconds (default
    /// 1000, at least 1).
    #[serde(default)]
    pub stall_ms: Option<u32>,
    /// Most client connections of this service at once (default: only the host's cap).
    #[serde(default)]
    pub max_conns: Option<u32>,
    /// Seconds a connection may pass with no byte either way before it is reset (default
    /// 600, 0: never).
    #[serde(default)]
    pub idle_timeout_s: Option<u32>,
    /// Seconds without a segment from the client before it is probed with TCP keep-alives;
    /// reset after 3 unanswered probes (default 0: off).
    #[serde(default)]
    pub keepalive_s: Option<u32>,
}

fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/hydranet/host.sock")
}
fn default_heartbeat_ms() -> u64 {
    50
}
fn default_mtu() -> usize {
    1400
}
fn default_true() -> bool {
    true
}
fn default_socket_buffer() -> usize {
    256 * 1024
}
fn default_max_conns() -> u32 {
    10_000
}
fn default_drain_timeout_s() -> u64 {
    30
}

impl HostConfig {
    /// Where peers and the redirector reach this host: `advertise`, else `listen`.
    pub fn advertised(&self) -> anyhow::Result<SocketAddrV4> {
        match (self.advertise, self.listen) {
            (Some(a), _) => Ok(a),
            (None, SocketAddr::V4(l)) if !l.ip().is_unspecified() => Ok(l),
            (None, l) => bail!(
                "listen = \"{l}\" names no address peers can send to: set advertise = \"<this host's IPv4>:{}\"",
                l.port()
            ),
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: HostConfig = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        if !(576..=9000).contains(&cfg.mtu) {
            bail!("mtu {} out of range: use 576..=9000", cfg.mtu);
        }
        if !(4096..=(64 << 20)).contains(&cfg.socket_buffer) {
            bail!(
                "socket_buffer {} out of range: use 4096..=67108864",
                cfg.socket_buffer
            );
        }
        if cfg.max_conns == 0 {
            bail!("max_conns 0 would refuse every client: use at least 1 (default 10000)");
        }
        cfg.advertised()?;
        if cfg.heartbeat_ms == 0 || cfg.heartbeat_ms > 10_000 {
            bail!(
                "heartbeat_ms {} out of range: use 1..=10000",
                cfg.heartbeat_ms
            );
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses() {
        let text = r#"
node_id = 1
listen = "198.18.1.2:7000"
redirector = "198.18.1.1:7000"
key_file = "/etc/hydranet/cluster.key"
vhosts = ["198.19.0.10"]
[[service]]
addr = "198.19.0.10:80"
mode = "redirect"
backend = "127.0.0.1:8080"
"#;
        let cfg: HostConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.services.len(), 1);
        assert_eq!(cfg.heartbeat_ms, 50);
        assert!(toml::from_str::<HostConfig>(&format!("{text}\nbogus = 1")).is_err());
        assert_eq!(
            cfg.advertised().unwrap(),
            "198.18.1.2:7000".parse().unwrap()
        );
        assert_eq!(cfg.redirector_id, 0);
    }

    #[test]
    fn a_wildcard_listen_needs_an_advertised_address() {
        let text = r#"
node_id = 1
listen = "0.0.0.0:7000"
redirector = "198.18.1.1:7000"
key_file = "/etc/hydranet/cluster.key"
"#;
        let cfg: HostConfig = toml::from_str(text).unwrap();
        let e = cfg.advertised().unwrap_err().to_string();
        assert!(e.contains("advertise = \"<this host's IPv4>:7000\""), "{e}");
        let cfg: HostConfig =
            toml::from_str(&format!("{text}advertise = \"198.18.1.2:7000\"\n")).unwrap();
        assert_eq!(
            cfg.advertised().unwrap(),
            "198.18.1.2:7000".parse().unwrap()
        );
    }
}
