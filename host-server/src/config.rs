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

use ack_channel::Mode;
use anyhow::{bail, Context};
use serde::Deserialize;

use crate::services::{Detector, FtOpts, Services};

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
    /// Where changes made at run time with `hydractl v_host` and `setportopt` are kept (one
    /// JSON object per line) and made again at the next start, after this file; default:
    /// this file's path with `.state` appended. Remove it to start from the config alone.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// Virtual hosts to create at start.
    #[serde(default)]
    pub vhosts: Vec<Ipv4Addr>,
    /// Port options to set at start.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// One `[[service]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service `ip:port`.
    pub addr: SocketAddrV4,
    /// `redirect`, `ft` or `off` (checked while parsing: an error names its line).
    #[serde(deserialize_with = "mode_word")]
    pub mode: Mode,
    /// The local backend.
    pub backend: Option<SocketAddrV4>,
    /// ft detector heartbeat interval, milliseconds (default 5).
    pub hb_ms: Option<u16>,
    /// ft detector timeout, milliseconds (default 25).
    pub timeout_ms: Option<u16>,
    /// ft hop-by-hop repair (default on).
    #[serde(default)]
    pub repair: Option<bool>,
    /// ft order across connections: `none` (default) or `total` (checked while parsing).
    #[serde(default, deserialize_with = "order_word")]
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

/// A mode word, refused while parsing (so that the error carries its line and column).
fn mode_word<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    let word = String::deserialize(d)?;
    word.parse().map_err(serde::de::Error::custom)
}

/// An order word (`none` or `total`), refused while parsing (by `FtOpts::from_request`,
/// the one place order words are read).
fn order_word<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let word = String::deserialize(d)?;
    FtOpts::from_request(None, Some(&word), None, None).map_err(serde::de::Error::custom)?;
    Ok(Some(word))
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

/// What applying a config's vhosts and services changed (`apply`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Services set that were not set by the previous config.
    pub added: Vec<SocketAddrV4>,
    /// Services whose entry differs from the previous config's.
    pub changed: Vec<SocketAddrV4>,
    /// Services the previous config set and this one does not: turned off (their open
    /// connections run to their end).
    pub withdrawn: Vec<SocketAddrV4>,
    /// Virtual hosts the previous config named and this one does not: recalled, with their
    /// services (set by the config or at run time).
    pub vhosts_removed: Vec<Ipv4Addr>,
}

impl HostConfig {
    /// Sets this config's vhosts and services on `services`, at start (`previous` `None`) or
    /// at a reload (SIGHUP): then only what differs from `previous` is touched, so services
    /// set at run time with `hydractl` and unchanged ones (their health, their limits) stay as
    /// they are. All or nothing: checked first on an empty table, an error leaves `services`
    /// unchanged.
    pub fn apply(
        &self,
        services: &mut Services,
        previous: Option<&HostConfig>,
    ) -> anyhow::Result<Applied> {
        let mut check = Services::default();
        self.apply_unchecked(&mut check, None)?;
        self.apply_unchecked(services, previous)
    }

    fn apply_unchecked(
        &self,
        services: &mut Services,
        previous: Option<&HostConfig>,
    ) -> anyhow::Result<Applied> {
        let mut out = Applied::default();
        let before =
            |addr: SocketAddrV4| previous.and_then(|p| p.services.iter().find(|s| s.addr == addr));
        for v in &self.vhosts {
            services.add_vhost(*v);
        }
        for svc in &self.services {
            match before(svc.addr) {
                Some(old) if old == svc => continue,
                Some(_) => out.changed.push(svc.addr),
                None => out.added.push(svc.addr),
            }
            svc.set_on(services)
                .with_context(|| format!("config service {}", svc.addr))?;
        }
        if let Some(p) = previous {
            for old in &p.services {
                if self.services.iter().any(|s| s.addr == old.addr) {
                    continue;
                }
                if services.serving(old.addr).is_some() {
                    services
                        .set_port_opt(
                            old.addr,
                            Mode::Off,
                            None,
                            Detector::default(),
                            FtOpts::from_request(None, None, None, None)?,
                        )
                        .with_context(|| format!("withdrawing service {}", old.addr))?;
                }
                out.withdrawn.push(old.addr);
            }
            for v in &p.vhosts {
                if !self.vhosts.contains(v) && services.del_vhost(*v).is_ok() {
                    out.vhosts_removed.push(*v);
                }
            }
        }
        Ok(out)
    }

    /// The state file of the config read from `path` (`state_file`, or `path` + `.state`).
    pub fn state_file_of(&self, path: &Path) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            let mut p = path.as_os_str().to_owned();
            p.push(".state");
            PathBuf::from(p)
        })
    }

    /// The settings that only a restart changes, named where `other` differs.
    pub fn needs_restart(&self, other: &HostConfig) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut differs = |name, d: bool| {
            if d {
                v.push(name);
            }
        };
        differs("node_id", self.node_id != other.node_id);
        differs("listen", self.listen != other.listen);
        differs("advertise", self.advertise != other.advertise);
        differs("redirector", self.redirector != other.redirector);
        differs("redirector_id", self.redirector_id != other.redirector_id);
        differs("key_file", self.key_file != other.key_file);
        differs("admin_socket", self.admin_socket != other.admin_socket);
        differs(
            "metrics_listen",
            self.metrics_listen != other.metrics_listen,
        );
        differs("heartbeat_ms", self.heartbeat_ms != other.heartbeat_ms);
        differs("mtu", self.mtu != other.mtu);
        differs("socket_buffer", self.socket_buffer != other.socket_buffer);
        differs("udp_gso", self.udp_gso != other.udp_gso);
        differs("max_conns", self.max_conns != other.max_conns);
        differs(
            "drain_timeout_s",
            self.drain_timeout_s != other.drain_timeout_s,
        );
        v
    }
}

impl ServiceConfig {
    /// `setportopt` with this entry's options.
    fn set_on(&self, services: &mut Services) -> anyhow::Result<()> {
        let mode = self.mode;
        let d = Detector::default();
        let detector = Detector {
            hb_ms: self.hb_ms.unwrap_or(d.hb_ms),
            timeout_ms: self.timeout_ms.unwrap_or(d.timeout_ms),
        };
        let ft = FtOpts::from_request(
            self.repair,
            self.order.as_deref(),
            self.quiet_ms,
            self.stall_ms,
        )?;
        services.set_port_opt(self.addr, mode, self.backend, detector, ft)?;
        services.set_limits(
            self.addr,
            self.max_conns,
            self.idle_timeout_s,
            self.keepalive_s,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    fn cfg(text: &str) -> HostConfig {
        let head = "node_id = 1\nlisten = \"198.18.1.2:7000\"\nredirector = \"198.18.1.1:7000\"\n\
                    key_file = \"/k\"\n";
        toml::from_str(&format!("{head}{text}")).expect("a valid test config")
    }

    fn served(s: &Services) -> Vec<(SocketAddrV4, Mode)> {
        s.ports()
            .filter(|(a, _)| s.serving(*a).is_some())
            .map(|(a, p)| (a, p.mode))
            .collect()
    }

    const ONE: &str = "vhosts = [\"198.19.0.10\"]\n\
        [[service]]\naddr = \"198.19.0.10:80\"\nmode = \"ft\"\nbackend = \"127.0.0.1:8080\"\n";

    #[test]
    fn a_reload_adds_changes_and_withdraws_services_and_leaves_runtime_ones() {
        let a = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let old = cfg(ONE);
        let mut s = Services::default();
        let applied = old.apply(&mut s, None).unwrap();
        assert_eq!(applied.added, vec![a("198.19.0.10:80")]);
        // Set at run time (hydractl setportopt): a reload leaves it alone.
        s.set_port_opt(
            a("198.19.0.10:443"),
            Mode::Redirect,
            Some(a("127.0.0.1:8443")),
            Detector::default(),
            FtOpts::from_request(None, None, None, None).unwrap(),
        )
        .unwrap();
        let new = cfg("vhosts = [\"198.19.0.10\"]\n\
            [[service]]\naddr = \"198.19.0.10:81\"\nmode = \"redirect\"\nbackend = \"127.0.0.1:8081\"\n");
        let applied = new.apply(&mut s, Some(&old)).unwrap();
        assert_eq!(
            applied,
            Applied {
                added: vec![a("198.19.0.10:81")],
                changed: vec![],
                withdrawn: vec![a("198.19.0.10:80")],
                vhosts_removed: vec![],
            }
        );
        assert_eq!(
            served(&s),
            vec![
                (a("198.19.0.10:81"), Mode::Redirect),
                (a("198.19.0.10:443"), Mode::Redirect)
            ]
        );
        // The same config again changes nothing.
        assert_eq!(new.apply(&mut s, Some(&new)).unwrap(), Applied::default());
    }

    #[test]
    fn a_broken_reload_changes_nothing() {
        let old = cfg(ONE);
        let mut s = Services::default();
        old.apply(&mut s, None).unwrap();
        let before = served(&s);
        // A second service is fine, the third names a vhost the config does not create.
        let bad = cfg("vhosts = [\"198.19.0.10\"]\n\
            [[service]]\naddr = \"198.19.0.10:81\"\nmode = \"redirect\"\nbackend = \"127.0.0.1:8081\"\n\
            [[service]]\naddr = \"198.19.0.11:80\"\nmode = \"redirect\"\nbackend = \"127.0.0.1:8081\"\n");
        let err = bad.apply(&mut s, Some(&old)).unwrap_err();
        assert!(format!("{err:#}").contains("198.19.0.11:80"), "{err:#}");
        assert_eq!(served(&s), before);
    }

    #[test]
    fn settings_only_a_restart_changes_are_named() {
        let a = cfg(ONE);
        let mut b = cfg(ONE);
        assert!(a.needs_restart(&b).is_empty());
        b.mtu = 9000;
        b.heartbeat_ms = 10;
        assert_eq!(a.needs_restart(&b), vec!["heartbeat_ms", "mtu"]);
    }
}
