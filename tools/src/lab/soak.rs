//! `hydractl lab soak`: a fault soak in the manner of Jepsen.
//!
//! It builds an ft lab of its own (hydra-fileserver on port 80, redis on 6379 when
//! `redis-server` is installed), drives client operations from worker threads in the client
//! namespace (downloads, uploads, redis sequences, each checked byte for byte), while a
//! seeded nemesis kills and restarts hosts, kills and restarts hosts' backends (unless
//! `--no-backend-faults`), partitions and heals hosts, and adds loss and duplication to
//! links. It ends with a summary: operations ok / failed / indeterminate,
//! bytes lost, bytes corrupted, resets seen, the longest pause inside a download, and the
//! invariants broken, with the seed to replay. The lab is removed at the end, also on error.
//!
//! The nemesis's schedule is a function of the seed; the interleaving with the workers is
//! not (real threads, real time), so a replay repeats the faults, not every packet.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `hydractl lab soak` settings.
pub(super) struct SoakArgs {
    pub name: String,
    pub seconds: u64,
    pub seed: u64,
    pub replicas: u16,
    pub workers: usize,
    /// Whether the nemesis also kills backends alone (hydra-host left running).
    pub backend_faults: bool,
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
        if let Some(p) = &r.problem {
            if self.problems.len() < 20 {
                self.problems.push(format!("{kind}: {p}"));
            }
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
        let n = s.read(&mut chunk)?;
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
        let n = s.read(&mut chunk)?;
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

/// A redis sequence on keys of its own: SET/GET and INCR, every reply checked.
fn redis_ops(tag: &str, rng: &mut Rng) -> OpResult {
    let mut r = OpResult::default();
    let mut s = match connect(REDIS_PORT) {
        Ok(s) => s,
        Err(e) => return r.io_error("connect", &e),
    };
    let mut pending = Vec::new();
    for j in 0..20u64 {
        let key = format!("soak:{tag}:{j}");
        let len = 16 + rng.below(48) as usize;
        let value: Vec<u8> = rng.bytes(len).iter().map(|b| b'a' + b % 26).collect();
        let ctr = format!("soak:{tag}:ctr");
        let steps: [(Vec<u8>, Vec<u8>); 3] = [
            (resp_cmd(&[b"SET", key.as_bytes(), &value]), b"+OK".to_vec()),
            (resp_cmd(&[b"GET", key.as_bytes()]), value.clone()),
            (
                resp_cmd(&[b"INCR", ctr.as_bytes()]),
                format!(":{}", j + 1).into_bytes(),
            ),
        ];
        for (cmd, want) in steps {
            if let Err(e) = s.write_all(&cmd) {
                return r.io_error("send command", &e);
            }
            match resp_reply(&mut s, &mut pending) {
                Ok(got) => {
                    r.checked += got.len() as u64;
                    if got != want {
                        r.outcome = Outcome::Failed;
                        r.corrupted += got.len().max(want.len()) as u64;
                        r.problem = Some(format!(
                            "reply {:?}, expected {:?}",
                            String::from_utf8_lossy(&got),
                            String::from_utf8_lossy(&want)
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

/// One worker: operations until `stop`, in the client namespace.
fn worker(
    ns: PathBuf,
    id: usize,
    seed: u64,
    files: Arc<Vec<(String, Vec<u8>)>>,
    redis: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Result<()> {
    let f = std::fs::File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the client namespace")?;
    let mut rng = rng(seed ^ (id as u64 + 1).wrapping_mul(0x51ed_270b));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let pick = rng.below(if redis { 3 } else { 2 });
        let (kind, res) = match pick {
            0 => {
                let (name, data) = &files[rng.below(files.len() as u64) as usize];
                ("download", download(name, data))
            }
            1 => {
                let len = 64 * 1024 + rng.below(2 << 20) as usize;
                ("upload", upload(&rng.bytes(len)))
            }
            _ => ("redis", redis_ops(&format!("{seed}:{id}:{n}"), &mut rng)),
        };
        // INVARIANT: no code panics while holding the lock.
        tally.lock().expect("tally lock").record(kind, &res);
    }
    Ok(())
}

/// A fault in force, and when to undo it.
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
}

/// The nemesis's rolls are `0..menu_size`. Without backend faults it is the menu soaks had
/// before them, so an old seed replays its schedule with `--no-backend-faults`.
fn menu_size(backend_faults: bool) -> u64 {
    if backend_faults {
        12
    } else {
        10
    }
}

/// The fault a roll picks, if any. A host fault takes one member out of the view, so it is
/// allowed only when `host_fault_ok` (no other host fault is in force and every host is in
/// the view): an ft service survives one member's loss at a time. A host fault that is not
/// allowed, and every other roll, becomes an impairment unless one is in force already.
fn choose(
    roll: u64,
    backend_faults: bool,
    host_fault_ok: bool,
    impaired: bool,
) -> Option<FaultKind> {
    let wanted = match roll {
        0..=3 => FaultKind::KillHost,
        4 | 5 => FaultKind::Partition,
        6 | 7 if backend_faults => FaultKind::KillBackend,
        _ => FaultKind::Impair,
    };
    match wanted {
        FaultKind::KillHost | FaultKind::Partition | FaultKind::KillBackend if host_fault_ok => {
            Some(wanted)
        }
        _ => (!impaired).then_some(FaultKind::Impair),
    }
}

fn node_name(n: &Node) -> String {
    n.to_string()
}

/// Adds the redis service on every host (after `up`, and after each restart).
fn add_redis_service(lab: &LabState, i: u16) -> Result<()> {
    let sock = lab.dir().join(format!("h{i}.sock"));
    let body = serde_json::json!({
        "service": format!("{}:{REDIS_PORT}", super::SERVICE_IP),
        "mode": "ft",
        "backend": format!("127.0.0.1:{REDIS_PORT}"),
    })
    .to_string();
    control::request(&sock, "POST", "/setportopt", Some(&body))
        .with_context(|| format!("adding the redis service on h{i}"))?;
    Ok(())
}

/// The redirector's current ft view members of the lab's port-80 service.
fn view_members(lab: &LabState) -> Vec<u64> {
    let sock = lab.dir().join("redir.sock");
    let Ok(text) = control::request(&sock, "GET", "/status", None) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let svc = lab.service();
    v["views"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["service"] == svc.as_str())
        .and_then(|x| x["members"].as_array())
        .map(|a| a.iter().filter_map(|m| m.as_u64()).collect())
        .unwrap_or_default()
}

fn undo(lab: &LabState, bins: &daemons::Binaries, f: &Fault, redis: bool) -> Result<String> {
    Ok(match f {
        Fault::Killed(i) => {
            let took = daemons::restart_host(lab, bins, *i)?;
            if redis {
                add_redis_service(lab, *i)?;
            }
            format!("restarted h{i} (live after {} ms)", took.as_millis())
        }
        Fault::BackendKilled(i) => {
            // hydra-host kept the redis service's settings: nothing to add again.
            let r = daemons::restart_backend(lab, *i)?;
            format!(
                "restarted h{i}'s backend (answering after {} ms, offered again after {} ms)",
                r.answered.as_millis(),
                r.offered.as_millis()
            )
        }
        Fault::Partitioned(i) => {
            faults::partition(lab, &format!("h{i}"), false)?;
            format!("healed h{i}")
        }
        Fault::Impaired(n) => {
            faults::impair(lab, &node_name(n), 0.0, 0.0)?;
            format!("cleared impairment of {n}")
        }
    })
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
             --daemonize no >redis.log 2>&1 & "
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
        no_daemons: false,
    })?;
    let guard = DownGuard::new(&a.name);
    let lab = LabState::load(&a.name)?;
    if redis {
        for i in 1..=lab.replicas {
            add_redis_service(&lab, i)?;
        }
        // Wait until the redirector has a view for the redis port too.
        std::thread::sleep(Duration::from_millis(500));
    } else {
        eprintln!("soak: redis-server is not installed; running downloads and uploads only");
    }

    eprintln!(
        "soak: lab {} ({} replicas), {} s, seed {} (replay with --seed {}{}), {} workers{}, {}",
        a.name,
        a.replicas,
        a.seconds,
        a.seed,
        a.seed,
        if a.backend_faults {
            ""
        } else {
            " --no-backend-faults"
        },
        a.workers,
        if redis { ", redis on :6379" } else { "" },
        if a.backend_faults {
            "backend faults on (--no-backend-faults turns them off)"
        } else {
            "backend faults off"
        }
    );
    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let ns = PathBuf::from("/run/netns").join(lab.ns(&Node::Client));
    let handles: Vec<_> = (0..a.workers)
        .map(|id| {
            let (ns, files, stop, tally) = (ns.clone(), files.clone(), stop.clone(), tally.clone());
            let seed = a.seed;
            std::thread::spawn(move || worker(ns, id, seed, files, redis, stop, tally))
        })
        .collect();

    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let mut nem = rng(a.seed);
    let mut active: Vec<(Instant, Fault)> = Vec::new();
    let mut next = start + Duration::from_millis(1500);
    let mut events = 0u32;
    let log = |what: &str| eprintln!("soak {:>6.1} s: {what}", start.elapsed().as_secs_f64());
    let mut error = None;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        // Undo faults whose time is up.
        let mut i = 0;
        while i < active.len() {
            if now >= active[i].0 {
                let (_, f) = active.remove(i);
                match undo(&lab, &bins, &f, redis) {
                    Ok(s) => log(&s),
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
        let host_down = active.iter().any(|(_, f)| f.is_host_fault());
        let impaired = active.iter().any(|(_, f)| matches!(f, Fault::Impaired(_)));
        let roll = nem.below(menu_size(a.backend_faults));
        let members = view_members(&lab);
        let host_fault_ok = !host_down && members.len() == usize::from(lab.replicas);
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
            let Some(kind) = choose(roll, a.backend_faults, host_fault_ok, impaired) else {
                return Ok(());
            };
            match kind {
                FaultKind::KillHost => {
                    let h = pick_host(&mut nem);
                    let ns = lab.ns(&Node::Host(h));
                    net::kill_all(std::slice::from_ref(&ns))?;
                    log(&format!("killed h{h}"));
                    let back = now + Duration::from_millis(1500 + nem.below(2500));
                    active.push((back, Fault::Killed(h)));
                }
                FaultKind::KillBackend => {
                    let h = pick_host(&mut nem);
                    let killed = procs::kill_backend(&lab, h)?;
                    let what: Vec<&str> = killed.iter().map(|p| p.comm.as_str()).collect();
                    log(&format!("killed h{h}'s backend ({})", what.join(", ")));
                    let back = now + Duration::from_millis(1500 + nem.below(2500));
                    active.push((back, Fault::BackendKilled(h)));
                }
                FaultKind::Partition => {
                    let h = pick_host(&mut nem);
                    faults::partition(&lab, &format!("h{h}"), true)?;
                    log(&format!("partitioned h{h}"));
                    let back = now + Duration::from_millis(1000 + nem.below(2000));
                    active.push((back, Fault::Partitioned(h)));
                }
                FaultKind::Impair => {
                    let node = if nem.below(3) == 0 {
                        Node::Client
                    } else {
                        Node::Host(1 + nem.below(u64::from(lab.replicas)) as u16)
                    };
                    let loss = (1 + nem.below(5)) as f64;
                    let dup = nem.below(4) as f64;
                    faults::impair(&lab, &node_name(&node), loss, dup)?;
                    log(&format!(
                        "impaired {node}: {loss}% loss, {dup}% duplication"
                    ));
                    let back = now + Duration::from_millis(2000 + nem.below(3000));
                    active.push((back, Fault::Impaired(node)));
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
    // Let every fault end, then the workers finish their operations.
    for (_, f) in active.drain(..) {
        match undo(&lab, &bins, &f, redis) {
            Ok(s) => log(&s),
            Err(e) => error = error.or(Some(e)),
        }
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
            let m = view_members(&lab);
            if m.len() == usize::from(lab.replicas) || Instant::now() >= deadline {
                break m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
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
    broken.extend(worker_errors);
    println!(
        "soak summary (seed {}, {} s, {events} faults, backend faults {})",
        a.seed,
        a.seconds,
        if a.backend_faults { "on" } else { "off" }
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
    println!(
        "  longest pause inside a download: {} ms",
        t.longest_pause.as_millis()
    );
    for p in &t.problems {
        println!("  note: {p}");
    }
    if broken.is_empty() {
        println!("  invariants: all held");
    } else {
        for b in &broken {
            println!("  INVARIANT BROKEN: {b}");
        }
        println!(
            "  replay: hydractl lab soak --name {} --seconds {} --seed {}{}",
            a.name,
            a.seconds,
            a.seed,
            if a.backend_faults {
                ""
            } else {
                " --no-backend-faults"
            }
        );
    }
    Ok(broken.is_empty())
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
    fn without_backend_faults_the_menu_is_the_old_one() {
        // Seeds from before backend faults replay with --no-backend-faults: same roll range,
        // same fault per roll (0..4 kill, 4..6 partition, else impair).
        assert_eq!(menu_size(false), 10);
        let picks: Vec<_> = (0..10).map(|r| choose(r, false, true, false)).collect();
        let (k, p, i) = (
            Some(FaultKind::KillHost),
            Some(FaultKind::Partition),
            Some(FaultKind::Impair),
        );
        assert_eq!(picks, vec![k, k, k, k, p, p, i, i, i, i]);
    }

    #[test]
    fn backend_faults_get_rolls_of_their_own() {
        let picks: Vec<_> = (0..menu_size(true))
            .map(|r| choose(r, true, true, false))
            .collect();
        let n = |kind| picks.iter().filter(|&&p| p == Some(kind)).count();
        assert_eq!(n(FaultKind::KillHost), 4);
        assert_eq!(n(FaultKind::Partition), 2);
        assert_eq!(n(FaultKind::KillBackend), 2);
        assert_eq!(n(FaultKind::Impair), 4);
    }

    #[test]
    fn one_host_fault_at_a_time_and_one_impairment() {
        for roll in 0..menu_size(true) {
            // A host fault in force, or a member missing from the view: never a second one.
            let pick = choose(roll, true, false, false);
            assert_eq!(pick, Some(FaultKind::Impair), "roll {roll}");
            assert_eq!(choose(roll, true, false, true), None, "roll {roll}");
            // An impairment in force does not stop a host fault.
            let pick = choose(roll, true, true, true);
            assert_ne!(pick, Some(FaultKind::Impair), "roll {roll}");
        }
        assert!(Fault::BackendKilled(1).is_host_fault());
        assert!(Fault::Killed(1).is_host_fault());
        assert!(Fault::Partitioned(1).is_host_fault());
        assert!(!Fault::Impaired(Node::Client).is_host_fault());
    }
}
