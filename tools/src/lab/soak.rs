//! `hydractl lab soak`: a fault soak in the manner of Jepsen.
//!
//! It builds an ft lab of its own with two services on different ports: hydra-fileserver on
//! port 80 (ft, connections ordered on their own) and, when `redis-server` is installed,
//! redis on 6379 (ft with `--order total`, or per-connection order with `--redis-order
//! none`). Worker threads in the client namespace drive
//! client operations (downloads, uploads, redis sequences, each checked byte for byte),
//! while a seeded nemesis kills and restarts hosts, restarts hosts at once without waiting
//! for the detector to notice the old life (issue 12, finding 4; unless
//! `--no-fast-restarts`), kills and restarts hosts' backends (unless
//! `--no-backend-faults`), partitions and heals hosts, and adds loss and duplication to
//! links. It ends with a summary: operations ok / failed / indeterminate, bytes lost, bytes
//! corrupted, resets seen, the longest pause inside a download, the redis digest
//! comparison, and the invariants broken, with the seed to replay. The lab is removed at the
//! end, also on error.
//!
//! Every operation must succeed. One that fails or times out is *indeterminate*, not
//! failed, only when it overlapped (from its start to its end, plus [`OBSERVE_GRACE`]) a
//! fault the soak allows operations to observe; the summary prints the reason for each.
//! The allowed faults are:
//!
//! - loss and duplication on the client's own link (`impaired client`): that is the
//!   client's network failing, which nothing on the server side can hide; TCP may then
//!   time out.
//!
//! Every other fault (host kills and restarts, fast restarts, backend kills, partitions,
//! loss on a host's link) is one HydraNet promises to mask, so an operation that fails
//! during it fails the soak. Lost, corrupted or reset bytes are never excused.
//!
//! Redis state. At the end, after every fault is undone, a fault-free settling period and
//! quiescing, the soak compares the redis replicas' states. A host whose redis restarted,
//! or that was cut off, has none of the writes made before it (re)joined: HydraNet
//! replicates connections, not state. So redis keys carry an *era* (the count of fault
//! starts and ends before the operation began), and each host has the era it last joined
//! in; for every era, the live hosts that joined at or before it must have the same keys
//! with the same `DEBUG DIGEST-VALUE`s. Each operation also appends to a list and bumps a
//! counter shared by all connections of its era, so a different order across connections
//! shows as different digests. Hosts never faulted must have equal `DEBUG DIGEST`s. With
//! `--redis-order none` the shared list and counter would depend on how connections
//! interleave at each replica, and so would their replies: the backend would not be
//! deterministic, which HydraNet requires. The sequences leave them out then, only the keys
//! one connection wrote are compared, and whole digests are not.
//!
//! The nemesis's schedule is a function of the seed; the interleaving with the workers is
//! not (real threads, real time), so a replay repeats the faults, not every packet.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::Digest;

use super::rng::{rng, Rng};
use super::{daemons, faults, net, procs, DownGuard, LabState, Mode, Node, UpArgs};

/// Files the soak serves, by size (bytes).
const FILES: [usize; 3] = [256 << 10, 1 << 20, 4 << 20];
/// No read may take longer than this; an operation that stalls is indeterminate.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const REDIS_PORT: u16 = 6379;
/// How long after an allowed fault ends an operation may still be excused by it.
const OBSERVE_GRACE: Duration = Duration::from_secs(2);
/// Fault-free traffic after every fault is undone, before the workers stop.
const SETTLE: Duration = Duration::from_secs(3);
/// Indeterminate operations whose reasons the summary lists one by one.
const REASONS_SHOWN: usize = 200;

/// `hydractl lab soak` settings.
pub(super) struct SoakArgs {
    pub name: String,
    pub seconds: u64,
    pub seed: u64,
    pub replicas: u16,
    pub workers: usize,
    /// Whether the nemesis also kills backends alone (hydra-host left running).
    pub backend_faults: bool,
    /// Whether the nemesis also restarts hosts within the detector's timeout.
    pub fast_restarts: bool,
    /// Whether redis runs in total order (else bytes are ordered per connection only, and
    /// only the keys of one connection are compared across replicas).
    pub total_order: bool,
}

/// A fault's time in force, and why an operation may observe it (`None`: it may not).
#[derive(Debug, Clone)]
struct Window {
    start: Instant,
    end: Option<Instant>,
    what: String,
    excuse: Option<&'static str>,
    /// The host whose connections the fault takes away (a kill, a restart, a partition, a
    /// backend kill): it leaves every connection it held.
    loses: Option<u16>,
}

/// Every fault the nemesis injected, for classifying operations.
#[derive(Debug, Default)]
struct FaultLog {
    /// When the nemesis started (operations' times are shown from it).
    t0: Option<Instant>,
    /// Host servers in the lab (1..=replicas).
    replicas: u16,
    windows: Vec<Window>,
}

impl FaultLog {
    fn begin(&mut self, what: String, excuse: Option<&'static str>, loses: Option<u16>) -> usize {
        self.windows.push(Window {
            start: Instant::now(),
            end: None,
            what,
            excuse,
            loses,
        });
        self.windows.len() - 1
    }

    /// Whether every host that could hold a connection opened at `start` (those not under a
    /// fault that takes connections away then) lost it to such a fault before `end`: no
    /// replica was left to carry the connection on, which replication cannot hide.
    fn every_holder_lost(&self, start: Instant, end: Instant) -> bool {
        let lost_by = |h: u16, from: Instant, to: Instant| {
            self.windows
                .iter()
                .any(|w| w.loses == Some(h) && w.start <= to && w.end.is_none_or(|e| e > from))
        };
        let holders: Vec<u16> = (1..=self.replicas)
            .filter(|h| !lost_by(*h, start, start))
            .collect();
        !holders.is_empty() && holders.iter().all(|h| lost_by(*h, start, end))
    }

    /// A window that was not injected but observed: from `start` to now.
    fn record(&mut self, what: String, start: Instant, loses: Option<u16>) {
        self.windows.push(Window {
            start,
            end: Some(Instant::now()),
            what,
            excuse: None,
            loses,
        });
    }

    fn end(&mut self, i: usize) {
        if let Some(w) = self.windows.get_mut(i) {
            w.end = Some(Instant::now());
        }
    }

    /// The allowed fault an operation from `start` to `end` overlapped, if any.
    fn excuse(&self, start: Instant, end: Instant) -> Option<String> {
        let overlapped = self.windows.iter().find_map(|w| {
            let over = w.start <= end && w.end.is_none_or(|e| e + OBSERVE_GRACE >= start);
            let why = w.excuse.filter(|_| over)?;
            Some(format!("overlapped {} ({why})", w.what))
        });
        overlapped.or_else(|| {
            self.every_holder_lost(start, end)
                .then(|| format!("every replica that held it failed during it ({EVERY_HOLDER})"))
        })
    }
}

/// Why loss on the client's link may fail an operation.
const CLIENT_LINK: &str = "loss on the client's own link, which no server side can hide";

/// Why losing every replica of a connection may fail an operation.
const EVERY_HOLDER: &str =
    "a connection survives the loss of all but one of its replicas, not of all";

/// Decides a finished operation's outcome: anything short of success fails, unless it
/// overlapped an allowed fault (then it is indeterminate, with the reason). Lost, corrupted
/// or reset bytes are never excused.
fn classify(r: &mut OpResult, start: Instant, end: Instant, log: &FaultLog) {
    if r.outcome == Outcome::Ok {
        return;
    }
    if let (Some(t0), Some(p)) = (log.t0, r.problem.as_mut()) {
        let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
        *p = format!("{:.1}-{:.1} s: {p}", secs(start), secs(end));
    }
    let broken = r.lost > 0 || r.corrupted > 0 || r.reset;
    match log.excuse(start, end).filter(|_| !broken) {
        Some(why) => {
            r.outcome = Outcome::Indeterminate;
            r.reason = Some(why);
        }
        None => {
            r.outcome = Outcome::Failed;
            if !broken {
                let p = r.problem.take().unwrap_or_default();
                r.problem = Some(format!("{p} (no fault it may observe was in force)"));
            }
        }
    }
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Outcome {
    #[default]
    Ok,
    Failed,
    Indeterminate,
}

/// Everything the workers observed.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: u64,
    indeterminate: u64,
    by_kind: std::collections::BTreeMap<&'static str, (u64, u64, u64)>,
    bytes_checked: u64,
    bytes_lost: u64,
    bytes_corrupted: u64,
    resets: u64,
    longest_pause: Duration,
    problems: Vec<String>,
    /// Why each indeterminate operation is not failed.
    reasons: Vec<String>,
}

impl Tally {
    fn record(&mut self, kind: &'static str, r: &OpResult) {
        let e = self.by_kind.entry(kind).or_default();
        match r.outcome {
            Outcome::Ok => {
                self.ok += 1;
                e.0 += 1
            }
            Outcome::Failed => {
                self.failed += 1;
                e.1 += 1
            }
            Outcome::Indeterminate => {
                self.indeterminate += 1;
                e.2 += 1
            }
        }
        self.bytes_checked += r.checked;
        self.bytes_lost += r.lost;
        self.bytes_corrupted += r.corrupted;
        self.resets += u64::from(r.reset);
        self.longest_pause = self.longest_pause.max(r.pause);
        match (&r.outcome, &r.problem) {
            (Outcome::Indeterminate, p) => self.reasons.push(format!(
                "{kind}: {}: {}",
                p.as_deref().unwrap_or("no answer"),
                r.reason.as_deref().unwrap_or("?")
            )),
            (_, Some(p)) if self.problems.len() < 20 => self.problems.push(format!("{kind}: {p}")),
            _ => {}
        }
    }
}

/// One operation's result.
#[derive(Debug, Default)]
struct OpResult {
    outcome: Outcome,
    checked: u64,
    lost: u64,
    corrupted: u64,
    reset: bool,
    pause: Duration,
    problem: Option<String>,
    /// Why an indeterminate operation is not failed: the allowed fault it overlapped.
    reason: Option<String>,
}

impl OpResult {
    /// An I/O error ends the operation: a reset is a definite failure, a timeout leaves
    /// the outcome unknown.
    fn io_error(mut self, what: &str, e: &std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
                self.reset = true;
                self.outcome = Outcome::Failed;
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => self.outcome = Outcome::Indeterminate,
            _ => self.outcome = Outcome::Failed,
        }
        self.problem = Some(format!("{what}: {e}"));
        self
    }
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = ([198, 19, 0, 10], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads an HTTP response head; returns (status line, content length, bytes of body read).
fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Option<usize>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body = buf[end + 4..].to_vec();
            let status = head.lines().next().unwrap_or("").to_string();
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            });
            return Ok((status, len, body));
        }
        let n = read_some(s, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
    }
}

/// One `read`, again when a signal interrupted it (as `read_exact` and `read_to_end` do):
/// the soak runs child processes, and an interrupted read is not a failed operation (CI
/// once failed an upload on "read head: Interrupted system call").
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// GET a file and compare every byte; the longest gap between reads is the pause.
fn download(name: &str, expected: &[u8]) -> OpResult {
    let mut r = OpResult::default();
    let mut s = match connect(80) {
        Ok(s) => s,
        Err(e) => return r.io_error("connect", &e),
    };
    if let Err(e) = write!(
        s,
        "GET /{name} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
    ) {
        return r.io_error("send request", &e);
    }
    let (status, len, mut body) = match read_head(&mut s) {
        Ok(h) => h,
        Err(e) => return r.io_error("read head", &e),
    };
    if !status.contains(" 200 ") || len != Some(expected.len()) {
        r.outcome = Outcome::Failed;
        r.problem = Some(format!("unexpected response {status:?}, length {len:?}"));
        return r;
    }
    let mut last = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut err = None;
    while body.len() < expected.len() {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let now = Instant::now();
                r.pause = r.pause.max(now - last);
                last = now;
                body.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let got = body.len().min(expected.len());
    r.checked = got as u64;
    r.corrupted = body[..got]
        .iter()
        .zip(expected)
        .filter(|(a, b)| a != b)
        .count() as u64;
    if body.len() > expected.len() {
        r.corrupted += (body.len() - expected.len()) as u64;
    }
    if let Some(e) = err {
        // Bytes that never came are lost only when the stream definitely ended.
        let r2 = r.io_error("read body", &e);
        let mut r2 = r2;
        if r2.outcome == Outcome::Failed {
            r2.lost = (expected.len() - got) as u64;
        }
        return r2;
    }
    if got < expected.len() {
        r.lost = (expected.len() - got) as u64;
        r.outcome = Outcome::Failed;
        r.problem = Some(format!(
            "stream ended after {got} of {} bytes",
            expected.len()
        ));
    } else if r.corrupted > 0 {
        r.outcome = Outcome::Failed;
        r.problem = Some(format!("{} bytes differ from the file", r.corrupted));
    }
    r
}

/// POST random bytes; the backend answers their sha256.
fn upload(data: &[u8]) -> OpResult {
    let mut r = OpResult::default();
    let want: String = sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut s = match connect(80) {
        Ok(s) => s,
        Err(e) => return r.io_error("connect", &e),
    };
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    if let Err(e) = s.write_all(head.as_bytes()).and_then(|_| s.write_all(data)) {
        return r.io_error("send body", &e);
    }
    let (status, _, mut body) = match read_head(&mut s) {
        Ok(h) => h,
        Err(e) => return r.io_error("read head", &e),
    };
    let _ = s.read_to_end(&mut body);
    let got = String::from_utf8_lossy(&body).trim().to_string();
    r.checked = data.len() as u64;
    if !status.contains(" 200 ") || got != want {
        r.outcome = Outcome::Failed;
        r.corrupted = data.len() as u64;
        r.problem = Some(format!(
            "backend hashed {got:?}, expected {want} ({status})"
        ));
    }
    r
}

/// Reads one RESP reply line (simple string, integer, error) or bulk string.
fn resp_reply(s: &mut TcpStream, pending: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
            if pending.first() == Some(&b'$') {
                let n: i64 = String::from_utf8_lossy(&pending[1..i])
                    .parse()
                    .map_err(|_| std::io::Error::other("bad bulk length"))?;
                if n < 0 {
                    pending.drain(..i + 2);
                    return Ok(b"(nil)".to_vec());
                }
                let need = i + 2 + n as usize + 2;
                if pending.len() >= need {
                    let v = pending[i + 2..i + 2 + n as usize].to_vec();
                    pending.drain(..need);
                    return Ok(v);
                }
            } else {
                let v = pending[..i].to_vec();
                pending.drain(..i + 2);
                return Ok(v);
            }
        }
        let n = read_some(s, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

fn resp_cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// What a redis reply must be.
enum Want {
    Exactly(Vec<u8>),
    /// Any integer reply (a shared key: its value depends on the other connections).
    Integer,
}

/// A redis sequence in era `era`: SET/GET and INCR on keys of its own, every reply checked,
/// and, in total order, RPUSH/INCR on keys shared by every connection of the era (their
/// final values depend on the order across connections, which total order fixes). Without
/// total order the shared keys' replies differ between replicas (the connections interleave
/// differently on each): the backend is not deterministic then, and a takeover would splice
/// one replica's replies into another's, which HydraNet does not promise to hide. So the
/// sequence leaves them out.
fn redis_ops(tag: &str, era: u64, total_order: bool, rng: &mut Rng) -> OpResult {
    let mut r = OpResult::default();
    let mut s = match connect(REDIS_PORT) {
        Ok(s) => s,
        Err(e) => return r.io_error("connect", &e),
    };
    let mut pending = Vec::new();
    let (log, shared) = (format!("soak:e{era}:log"), format!("soak:e{era}:shared"));
    for j in 0..20u64 {
        let key = format!("soak:e{era}:{tag}:{j}");
        let len = 16 + rng.below(48) as usize;
        let value: Vec<u8> = rng.bytes(len).iter().map(|b| b'a' + b % 26).collect();
        let ctr = format!("soak:e{era}:{tag}:ctr");
        let entry = format!("{tag}:{j}");
        let steps: [(Vec<u8>, Want); 5] = [
            (
                resp_cmd(&[b"SET", key.as_bytes(), &value]),
                Want::Exactly(b"+OK".to_vec()),
            ),
            (
                resp_cmd(&[b"GET", key.as_bytes()]),
                Want::Exactly(value.clone()),
            ),
            (
                resp_cmd(&[b"INCR", ctr.as_bytes()]),
                Want::Exactly(format!(":{}", j + 1).into_bytes()),
            ),
            (
                resp_cmd(&[b"RPUSH", log.as_bytes(), entry.as_bytes()]),
                Want::Integer,
            ),
            (resp_cmd(&[b"INCR", shared.as_bytes()]), Want::Integer),
        ];
        let steps = steps.into_iter().take(if total_order { 5 } else { 3 });
        for (cmd, want) in steps {
            if let Err(e) = s.write_all(&cmd) {
                return r.io_error("send command", &e);
            }
            match resp_reply(&mut s, &mut pending) {
                Ok(got) => {
                    r.checked += got.len() as u64;
                    let (ok, want) = match &want {
                        Want::Exactly(w) => (got == *w, String::from_utf8_lossy(w).into_owned()),
                        Want::Integer => (
                            got.len() > 1
                                && got[0] == b':'
                                && got[1..].iter().all(u8::is_ascii_digit),
                            "an integer".into(),
                        ),
                    };
                    if !ok {
                        r.outcome = Outcome::Failed;
                        r.corrupted += got.len().max(want.len()) as u64;
                        r.problem = Some(format!(
                            "reply {:?}, expected {want:?}",
                            String::from_utf8_lossy(&got),
                        ));
                        return r;
                    }
                }
                Err(e) => return r.io_error("read reply", &e),
            }
        }
    }
    r
}

/// What the workers share with the nemesis.
struct Shared {
    files: Vec<(String, Vec<u8>)>,
    redis: bool,
    /// Redis runs in total order (the shared keys are part of the sequence).
    total_order: bool,
    /// The current era (redis keys carry it).
    era: AtomicU64,
    stop: AtomicBool,
    tally: Mutex<Tally>,
    faults: Mutex<FaultLog>,
}

/// One worker: operations until `stop`, in the client namespace.
fn worker(ns: PathBuf, id: usize, seed: u64, sh: Arc<Shared>) -> Result<()> {
    let (files, redis, era, stop, tally, faults) = (
        &sh.files, sh.redis, &sh.era, &sh.stop, &sh.tally, &sh.faults,
    );
    let f = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the client namespace")?;
    let mut rng = rng(seed ^ (id as u64 + 1).wrapping_mul(0x51ed_270b));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let pick = rng.below(if redis { 3 } else { 2 });
        let started = Instant::now();
        let (kind, mut res) = match pick {
            0 => {
                let (name, data) = &files[rng.below(files.len() as u64) as usize];
                ("download", download(name, data))
            }
            1 => {
                let len = 64 * 1024 + rng.below(2 << 20) as usize;
                ("upload", upload(&rng.bytes(len)))
            }
            _ => {
                let e = era.load(Ordering::SeqCst);
                let tag = format!("{seed}:{id}:{n}");
                ("redis", redis_ops(&tag, e, sh.total_order, &mut rng))
            }
        };
        {
            // INVARIANT: no code panics while holding the lock.
            let log = faults.lock().expect("fault log lock");
            classify(&mut res, started, Instant::now(), &log);
        }
        // INVARIANT: no code panics while holding the lock.
        tally.lock().expect("tally lock").record(kind, &res);
    }
    Ok(())
}

/// A fault in force, and when to undo it (with its window in the fault log).
enum Fault {
    Killed(u16),
    /// Host i's backend was killed; its hydra-host runs on.
    BackendKilled(u16),
    Partitioned(u16),
    Impaired(Node),
}

impl Fault {
    /// Whether the fault takes a host out of the service's view.
    fn is_host_fault(&self) -> bool {
        match self {
            Fault::Killed(_) | Fault::BackendKilled(_) | Fault::Partitioned(_) => true,
            Fault::Impaired(_) => false,
        }
    }
}

/// The faults the nemesis picks from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    /// SIGKILL everything in a host's namespace; restart it later.
    KillHost,
    /// SIGKILL a host's backend only; start it again later.
    KillBackend,
    /// Cut a host's link; heal it later.
    Partition,
    /// Loss and duplication on a link; clear them later.
    Impair,
    /// SIGKILL everything in a host's namespace and start it again at once, within the
    /// detector's timeout (issue 12, finding 4).
    FastRestart,
}

/// The nemesis's rolls are `0..menu_size`. Without backend faults and fast restarts it is
/// the menu soaks had before them, so an old seed replays its schedule with
/// `--no-backend-faults --no-fast-restarts`.
fn menu_size(backend_faults: bool, fast_restarts: bool) -> u64 {
    10 + 2 * u64::from(backend_faults) + 2 * u64::from(fast_restarts)
}

/// The fault a roll picks, if any. A host fault takes one member out of the view, so it is
/// allowed only when `host_fault_ok` (no other host fault is in force and every host is in
/// the view): an ft service survives one member's loss at a time. A host fault that is not
/// allowed, and every other roll, becomes an impairment unless one is in force already.
fn choose(
    roll: u64,
    (backend_faults, fast_restarts): (bool, bool),
    host_fault_ok: bool,
    impaired: bool,
) -> Option<FaultKind> {
    let fast = 6 + 2 * u64::from(backend_faults);
    let wanted = match roll {
        0..=3 => FaultKind::KillHost,
        4 | 5 => FaultKind::Partition,
        6 | 7 if backend_faults => FaultKind::KillBackend,
        r if fast_restarts && (r == fast || r == fast + 1) => FaultKind::FastRestart,
        _ => FaultKind::Impair,
    };
    match wanted {
        FaultKind::KillHost
        | FaultKind::Partition
        | FaultKind::KillBackend
        | FaultKind::FastRestart
            if host_fault_ok =>
        {
            Some(wanted)
        }
        _ => (!impaired).then_some(FaultKind::Impair),
    }
}

fn node_name(n: &Node) -> String {
    n.to_string()
}

/// Adds the redis service (in total order, unless `--redis-order none`) on host `i` (after
/// `up`, and after each restart).
fn add_redis_service(lab: &LabState, i: u16, total_order: bool) -> Result<()> {
    let sock = lab.dir().join(format!("h{i}.sock"));
    let body = serde_json::json!({
        "service": format!("{}:{REDIS_PORT}", super::SERVICE_IP),
        "mode": "ft",
        "backend": format!("127.0.0.1:{REDIS_PORT}"),
        "order": if total_order { "total" } else { "none" },
    })
    .to_string();
    control::request(&sock, "POST", "/setportopt", Some(&body))
        .with_context(|| format!("adding the redis service on h{i}"))?;
    Ok(())
}

/// The redirector's current ft view members of the lab's service on `port`.
fn view_members(lab: &LabState, port: u16) -> Vec<u64> {
    let sock = lab.dir().join("redir.sock");
    let Ok(text) = control::request(&sock, "GET", "/status", None) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let svc = format!("{}:{port}", super::SERVICE_IP);
    v["views"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["service"] == svc.as_str())
        .and_then(|x| x["members"].as_array())
        .map(|a| a.iter().filter_map(|m| m.as_u64()).collect())
        .unwrap_or_default()
}

/// Waits (up to 10 s) until host `i` is in the redis service's view, then a little longer,
/// so that its sequencer has heard the primary and anchored before new connections count
/// it a member.
fn wait_in_redis_view(lab: &LabState, i: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !view_members(lab, REDIS_PORT).contains(&u64::from(i)) {
        if Instant::now() > deadline {
            anyhow::bail!("h{i} is not in the redis service's view 10 s after it came back");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

fn undo(
    lab: &LabState,
    bins: &daemons::Binaries,
    f: &Fault,
    redis: bool,
    total_order: bool,
) -> Result<String> {
    Ok(match f {
        Fault::Killed(i) => {
            let took = daemons::restart_host(lab, bins, *i, true)?;
            if redis {
                add_redis_service(lab, *i, total_order)?;
                wait_in_redis_view(lab, *i)?;
            }
            format!("restarted h{i} (live after {} ms)", took.as_millis())
        }
        Fault::BackendKilled(i) => {
            // hydra-host kept the redis service's settings: nothing to add again.
            let r = daemons::restart_backend(lab, *i)?;
            if redis {
                wait_in_redis_view(lab, *i)?;
            }
            format!(
                "restarted h{i}'s backend (answering after {} ms, offered again after {} ms)",
                r.answered.as_millis(),
                r.offered.as_millis()
            )
        }
        Fault::Partitioned(i) => {
            faults::partition(lab, &format!("h{i}"), false)?;
            if redis {
                wait_in_redis_view(lab, *i)?;
            }
            format!("healed h{i}")
        }
        Fault::Impaired(n) => {
            faults::impair(lab, &node_name(n), 0.0, 0.0)?;
            format!("cleared impairment of {n}")
        }
    })
}

/// How many total-order connections host `i` has left since it started, for any reason (it
/// fell behind what its primary keeps, its past differs from the primary's, its backend
/// failed or stalled, its speaker or it had it excluded): `hydra_order_left_total`. `None`
/// when the host does not answer (it is down).
fn order_leaves(lab: &LabState, i: u16) -> Option<u64> {
    host_counter(lab, i, "hydra_order_left_total")
}

/// Host `i`'s counter `name` (summed over its labels), `None` when the host does not answer.
fn host_counter(lab: &LabState, i: u16, name: &str) -> Option<u64> {
    daemon_counters(&lab.dir().join(format!("h{i}.sock")), &[name])
}

/// Datagrams a receiver could not take although nobody forges or corrupts any in the soak:
/// a bad MAC, a malformed header, or addressed to another node or (for a type that names
/// one receiver) to a group. Each is a protocol bug of ours: every total-order failover's
/// sync request went to the group and was dropped so by every member, and the new primary
/// waited 2 s in vain (CI, seed 256151272207513938: a redis connection reset).
const BUG_DROPS: [&str; 3] = [
    "hydra_datagrams_dropped_total{reason=\"bad_mac\"}",
    "hydra_datagrams_dropped_total{reason=\"malformed\"}",
    "hydra_datagrams_dropped_total{reason=\"misaddressed\"}",
];

/// Adds to `total` the growth since the last look (`seen`, per daemon: the redirector at
/// index 0, then the hosts) of each daemon's [`BUG_DROPS`].
fn note_bug_drops(lab: &LabState, seen: &mut [u64], total: &mut u64) {
    let socks = std::iter::once(lab.dir().join("redir.sock"))
        .chain((1..=lab.replicas).map(|h| lab.dir().join(format!("h{h}.sock"))));
    for (i, sock) in socks.enumerate() {
        if let Some(n) = daemon_counters(&sock, &BUG_DROPS) {
            *total += counter_growth(&mut seen[i], n);
        }
    }
}

/// The counters `names` of the daemon whose admin socket is `sock`, summed over their labels
/// (or one series, when a name names its labels), from one `/metrics`; `None` when the daemon
/// does not answer.
fn daemon_counters(sock: &Path, names: &[&str]) -> Option<u64> {
    let text = control::request(sock, "GET", "/metrics", None).ok()?;
    let sum = text
        .lines()
        .filter(|l| {
            names.iter().any(|name| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with([' ', '{']))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    Some(sum)
}

/// How much a host's counter grew since `seen` (a restarted host counts from zero again);
/// `seen` becomes `now`.
fn counter_growth(seen: &mut u64, now: u64) -> u64 {
    let grew = if now >= *seen { now - *seen } else { now };
    *seen = now;
    grew
}

/// Notes the hosts that left connections because they were out of the view since the last
/// look (`hydra_ft_left_out_of_view_total`): the detector dropped them, often without a fault
/// of ours (a busy host, a restarted one catching up), and a member back in the view never
/// speaks for a connection it held before (README, "A member that was out of the view").
/// Such a host lost its connections as a killed one does: a window that takes them away,
/// from the last look to now, and its redis is compared from the next era on.
fn note_view_leaves(
    lab: &LabState,
    seen: &mut [u64],
    since: Instant,
    flog: &Mutex<FaultLog>,
    (joined, era): (&mut [u64], u64),
    log: &impl Fn(&str),
) {
    for h in 1..=lab.replicas {
        let Some(n) = host_counter(lab, h, "hydra_ft_left_out_of_view_total") else {
            continue;
        };
        let new = counter_growth(&mut seen[usize::from(h)], n);
        if new == 0 {
            continue;
        }
        log(&format!(
            "h{h} left {new} connections: it was out of the view (counted in its /metrics)"
        ));
        // INVARIANT: no code panics while holding the lock.
        flog.lock().expect("fault log lock").record(
            format!("h{h} out of the view"),
            since,
            Some(h),
        );
        let e = era + 1;
        joined[usize::from(h)] = joined[usize::from(h)].max(e);
    }
}

/// Notes the hosts that left total-order connections since the last look (`left`): each
/// is compared from the era after `era` on (`joined`).
fn note_order_leaves(
    lab: &LabState,
    left: &mut [u64],
    joined: &mut [u64],
    era: u64,
    log: &impl Fn(&str),
) {
    for h in 1..=lab.replicas {
        let Some(n) = order_leaves(lab, h) else {
            continue;
        };
        let new = counter_growth(&mut left[usize::from(h)], n);
        if new > 0 {
            let e = era + 1;
            joined[usize::from(h)] = joined[usize::from(h)].max(e);
            log(&format!(
                "h{h} left {new} total-order connections (counted in its /metrics): its redis is compared from era {e} on"
            ));
        }
    }
}

fn host_of(f: &Fault) -> Option<u16> {
    match f {
        Fault::Killed(i) | Fault::BackendKilled(i) | Fault::Partitioned(i) => Some(*i),
        Fault::Impaired(_) => None,
    }
}

/// One RESP value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    Line(Vec<u8>),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

fn read_resp(r: &mut impl std::io::BufRead) -> std::io::Result<Resp> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.len() < 3 || !line.ends_with(b"\r\n") {
        return Err(std::io::Error::other("short RESP line"));
    }
    line.truncate(line.len() - 2);
    let n = || -> std::io::Result<i64> {
        String::from_utf8_lossy(&line[1..])
            .parse()
            .map_err(|_| std::io::Error::other("bad RESP length"))
    };
    Ok(match line[0] {
        b'$' => match n()? {
            l if l < 0 => Resp::Bulk(None),
            l => {
                let mut v = vec![0u8; l as usize + 2];
                r.read_exact(&mut v)?;
                v.truncate(l as usize);
                Resp::Bulk(Some(v))
            }
        },
        b'*' => {
            let k = n()?.max(0);
            let mut items = Vec::with_capacity(k as usize);
            for _ in 0..k {
                items.push(read_resp(r)?);
            }
            Resp::Array(items)
        }
        _ => Resp::Line(line),
    })
}

/// What one host's redis holds: its `DEBUG DIGEST`, and its soak keys with their
/// `DEBUG DIGEST-VALUE`s, by era.
#[derive(Debug, Clone, Default)]
struct RedisState {
    digest: String,
    eras: std::collections::BTreeMap<u64, Vec<(String, String)>>,
}

/// Reads host `i`'s redis state over loopback inside its namespace.
fn redis_state(lab: &LabState, i: u16) -> Result<RedisState> {
    let ns = PathBuf::from("/run/netns").join(lab.ns(&Node::Host(i)));
    std::thread::spawn(move || -> Result<RedisState> {
        let f = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the host namespace")?;
        let mut s = TcpStream::connect(("127.0.0.1", REDIS_PORT)).context("connecting to redis")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut r = std::io::BufReader::new(s.try_clone()?);
        let mut ask = |args: &[&[u8]]| -> Result<Resp> {
            s.write_all(&resp_cmd(args))?;
            Ok(read_resp(&mut r)?)
        };
        let text = |v: &Resp| match v {
            Resp::Line(b) | Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        };
        let digest = text(&ask(&[b"DEBUG", b"DIGEST"])?);
        let Resp::Array(keys) = ask(&[b"KEYS", b"soak:e*"])? else {
            anyhow::bail!("KEYS answered no array");
        };
        let mut keys: Vec<String> = keys.iter().map(text).collect();
        keys.sort();
        let mut st = RedisState {
            digest,
            ..Default::default()
        };
        for chunk in keys.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"DEBUG", b"DIGEST-VALUE"];
            args.extend(chunk.iter().map(|k| k.as_bytes()));
            let Resp::Array(ds) = ask(&args)? else {
                anyhow::bail!("DEBUG DIGEST-VALUE answered no array (is DEBUG enabled?)");
            };
            for (k, d) in chunk.iter().zip(ds.iter()) {
                let era = k
                    .strip_prefix("soak:e")
                    .and_then(|r| r.split(':').next())
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(u64::MAX);
                st.eras.entry(era).or_default().push((k.clone(), text(d)));
            }
        }
        Ok(st)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread reading h{i}'s redis panicked"))?
}

/// Compares the live hosts' redis states: per era among the hosts that joined at or before
/// it, and whole `DEBUG DIGEST`s among the hosts never faulted. Returns (lines for the
/// summary, mismatches).
fn compare_redis(
    states: &[(u16, RedisState)],
    joined: &[u64],
    total_order: bool,
) -> (Vec<String>, Vec<String>) {
    // Without total order the keys every connection of an era writes (its log and shared
    // counter) depend on how connections interleave at each replica: only a connection's
    // own keys are comparable, and so are whole digests only in total order.
    let shared = |k: &str| k.ends_with(":log") || k.ends_with(":shared");
    let states: Vec<(u16, RedisState)> = if total_order {
        states.to_vec()
    } else {
        states
            .iter()
            .map(|(h, s)| {
                let mut s = s.clone();
                for keys in s.eras.values_mut() {
                    keys.retain(|(k, _)| !shared(k));
                }
                (*h, s)
            })
            .collect()
    };
    let states = &states[..];
    let mut notes = Vec::new();
    let mut bad = Vec::new();
    let eras: std::collections::BTreeSet<u64> = states
        .iter()
        .flat_map(|(_, s)| s.eras.keys().copied())
        .collect();
    let (mut compared, mut keys) = (0, 0);
    for era in eras {
        let eligible: Vec<&(u16, RedisState)> = states
            .iter()
            .filter(|(h, _)| joined[usize::from(*h)] <= era)
            .collect();
        if eligible.len() < 2 {
            continue;
        }
        compared += 1;
        let empty = Vec::new();
        let of = |s: &RedisState| s.eras.get(&era).unwrap_or(&empty).clone();
        let first = of(&eligible[0].1);
        keys += first.len();
        for (h, s) in &eligible[1..] {
            let other = of(s);
            if other != first {
                let differ = first
                    .iter()
                    .zip(other.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("{} {} vs {} {}", a.0, a.1, b.0, b.1))
                    .unwrap_or_else(|| format!("{} vs {} keys", first.len(), other.len()));
                bad.push(format!(
                    "redis era {era}: h{} and h{h} differ ({differ})",
                    eligible[0].0
                ));
            }
        }
    }
    notes.push(format!(
        "redis: {compared} eras compared across the live replicas that held them ({keys} keys)"
    ));
    let never: Vec<&(u16, RedisState)> = states
        .iter()
        .filter(|(h, _)| joined[usize::from(*h)] == 0)
        .collect();
    let names: Vec<String> = never.iter().map(|(h, _)| format!("h{h}")).collect();
    if !total_order {
        notes.push(
            "redis DEBUG DIGEST: not compared (--redis-order none: shared keys differ by design)"
                .to_string(),
        );
    } else if never.len() >= 2 {
        let d = &never[0].1.digest;
        if never.iter().any(|(_, s)| &s.digest != d) {
            let all: Vec<String> = never
                .iter()
                .map(|(h, s)| format!("h{h} {}", s.digest))
                .collect();
            bad.push(format!("redis DEBUG DIGEST differs: {}", all.join(", ")));
        } else {
            notes.push(format!(
                "redis DEBUG DIGEST equal on {} (never faulted): {d}",
                names.join(", ")
            ));
        }
    } else {
        notes.push(format!(
            "redis DEBUG DIGEST: fewer than two hosts never faulted ({}), compared per era only",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    (notes, bad)
}
/// Runs the soak; returns whether every invariant held.
pub(super) fn soak(a: SoakArgs) -> Result<bool> {
    let root = PathBuf::from(super::STATE_ROOT).join(format!("soak-www-{}", a.name));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let _www = RemoveDir(root.clone());
    let mut frng = rng(a.seed ^ 0xf11e5);
    let files: Vec<(String, Vec<u8>)> = FILES
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("file{i}.bin"), frng.bytes(n)))
        .collect();
    for (name, data) in &files {
        std::fs::write(root.join(name), data).with_context(|| format!("writing {name}"))?;
    }
    let bins = daemons::Binaries::find()?;
    let redis = net::find_program("redis-server").is_some();
    let fileserver = bins.dir().join("hydra-fileserver");
    let mut backend = String::new();
    if redis {
        backend.push_str(&format!(
            "redis-server --port {REDIS_PORT} --bind 127.0.0.1 --save '' --appendonly no \
             --enable-debug-command yes --daemonize no >redis.log 2>&1 & "
        ));
    }
    backend.push_str(&format!(
        "exec {} --root {} --listen 127.0.0.1:8080",
        fileserver.display(),
        root.display()
    ));
    super::up(UpArgs {
        name: a.name.clone(),
        replicas: a.replicas,
        mode: Mode::Ft,
        port: 80,
        backend_port: 8080,
        backend_cmd: backend,
        plain_io: false,
        no_daemons: false,
    })?;
    let guard = DownGuard::new(&a.name);
    let lab = LabState::load(&a.name)?;
    if redis {
        for i in 1..=lab.replicas {
            add_redis_service(&lab, i, a.total_order)?;
        }
        // Wait until the redirector has a view for the redis port too.
        std::thread::sleep(Duration::from_millis(500));
    } else {
        eprintln!("soak: redis-server is not installed; running downloads and uploads only");
    }

    let flags = format!(
        "{}{}",
        if a.backend_faults {
            ""
        } else {
            " --no-backend-faults"
        },
        if a.fast_restarts {
            ""
        } else {
            " --no-fast-restarts"
        }
    );
    eprintln!(
        "soak: lab {} ({} replicas), {} s, seed {} (replay with --seed {}{flags}), {} workers{}, \
         backend faults {}, fast restarts {}",
        a.name,
        a.replicas,
        a.seconds,
        a.seed,
        a.seed,
        a.workers,
        if redis {
            if a.total_order {
                ", files on :80, redis on :6379 in total order"
            } else {
                ", files on :80, redis on :6379 in per-connection order"
            }
        } else {
            ""
        },
        if a.backend_faults { "on" } else { "off" },
        if a.fast_restarts { "on" } else { "off" },
    );
    let sh = Arc::new(Shared {
        files,
        redis,
        total_order: a.total_order,
        era: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        tally: Mutex::new(Tally::default()),
        faults: Mutex::new(FaultLog::default()),
    });
    let (era, stop, tally, flog) = (&sh.era, &sh.stop, &sh.tally, &sh.faults);
    // The era each host last joined in (index 0 unused): its redis holds the writes of
    // that era on.
    let mut joined = vec![0u64; usize::from(lab.replicas) + 1];
    // Total-order connections each host had left when last looked at (see `order_leaves`).
    let mut left = vec![0u64; usize::from(lab.replicas) + 1];
    let mut out_of_view = vec![0u64; usize::from(lab.replicas) + 1];
    // BUG_DROPS per daemon when last looked at (0: the redirector), and their growth.
    let mut bug_drops_seen = vec![0u64; usize::from(lab.replicas) + 1];
    let mut bug_drops = 0u64;
    let mut next_leave_check = Instant::now();
    let mut last_view_check = Instant::now();
    let ns = PathBuf::from("/run/netns").join(lab.ns(&Node::Client));
    let handles: Vec<_> = (0..a.workers)
        .map(|id| {
            let (ns, sh, seed) = (ns.clone(), sh.clone(), a.seed);
            std::thread::spawn(move || worker(ns, id, seed, sh))
        })
        .collect();
    // INVARIANT (both): no code panics while holding the lock.
    let begin = |what: String, excuse, loses| {
        flog.lock()
            .expect("fault log lock")
            .begin(what, excuse, loses)
    };
    let finish = |w: usize| flog.lock().expect("fault log lock").end(w);

    let start = Instant::now();
    {
        let mut l = flog.lock().expect("fault log lock");
        l.t0 = Some(start);
        l.replicas = lab.replicas;
    }
    let end = start + Duration::from_secs(a.seconds);
    let mut nem = rng(a.seed);
    let mut active: Vec<(Instant, Fault, usize)> = Vec::new();
    let mut next = start + Duration::from_millis(1500);
    let mut events = 0u32;
    let log = |what: &str| eprintln!("soak {:>6.1} s: {what}", start.elapsed().as_secs_f64());
    let mut error = None;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if now >= last_view_check + Duration::from_millis(250) {
            note_view_leaves(
                &lab,
                &mut out_of_view,
                last_view_check,
                flog,
                (&mut joined, era.load(Ordering::SeqCst)),
                &log,
            );
            note_bug_drops(&lab, &mut bug_drops_seen, &mut bug_drops);
            last_view_check = now;
        }
        if redis && a.total_order && now >= next_leave_check {
            // A member that leaves total-order connections (a defined outcome of falling
            // behind, counted in its /metrics) lacks their writes, as a restarted one does:
            // it is compared from the next era on.
            next_leave_check = now + Duration::from_millis(500);
            note_order_leaves(
                &lab,
                &mut left,
                &mut joined,
                era.load(Ordering::SeqCst),
                &log,
            );
        }
        // Undo faults whose time is up.
        let mut i = 0;
        while i < active.len() {
            if now >= active[i].0 {
                let (_, f, w) = active.remove(i);
                match undo(&lab, &bins, &f, redis, a.total_order) {
                    Ok(s) => {
                        finish(w);
                        let e = era.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(h) = host_of(&f) {
                            joined[usize::from(h)] = e;
                        }
                        log(&s)
                    }
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            } else {
                i += 1;
            }
        }
        if error.is_some() {
            break;
        }
        if now < next {
            continue;
        }
        next = now + Duration::from_millis(1500 + nem.below(2500));
        let host_down = active.iter().any(|(_, f, _)| f.is_host_fault());
        let impaired = active
            .iter()
            .any(|(_, f, _)| matches!(f, Fault::Impaired(_)));
        let roll = nem.below(menu_size(a.backend_faults, a.fast_restarts));
        let members = view_members(&lab, 80);
        let redis_full =
            !redis || view_members(&lab, REDIS_PORT).len() == usize::from(lab.replicas);
        let host_fault_ok = !host_down && redis_full && members.len() == usize::from(lab.replicas);
        let pick_host = |r: &mut Rng| -> u16 {
            // Half the time the primary, else any host.
            if r.below(2) == 0 {
                if let Some(&p) = members.first() {
                    return p as u16;
                }
            }
            1 + r.below(u64::from(lab.replicas)) as u16
        };
        let result: Result<()> = (|| {
            let Some(kind) = choose(
                roll,
                (a.backend_faults, a.fast_restarts),
                host_fault_ok,
                impaired,
            ) else {
                return Ok(());
            };
            // Every fault start opens a new era (see the module doc).
            era.fetch_add(1, Ordering::SeqCst);
            match kind {
                FaultKind::KillHost => {
                    let h = pick_host(&mut nem);
                    let ns = lab.ns(&Node::Host(h));
                    let w = begin(format!("kill of h{h}"), None, Some(h));
                    net::kill_all(std::slice::from_ref(&ns))?;
                    log(&format!("killed h{h}"));
                    let back = now + Duration::from_millis(1500 + nem.below(2500));
                    active.push((back, Fault::Killed(h), w));
                }
                FaultKind::KillBackend => {
                    let h = pick_host(&mut nem);
                    let w = begin(format!("kill of h{h}'s backend"), None, Some(h));
                    let killed = procs::kill_backend(&lab, h)?;
                    let what: Vec<&str> = killed.iter().map(|p| p.comm.as_str()).collect();
                    log(&format!("killed h{h}'s backend ({})", what.join(", ")));
                    let back = now + Duration::from_millis(1500 + nem.below(2500));
                    active.push((back, Fault::BackendKilled(h), w));
                }
                FaultKind::Partition => {
                    let h = pick_host(&mut nem);
                    let w = begin(format!("partition of h{h}"), None, Some(h));
                    faults::partition(&lab, &format!("h{h}"), true)?;
                    log(&format!("partitioned h{h}"));
                    let back = now + Duration::from_millis(1000 + nem.below(2000));
                    active.push((back, Fault::Partitioned(h), w));
                }
                FaultKind::Impair => {
                    let node = if nem.below(3) == 0 {
                        Node::Client
                    } else {
                        Node::Host(1 + nem.below(u64::from(lab.replicas)) as u16)
                    };
                    let loss = (1 + nem.below(5)) as f64;
                    let dup = nem.below(4) as f64;
                    let excuse = matches!(node, Node::Client).then_some(CLIENT_LINK);
                    let w = begin(format!("impaired {node}"), excuse, None);
                    faults::impair(&lab, &node_name(&node), loss, dup)?;
                    log(&format!(
                        "impaired {node}: {loss}% loss, {dup}% duplication"
                    ));
                    let back = now + Duration::from_millis(2000 + nem.below(3000));
                    active.push((back, Fault::Impaired(node), w));
                }
                FaultKind::FastRestart => {
                    let h = pick_host(&mut nem);
                    let w = begin(format!("fast restart of h{h}"), None, Some(h));
                    let took = daemons::restart_host(&lab, &bins, h, false)?;
                    if redis {
                        add_redis_service(&lab, h, a.total_order)?;
                        wait_in_redis_view(&lab, h)?;
                    }
                    finish(w);
                    let e = era.fetch_add(1, Ordering::SeqCst) + 1;
                    joined[usize::from(h)] = e;
                    log(&format!(
                        "killed h{h} and restarted it at once (live after {} ms)",
                        took.as_millis()
                    ));
                }
            }
            events += 1;
            Ok(())
        })();
        if let Err(e) = result {
            error = Some(e);
            break;
        }
    }
    // Let every fault end, run fault-free for a while (a final era every live host
    // holds), then the workers finish their operations.
    for (_, f, w) in active.drain(..) {
        match undo(&lab, &bins, &f, redis, a.total_order) {
            Ok(s) => {
                finish(w);
                if let Some(h) = host_of(&f) {
                    joined[usize::from(h)] = era.load(Ordering::SeqCst) + 1;
                }
                log(&s)
            }
            Err(e) => error = error.or(Some(e)),
        }
    }
    let final_era = era.fetch_add(1, Ordering::SeqCst) + 1;
    if error.is_none() {
        std::thread::sleep(SETTLE);
    }
    stop.store(true, Ordering::Relaxed);
    let mut worker_errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_errors.push(format!("{e:#}")),
            Err(_) => worker_errors.push("a worker panicked".into()),
        }
    }
    let recovered = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = view_members(&lab, 80);
            if m.len() == usize::from(lab.replicas) || Instant::now() >= deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Quiesced: no client traffic. Give backups a moment to deliver their last stamped
    // chunks, then read every live redis replica.
    let mut redis_notes = Vec::new();
    let mut redis_bad = Vec::new();
    if redis && error.is_none() {
        std::thread::sleep(Duration::from_secs(1));
        if a.total_order {
            let e = era.load(Ordering::SeqCst);
            note_order_leaves(&lab, &mut left, &mut joined, e, &log);
        }
        let live = view_members(&lab, REDIS_PORT);
        let mut states = Vec::new();
        for h in &live {
            let h = *h as u16;
            match redis_state(&lab, h) {
                Ok(st) => states.push((h, st)),
                Err(e) => redis_bad.push(format!("reading h{h}'s redis: {e:#}")),
            }
        }
        if live.len() != usize::from(lab.replicas) {
            redis_bad.push(format!(
                "after healing, the redis view holds {live:?}, not all {} hosts",
                lab.replicas
            ));
        }
        let (notes, bad) = compare_redis(&states, &joined, a.total_order);
        redis_notes = notes;
        redis_bad.extend(bad);
        let final_keys = states
            .first()
            .and_then(|(_, s)| s.eras.get(&final_era))
            .map_or(0, Vec::len);
        if final_keys == 0 {
            redis_bad.push(format!(
                "no redis keys in the final, fault-free era {final_era}: nothing to compare"
            ));
        }
    }
    note_bug_drops(&lab, &mut bug_drops_seen, &mut bug_drops);
    let logs = keep_logs(&a.name);
    drop(guard);
    if let Some(e) = error {
        return Err(e.context("the nemesis failed"));
    }

    // INVARIANT: every worker has ended; nobody else holds the lock.
    let t = tally.lock().expect("tally lock");
    let mut broken = Vec::new();
    if t.bytes_lost > 0 {
        broken.push(format!("{} bytes lost", t.bytes_lost));
    }
    if t.bytes_corrupted > 0 {
        broken.push(format!("{} bytes corrupted", t.bytes_corrupted));
    }
    if t.resets > 0 {
        broken.push(format!("{} connections reset", t.resets));
    }
    if recovered.len() != usize::from(lab.replicas) {
        broken.push(format!(
            "after healing, the view holds {recovered:?}, not all {} hosts",
            lab.replicas
        ));
    }
    if t.ok == 0 {
        broken.push("no operation succeeded".into());
    }
    if t.failed > 0 {
        broken.push(format!("{} operations failed", t.failed));
    }
    if bug_drops > 0 {
        broken.push(format!(
            "{bug_drops} datagrams dropped with a bad MAC, malformed or misaddressed (see each \
             daemon's hydra_datagrams_dropped_total)"
        ));
    }
    broken.extend(redis_bad);
    broken.extend(worker_errors);
    println!(
        "soak summary (seed {}, {} s, {events} faults, backend faults {}, fast restarts {})",
        a.seed,
        a.seconds,
        if a.backend_faults { "on" } else { "off" },
        if a.fast_restarts { "on" } else { "off" }
    );
    println!(
        "  operations: {} ok, {} failed, {} indeterminate",
        t.ok, t.failed, t.indeterminate
    );
    for (k, (ok, f, i)) in &t.by_kind {
        println!("    {k:<9} {ok} ok, {f} failed, {i} indeterminate");
    }
    println!("  bytes checked: {}", t.bytes_checked);
    println!("  bytes lost: {}", t.bytes_lost);
    println!("  bytes corrupted: {}", t.bytes_corrupted);
    println!("  resets seen: {}", t.resets);
    println!("  datagrams dropped with a bad MAC, malformed or misaddressed: {bug_drops}");
    println!(
        "  longest pause inside a download: {} ms",
        t.longest_pause.as_millis()
    );
    for n in &redis_notes {
        println!("  {n}");
    }
    for p in &t.problems {
        println!("  note: {p}");
    }
    for r in t.reasons.iter().take(REASONS_SHOWN) {
        println!("  indeterminate: {r}");
    }
    if t.reasons.len() > REASONS_SHOWN {
        println!(
            "  indeterminate: {} more not shown",
            t.reasons.len() - REASONS_SHOWN
        );
    }
    if broken.is_empty() {
        println!("  invariants: all held");
    } else {
        for b in &broken {
            println!("  INVARIANT BROKEN: {b}");
        }
        println!(
            "  replay: hydractl lab soak --name {} --seconds {} --seed {}{flags}",
            a.name, a.seconds, a.seed,
        );
        if let Some(dir) = &logs {
            println!("  daemon logs: {}", dir.display());
        }
    }
    Ok(broken.is_empty())
}

/// Copies the lab's daemon logs to `/tmp/hydranet-soak-NAME/` (replacing an earlier soak's of
/// that name) before the lab goes, for the post-mortem, with each live daemon's `/metrics`
/// at the end (`NODE.metrics`: the counters say what the logs do not, e.g. which drop a lost
/// SYN met); returns where, if it worked.
fn keep_logs(name: &str) -> Option<PathBuf> {
    let from = super::state_dir(name);
    let to = PathBuf::from(format!("/tmp/hydranet-soak-{name}"));
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).ok()?;
    for e in std::fs::read_dir(&from).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "log") {
            let _ = std::fs::copy(&p, to.join(e.file_name()));
        }
        if p.extension().is_some_and(|x| x == "sock") {
            if let Ok(text) = control::request(&p, "GET", "/metrics", None) {
                let _ = std::fs::write(to.join(e.file_name()).with_extension("metrics"), text);
            }
        }
    }
    Some(to)
}

/// Removes a directory when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_backend_faults_and_fast_restarts_the_menu_is_the_old_one() {
        // Seeds from before backend faults replay with --no-backend-faults
        // --no-fast-restarts: same roll range, same fault per roll (0..4 kill, 4..6
        // partition, else impair).
        assert_eq!(menu_size(false, false), 10);
        let picks: Vec<_> = (0..10)
            .map(|r| choose(r, (false, false), true, false))
            .collect();
        let (k, p, i) = (
            Some(FaultKind::KillHost),
            Some(FaultKind::Partition),
            Some(FaultKind::Impair),
        );
        assert_eq!(picks, vec![k, k, k, k, p, p, i, i, i, i]);
    }

    #[test]
    fn backend_faults_get_rolls_of_their_own() {
        for fast in [false, true] {
            let picks: Vec<_> = (0..menu_size(true, fast))
                .map(|r| choose(r, (true, fast), true, false))
                .collect();
            let n = |kind| picks.iter().filter(|&&p| p == Some(kind)).count();
            assert_eq!(n(FaultKind::KillHost), 4);
            assert_eq!(n(FaultKind::Partition), 2);
            assert_eq!(n(FaultKind::KillBackend), 2);
            assert_eq!(n(FaultKind::FastRestart), if fast { 2 } else { 0 });
            assert_eq!(n(FaultKind::Impair), 4);
        }
        let picks: Vec<_> = (0..menu_size(false, true))
            .map(|r| choose(r, (false, true), true, false))
            .collect();
        assert_eq!(
            picks
                .iter()
                .filter(|&&p| p == Some(FaultKind::FastRestart))
                .count(),
            2
        );
        assert!(!picks.contains(&Some(FaultKind::KillBackend)));
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_failed_operation_is_excused_only_by_an_allowed_fault_it_overlapped() {
        let t0 = Instant::now();
        let mut log = FaultLog::default();
        log.windows.push(Window {
            start: at(t0, 1000),
            end: Some(at(t0, 2000)),
            what: "kill of h1".into(),
            excuse: None,
            loses: Some(1),
        });
        log.windows.push(Window {
            start: at(t0, 10_000),
            end: Some(at(t0, 11_000)),
            what: "impaired client".into(),
            excuse: Some(CLIENT_LINK),
            loses: None,
        });
        let timed_out = || OpResult {
            outcome: Outcome::Indeterminate,
            problem: Some("read reply: timed out".into()),
            ..OpResult::default()
        };
        // During a host kill: HydraNet must mask it, so the operation failed.
        let mut r = timed_out();
        classify(&mut r, at(t0, 500), at(t0, 1500), &log);
        assert_eq!(r.outcome, Outcome::Failed);
        // Overlapping the client's impaired link (or its grace after): indeterminate, and why.
        for (from, to) in [(9_000, 10_500), (11_500, 12_000)] {
            let mut r = timed_out();
            classify(&mut r, at(t0, from), at(t0, to), &log);
            assert_eq!(r.outcome, Outcome::Indeterminate, "{from}..{to}");
            assert!(r.reason.as_deref().unwrap().contains("impaired client"));
        }
        // Long after it: failed.
        let mut r = timed_out();
        classify(&mut r, at(t0, 14_000), at(t0, 15_000), &log);
        assert_eq!(r.outcome, Outcome::Failed);
        // Lost bytes are never excused.
        let mut r = timed_out();
        r.lost = 10;
        classify(&mut r, at(t0, 10_000), at(t0, 10_500), &log);
        assert_eq!(r.outcome, Outcome::Failed);
        // A success stays a success.
        let mut r = OpResult::default();
        classify(&mut r, at(t0, 10_000), at(t0, 10_500), &log);
        assert_eq!(r.outcome, Outcome::Ok);
    }

    #[test]
    fn a_counter_grows_by_its_difference_and_from_zero_after_a_restart() {
        let mut seen = 0;
        assert_eq!(counter_growth(&mut seen, 3), 3);
        assert_eq!(counter_growth(&mut seen, 3), 0);
        assert_eq!(counter_growth(&mut seen, 5), 2);
        // The host restarted: its counter starts again below what we saw.
        assert_eq!(counter_growth(&mut seen, 1), 1);
        assert_eq!(seen, 1);
    }

    #[test]
    fn an_operation_whose_every_replica_failed_during_it_is_indeterminate() {
        let t0 = Instant::now();
        let mut log = FaultLog {
            replicas: 3,
            ..FaultLog::default()
        };
        let fault = |h: u16, from: u64, to: u64| Window {
            start: at(t0, from),
            end: Some(at(t0, to)),
            what: format!("kill of h{h}"),
            excuse: None,
            loses: Some(h),
        };
        // h3 is down when the operation starts (it holds none of its connections); h1 and h2
        // are killed one after the other while it runs.
        log.windows.push(fault(3, 0, 3000));
        log.windows.push(fault(1, 1000, 2000));
        log.windows.push(fault(2, 2500, 4000));
        let timed_out = || OpResult {
            outcome: Outcome::Indeterminate,
            problem: Some("read body: timed out".into()),
            ..OpResult::default()
        };
        let mut r = timed_out();
        classify(&mut r, at(t0, 500), at(t0, 3000), &log);
        assert_eq!(r.outcome, Outcome::Indeterminate);
        assert!(r
            .reason
            .unwrap()
            .contains("every replica that held it failed"));
        // Ended before h2's kill: h2 was left to carry it on, so it failed.
        let mut r = timed_out();
        classify(&mut r, at(t0, 500), at(t0, 2400), &log);
        assert_eq!(r.outcome, Outcome::Failed);
        // Started after h1 came back: h1 holds it and was not lost.
        let mut r = timed_out();
        classify(&mut r, at(t0, 2100), at(t0, 3500), &log);
        assert_eq!(r.outcome, Outcome::Failed);
    }

    fn state(digest: &str, eras: &[(u64, &[(&str, &str)])]) -> RedisState {
        RedisState {
            digest: digest.into(),
            eras: eras
                .iter()
                .map(|(e, kv)| {
                    (
                        *e,
                        kv.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn redis_states_are_compared_per_era_among_the_hosts_that_held_it() {
        // h1 and h2 never faulted; h3 joined in era 2 (its redis lacks era 1).
        let joined = [0, 0, 0, 2];
        let e1: &[(&str, &str)] = &[("soak:e1:log", "aa")];
        let e2: &[(&str, &str)] = &[("soak:e2:log", "bb")];
        let good = vec![
            (1, state("d", &[(1, e1), (2, e2)])),
            (2, state("d", &[(1, e1), (2, e2)])),
            (3, state("x", &[(2, e2)])),
        ];
        let (notes, bad) = compare_redis(&good, &joined, true);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(notes[0].contains("2 eras compared"), "{notes:?}");
        // The same era in a different order on h3: caught.
        let e2x: &[(&str, &str)] = &[("soak:e2:log", "cc")];
        let diverged = vec![
            (1, state("d", &[(1, e1), (2, e2)])),
            (2, state("d", &[(1, e1), (2, e2)])),
            (3, state("x", &[(2, e2x)])),
        ];
        let (_, bad) = compare_redis(&diverged, &joined, true);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("era 2"));
        // Hosts never faulted must agree on the whole digest.
        let whole = vec![(1, state("d", &[(1, e1)])), (2, state("e", &[(1, e1)]))];
        let (_, bad) = compare_redis(&whole, &joined, true);
        assert!(
            bad.iter().any(|b| b.contains("DEBUG DIGEST differs")),
            "{bad:?}"
        );
    }

    #[test]
    fn one_host_fault_at_a_time_and_one_impairment() {
        for roll in 0..menu_size(true, true) {
            // A host fault in force, or a member missing from the view: never a second one.
            let pick = choose(roll, (true, true), false, false);
            assert_eq!(pick, Some(FaultKind::Impair), "roll {roll}");
            assert_eq!(choose(roll, (true, true), false, true), None, "roll {roll}");
            // An impairment in force does not stop a host fault.
            let pick = choose(roll, (true, true), true, true);
            assert_ne!(pick, Some(FaultKind::Impair), "roll {roll}");
        }
        assert!(Fault::BackendKilled(1).is_host_fault());
        assert!(Fault::Killed(1).is_host_fault());
        assert!(Fault::Partitioned(1).is_host_fault());
        assert!(!Fault::Impaired(Node::Client).is_host_fault());
    }
}
