//! Request bodies of the admin API, shared by the daemons and `hydractl`.

use serde::{Deserialize, Serialize};

/// `POST /v_host/add` and `POST /v_host/del`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VHost {
    /// The service IP address.
    pub ip: String,
}

/// `POST /setportopt`: HydraNet's `setportopt(port, mode, detector)`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetPortOpt {
    /// `ip:port` of the service.
    pub service: String,
    /// `redirect`, `ft` or `off`.
    pub mode: String,
    /// `127.0.0.1:port` of the local backend; required unless mode is `off`.
    pub backend: Option<String>,
    /// ft detector heartbeat interval in milliseconds (default 5).
    #[serde(default)]
    pub hb_ms: Option<u16>,
    /// ft detector timeout in milliseconds (default 25).
    #[serde(default)]
    pub timeout_ms: Option<u16>,
    /// ft hop-by-hop repair (default on).
    #[serde(default)]
    pub repair: Option<bool>,
    /// ft order across connections: `none` (default) or `total`.
    #[serde(default)]
    pub order: Option<String>,
    /// Total order: the longest wait for the backend's answer, milliseconds (default 2).
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
    /// Seconds a connection may stay idle before it is reset (default 600, 0: never).
    #[serde(default)]
    pub idle_timeout_s: Option<u32>,
    /// Seconds of client silence before keep-alive probes (default 0: off).
    #[serde(default)]
    pub keepalive_s: Option<u32>,
}
