//! `hydractl bench`: side-by-side measurements of the same backend programs through five
//! paths, in one run, with the same client tools.
//!
//! - `kernel`: plain routing from the client namespace to h1's backend (the ceiling);
//! - `nginx-stream`: an nginx `stream` proxy in the redirector namespace to h1's backend;
//! - `redirect`: HydraNet redirect mode (3 hosts);
//! - `ft2`, `ft3`: HydraNet ft mode with 2 and 3 replicas.
//!
//! Backends on every host: hydra-fileserver on :8080 (bulk transfers, paced streams) and
//! redis-server on :6379 (request/response), both bound to all addresses so that the kernel
//! path and nginx reach h1's directly. Figures are printed and written, never asserted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde_json::{json, Value};

/// Arguments of `hydractl bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run (under 2 minutes): smaller transfers, fewer requests, one failover round,
    /// 1,000 connections for the scale test, 2,000 short connections.
    #[arg(long)]
    quick: bool,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw PNG charts (throughput bars, short connections per second, latency CDF, failover
    /// timeline) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
}

const PATHS: [&str; 5] = ["kernel", "nginx-stream", "redirect", "ft2", "ft3"];
const SERVICE: &str = "198.19.0.10";
/// Client threads opening short connections at once.
const SHORT_CLIENTS: usize = 16;

struct Sizes {
    bulk_mib: u64,
    par_mib: u64,
    pings: usize,
    rps_requests: usize,
    failover_rounds: usize,
    scale: Vec<usize>,
    short_conns: usize,
}

/// A lab built for the bench; `lab down` on drop.
struct BenchLab {
    name: String,
    replicas: usize,
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let _ = self_cmd()
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

fn self_cmd() -> Command {
    Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("hydractl")))
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_default();
    if !p.exists() {
        bail!("cannot find {name} next to hydractl: build with cargo build --release --bins");
    }
    Ok(p)
}

impl BenchLab {
    fn up(name: &str, replicas: usize, mode: &str, www: &Path) -> Result<BenchLab> {
        let _ = self_cmd().args(["lab", "down", "--name", name]).output();
        let redis_dir = format!("/run/hydranet/lab-{name}");
        let backend = format!(
            "redis-server --bind 0.0.0.0 --port 6379 --save '' --appendonly no --protected-mode no \
             --maxclients 30000 --daemonize yes --dir {redis_dir} --logfile '' >/dev/null; \
             exec {} --listen 0.0.0.0:8080 --root {}",
            sibling("hydra-fileserver")?.display(),
            www.display()
        );
        let o = self_cmd()
            .args([
                "lab",
                "up",
                "--name",
                name,
                "--replicas",
                &replicas.to_string(),
            ])
            .args(["--mode", mode, "--backend-cmd", &backend])
            .output()?;
        let lab = BenchLab {
            name: name.to_string(),
            replicas,
        };
        if !o.status.success() {
            bail!(
                "lab up {name}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        // The redis service beside the file service, on every host.
        for h in 1..=replicas {
            let sock = format!("/run/hydranet/lab-{name}/h{h}.sock");
            let o = self_cmd()
                .args(["setportopt", &format!("{SERVICE}:6379"), "--mode", mode])
                .args(["--backend", "127.0.0.1:6379", "--socket", &sock])
                .output()?;
            if !o.status.success() {
                bail!(
                    "setportopt on h{h}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
        lab.wait_service(6379, replicas)?;
        Ok(lab)
    }

    fn status(&self) -> Result<Value> {
        let sock = PathBuf::from(format!("/run/hydranet/lab-{}/redir.sock", self.name));
        Ok(serde_json::from_str(&control::request(
            &sock, "GET", "/status", None,
        )?)?)
    }

    fn wait_service(&self, port: u16, hosts: usize) -> Result<()> {
        let want = format!("{SERVICE}:{port}");
        for _ in 0..100 {
            let st = self.status()?;
            let live = st["hosts"]
                .as_array()
                .map(|hs| {
                    hs.iter()
                        .filter(|h| {
                            h["live"] == true
                                && h["services"]
                                    .as_array()
                                    .is_some_and(|s| s.iter().any(|x| x == &json!(want)))
                        })
                        .count()
                })
                .unwrap_or(0);
            if live >= hosts {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{want} did not come up on {hosts} hosts of lab {}",
            self.name
        )
    }

    fn primary(&self) -> Result<String> {
        let st = self.status()?;
        let id = st["views"][0]["primary"]
            .as_u64()
            .context("no ft view at the redirector")?;
        Ok(format!("h{id}"))
    }

    fn exec(&self, node: &str, script: &str) -> Result<String> {
        let o = self_cmd()
            .args([
                "lab", "exec", "--name", &self.name, node, "--", "sh", "-c", script,
            ])
            .stderr(Stdio::piped())
            .output()?;
        if !o.status.success() {
            bail!(
                "`{script}` in {node}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }

    fn kill(&self, node: &str) -> Result<()> {
        let o = self_cmd()
            .args(["lab", "kill", "--name", &self.name, node])
            .output()?;
        if !o.status.success() {
            bail!(
                "lab kill {node}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts `f` on a thread inside the client namespace. Threads that `f` starts are in
    /// the client namespace too (a new thread takes its creator's namespaces).
    fn spawn_in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T>> {
        let ns = format!("/run/netns/hn-{}-client", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).map_err(|e| anyhow::anyhow!("{ns}: {e}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow::anyhow!("setns {ns}: {e}"))?;
            Ok(f())
        })
    }

    /// Runs `f` on a thread inside the client namespace.
    fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        self.spawn_in_client(f)
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }
}

/// Bulk: `conns` parallel curl downloads of `file`; aggregate MB/s.
fn bulk(lab: &BenchLab, host: &str, port: u16, file: &str, conns: usize) -> Result<f64> {
    let script = format!(
        "start=$(date +%s.%N); for i in $(seq 1 {conns}); do \
         curl -sS --fail --max-time 600 -o /dev/null -w '%{{size_download}}\\n' http://{host}:{port}/{file} & done; wait; \
         end=$(date +%s.%N); echo \"T $start $end\""
    );
    let out = lab.exec("client", &script)?;
    let mut bytes = 0f64;
    let mut secs = 0f64;
    for l in out.lines() {
        if let Some(t) = l.strip_prefix("T ") {
            let v: Vec<f64> = t
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 2 {
                secs = v[1] - v[0];
            }
        } else if let Ok(b) = l.trim().parse::<f64>() {
            bytes += b;
        }
    }
    if secs <= 0.0 || bytes <= 0.0 {
        bail!("bulk transfer to {host}:{port} gave no figure: {out}");
    }
    Ok(bytes / secs / 1e6)
}

/// One redis PING round trip on `s`, in milliseconds.
fn ping_once(s: &mut TcpStream) -> Result<f64> {
    let mut buf = [0u8; 16];
    let t = Instant::now();
    s.write_all(b"PING\r\n")?;
    let mut got = 0;
    while got < 7 {
        let k = s.read(&mut buf[got..])?;
        if k == 0 {
            bail!("connection closed during PING");
        }
        got += k;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Latency of redis PING on one connection, `n` round trips, from a kernel-TCP client.
fn ping_latencies(lab: &BenchLab, addr: SocketAddr, n: usize) -> Result<Vec<f64>> {
    lab.in_client(move || -> Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        (0..n).map(|_| ping_once(&mut s)).collect()
    })?
}

/// Requests per second of GET with 50 connections (redis-benchmark).
fn rps(lab: &BenchLab, host: &str, port: u16, n: usize) -> Result<f64> {
    let out = lab.exec(
        "client",
        &format!("redis-benchmark -h {host} -p {port} -c 50 -n {n} -t get -q 2>&1 | tr '\\r' '\\n' | grep 'requests per second' | tail -1"),
    )?;
    out.split_whitespace()
        .find_map(|w| w.parse::<f64>().ok())
        .with_context(|| format!("no requests-per-second figure from redis-benchmark: {out}"))
}

/// What `n` short connections gave: rate, sorted connection times, failures.
struct ShortConns {
    per_s: f64,
    times_ms: Vec<f64>,
    failed: usize,
    first_error: Option<String>,
    /// Each hydra-host's peak RSS during the run less its RSS before (empty if not sampled).
    host_rss_growth_kib: Vec<u64>,
}

/// One short connection: connect, one PING, the client's FIN first, then wait for the
/// server's. Returns connect-to-close time in milliseconds.
fn short_conn(addr: SocketAddr) -> Result<f64> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).context("connect")?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    ping_once(&mut s).context("PING")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = [0u8; 64];
    while s.read(&mut buf).context("waiting for the server's FIN")? > 0 {}
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// `n` short connections (see [`short_conn`]) from [`SHORT_CLIENTS`] kernel-TCP client
/// threads at once, each opening the next as soon as its last one closed. With `sample_rss`,
/// the lab's hydra-host processes are sampled every 100 ms for their peak RSS.
fn short_conns(lab: &BenchLab, addr: SocketAddr, n: usize, sample_rss: bool) -> Result<ShortConns> {
    let before = if sample_rss {
        host_rss_kib(lab)
    } else {
        Vec::new()
    };
    let mut peak = before.clone();
    let clients = lab.spawn_in_client(move || {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let per_thread: Vec<Vec<Result<f64>>> = std::thread::scope(|sc| {
            let workers: Vec<_> = (0..SHORT_CLIENTS)
                .map(|_| {
                    sc.spawn(|| {
                        let mut out = Vec::new();
                        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                            out.push(short_conn(addr));
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let secs = started.elapsed().as_secs_f64();
        let mut times_ms = Vec::with_capacity(n);
        let mut failed = n;
        let mut first_error = None;
        for r in per_thread.into_iter().flatten() {
            match r {
                Ok(ms) => times_ms.push(ms),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        failed -= times_ms.len();
        times_ms.sort_by(f64::total_cmp);
        ShortConns {
            per_s: times_ms.len() as f64 / secs,
            times_ms,
            failed,
            first_error,
            host_rss_growth_kib: Vec::new(),
        }
    });
    while sample_rss && !clients.is_finished() {
        for (p, now) in peak.iter_mut().zip(host_rss_kib(lab)) {
            *p = (*p).max(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got = clients
        .join()
        .map_err(|_| anyhow::anyhow!("short connection clients panicked"))??;
    for (p, now) in peak.iter_mut().zip(host_rss_kib(lab)) {
        *p = (*p).max(now);
    }
    got.host_rss_growth_kib = peak
        .iter()
        .zip(&before)
        .map(|(p, b)| p.saturating_sub(*b))
        .collect();
    Ok(got)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).floor() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A paced stream read by a kernel-TCP client that timestamps its reads, with `kills` of
/// the node `victim` names at the given offsets. Returns (read times, bytes ok, ended by).
struct Stream {
    stamps: Vec<(f64, usize)>,
    kills: Vec<f64>,
    pauses_ms: Vec<f64>,
    bytes: usize,
    intact: bool,
    ended: String,
}

fn paced_stream(
    lab_name: &str,
    addr: SocketAddr,
    file: &str,
    expect: &[u8],
    rate: u64,
    kills_at: &[f64],
    kill: &dyn Fn() -> Result<()>,
) -> Result<Stream> {
    let ns = format!("/run/netns/hn-{lab_name}-client");
    let req = format!("GET /{file}?rate={rate} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let start = Instant::now();
    /// (time, bytes so far) per read; the bytes; how the stream ended.
    type Read3 = (Vec<(f64, usize)>, Vec<u8>, String);
    let reader = std::thread::spawn(move || -> Result<Read3> {
        let f = std::fs::File::open(&ns)?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(req.as_bytes())?;
        let mut stamps = Vec::new();
        let mut body = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof".to_string(),
                Ok(n) => {
                    body.extend_from_slice(&buf[..n]);
                    stamps.push((start.elapsed().as_secs_f64(), body.len()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset".into(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break "stalled 15 s".into()
                }
                Err(e) => break format!("error: {e}"),
            }
        };
        Ok((stamps, body, ended))
    });
    let mut kills = Vec::new();
    for &k in kills_at {
        let wait = Duration::from_secs_f64(k).saturating_sub(start.elapsed());
        std::thread::sleep(wait);
        kills.push(start.elapsed().as_secs_f64());
        kill()?;
    }
    let (stamps, body, ended) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("stream reader panicked"))??;
    let head = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(body.len(), |p| p + 4);
    let payload = &body[head.min(body.len())..];
    let intact = payload == expect;
    let pauses_ms = kills
        .iter()
        .map(|&k| {
            stamps
                .windows(2)
                .filter(|w| w[1].0 >= k && w[0].0 <= k + 2.0)
                .map(|w| (w[1].0 - w[0].0) * 1e3)
                .fold(0.0, f64::max)
        })
        .collect();
    Ok(Stream {
        stamps,
        kills,
        pauses_ms,
        bytes: payload.len(),
        intact,
        ended,
    })
}

/// RSS (KiB) of every hydra-host process of a lab.
fn host_rss_kib(lab: &BenchLab) -> Vec<u64> {
    let mut out = Vec::new();
    for h in 1..=lab.replicas {
        let ns = format!("/run/netns/hn-{}-h{h}", lab.name);
        let Ok(target) = std::fs::metadata(&ns) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let p = e.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim() != "hydra-host" {
                continue;
            }
            let Ok(m) = std::fs::metadata(p.join("ns/net")) else {
                continue;
            };
            if m.ino() != target.ino() || m.dev() != target.dev() {
                continue;
            }
            let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
            {
                out.push(kb);
            }
        }
    }
    out
}

/// Holds `n` connections open to the redis service through ft3 and measures PING latency
/// over a sample of them, plus the host servers' RSS.
fn scale(lab: &BenchLab, n: usize) -> Result<Value> {
    let addr: SocketAddr = format!("{SERVICE}:6379").parse()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Vec<f64>>>();
    let ns = format!("/run/netns/hn-{}-client", lab.name);
    let holder = std::thread::spawn(move || {
        let run = || -> Result<Vec<f64>> {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
            let f = std::fs::File::open(&ns)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                    .with_context(|| format!("connection {i} of {n}"))?;
                conns.push(s);
            }
            let mut lat = Vec::new();
            let step = (n / 200).max(1);
            for s in conns.iter_mut().step_by(step) {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                lat.push(ping_once(s)?);
            }
            Ok(lat)
        };
        let r = run();
        let _ = ready_tx.send(r);
        let _ = rx.recv_timeout(Duration::from_secs(60));
    });
    let started = Instant::now();
    let lat = ready_rx
        .recv_timeout(Duration::from_secs(300))
        .map_err(|_| anyhow::anyhow!("opening {n} connections took over 300 s"))??;
    let open_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(700));
    let rss = host_rss_kib(lab);
    let _ = tx.send(());
    let _ = holder.join();
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "connections": n,
        "open_seconds": open_s,
        "host_rss_mib": rss.iter().map(|k| *k as f64 / 1024.0).collect::<Vec<_>>(),
        "ping_p50_ms": percentile(&sorted, 0.5),
        "ping_p99_ms": percentile(&sorted, 0.99),
    }))
}

fn random_file(path: &Path, bytes: u64, seed: u64) -> Result<Vec<u8>> {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(bytes as usize + 8);
    while (data.len() as u64) < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(bytes as usize);
    std::fs::write(path, &data)?;
    Ok(data)
}

fn progress(msg: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench: [{t:6.1} s] {msg}");
}

/// `hydractl bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hydractl bench needs root (it builds network namespaces): run it with sudo");
    }
    for (tool, pkg) in [
        ("curl", "curl"),
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("nginx", "nginx libnginx-mod-stream"),
    ] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("{tool} is missing: install it with apt-get install {pkg}");
        }
    }
    let started = Instant::now();
    let sz = if args.quick {
        Sizes {
            bulk_mib: 48,
            par_mib: 8,
            pings: 2000,
            rps_requests: 20_000,
            failover_rounds: 1,
            scale: vec![1000],
            short_conns: 2000,
        }
    } else {
        Sizes {
            bulk_mib: 400,
            par_mib: 64,
            pings: 20_000,
            rps_requests: 200_000,
            failover_rounds: 3,
            scale: vec![1000, 10_000],
            short_conns: 10_000,
        }
    };
    let www = std::env::temp_dir().join(format!("hn-bench-{}", std::process::id()));
    std::fs::create_dir_all(&www)?;
    let _cleanup = RemoveDir(www.clone());
    random_file(&www.join("bulk.bin"), sz.bulk_mib << 20, 1)?;
    random_file(&www.join("par.bin"), sz.par_mib << 20, 2)?;
    let stream_bytes: u64 = 12 << 20;
    let stream = random_file(&www.join("stream.bin"), stream_bytes, 3)?;
    let stream_rate: u64 = 2 << 20;

    let mut r: BTreeMap<&str, BTreeMap<String, Value>> = BTreeMap::new();
    let mut latencies: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut timelines: Vec<(String, Stream)> = Vec::new();

    // Lab A: kernel, nginx-stream, redirect.
    progress("lab up: 3 hosts, redirect mode, nginx stream proxy to h1");
    let a = BenchLab::up(
        &format!("bna{}", std::process::id() % 10_000),
        3,
        "redirect",
        &www,
    )?;
    let state = PathBuf::from(format!("/run/hydranet/lab-{}", a.name));
    let conf = state.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nuser root;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/nginx.log;\nevents {{ worker_connections 20000; }}\nstream {{\n  server {{ listen 198.18.0.1:8080; proxy_pass 198.18.1.2:8080; }}\n  server {{ listen 198.18.0.1:6379; proxy_pass 198.18.1.2:6379; }}\n}}\n",
            p = state.display()
        ),
    )?;
    a.exec("redir", &format!("nginx -c {}", conf.display()))?;
    let targets: [(&str, &str, u16, u16); 3] = [
        ("kernel", "198.18.1.2", 8080, 6379),
        ("nginx-stream", "198.18.0.1", 8080, 6379),
        ("redirect", SERVICE, 80, 6379),
    ];
    for (path, host, http, redis) in targets {
        progress(&format!(
            "{path}: bulk, latency, requests per second, short connections"
        ));
        measure(&a, path, host, http, redis, &sz, &mut r, &mut latencies)?;
    }
    // What a backend crash does to kernel and nginx paths: both streams, kill h1 once.
    progress("kernel and nginx-stream: h1 killed during a paced stream");
    let kk = {
        let addr_k: SocketAddr = "198.18.1.2:8080".parse()?;
        let addr_n: SocketAddr = "198.18.0.1:8080".parse()?;
        let e2 = stream.clone();
        let lab_name = a.name.clone();
        // Both streams at once; the one kill of h1 hits both.
        let nginx_thread = std::thread::spawn(move || {
            paced_stream(
                &lab_name,
                addr_n,
                "stream.bin",
                &e2,
                stream_rate,
                &[],
                &|| Ok(()),
            )
        });
        let k = paced_stream(
            &a.name,
            addr_k,
            "stream.bin",
            &stream,
            stream_rate,
            &[2.0],
            &|| a.kill("h1"),
        )?;
        let n = nginx_thread
            .join()
            .map_err(|_| anyhow::anyhow!("nginx stream panicked"))??;
        (k, n)
    };
    for (path, s) in [("kernel", &kk.0), ("nginx-stream", &kk.1)] {
        let e = r.entry(path).or_default();
        e.insert(
            "failover".into(),
            json!(format!(
                "connection lost: {} after {:.1} MiB ({})",
                s.ended,
                s.bytes as f64 / 1048576.0,
                if s.intact { "complete" } else { "incomplete" }
            )),
        );
    }
    timelines.push(("kernel (h1 killed)".into(), kk.0));
    timelines.push(("nginx-stream (h1 killed)".into(), kk.1));
    drop(a);

    // ft2 and ft3.
    for (path, replicas) in [("ft2", 2usize), ("ft3", 3usize)] {
        progress(&format!("lab up: {replicas} replicas, ft mode"));
        let lab = BenchLab::up(
            &format!("bn{path}{}", std::process::id() % 10_000),
            replicas,
            "ft",
            &www,
        )?;
        progress(&format!(
            "{path}: bulk, latency, requests per second, short connections"
        ));
        measure(&lab, path, SERVICE, 80, 6379, &sz, &mut r, &mut latencies)?;
        if path == "ft3" {
            for &n in &sz.scale {
                progress(&format!("ft3: {n} connections held open"));
                let v = scale(&lab, n)?;
                r.entry(path).or_default().insert(format!("scale_{n}"), v);
            }
        }
        drop(lab);
        // Failover rounds: a fresh lab each round; kill the primary (ft3: twice).
        let kills_per_round = replicas - 1;
        let mut pauses = Vec::new();
        let mut all_intact = true;
        let mut bulk_ok = Vec::new();
        for round in 0..sz.failover_rounds {
            progress(&format!(
                "{path}: failover round {} of {}",
                round + 1,
                sz.failover_rounds
            ));
            let lab = BenchLab::up(
                &format!("bf{path}{}", std::process::id() % 10_000),
                replicas,
                "ft",
                &www,
            )?;
            let kills: Vec<f64> = (0..kills_per_round).map(|k| 1.5 + 2.0 * k as f64).collect();
            let s = paced_stream(
                &lab.name,
                format!("{SERVICE}:80").parse()?,
                "stream.bin",
                &stream,
                stream_rate,
                &kills,
                &|| lab.kill(&lab.primary()?),
            )?;
            all_intact &= s.intact;
            pauses.extend(s.pauses_ms.iter().copied());
            if round == 0 {
                timelines.push((format!("{path} (primary killed)"), s));
            }
            drop(lab);
            // Bulk transfer with the primary killed in the middle.
            let lab = BenchLab::up(
                &format!("bb{path}{}", std::process::id() % 10_000),
                replicas,
                "ft",
                &www,
            )?;
            let script =
                format!("curl -sS --fail --max-time 600 http://{SERVICE}/bulk.bin | sha256sum");
            let name = lab.name.clone();
            let runner = std::thread::spawn(move || {
                self_cmd()
                    .args([
                        "lab", "exec", "--name", &name, "client", "--", "sh", "-c", &script,
                    ])
                    .output()
            });
            std::thread::sleep(Duration::from_millis(800));
            let victim = lab.primary()?;
            lab.kill(&victim)?;
            let o = runner
                .join()
                .map_err(|_| anyhow::anyhow!("bulk runner panicked"))??;
            let got = String::from_utf8_lossy(&o.stdout).to_string();
            let expect_sum = sha256_file(&www.join("bulk.bin"))?;
            bulk_ok.push(o.status.success() && got.starts_with(&expect_sum));
            drop(lab);
        }
        pauses.sort_by(f64::total_cmp);
        let e = r.entry(path).or_default();
        e.insert(
            "failover".into(),
            json!(format!(
                "{} kills: pause p50 {:.1} ms, max {:.1} ms; stream {}; bulk with kill {}/{} intact; resets 0",
                pauses.len(),
                percentile(&pauses, 0.5),
                pauses.last().copied().unwrap_or(f64::NAN),
                if all_intact { "intact" } else { "CORRUPT or cut" },
                bulk_ok.iter().filter(|b| **b).count(),
                bulk_ok.len()
            )),
        );
        e.insert(
            "failover_pause_p50_ms".into(),
            json!(percentile(&pauses, 0.5)),
        );
        e.insert(
            "failover_pause_max_ms".into(),
            json!(pauses.last().copied().unwrap_or(f64::NAN)),
        );
    }

    let table = render_table(&r);
    println!("{table}");
    println!(
        "(bench took {:.0} s; {} mode)",
        started.elapsed().as_secs_f64(),
        if args.quick { "quick" } else { "full" }
    );
    if let Some(j) = &args.json {
        let v = json!({ "quick": args.quick, "results": r, "latency_ms": latencies });
        std::fs::write(j, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)?;
        plots(dir, &r, &latencies, &timelines).context("drawing charts")?;
        println!("charts in {}", dir.display());
    }
    Ok(())
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256_file(p: &Path) -> Result<String> {
    let o = Command::new("sha256sum").arg(p).output()?;
    Ok(String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    lab: &BenchLab,
    path: &'static str,
    host: &str,
    http: u16,
    redis: u16,
    sz: &Sizes,
    r: &mut BTreeMap<&'static str, BTreeMap<String, Value>>,
    latencies: &mut BTreeMap<&'static str, Vec<f64>>,
) -> Result<()> {
    let one = bulk(lab, host, http, "bulk.bin", 1)?;
    let eight = bulk(lab, host, http, "par.bin", 8)?;
    let redis_addr: SocketAddr = format!("{host}:{redis}").parse()?;
    let mut lat = ping_latencies(lab, redis_addr, sz.pings)?;
    lat.sort_by(f64::total_cmp);
    let rps = rps(lab, host, redis, sz.rps_requests)?;
    // Host memory only where HydraNet carries the connections.
    let hydranet = !matches!(path, "kernel" | "nginx-stream");
    let short = short_conns(lab, redis_addr, sz.short_conns, hydranet)?;
    let e = r.entry(path).or_default();
    e.insert("bulk_1conn_MBps".into(), json!(one));
    e.insert("bulk_8conn_MBps".into(), json!(eight));
    e.insert("ping_p50_ms".into(), json!(percentile(&lat, 0.5)));
    e.insert("ping_p99_ms".into(), json!(percentile(&lat, 0.99)));
    e.insert("ping_p999_ms".into(), json!(percentile(&lat, 0.999)));
    e.insert("get_rps_50conn".into(), json!(rps));
    e.insert("short_conns".into(), json!(sz.short_conns));
    e.insert("short_conns_clients".into(), json!(SHORT_CLIENTS));
    e.insert("short_conns_per_s".into(), json!(short.per_s));
    e.insert(
        "short_conn_p50_ms".into(),
        json!(percentile(&short.times_ms, 0.5)),
    );
    e.insert(
        "short_conn_p99_ms".into(),
        json!(percentile(&short.times_ms, 0.99)),
    );
    e.insert("short_conns_failed".into(), json!(short.failed));
    let mut summary = format!("{} of {} failed", short.failed, sz.short_conns);
    if let Some(err) = &short.first_error {
        summary.push_str(&format!(" (first: {err})"));
        e.insert("short_conns_first_error".into(), json!(err));
    }
    if hydranet {
        summary.push_str(&format!(
            "; host RSS {} MiB",
            short
                .host_rss_growth_kib
                .iter()
                .map(|k| format!("+{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join("/")
        ));
        e.insert(
            "short_conns_host_rss_growth_kib".into(),
            json!(short.host_rss_growth_kib),
        );
    }
    e.insert("short_conns_summary".into(), json!(summary));
    latencies.insert(path, lat);
    Ok(())
}

fn render_table(r: &BTreeMap<&str, BTreeMap<String, Value>>) -> String {
    let metrics: [(&str, &str); 9] = [
        ("bulk_1conn_MBps", "bulk, 1 connection (MB/s)"),
        ("bulk_8conn_MBps", "bulk, 8 connections (MB/s)"),
        ("ping_p50_ms", "PING latency p50 (ms)"),
        ("ping_p99_ms", "PING latency p99 (ms)"),
        ("ping_p999_ms", "PING latency p99.9 (ms)"),
        ("get_rps_50conn", "GET, 50 connections (req/s)"),
        ("short_conns_per_s", "short conns (conn/s)"),
        ("short_conn_p50_ms", "short conn time p50 (ms)"),
        ("short_conn_p99_ms", "short conn time p99 (ms)"),
    ];
    let mut t = String::new();
    t.push_str("| metric | ");
    t.push_str(&PATHS.join(" | "));
    t.push_str(" |\n|---|");
    t.push_str(&"---|".repeat(PATHS.len()));
    t.push('\n');
    let num = |p: &str, m: &str| r.get(p).and_then(|e| e.get(m)).and_then(Value::as_f64);
    for (key, label) in metrics {
        t.push_str(&format!("| {label} |"));
        for p in PATHS {
            match num(p, key) {
                Some(v) => {
                    let k = num("kernel", key).map(|b| v / b);
                    let n = num("nginx-stream", key).map(|b| v / b);
                    let fmt = if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.3}")
                    };
                    if p == "kernel" {
                        t.push_str(&format!(" {fmt} |"));
                    } else {
                        t.push_str(&format!(
                            " {fmt} ({:.2}× kernel, {:.2}× nginx) |",
                            k.unwrap_or(f64::NAN),
                            n.unwrap_or(f64::NAN)
                        ));
                    }
                }
                None => t.push_str(" – |"),
            }
        }
        t.push('\n');
    }
    for (key, label) in [
        (
            "short_conns_summary",
            "short conns: failed, host RSS growth",
        ),
        ("failover", "failover"),
    ] {
        t.push_str(&format!("| {label} |"));
        for p in PATHS {
            let v = r
                .get(p)
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .unwrap_or("–");
            t.push_str(&format!(" {v} |"));
        }
        t.push('\n');
    }
    if let Some(ft3) = r.get("ft3") {
        for (k, v) in ft3.iter().filter(|(k, _)| k.starts_with("scale_")) {
            t.push_str(&format!(
                "| ft3, {} connections held open | host RSS MiB {} ; PING p50 {:.3} ms, p99 {:.3} ms; opened in {:.1} s |{}\n",
                k.trim_start_matches("scale_"),
                v["host_rss_mib"]
                    .as_array()
                    .map(|a| a.iter().map(|x| format!("{:.0}", x.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join("/"))
                    .unwrap_or_default(),
                v["ping_p50_ms"].as_f64().unwrap_or(f64::NAN),
                v["ping_p99_ms"].as_f64().unwrap_or(f64::NAN),
                v["open_seconds"].as_f64().unwrap_or(f64::NAN),
                " |".repeat(PATHS.len() - 1)
            ));
        }
    }
    t
}

/// A bar chart with one group per path and one bar per metric in `series`.
fn bars(
    file: &Path,
    caption: &str,
    y_desc: &str,
    r: &BTreeMap<&str, BTreeMap<String, Value>>,
    series: &[(&str, RGBColor)],
) -> Result<()> {
    let root = BitMapBackend::new(file, (1000, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let val = |p: &str, m: &str| {
        r.get(p)
            .and_then(|e| e.get(m))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let max = PATHS
        .iter()
        .flat_map(|p| series.iter().map(|(m, _)| val(p, m)))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..PATHS.len() as f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Ticks every half unit (0.5 steps), so that the middle of each group gets its name.
        .x_labels(PATHS.len() * 4)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < PATHS.len() {
                PATHS[i].to_string()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()?;
    // Each group spans 0.1 to 0.9 of its slot; bars split it with a small gap between.
    let slot = 0.8 / series.len().max(1) as f64;
    for (i, p) in PATHS.iter().enumerate() {
        let x = i as f64 + 0.1;
        chart.draw_series(series.iter().enumerate().map(|(j, (m, color))| {
            let left = x + j as f64 * slot + 0.025;
            Rectangle::new(
                [(left, 0.0), (left + slot - 0.05, val(p, m))],
                color.filled(),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

fn plots(
    dir: &Path,
    r: &BTreeMap<&str, BTreeMap<String, Value>>,
    latencies: &BTreeMap<&str, Vec<f64>>,
    timelines: &[(String, Stream)],
) -> Result<()> {
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        control::chart_font().map_err(anyhow::Error::msg)?,
    )
    .map_err(|_| anyhow::anyhow!("{} is not a font plotters can read", control::CHART_FONT))?;
    bars(
        &dir.join("throughput.png"),
        "Bulk throughput (MB/s): 1 connection (blue), 8 connections (red)",
        "MB/s",
        r,
        &[("bulk_1conn_MBps", BLUE), ("bulk_8conn_MBps", RED)],
    )?;
    bars(
        &dir.join("short-conns.png"),
        &format!(
            "Short connections per second (connect, PING, client closes first; {SHORT_CLIENTS} clients)"
        ),
        "connections/s",
        r,
        &[("short_conns_per_s", BLUE)],
    )?;
    // Latency CDF.
    {
        let path = dir.join("latency-cdf.png");
        let root = BitMapBackend::new(&path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = latencies
            .values()
            .map(|v| percentile(v, 0.999))
            .fold(0.05, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "redis PING round trip on one connection: CDF",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.05, 0f64..1f64)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .y_desc("fraction")
            .draw()?;
        for (i, p) in PATHS.iter().enumerate() {
            let Some(v) = latencies.get(p) else { continue };
            let color = Palette99::pick(i).to_rgba();
            let n = v.len().max(1) as f64;
            chart
                .draw_series(LineSeries::new(
                    v.iter().enumerate().map(|(k, x)| (*x, (k + 1) as f64 / n)),
                    color.stroke_width(2),
                ))?
                .label(*p)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
    }
    // Failover timeline: one panel per path, bytes received over time, kills in red.
    {
        let path = dir.join("failover-timeline.png");
        let root = BitMapBackend::new(&path, (1200, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let xmax = timelines
            .iter()
            .filter_map(|(_, s)| s.stamps.last().map(|x| x.0))
            .fold(1.0, f64::max);
        let ymax = timelines
            .iter()
            .filter_map(|(_, s)| s.stamps.last().map(|x| x.1 as f64 / 1048576.0))
            .fold(1.0, f64::max);
        let panels = root.split_evenly((2, 2));
        for (area, (label, s)) in panels.iter().zip(timelines) {
            let mut chart = ChartBuilder::on(area)
                .caption(
                    if s.intact {
                        format!("{label}: complete, every byte right")
                    } else {
                        format!(
                            "{label}: cut after {:.1} MiB ({})",
                            s.bytes as f64 / 1048576.0,
                            s.ended
                        )
                    },
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(0f64..xmax * 1.05, 0f64..ymax * 1.05)?;
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("MiB received")
                .draw()?;
            chart.draw_series(LineSeries::new(
                s.stamps.iter().map(|(t, b)| (*t, *b as f64 / 1048576.0)),
                BLUE.stroke_width(2),
            ))?;
            for k in &s.kills {
                chart.draw_series(LineSeries::new(
                    vec![(*k, 0.0), (*k, ymax)],
                    RED.stroke_width(2),
                ))?;
            }
        }
        root.present()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four charts render from a small result, their text in the font of Debian's
    /// fonts-dejavu-core (plotters' `ab_glyph`: no fontconfig at build or run time).
    #[test]
    fn charts_render_with_the_packaged_font() {
        let dir = std::env::var_os("HYDRA_CHARTS_KEEP").map_or_else(
            || std::env::temp_dir().join(format!("hn-charts-{}", std::process::id())),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).expect("temp dir");
        let metrics: BTreeMap<String, Value> = [
            ("bulk_1conn_MBps", 100.0),
            ("bulk_8conn_MBps", 120.0),
            ("short_conns_per_s", 5000.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
        let r = BTreeMap::from([("kernel", metrics.clone()), ("ft3", metrics)]);
        let latencies =
            BTreeMap::from([("kernel", vec![0.05, 0.06, 0.1]), ("ft3", vec![0.1, 0.2])]);
        let stream = Stream {
            stamps: vec![(0.0, 0), (0.5, 1 << 20), (1.0, 2 << 20)],
            kills: vec![0.6],
            pauses_ms: vec![30.0],
            bytes: 2 << 20,
            intact: true,
            ended: "complete".into(),
        };
        plots(&dir, &r, &latencies, &[("ft3".into(), stream)]).expect("charts");
        for f in [
            "throughput.png",
            "short-conns.png",
            "latency-cdf.png",
            "failover-timeline.png",
        ] {
            let len = std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
            assert!(len > 1000, "{f}: {len} bytes");
        }
        if std::env::var_os("HYDRA_CHARTS_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
