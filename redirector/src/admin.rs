//! The redirector's admin API: `status` and `/metrics`.

use std::sync::Arc;

use control::Reply;
use serde_json::json;

use crate::dataplane::Shared;

/// Answers one admin request.
pub fn handle(shared: &Arc<Shared>, method: &str, url: &str) -> Reply {
    let now = crate::dataplane::clock();
    // INVARIANT: no code panics while holding the table lock.
    let table = shared.table.lock().expect("table lock");
    match (method, url) {
        ("GET", "/metrics") => Reply::metrics(shared.metrics.render(&table, now)),
        ("GET", "/status") => {
            let per_host = table.flows_per_host();
            let spoke = shared
                .metrics
                .to_client_by_host
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            let hosts: Vec<_> = table
                .hosts()
                .map(|(id, h)| {
                    json!({
                        "id": id.0,
                        "incarnation": h.incarnation.to_string(),
                        "addr": h.addr.to_string(),
                        "live": table.host_live(now, id),
                        "last_heartbeat_ms_ago": now.saturating_duration_since(h.last_seen).as_millis() as u64,
                        "services": h.services.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
                        "modes": h.services.iter().map(|s| s.mode.as_str()).collect::<Vec<_>>(),
                        "connections": per_host.get(&id).copied().unwrap_or(0),
                        "to_client_packets": spoke.get(&id.0).copied().unwrap_or(0),
                    })
                })
                .collect();
            // Per service: the modes its hosts advertise (one, unless they are configured
            // differently) and the live hosts offering it.
            type Offer = (std::collections::BTreeSet<&'static str>, Vec<u32>);
            let mut services = std::collections::BTreeMap::<String, Offer>::new();
            for (id, h) in table.hosts() {
                for s in &h.services {
                    let entry = services.entry(s.addr.to_string()).or_default();
                    entry.0.insert(s.mode.as_str());
                    if table.host_live(now, id) {
                        entry.1.push(id.0);
                    }
                }
            }
            let views: Vec<_> = table
                .views()
                .map(|(svc, v)| {
                    json!({
                        "service": svc.to_string(),
                        "epoch": v.epoch.0,
                        "members": v.members.iter().map(|m| m.0).collect::<Vec<_>>(),
                        "primary": v.members.first().map(|m| m.0),
                        "timeout_ms": v.timeout.as_millis() as u64,
                    })
                })
                .collect();
            Reply::json(&json!({
                "kind": "redirector",
                "incarnation": shared.sealer.incarnation().to_string(),
                "views": views,
                "hosts": hosts,
                "services": services.into_iter().map(|(s, (modes, live))| {
                    // Hosts that disagree show every mode they advertise ("ft,redirect").
                    let mode = modes.into_iter().collect::<Vec<_>>().join(",");
                    json!({"service": s, "mode": mode, "live_hosts": live})
                }).collect::<Vec<_>>(),
                "connections": table.flow_count(),
            }))
        }
        _ => Reply::error(
            404,
            format!("no such admin endpoint {method} {url} on the redirector: it serves GET /status and GET /metrics (v_host and setportopt go to a host server's socket)"),
        ),
    }
}
