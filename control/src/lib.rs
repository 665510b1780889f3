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
    // Always a Content-Length, never chunked (tiny_http chunks bodies over 32 KiB by
    // default): a client reads exactly the body, and none needs to dechunk.
    let resp = tiny_http::Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header)
        .with_chunked_threshold(usize::MAX);
    if let Err(e) = req.respond(resp) {
        tracing::debug!(error = %e, "admin or metrics client went away");
    }
}

fn unreachable_header() -> tiny_http::Header {
    // INVARIANT: "Content-Type" and our fixed content types are valid header bytes.
    tiny_http::Header::from_bytes("Content-Type", "text/plain").expect("static header is valid")
}

/// Sends one request to the admin API on `socket` and returns the body of a 2xx answer.
/// A non-2xx answer becomes [`AdminError::Refused`] with the daemon's error message. The one
/// client of the admin API: hydractl, the lab and the tests all use it.
pub fn request(
    socket: &Path,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<String, AdminError> {
    request_within(socket, method, url, body, Duration::from_secs(10))
}

/// [`request`], waiting at most `wait` for each read and write (the lab polls a daemon that
/// may be starting or stuck).
pub fn request_within(
    socket: &Path,
    method: &str,
    url: &str,
    body: Option<&str>,
    wait: Duration,
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
    s.set_read_timeout(Some(wait)).map_err(io)?;
    s.set_write_timeout(Some(wait)).map_err(io)?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {url} HTTP/1.1\r\nHost: hydranet\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let (status, body) = parse_answer(&raw).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{method} {url}: {e}"),
        ))
    })?;
    let body = String::from_utf8_lossy(body).into_owned();
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

/// A whole HTTP/1.1 answer of our daemons (always with a Content-Length, as `respond`
/// sends them): its status and body, split as bytes.
fn parse_answer(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of header")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let rest = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) if rest.len() >= n => Ok((status, &rest[..n])),
        Some(n) => Err(format!(
            "the answer was cut short: {} of {n} bytes",
            rest.len()
        )),
        None => Err("the answer has no Content-Length (not one of our daemons?)".into()),
    }
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

    /// A body larger than tiny_http's chunking threshold (32 KiB) comes with a
    /// Content-Length, whole, split inside a UTF-8 character or not.
    #[test]
    fn a_large_answer_has_a_content_length_and_comes_whole() {
        let dir = std::env::temp_dir().join(format!("hn-admin-large-{}", std::process::id()));
        let sock = dir.join("a.sock");
        let big: String = "é".repeat(60_000);
        let sent = big.clone();
        serve(&sock, move |_, _, _| Reply::metrics(sent.clone())).unwrap();
        let mut s = UnixStream::connect(&sock).unwrap();
        write!(s, "GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let head = String::from_utf8_lossy(&raw[..200]).to_ascii_lowercase();
        assert!(head.contains("content-length: 120000"), "{head}");
        assert!(!head.contains("chunked"), "{head}");
        assert_eq!(request(&sock, "GET", "/x", None).unwrap(), big);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn answers_without_a_length_or_cut_short_are_errors() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
            Ok((200, &b"{}"[..]))
        );
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{}")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n\r\n{}")
            .unwrap_err()
            .contains("no Content-Length"));
        assert!(parse_answer(b"HTTP/1.1 200").is_err());
    }
}
