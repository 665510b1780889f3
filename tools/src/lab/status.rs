//! `hydractl lab status`: one line per node, what runs in it and what the redirector thinks.

use std::fmt::Write;

use anyhow::Result;

use super::{net, procs, LabState, Node};

/// The report: a heading, then one line per node.
pub(super) fn status(lab: &LabState) -> Result<String> {
    let mut out = format!(
        "lab {}: {} mode, service {}, backend on 127.0.0.1:{} in each host\n",
        lab.name,
        lab.mode.as_str(),
        lab.service(),
        lab.backend_port
    );
    // The redirector's view of the hosts; a lab whose redirector is down still gets its lines.
    let sock = lab.dir().join("redir.sock");
    let redir: Result<serde_json::Value, String> = control::request(&sock, "GET", "/status", None)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
    for node in lab.nodes() {
        let ns = lab.ns(&node);
        let what = match node {
            Node::Host(i) => {
                let p = procs::host_procs(lab, i)?;
                let mut line = format!(
                    "hydra-host {}; backend {}; ",
                    procs::describe(&p.host),
                    procs::describe(&p.backend)
                );
                line += &match &redir {
                    Ok(v) => at_redirector(v, &lab.service(), i),
                    Err(_) => "the redirector does not answer".to_string(),
                };
                if !p.other.is_empty() {
                    let _ = write!(line, "; {} other processes (lab exec)", p.other.len());
                }
                line
            }
            Node::Client | Node::Redir => {
                let n = net::pids_in(std::slice::from_ref(&ns))?.len();
                let s = if n == 1 { "" } else { "es" };
                match (node, &redir) {
                    (Node::Redir, Err(e)) => {
                        format!("{n} process{s}; the admin API does not answer: {e}")
                    }
                    (Node::Redir, Ok(_)) => format!("{n} process{s}; the admin API answers"),
                    _ => format!("{n} process{s}"),
                }
            }
        };
        let _ = writeln!(out, "{:<7} {:<20} {what}", node.to_string(), ns);
    }
    Ok(out)
}

/// What the redirector's `GET /status` says of host `i` and `service`: live or not, whether
/// it offers the service, and its place in the service's ft view.
fn at_redirector(status: &serde_json::Value, service: &str, i: u16) -> String {
    let id = u64::from(i);
    let host = status["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["id"].as_u64() == Some(id));
    let Some(host) = host else {
        return "unknown to the redirector".to_string();
    };
    if host["live"].as_bool() != Some(true) {
        return "not live at the redirector".to_string();
    }
    let offers = host["services"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| s.as_str() == Some(service));
    if !offers {
        return "live at the redirector, without the service".to_string();
    }
    let view = status["views"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["service"].as_str() == Some(service));
    let place = view.map(|v| {
        let members: Vec<u64> = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_u64())
            .collect();
        match members.iter().position(|&m| m == id) {
            Some(0) => ", primary of the view",
            Some(_) => ", backup in the view",
            None => ", not in the view",
        }
    });
    format!(
        "live at the redirector with the service{}",
        place.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirector_line_says_live_service_and_place_in_view() {
        let status: serde_json::Value = serde_json::from_str(
            r#"{"kind":"redirector",
                "views":[{"service":"198.19.0.10:80","epoch":4,"members":[2,1],"primary":2}],
                "hosts":[
                  {"id":1,"live":true,"services":["198.19.0.10:80"]},
                  {"id":2,"live":true,"services":["198.19.0.10:80"]},
                  {"id":3,"live":true,"services":[]},
                  {"id":4,"live":false,"services":["198.19.0.10:80"]}]}"#,
        )
        .unwrap();
        let svc = "198.19.0.10:80";
        assert_eq!(
            at_redirector(&status, svc, 2),
            "live at the redirector with the service, primary of the view"
        );
        assert_eq!(
            at_redirector(&status, svc, 1),
            "live at the redirector with the service, backup in the view"
        );
        assert_eq!(
            at_redirector(&status, svc, 3),
            "live at the redirector, without the service"
        );
        assert_eq!(at_redirector(&status, svc, 4), "not live at the redirector");
        assert_eq!(at_redirector(&status, svc, 5), "unknown to the redirector");
        // Redirect mode has no views.
        let status = serde_json::json!({"hosts":[{"id":1,"live":true,"services":[svc]}]});
        assert_eq!(
            at_redirector(&status, svc, 1),
            "live at the redirector with the service"
        );
    }
}
