//! The redirector's TOML configuration.
//!
//! ```toml
//! node_id = 0
//! listen = "0.0.0.0:7000"               # UDP: tunnel to and from host servers
//! key_file = "/etc/hydranet/cluster.key"
//! admin_socket = "/run/hydranet/redirector.sock"
//! tun_name = "hydra0"
//! tun_addr = "198.19.255.254/16"        # the kernel routes this prefix into the TUN
//! host_timeout_ms = 300                 # a host silent this long gets no new connections
//! max_flows = 262144                    # redirect mode: most connections pinned at once
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::flows::{DEFAULT_MAX_FLOWS, MAX_MAX_FLOWS};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirConfig {
    /// The redirector's id (distinct from every host's).
    #[serde(default)]
    pub node_id: u32,
    /// UDP address of the tunnel.
    pub listen: SocketAddr,
    /// The cluster key file.
    pub key_file: PathBuf,
    /// The admin API's Unix socket.
    #[serde(default = "default_admin_socket")]
    pub admin_socket: PathBuf,
    /// Where to serve `GET /metrics` over plain HTTP for Prometheus (e.g. "0.0.0.0:9100");
    /// none by default (then `/metrics` is on the admin socket only).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TUN device name.
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    /// TUN address and prefix: the service prefix routed into the TUN.
    pub tun_addr: String,
    /// TUN MTU; must leave room for 100 bytes of tunnel overhead on the host links.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Offload on the TUN (virtio-net header, TSO and checksum offload): the client's
    /// kernel hands over TCP super-segments of up to 64 KiB in one read, and consecutive
    /// segments to a client leave in one write. Falls back to plain reads and writes if the
    /// kernel refuses it.
    #[serde(default = "default_true")]
    pub tun_offload: bool,
    /// Send runs of datagrams to a host with one system call each (UDP GSO, Linux 4.18 and
    /// later). Turns itself off if the kernel refuses it.
    #[serde(default = "default_true")]
    pub udp_gso: bool,
    /// Heartbeat silence after which a host gets no new connections, milliseconds.
    #[serde(default = "default_timeout")]
    pub host_timeout_ms: u64,
    /// Redirect mode: the most connections the flow table pins at once. When it is full, a new
    /// connection takes the place of the oldest half-open (SYN only) or closed entry, or is
    /// routed by hash without pinning (see `flows.rs`).
    #[serde(default = "default_max_flows")]
    pub max_flows: usize,
}

fn default_admin_socket() -> PathBuf {
    PathBuf::from("/run/hydranet/redirector.sock")
}
fn default_tun_name() -> String {
    "hydra0".into()
}
fn default_true() -> bool {
    true
}
fn default_mtu() -> u16 {
    1500
}
fn default_timeout() -> u64 {
    300
}
fn default_max_flows() -> usize {
    DEFAULT_MAX_FLOWS
}

impl RedirConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: RedirConfig = toml::from_str(&text)
            .with_context(|| format!("config {} is not valid", path.display()))?;
        cfg.check()
            .with_context(|| format!("config {} is not valid", path.display()))?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        self.tun_prefix()?;
        if self.host_timeout_ms == 0 || self.host_timeout_ms > 60_000 {
            bail!(
                "host_timeout_ms {} out of range: use 1..=60000",
                self.host_timeout_ms
            );
        }
        if self.max_flows == 0 || self.max_flows > MAX_MAX_FLOWS {
            bail!(
                "max_flows {} out of range: use 1..={MAX_MAX_FLOWS} (each entry costs about 100 \
                 bytes; the default {DEFAULT_MAX_FLOWS} holds 10 s of a 26000 SYN/s flood)",
                self.max_flows
            );
        }
        Ok(())
    }

    /// `tun_addr` split into address and prefix length.
    pub fn tun_prefix(&self) -> anyhow::Result<(Ipv4Addr, u8)> {
        let bad = || {
            anyhow::anyhow!(
                "tun_addr `{}` is not ADDRESS/PREFIX: write e.g. \"198.19.255.254/16\"",
                self.tun_addr
            )
        };
        let (a, p) = self.tun_addr.split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u8 = p.parse().map_err(|_| bad())?;
        if p > 32 {
            return Err(bad());
        }
        Ok((a, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "0.0.0.0:7000"
        key_file = "/etc/hydranet/cluster.key"
        tun_addr = "198.19.255.254/16"
    "#;

    #[test]
    fn a_config_without_max_flows_gets_the_default() {
        let cfg: RedirConfig = toml::from_str(MINIMAL).unwrap();
        assert_eq!(cfg.max_flows, DEFAULT_MAX_FLOWS);
        cfg.check().unwrap();
    }

    #[test]
    fn max_flows_out_of_range_is_refused_with_the_range_to_use() {
        for bad in [0, MAX_MAX_FLOWS + 1] {
            let cfg: RedirConfig = toml::from_str(&format!("{MINIMAL}max_flows = {bad}")).unwrap();
            let err = cfg.check().unwrap_err().to_string();
            assert!(
                err.contains(&format!("max_flows {bad} out of range: use 1..=")),
                "{err}"
            );
        }
        let cfg: RedirConfig = toml::from_str(&format!("{MINIMAL}max_flows = 1000")).unwrap();
        assert_eq!(cfg.max_flows, 1000);
        cfg.check().unwrap();
    }
}
