//! The host server's admin API: `v_host`, `setportopt`, `status`, `/metrics`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ack_channel::{Mode, ReplicaId};
use control::api::{SetPortOpt, VHost};
use control::Reply;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::dataplane::Shared;

/// Answers one admin request.
pub fn handle(shared: &Arc<Shared>, node: ReplicaId, method: &str, url: &str, body: &str) -> Reply {
    match (method, url) {
        ("GET", "/metrics") => Reply::metrics(shared.metrics.render()),
        ("GET", "/status") => status(shared, node),
        ("GET", "/v_host") => {
            // INVARIANT: no code panics while holding the lock.
            let s = shared.services.lock().expect("services lock");
            let list: Vec<String> = s.vhosts().map(|ip| ip.to_string()).collect();
            Reply::json(&json!({ "vhosts": list }))
        }
        ("POST", "/v_host/add") | ("POST", "/v_host/del") => {
            let req: VHost = match serde_json::from_str(body) {
                Ok(r) => r,
                Err(e) => return Reply::error(400, format!("bad request body: {e}")),
            };
            let change = if url.ends_with("add") {
                Change::VHostAdd(req)
            } else {
                Change::VHostDel(req)
            };
            apply_and_keep(shared, change)
        }
        ("POST", "/setportopt") => {
            let req: SetPortOpt = match serde_json::from_str(body) {
                Ok(r) => r,
                Err(e) => return Reply::error(400, format!("bad request body: {e}")),
            };
            apply_and_keep(shared, Change::SetPortOpt(req))
        }
        _ => Reply::error(
            404,
            format!("no such admin endpoint {method} {url}: this daemon serves GET /status, GET /metrics, GET /v_host, POST /v_host/add, POST /v_host/del, POST /setportopt"),
        ),
    }
}

/// A change made at run time through the admin API (`hydractl v_host`, `setportopt`). Each
/// one that succeeds is appended to the host's state file (one JSON object per line) and
/// made again at the next start, after the config file: runtime changes survive a restart.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// `v_host add`.
    VHostAdd(VHost),
    /// `v_host del`.
    VHostDel(VHost),
    /// `setportopt`.
    SetPortOpt(SetPortOpt),
}

/// Makes `change`, then appends it to the state file; the reply says whether it was kept.
fn apply_and_keep(shared: &Shared, change: Change) -> Reply {
    if let Err((code, e)) = apply(shared, &change) {
        return Reply::error(code, e);
    }
    match keep(shared, &change) {
        Ok(()) => Reply::json(&json!({ "ok": true })),
        Err(e) => {
            tracing::warn!("runtime change made but not kept: {e}");
            Reply::json(&json!({ "ok": true, "kept": false, "warning": e }))
        }
    }
}

/// Appends `change` to the state file, if the host has one.
fn keep(shared: &Shared, change: &Change) -> Result<(), String> {
    use std::io::Write;
    let Some(path) = shared.state_file.as_ref() else {
        return Ok(());
    };
    let line = serde_json::to_string(change).map_err(|e| e.to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the state file {}: {e}", path.display()))?;
    writeln!(f, "{line}")
        .and_then(|()| f.sync_data())
        .map_err(|e| format!("cannot write the state file {}: {e}", path.display()))
}

/// Makes the runtime changes the state file at `path` holds, in order, after the config
/// (at start). One that no longer applies (its vhost is gone from the config, say) is
/// skipped with a warning. Returns how many were made.
pub fn replay(shared: &Shared, path: &std::path::Path) -> usize {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(state = %path.display(), "cannot read the state file: runtime changes of earlier lives are not made again: {e}");
            return 0;
        }
    };
    let mut made = 0;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let change: Change = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(state = %path.display(), line = n + 1, "state file line skipped: {e}");
                continue;
            }
        };
        match apply(shared, &change) {
            Ok(()) => made += 1,
            Err((_, e)) => {
                tracing::warn!(state = %path.display(), line = n + 1, "runtime change no longer applies, skipped: {e}");
            }
        }
    }
    if made > 0 {
        tracing::info!(state = %path.display(), made, "runtime changes of earlier lives made again (hydractl v_host and setportopt; remove the file to start from the config alone)");
    }
    made
}

/// Makes one change on the services table: `Err((status, why))` if it is refused.
fn apply(shared: &Shared, change: &Change) -> Result<(), (u16, String)> {
    match change {
        Change::VHostAdd(req) | Change::VHostDel(req) => {
            let ip: Ipv4Addr = req.ip.parse().map_err(|_| {
                (
                    400,
                    format!("`{}` is not an IPv4 address: pass e.g. 198.19.0.10", req.ip),
                )
            })?;
            // INVARIANT: no code panics while holding the lock.
            let mut s = shared.services.lock().expect("services lock");
            if matches!(change, Change::VHostAdd(_)) {
                s.add_vhost(ip);
                tracing::info!(%ip, "virtual host added");
            } else {
                s.del_vhost(ip).map_err(|e| (404, e.to_string()))?;
                tracing::info!(%ip, "virtual host recalled");
            }
            Ok(())
        }
        Change::SetPortOpt(req) => {
            let addr: SocketAddrV4 = req.service.parse().map_err(|_| {
                (
                    400,
                    format!("`{}` is not ip:port: pass e.g. 198.19.0.10:80", req.service),
                )
            })?;
            let mode: Mode = req.mode.parse().map_err(|e| (400, e))?;
            let backend = match req.backend.as_deref().map(str::parse::<SocketAddrV4>) {
                None => None,
                Some(Ok(b)) => Some(b),
                Some(Err(_)) => {
                    return Err((
                        400,
                        "backend is not ip:port: pass e.g. --backend 127.0.0.1:8080".into(),
                    ))
                }
            };
            let d = crate::services::Detector::default();
            let detector = crate::services::Detector {
                hb_ms: req.hb_ms.unwrap_or(d.hb_ms),
                timeout_ms: req.timeout_ms.unwrap_or(d.timeout_ms),
            };
            let ft = crate::services::FtOpts::from_request(
                req.repair,
                req.order.as_deref(),
                req.quiet_ms,
                req.stall_ms,
            )
            .map_err(|e| (400, e.to_string()))?;
            // INVARIANT: no code panics while holding the lock.
            let mut s = shared.services.lock().expect("services lock");
            s.set_port_opt(addr, mode, backend, detector, ft)
                .and_then(|()| {
                    s.set_limits(addr, req.max_conns, req.idle_timeout_s, req.keepalive_s)
                })
                .map_err(|e| (400, e.to_string()))?;
            tracing::info!(service = %addr, mode = mode.as_str(), ?backend, repair = ft.repair, total_order = ft.total_order, quiet_ms = ft.quiet_ms, stall_ms = ft.stall_ms, max_conns = ?req.max_conns, idle_timeout_s = ?req.idle_timeout_s, keepalive_s = ?req.keepalive_s, "setportopt");
            Ok(())
        }
    }
}

fn status(shared: &Arc<Shared>, node: ReplicaId) -> Reply {
    let services: Vec<_> = {
        // INVARIANT: no code panics while holding the lock.
        let s = shared.services.lock().expect("services lock");
        s.ports()
            .map(|(addr, p)| {
                json!({
                    "service": addr.to_string(),
                    "mode": p.mode.as_str(),
                    "backend": p.backend.map(|b| b.to_string()),
                    "backend_healthy": p.healthy,
                    "hb_ms": p.hb_ms,
                    "timeout_ms": p.timeout_ms,
                    "repair": p.ft.repair,
                    "order": if p.ft.total_order { "total" } else { "none" },
                    "quiet_ms": p.ft.quiet_ms,
                    "stall_ms": p.ft.stall_ms,
                    "max_conns": p.max_conns,
                    "idle_timeout_s": p.idle_timeout_s,
                    "keepalive_s": p.keepalive_s,
                })
            })
            .collect()
    };
    let vhosts: Vec<String> = {
        // INVARIANT: no code panics while holding the lock.
        let s = shared.services.lock().expect("services lock");
        s.vhosts().map(|v| v.to_string()).collect()
    };
    // INVARIANT: no code panics while holding the lock.
    let conns = shared.conns.lock().expect("conns lock").clone();
    // INVARIANT: no code panics while holding the lock.
    let views: Vec<_> = shared
        .views
        .lock()
        .expect("views lock")
        .iter()
        .map(|(svc, epoch, members)| {
            json!({
                "service": svc,
                "epoch": epoch,
                "members": members,
                "role": if members.first() == Some(&node.0) { "primary" } else if members.contains(&node.0) { "backup" } else { "not a member" },
            })
        })
        .collect();
    // INVARIANT: no code panics while holding the lock.
    let states = shared.conn_states.lock().expect("conn_states lock").clone();
    let m = &shared.metrics;
    Reply::json(&json!({
        "kind": "host",
        "node_id": node.0,
        "incarnation": shared.incarnation.to_string(),
        "redirector_incarnation": ack_channel::Incarnation(shared.redirector_incarnation.load(std::sync::atomic::Ordering::Relaxed)).to_string(),
        "vhosts": vhosts,
        "services": services,
        "views": views,
        "connections_active": m.conns_active.get(),
        "connections_total": m.conns_total.get(),
        "connection_states": states,
        "connections": conns,
    }))
}
