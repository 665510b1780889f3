//! Pieces of the HydraNet demos and tests that stand in for real backends.
//!
//! `hydra-fileserver` is a deterministic HTTP/1.1 file server: the same request always gets
//! byte-identical response bytes (no `Date:` header, no randomness), which is what active
//! replication needs from a backend. It can pace its output (`--rate`), for streams that
//! must last long enough to kill a replica in the middle (`--rate` for every response, or
//! `?rate=BYTES_PER_SECOND` per request). A `POST` or `PUT` is answered with
//! the SHA-256 of its body, so an upload's integrity can be checked end to end.
#![warn(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// One parsed request line plus the headers HydraNet's demos care about.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD` (others are refused).
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// Whether the client asked to close after this response.
    pub close: bool,
    /// `Content-Length` of the request body (0 if none).
    pub body_len: u64,
    /// Pacing asked for with `?rate=BYTES_PER_SECOND`.
    pub rate: Option<u64>,
}

/// Reads one request head; `Ok(None)` on a clean end of stream.
pub fn read_request<R: BufRead>(r: &mut R) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let version = parts.next().unwrap_or("HTTP/1.0");
    let mut close = version != "HTTP/1.1";
    let mut body_len = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            close = lower.contains("close");
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            body_len = v.trim().parse().unwrap_or(0);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rate = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("rate="))
        .and_then(|v| v.parse().ok())
        .filter(|r| *r > 0);
    Ok(Some(Request {
        method,
        path: path.to_string(),
        close,
        body_len,
        rate,
    }))
}

/// Maps a URL path into `root`, refusing anything that climbs out of it.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = Path::new(url_path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

/// One random byte when `noise` names a file that exists (a deliberately nondeterministic
/// backend, for testing output agreement), else nothing.
fn noise_byte(noise: Option<&Path>) -> Option<u8> {
    use std::hash::{BuildHasher, Hasher};
    if !noise.is_some_and(Path::exists) {
        return None;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    Some(h.finish() as u8)
}

/// Serves one connection until the client closes. With `noise` naming a file that exists,
/// every 200 response's body starts with one extra random byte.
pub fn serve_connection<S: Read + Write>(
    stream: S,
    root: &Path,
    rate: Option<u64>,
    noise: Option<&Path>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader)? {
        if req.method == "POST" || req.method == "PUT" {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            let mut left = req.body_len;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = reader.read(&mut buf[..want])?;
                if n == 0 {
                    return Ok(());
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            let hex: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let mut body = format!("{hex}\n");
            if let Some(b) = noise_byte(noise) {
                body.insert(0, char::from(b'a' + b % 26));
            }
            let stream = reader.get_mut();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            )?;
            stream.flush()?;
            if req.close {
                break;
            }
            continue;
        }
        let file = resolve(root, &req.path)
            .filter(|p| p.is_file())
            .and_then(|p| std::fs::File::open(p).ok());
        let stream = reader.get_mut();
        let Some(mut file) = file.filter(|_| req.method == "GET" || req.method == "HEAD") else {
            let body = b"not found\n";
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
            continue;
        };
        let extra = noise_byte(noise);
        let len = file.metadata()?.len() + u64::from(extra.is_some());
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n{}\r\n",
            if req.close { "Connection: close\r\n" } else { "" }
        )?;
        if req.method == "GET" {
            if let Some(b) = extra {
                stream.write_all(&[b])?;
            }
            copy_paced(&mut file, stream, req.rate.or(rate))?;
        }
        stream.flush()?;
        if req.close {
            break;
        }
    }
    Ok(())
}

/// Copies everything, at most `rate` bytes per second when given.
pub fn copy_paced<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    rate: Option<u64>,
) -> std::io::Result<u64> {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let chunk = match rate {
            // Small chunks keep the pacing smooth: about 100 writes per second.
            Some(r) => ((r / 100).max(1) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = r.read(&mut buf[..chunk])?;
        if n == 0 {
            return Ok(sent);
        }
        w.write_all(&buf[..n])?;
        sent += n as u64;
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_paths_stay_inside_root() {
        let mut r =
            &b"GET /a/b.bin?x=1&rate=500 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..];
        let req = read_request(&mut r).unwrap().unwrap();
        assert_eq!(req.path, "/a/b.bin");
        assert_eq!(req.rate, Some(500));
        assert!(req.close);
        assert_eq!(
            resolve(Path::new("/srv"), "/a/b.bin"),
            Some(PathBuf::from("/srv/a/b.bin"))
        );
        assert_eq!(resolve(Path::new("/srv"), "/../etc/passwd"), None);
    }

    #[test]
    fn same_request_gets_identical_bytes() {
        let dir = std::env::temp_dir().join(format!("hn-fs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"0123456789").unwrap();
        let run = || {
            let mut io =
                std::io::Cursor::new(b"GET /f HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec());
            let mut out = Vec::new();
            struct Duplex<'a>(&'a mut std::io::Cursor<Vec<u8>>, &'a mut Vec<u8>);
            impl Read for Duplex<'_> {
                fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                    self.0.read(b)
                }
            }
            impl Write for Duplex<'_> {
                fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                    self.1.write(b)
                }
                fn flush(&mut self) -> std::io::Result<()> {
                    Ok(())
                }
            }
            serve_connection(Duplex(&mut io, &mut out), &dir, None, None).unwrap();
            out
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.ends_with(b"\r\n\r\n0123456789"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
