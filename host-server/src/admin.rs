//! The host server's admin API: `v_host`, `setportopt`, `status`, `/metrics`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ack_channel::{Mode, ReplicaId};
use control::api::{SetPortOpt, VHost};
use control::Reply;
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
            let ip: Ipv4Addr = match req.ip.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    return Reply::error(
                        400,
                        format!("`{}` is not an IPv4 address: pass e.g. 198.19.0.10", req.ip),
                    )
                }
            };
            // INVARIANT: no code panics while holding the lock.
            let mut s = shared.services.lock().expect("services lock");
            if url.ends_with("add") {
                s.add_vhost(ip);
                tracing::info!(%ip, "virtual host added");
            } else if let Err(e) = s.del_vhost(ip) {
                return Reply::error(404, e.to_string());
            } else {
                tracing::info!(%ip, "virtual host recalled");
            }
            Reply::json(&json!({ "ok": true }))
        }
        ("POST", "/setportopt") => {
            let req: SetPortOpt = match serde_json::from_str(body) {
                Ok(r) => r,
                Err(e) => return Reply::error(400, format!("bad request body: {e}")),
            };
            let addr: SocketAddrV4 = match req.service.parse() {
                Ok(a) => a,
                Err(_) => {
                    return Reply::error(
                        400,
                        format!(
                            "`{}` is not ip:port: pass e.g. 198.19.0.10:80",
                            req.service
                        ),
                    )
                }
            };
            let mode: Mode = match req.mode.parse() {
                Ok(m) => m,
                Err(e) => return Reply::error(400, e),
            };
            let backend = match req.backend.as_deref().map(str::parse::<SocketAddrV4>) {
                None => None,
                Some(Ok(b)) => Some(b),
                Some(Err(_)) => {
                    return Reply::error(
                        400,
                        "backend is not ip:port: pass e.g. --backend 127.0.0.1:8080",
                    )
                }
            };
            // INVARIANT: no code panics while holding the lock.
            let mut s = shared.services.lock().expect("services lock");
            let d = crate::services::Detector::default();
            let detector = crate::services::Detector {
                hb_ms: req.hb_ms.unwrap_or(d.hb_ms),
                timeout_ms: req.timeout_ms.unwrap_or(d.timeout_ms),
            };
            let ft = match crate::services::FtOpts::from_request(
                req.repair,
                req.order.as_deref(),
                req.quiet_ms,
                req.stall_ms,
            ) {
                Ok(ft) => ft,
                Err(e) => return Reply::error(400, e.to_string()),
            };
            match s
                .set_port_opt(addr, mode, backend, detector, ft)
                .and_then(|()| s.set_limits(addr, req.max_conns, req.idle_timeout_s, req.keepalive_s))
            {
                Ok(()) => {
                    tracing::info!(service = %addr, mode = mode.as_str(), ?backend, repair = ft.repair, total_order = ft.total_order, quiet_ms = ft.quiet_ms, stall_ms = ft.stall_ms, max_conns = ?req.max_conns, idle_timeout_s = ?req.idle_timeout_s, keepalive_s = ?req.keepalive_s, "setportopt");
                    Reply::json(&json!({ "ok": true }))
                }
                Err(e) => Reply::error(400, e.to_string()),
            }
        }
        _ => Reply::error(
            404,
            format!("no such admin endpoint {method} {url}: this daemon serves GET /status, GET /metrics, GET /v_host, POST /v_host/add, POST /v_host/del, POST /setportopt"),
        ),
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
