//! Helpers for HydraNet's end-to-end tests: labs in network namespaces, driven through the
//! real `hydractl` binary, with real kernel-TCP clients (curl, redis-benchmark).
//!
//! Every lab is a [`Lab`] guard: dropping it (also while unwinding from a failed assertion)
//! runs `hydractl lab down`, so no `hn-` namespace outlives its test. The binaries must be
//! built first (`cargo build --release --bins`, as the README's test command does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory holding `hydractl`, `hydra-host`, `hydra-redirector`, `hydra-fileserver`:
/// `target/<profile>/`, the parent of the test binary's `deps/`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("HYDRA_BIN_DIR") {
        return PathBuf::from(d);
    }
    // INVARIANT: a test binary lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps")
        .to_path_buf()
}

/// Path of one of the workspace's binaries, with a clear failure when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first with `cargo build --release --bins` (the README's test command does)",
        p.display()
    );
    p
}

/// `hydractl` as a command.
pub fn hydractl() -> Command {
    Command::new(bin("hydractl"))
}

/// Whether namespace tests can run: true as root; otherwise skipped only when
/// `HYDRA_SKIP_NETNS=1`, and a failure saying so otherwise.
pub fn netns_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HYDRA_SKIP_NETNS").as_deref() == Ok("1") {
        eprintln!("skipping a namespace test: not root and HYDRA_SKIP_NETNS=1");
        return false;
    }
    panic!("namespace tests need root (they create network namespaces): run as root, or set HYDRA_SKIP_NETNS=1 to skip them");
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One lab at a time per test binary: they share two cores.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A lab name unique to this process, at most 12 characters: the first 5 of `prefix`, the
/// pid modulo 10000, a counter.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
    let short: String = prefix.chars().take(5).collect();
    format!("{short}{}{n}", std::process::id() % 10_000)
}

/// The `hn-NAME-*` namespaces that exist now.
pub fn namespaces_of(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let prefix = format!("hn-{name}-");
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// A running lab; `lab down` on drop.
pub struct Lab {
    /// Its name.
    pub name: String,
    /// What `lab up` printed.
    pub info: Value,
}

/// Text of an output for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Lab {
    /// `hydractl lab up --name <unique> --replicas N --backend-cmd CMD [extra...]`.
    pub fn up(prefix: &str, replicas: u32, backend_cmd: &str, extra: &[&str]) -> Lab {
        let name = unique_name(prefix);
        let out = hydractl()
            .args([
                "lab",
                "up",
                "--name",
                &name,
                "--replicas",
                &replicas.to_string(),
            ])
            .args(["--backend-cmd", backend_cmd])
            .args(extra)
            .output()
            .expect("run hydractl");
        // Guard first, so that a failed `up` is cleaned as well.
        let mut lab = Lab {
            name,
            info: Value::Null,
        };
        assert!(out.status.success(), "lab up failed: {}", show(&out));
        lab.info = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("lab up printed no JSON ({e}): {}", show(&out)));
        lab
    }

    /// Runs a command in a node's namespace.
    pub fn exec(&self, node: &str, args: &[&str]) -> Output {
        hydractl()
            .args(["lab", "exec", "--name", &self.name, node, "--"])
            .args(args)
            .output()
            .expect("run hydractl lab exec")
    }

    /// Starts `sh -c script` in a node's namespace without waiting, its output piped.
    pub fn spawn_sh(&self, node: &str, script: &str) -> std::process::Child {
        hydractl()
            .args([
                "lab", "exec", "--name", &self.name, node, "--", "sh", "-c", script,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn lab exec")
    }

    /// Runs a shell script in a node's namespace.
    pub fn sh(&self, node: &str, script: &str) -> Output {
        self.exec(node, &["sh", "-c", script])
    }

    /// Runs `hydractl lab <verb> --name NAME NODE [args]` and asserts success.
    pub fn ctl(&self, verb: &str, node: &str, args: &[&str]) {
        let out = hydractl()
            .args(["lab", verb, "--name", &self.name, node])
            .args(args)
            .output()
            .expect("run hydractl");
        assert!(out.status.success(), "lab {verb} {node}: {}", show(&out));
    }

    /// A daemon's admin socket: node `redir` or `h1`...
    pub fn socket(&self, node: &str) -> PathBuf {
        PathBuf::from(format!("/run/hydranet/lab-{}/{node}.sock", self.name))
    }

    /// The lab's cluster key file.
    pub fn key_file(&self) -> PathBuf {
        PathBuf::from(format!("/run/hydranet/lab-{}/cluster.key", self.name))
    }

    /// A daemon's `/metrics`.
    pub fn metrics(&self, node: &str) -> String {
        control_get(&self.socket(node), "/metrics")
    }

    /// A daemon's `/status` JSON.
    pub fn status(&self, node: &str) -> Value {
        // INVARIANT: the daemons answer /status with JSON.
        serde_json::from_str(&control_get(&self.socket(node), "/status")).expect("status json")
    }
}

impl Lab {
    /// The node name (`h1`...) of the current primary of the lab's ft service.
    pub fn primary(&self) -> String {
        let st = self.status("redir");
        let id = st["views"][0]["primary"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ft view at the redirector: {st}"));
        format!("h{id}")
    }

    /// The ft view's members as node names, primary first.
    pub fn members(&self) -> Vec<String> {
        let st = self.status("redir");
        st["views"][0]["members"]
            .as_array()
            .map(|a| a.iter().map(|m| format!("h{m}")).collect())
            .unwrap_or_default()
    }

    /// Resident memory of the lab node's hydra-host, KiB.
    pub fn host_rss_kib(&self, node: &str) -> u64 {
        let ns = format!("hn-{}-{node}", self.name);
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &ns])
            .output()
            .expect("ip netns pids");
        let pids = String::from_utf8_lossy(&out.stdout).to_string();
        for pid in pids.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "hydra-host" {
                continue;
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            }) {
                return kib;
            }
        }
        panic!("no hydra-host process in {ns}");
    }

    /// `hydractl setportopt 198.19.0.10:80 --mode ft --backend 127.0.0.1:8080 EXTRA...` on
    /// every member of the view.
    pub fn setportopt_all(&self, extra: &[&str]) {
        for h in self.members() {
            let out = hydractl()
                .args(["setportopt", "--socket"])
                .arg(self.socket(&h))
                .args([
                    "198.19.0.10:80",
                    "--mode",
                    "ft",
                    "--backend",
                    "127.0.0.1:8080",
                ])
                .args(extra)
                .output()
                .expect("run hydractl");
            assert!(
                out.status.success(),
                "setportopt {extra:?} on {h}: {}",
                show(&out)
            );
        }
    }

    /// `DEBUG DIGEST` of the redis backend on `node` (a hash of its whole data set).
    pub fn redis_digest(&self, node: &str) -> String {
        let out = self.exec(node, &["redis-cli", "-p", "8080", "DEBUG", "DIGEST"]);
        assert!(
            out.status.success(),
            "DEBUG DIGEST on {node}: {}",
            show(&out)
        );
        let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            d.len() == 40 && d.bytes().all(|b| b.is_ascii_hexdigit()),
            "DEBUG DIGEST on {node} answered {d:?} (start redis with --enable-debug-command local)"
        );
        d
    }

    /// A kernel-TCP client in the client namespace reads `GET /data.bin` from the service
    /// and timestamps every read; the thread returns the stamps and the body (head cut).
    pub fn timed_download(&self) -> std::thread::JoinHandle<(Vec<Instant>, Vec<u8>)> {
        self.in_ns("client", || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect("198.19.0.10:80").expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut stamps = Vec::new();
            let mut body = Vec::new();
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        stamps.push(Instant::now());
                        body.extend_from_slice(&buf[..n]);
                    }
                    Err(e) => panic!("read failed after {} bytes: {e}", body.len()),
                }
            }
            let head_end = body
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(0, |p| p + 4);
            (stamps, body.split_off(head_end))
        })
    }

    /// `curl` from the client of `/data.bin` on `port` of the service, at most `secs`:
    /// whether the body's SHA-256 is `sha`.
    pub fn fetches(&self, port: u16, secs: u32, sha: &str) -> bool {
        let out = self.sh(
            "client",
            &format!(
                "curl -sS --fail --max-time {secs} http://198.19.0.10:{port}/data.bin | sha256sum"
            ),
        );
        String::from_utf8_lossy(&out.stdout).starts_with(sha)
    }

    /// Waits (up to 2 s) until the redirector's view no longer contains `node`.
    pub fn wait_until_out_of_view(&self, node: &str) {
        for _ in 0..200 {
            if !self.members().iter().any(|m| m == node) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!(
            "{node} still in the view 2 s after its failure: {}",
            self.status("redir")
        );
    }

    /// Runs a closure on a thread inside a node's network namespace (setns affects only
    /// that thread), e.g. a kernel-TCP test client that timestamps its reads.
    pub fn in_ns<T: Send + 'static>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsFd;
        let ns = format!("/run/netns/hn-{}-{node}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("open netns");
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the daemons' logs of a failed test for the post-mortem.
            let kept = format!("/tmp/hydra-failed/{}", self.name);
            let _ = std::fs::create_dir_all("/tmp/hydra-failed");
            let _ = Command::new("cp")
                .args(["-r", &format!("/run/hydranet/lab-{}", self.name), &kept])
                .status();
            eprintln!("lab {}: daemon logs kept in {kept}", self.name);
            // CI shows only the test's output: print what the daemons warned about.
            let mut logs: Vec<_> = std::fs::read_dir(&kept)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.sort();
            for log in logs
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
            {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                for l in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{}: {l}", log.display());
                }
            }
        }
        let _ = hydractl()
            .args(["lab", "down", "--name", &self.name])
            .output();
        let left = namespaces_of(&self.name);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("lab down left namespaces behind: {left:?}");
        }
    }
}

/// GET over an admin socket, with the daemons' own client (`control::request`).
pub fn control_get(socket: &Path, url: &str) -> String {
    control::request(socket, "GET", url, None)
        .unwrap_or_else(|e| panic!("GET {url} on {}: {e}", socket.display()))
}

/// One sample of a Prometheus text, e.g. `metric(text, "hydra_datagrams_dropped_total{reason=\"bad_mac\"}")`.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The backend command of a lab whose hosts run redis on 127.0.0.1:8080 (no persistence).
pub const REDIS_BACKEND: &str =
    "exec redis-server --port 8080 --bind 127.0.0.1 --save '' --appendonly no";

/// A directory under /tmp removed on drop, holding a random file for downloads.
pub struct WebRoot {
    /// The directory.
    pub dir: PathBuf,
    /// SHA-256 of `data.bin`.
    pub sha256: String,
}

impl WebRoot {
    /// Writes `data.bin` of `bytes` random bytes (xorshift from `seed`).
    pub fn new(tag: &str, bytes: usize, seed: u64) -> WebRoot {
        let dir = std::env::temp_dir().join(format!("hn-www-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir webroot");
        let mut x = seed | 1;
        let mut data = Vec::with_capacity(bytes + 8);
        while data.len() < bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        data.truncate(bytes);
        std::fs::write(dir.join("data.bin"), &data).expect("write data.bin");
        WebRoot {
            sha256: sha256_hex(&data),
            dir,
        }
    }

    /// The backend command serving this directory on 127.0.0.1:8080.
    pub fn backend_cmd(&self) -> String {
        format!(
            "exec {} --root {} --listen 127.0.0.1:8080",
            bin("hydra-fileserver").display(),
            self.dir.display()
        )
    }

    /// The same, pacing every response to `rate` bytes per second.
    pub fn paced_backend_cmd(&self, rate: u64) -> String {
        format!("{} --rate {rate}", self.backend_cmd())
    }

    /// The path of `data.bin`.
    pub fn file(&self) -> PathBuf {
        self.dir.join("data.bin")
    }
}

impl Drop for WebRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The longest gap between two reads (`stamps`) around `at`: from it to `within` after it.
pub fn pause_around(stamps: &[Instant], at: Instant, within: Duration) -> Duration {
    stamps
        .windows(2)
        .filter(|w| w[1] >= at && w[0] <= at + within)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}
