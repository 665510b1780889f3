//! Control-plane plumbing shared by `hydra-redirector`, `hydra-host` and `hydractl`.
//!
//! Each daemon serves an admin API: HTTP/1.1 with JSON bodies on a Unix socket of mode 0600
//! (only root, or the daemon's user, can steer it), plus Prometheus text at `/metrics`.
//! [`serve`] is the server side, [`request`] the client side used by `hydractl`, and the
//! request bodies both sides share are in [`api`].
#![warn(missing_docs)]

pub mod api;
pub mod metrics;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A response from an admin handler.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(v: &serde_json::Value) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: v.to_string(),
        }
    }

    /// An error the user can act on, as `{"error": msg}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::json!({ "error": msg.into() }).to_string(),
        }
    }

    /// 200 with Prometheus text.
    pub fn metrics(text: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: text,
        }
    }
}

/// Why the admin API cannot be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing listens on the socket.
    #[error("no daemon answers on {path} ({err}): start it (hydra-host or hydra-redirector --config FILE) or pass --socket with its admin_socket")]
    NotRunning {
        /// The socket path.
        path: String,
        /// What connect said.
        err: std::io::Error,
    },
    /// The socket cannot be bound.
    #[error("cannot serve the admin API on {path}: {err}; check that its directory exists and is writable")]
    Bind {
        /// The socket path.
        path: String,
        /// What went wrong.
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The exchange failed midway.
    #[error("admin API on {path}: {err}")]
    Io {
        /// The socket path.
        path: String,
        /// What went wrong.
        err: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{0}")]
    Refused(String),
}

/// Serves the admin API on `path` in a background thread, calling `handler(method, url,
/// body)` for each request. A stale socket file is replaced; the new one gets mode 0600.
pub fn serve<F>(path: &Path, handler: F) -> Result<std::thread::JoinHandle<()>, AdminError>
where
    F: Fn(&str, &str, &str) -> Reply + Send + 'static,
{
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| AdminError::Bind {
            path: shown.clone(),
            err: Box::new(e),
        })?;
    }
    // A leftover socket from a crashed daemon would make bind fail.
    let _ = std::fs::remove_file(path);
    let server = tiny_http::Server::http_unix(path).map_err(|err| AdminError::Bind {
        path: shown.clone(),
        err,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        AdminError::Bind {
            path: shown.clone(),
            err: Box::new(e),
        }
    })?;
    let handle = std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = String::new();
                let reply = if req
                    .as_reader()
                    .take(1 << 20)
                    .read_to_string(&mut body)
                    .is_err()
                {
                    Reply::error(400, "request body is not utf-8 text")
                } else {
                    handler(req.method().as_str(), req.url(), &body)
                };
                respond(req, reply);
            }
        })
        .map_err(|e| AdminError::Bind {
            path: shown,
            err: Box::new(e),
        })?;
    Ok(handle)
}

/// Serves `GET /metrics` over plain HTTP on `addr` for Prometheus (the daemons'
/// `metrics_listen`), from `render`; anything else gets 404 (the admin API, which can change
/// the service, stays on the 0600 Unix socket). Returns the bound address (port 0 picks
/// one) and the server's thread.
pub fn serve_metrics<F>(
    addr: std::net::SocketAddr,
    render: F,
) -> Result<(std::net::SocketAddr, std::thread::JoinHandle<()>), AdminError>
where
    F: Fn() -> String + Send + 'static,
{
    let shown = addr.to_string();
    let server = tiny_http::Server::http(addr).map_err(|err| AdminError::Bind {
        path: shown.clone(),
        err,
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| AdminError::Bind {
            path: shown.clone(),
            err: "not an IP listener".into(),
        })?;
    let handle = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let is_metrics = req.method() == &tiny_http::Method::Get
                    && req.url().split('?').next() == Some("/metrics");
                let reply = if is_metrics {
                    Reply::metrics(render())
                } else {
                    Reply::error(
                        404,
                        "this listener serves GET /metrics only; the admin API is on the daemon's admin_socket",
                    )
                };
                respond(req, reply);
            }
        })
        .map_err(|e| AdminError::Bind {
            path: shown,
            err: Box::new(e),
        })?;
    Ok((bound, handle))
}

/// Sends `reply` as the answer to `req` (admin socket and metrics listener alike).
fn respond(req: tiny_http::Request, reply: Reply) {
    let header = tiny_http::Header::from_bytes("Content-Type", reply.content_type)
        .unwrap_or_else(|()| unreachable_header());
    let resp = tiny_http::Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header);
    if let Err(e) = req.respond(resp) {
        tracing::debug!(error = %e, "admin or metrics client went away");
    }
}

fn unreachable_header() -> tiny_http::Header {
    // INVARIANT: "Content-Type" and our fixed content types are valid header bytes.
    tiny_http::Header::from_bytes("Content-Type", "text/plain").expect("static header is valid")
}

/// Sends one request to the admin API on `socket` and returns the body of a 2xx answer.
/// A non-2xx answer becomes [`AdminError::Refused`] with the daemon's error message.
pub fn request(
    socket: &Path,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<String, AdminError> {
    let shown = socket.display().to_string();
    let io = |err| AdminError::Io {
        path: shown.clone(),
        err,
    };
    let mut s = UnixStream::connect(socket).map_err(|err| AdminError::NotRunning {
        path: shown.clone(),
        err,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {url} HTTP/1.1\r\nHost: hydranet\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    // Split and dechunk as bytes: a chunk boundary may fall inside a UTF-8 character.
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, rest) = match split {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => (&raw[..], &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // tiny_http may answer with chunked encoding; undo it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| format!("daemon answered HTTP {status}: {}", body.trim()));
        Err(AdminError::Refused(msg))
    }
}

/// The body of a chunked HTTP answer (RFC 9112 §7.1), as bytes; stops at the last chunk or
/// at anything malformed.
fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..eol]);
        // A chunk size may carry extensions after ';'.
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        let rest = &s[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// How a daemon writes its log lines to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event; ANSI colours only when `ansi`.
    Text {
        /// Colour the level and fields.
        ansi: bool,
    },
    /// One JSON object per line (for journald, Loki, Elasticsearch and the like).
    Json,
}

/// The log format a daemon uses: `HYDRA_LOG_FORMAT` (`format`) is `text` (the default) or
/// `json`. Text is coloured only on a terminal and without `NO_COLOR` (no-color.org), so
/// journald and log files get no escape codes.
pub fn log_format(
    format: Option<&str>,
    no_color: bool,
    terminal: bool,
) -> Result<LogFormat, String> {
    match format.map(str::trim) {
        None | Some("") | Some("text") => Ok(LogFormat::Text {
            ansi: terminal && !no_color,
        }),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(format!(
            "HYDRA_LOG_FORMAT={other:?} is not a log format: set it to `text` (the default) or `json`"
        )),
    }
}

/// Sets up `tracing` for a daemon: `RUST_LOG` filter (default info), to stderr, in the
/// format [`log_format`] picks from the environment. An unknown `HYDRA_LOG_FORMAT` is an
/// error the daemon reports before it starts.
pub fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal;
    let format = std::env::var("HYDRA_LOG_FORMAT").ok();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let format = log_format(format.as_deref(), no_color, std::io::stderr().is_terminal())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text { ansi } => builder.with_ansi(ansi).try_init(),
    };
    Ok(())
}

/// Where Debian's `fonts-dejavu-core` puts the font the bench and demo charts are drawn in.
pub const CHART_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The chart font's bytes, read once and kept for the process (plotters' `ab_glyph`
/// backend takes `'static` font data). Charts used fontconfig through plotters' `ttf`
/// feature, whose build needed `libfontconfig1-dev`; this needs only the font file.
pub fn chart_font() -> Result<&'static [u8], String> {
    static FONT: std::sync::OnceLock<Result<&'static [u8], String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        std::fs::read(CHART_FONT)
            .map(|b| &*Box::leak(b.into_boxed_slice()))
            .map_err(|e| {
                format!(
                    "cannot read the chart font {CHART_FONT} ({e}): install Debian's \
                     fonts-dejavu-core (scripts/install-deps does)"
                )
            })
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reaches_handler_and_errors_come_back_as_refused() {
        let dir = std::env::temp_dir().join(format!("hn-admin-test-{}", std::process::id()));
        let sock = dir.join("a.sock");
        serve(&sock, |m, u, b| match (m, u) {
            ("POST", "/echo") => Reply::json(&serde_json::json!({ "got": b })),
            _ => Reply::error(404, "no such thing"),
        })
        .unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let body = request(&sock, "POST", "/echo", Some("hi")).unwrap();
        assert_eq!(body, r#"{"got":"hi"}"#);
        match request(&sock, "GET", "/nope", None) {
            Err(AdminError::Refused(m)) => assert_eq!(m, "no such thing"),
            other => panic!("unexpected {other:?}"),
        }
        let missing = dir.join("missing.sock");
        assert!(matches!(
            request(&missing, "GET", "/", None),
            Err(AdminError::NotRunning { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        let text = |ansi| Ok(LogFormat::Text { ansi });
        assert_eq!(log_format(None, false, true), text(true));
        assert_eq!(log_format(None, false, false), text(false));
        assert_eq!(log_format(Some("text"), true, true), text(false));
        assert_eq!(log_format(Some(""), false, true), text(true));
        assert_eq!(log_format(Some("json"), false, true), Ok(LogFormat::Json));
        let err = log_format(Some("xml"), false, true).unwrap_err();
        assert!(err.contains("`text`") && err.contains("`json`"), "{err}");
    }

    #[test]
    fn metrics_listener_serves_metrics_only() {
        use std::io::{Read, Write};
        let (addr, _) = serve_metrics("127.0.0.1:0".parse().unwrap(), || {
            "hydra_x_total 7\n".to_string()
        })
        .unwrap();
        let get = |path: &str| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("hydra_x_total 7"), "{ok}");
        let other = get("/status");
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        assert!(other.contains("admin_socket"), "{other}");
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    /// A chunk boundary inside a UTF-8 character (the old `&str` slicing panicked there).
    #[test]
    fn dechunk_splits_inside_a_character_without_panicking() {
        let body = "é".as_bytes(); // two bytes, one per chunk
        let mut chunked = b"1\r\n".to_vec();
        chunked.extend_from_slice(&body[..1]);
        chunked.extend_from_slice(b"\r\n1;ext=1\r\n");
        chunked.extend_from_slice(&body[1..]);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(dechunk(&chunked), body);
        // Malformed or truncated input stops, never panics.
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
        assert_eq!(dechunk(b"10\r\nabc"), b"");
    }
}
