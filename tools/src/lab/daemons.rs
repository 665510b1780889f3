//! Starting a lab's daemons and backends, and waiting until its service answers.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use serde::Deserialize;

use super::{LabState, Node, SERVICE_IP};

/// How long `lab up` waits for the service to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `lab up` waits for the service; `HYDRA_LAB_TIMEOUT_SECS` overrides the 30 s (tests
/// that expect a failure use a short one).
fn ready_timeout() -> Duration {
    std::env::var("HYDRA_LAB_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(READY_TIMEOUT)
}
/// How often it checks.
const POLL: Duration = Duration::from_millis(100);
/// How long it gives the redirector to open its admin socket before starting the hosts.
const REDIR_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the daemon binaries are.
pub(super) struct Binaries {
    redirector: PathBuf,
    host: PathBuf,
}

impl Binaries {
    /// The binaries next to the running hydractl, or in `$HYDRA_BIN_DIR`.
    pub(super) fn find() -> Result<Binaries> {
        let (dir, from_env) = match std::env::var_os("HYDRA_BIN_DIR") {
            Some(d) => (PathBuf::from(d), true),
            None => {
                let exe = std::env::current_exe().context("finding the hydractl binary")?;
                // INVARIANT: an executable's path is a file's path, which has a parent.
                (
                    exe.parent().expect("file has a parent").to_path_buf(),
                    false,
                )
            }
        };
        // The daemons run with another working directory, so a relative path would break.
        let dir = std::path::absolute(&dir)
            .with_context(|| format!("making {} absolute", dir.display()))?;
        let find = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else if from_env {
                bail!(
                    "cannot find {name} in HYDRA_BIN_DIR ({}): build with cargo build --release \
                     or point HYDRA_BIN_DIR at the binaries",
                    dir.display()
                )
            } else {
                bail!(
                    "cannot find {name} next to hydractl ({}): build with cargo build --release",
                    dir.display()
                )
            }
        };
        Ok(Binaries {
            redirector: find("hydra-redirector")?,
            host: find("hydra-host")?,
        })
    }

    /// The directory holding the daemons (hydra-fileserver is built beside them).
    pub(super) fn dir(&self) -> &std::path::Path {
        // INVARIANT: `find` built the path as dir.join(name).
        self.host.parent().expect("binary path has a parent")
    }

    /// No binaries: for `lab up --no-daemons`.
    pub(super) fn none() -> Binaries {
        Binaries {
            redirector: PathBuf::new(),
            host: PathBuf::new(),
        }
    }
}

/// A HydraNet daemon we started, watched while waiting so a crash is reported at once.
struct Daemon {
    node: Node,
    child: Child,
}

/// The daemons of a lab that is coming up.
pub(super) struct Started {
    daemons: Vec<Daemon>,
    /// When the first daemon was started: the wait for the service counts from here.
    at: Instant,
}

/// Writes the configs and starts the redirector, the backends and the hosts, in that order.
/// Without `with_daemons`, starts only the backends.
pub(super) fn start_all(lab: &LabState, bins: &Binaries, with_daemons: bool) -> Result<Started> {
    let dir = lab.dir();
    let mut daemons = Vec::new();
    let at = Instant::now();

    if with_daemons {
        let config = dir.join("redir.toml");
        write_file(&config, &redirector_config(lab))?;
        let child = spawn_detached(
            lab,
            &Node::Redir,
            &bins.redirector,
            &["--config".as_ref(), config.as_os_str()],
            &dir,
            &dir.join("redir.log"),
        )?;
        daemons.push(Daemon {
            node: Node::Redir,
            child,
        });
    }

    for i in 1..=lab.replicas {
        spawn_backend(lab, i)?;
    }

    if !with_daemons {
        return Ok(Started { daemons, at });
    }

    // Hosts dial the redirector; give it a moment to come up so their first try succeeds.
    let sock = dir.join("redir.sock");
    let deadline = Instant::now() + REDIR_START_TIMEOUT;
    while !sock.exists() && Instant::now() < deadline {
        check_alive(lab, &mut daemons, None)?;
        thread::sleep(POLL);
    }

    for i in 1..=lab.replicas {
        daemons.push(spawn_host(lab, bins, i)?);
    }
    Ok(Started { daemons, at })
}

/// Starts host `i`'s backend (`sh -c CMD` in its own directory, in a session of its own, so
/// it shares neither session nor process group with hydra-host). The backend is not watched
/// while the lab comes up: `sh -c` may legitimately exit after daemonizing it.
fn spawn_backend(lab: &LabState, i: u16) -> Result<Child> {
    let node = Node::Host(i);
    let dir = lab.dir();
    let cwd = dir.join(node.to_string());
    fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
    spawn_detached(
        lab,
        &node,
        Path::new("sh"),
        &["-c".as_ref(), lab.backend_cmd.as_ref()],
        &cwd,
        &backend_log(lab, i),
    )
}

fn backend_log(lab: &LabState, i: u16) -> PathBuf {
    lab.dir().join(format!("h{i}-backend.log"))
}

/// How long a restarted backend has to answer, and its host then to offer the service again.
const BACKEND_RESTART_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`restart_backend`] waited for, each counted from the backend's start.
pub(super) struct BackendRestart {
    /// Until the backend accepted a connection on its port.
    pub answered: Duration,
    /// Until the redirector listed the host live with the service again.
    pub offered: Duration,
}

/// Starts host `i`'s backend again (the same command, directory and log), leaving its
/// hydra-host alone, and returns once the backend accepts connections on
/// 127.0.0.1:BACKEND_PORT in the host's namespace and the redirector lists the host live with
/// the service: hydra-host's health checker sees the backend answer and advertises the
/// service again. The caller makes sure the old backend is gone and hydra-host runs.
pub(super) fn restart_backend(lab: &LabState, i: u16) -> Result<BackendRestart> {
    let node = Node::Host(i);
    let log = backend_log(lab, i);
    let started = Instant::now();
    let deadline = started + BACKEND_RESTART_TIMEOUT;
    let mut sh = spawn_backend(lab, i)?;
    let ns = Path::new("/run/netns").join(lab.ns(&node));
    let backend = SocketAddr::from(([127, 0, 0, 1], lab.backend_port));

    let probe = thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // setns affects only this thread, as in `wait_ready`.
            let f = File::open(&ns).with_context(|| format!("opening {}", ns.display()))?;
            setns(&f, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", ns.display()))?;
            loop {
                if TcpStream::connect_timeout(&backend, Duration::from_millis(200)).is_ok() {
                    return Ok(());
                }
                // `sh -c` exiting 0 may have daemonized the backend: keep waiting for it.
                let exited = sh
                    .try_wait()
                    .with_context(|| format!("checking on {node}'s backend"))?;
                if let Some(status) = exited.filter(|s| !s.success()) {
                    bail!(
                        "{node}'s backend exited ({status}); the last lines of {}:\n{}",
                        log.display(),
                        tail(&log, 5)
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "{node}'s backend does not answer on {backend} after {} s; the last \
                         lines of {}:\n{}",
                        BACKEND_RESTART_TIMEOUT.as_secs(),
                        log.display(),
                        tail(&log, 5)
                    );
                }
                thread::sleep(POLL);
            }
        })
        .join()
    });
    probe.map_err(|_| anyhow!("the thread probing {node}'s backend panicked"))??;
    let answered = started.elapsed();

    let sock = lab.dir().join("redir.sock");
    loop {
        if !hosts_not_live(lab, &sock)?.contains(&i) {
            return Ok(BackendRestart {
                answered,
                offered: started.elapsed(),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "{node}'s backend answers, but the redirector does not list {node} live with \
                 service {} after {} s; the last lines of {node}.log:\n{}",
                lab.service(),
                BACKEND_RESTART_TIMEOUT.as_secs(),
                tail(&lab.dir().join(format!("{node}.log")), 5)
            );
        }
        thread::sleep(POLL);
    }
}

/// The program `sh -c CMD` will run first, when it can be told without running the shell:
/// the first word after variable assignments and `exec`. `None` for shell builtins and
/// keywords, words with quoting or expansions, and paths relative to the host's directory.
pub(super) fn backend_program(cmd: &str) -> Option<&str> {
    const SHELL_WORDS: &[&str] = &[
        ".", ":", "!", "{", "}", "[", "alias", "bg", "break", "case", "cd", "command", "continue",
        "do", "done", "echo", "elif", "else", "esac", "eval", "exit", "export", "false", "fg",
        "fi", "for", "getopts", "if", "jobs", "kill", "local", "printf", "pwd", "read", "readonly",
        "return", "set", "shift", "source", "test", "then", "times", "trap", "true", "type",
        "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
    ];
    let is_assignment = |w: &str| {
        w.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
    };
    let word = cmd
        .split_whitespace()
        .find(|w| *w != "exec" && !is_assignment(w))?;
    let special = |c: char| "$`'\"\\(){}[];&|<>*?~#=".contains(c);
    if SHELL_WORDS.contains(&word)
        || word.contains(special)
        || (word.contains('/') && !word.starts_with('/'))
    {
        return None;
    }
    Some(word)
}

/// Writes host `i`'s config and starts its hydra-host.
fn spawn_host(lab: &LabState, bins: &Binaries, i: u16) -> Result<Daemon> {
    let node = Node::Host(i);
    let dir = lab.dir();
    let config = dir.join(format!("{node}.toml"));
    write_file(&config, &host_config(lab, i))?;
    let child = spawn_detached(
        lab,
        &node,
        &bins.host,
        &["--config".as_ref(), config.as_os_str()],
        &dir,
        &dir.join(format!("{node}.log")),
    )?;
    Ok(Daemon { node, child })
}

fn redirector_config(lab: &LabState) -> String {
    let dir = lab.dir();
    let dir = dir.display();
    format!(
        "node_id = 0\n\
         listen = \"0.0.0.0:7000\"\n\
         key_file = \"{dir}/cluster.key\"\n\
         admin_socket = \"{dir}/redir.sock\"\n\
         metrics_listen = \"198.18.0.1:9100\"\n\
         tun_name = \"hydra0\"\n\
         tun_addr = \"198.19.255.254/16\"\n\
         tun_offload = {batched}\n\
         udp_gso = {batched}\n",
        batched = !lab.plain_io
    )
}

fn host_config(lab: &LabState, i: u16) -> String {
    let dir = lab.dir();
    let dir = dir.display();
    let service = lab.service();
    let mode = lab.mode.as_str();
    let backend_port = lab.backend_port;
    format!(
        "node_id = {i}\n\
         listen = \"198.18.{i}.2:7000\"\n\
         redirector = \"198.18.{i}.1:7000\"\n\
         key_file = \"{dir}/cluster.key\"\n\
         admin_socket = \"{dir}/h{i}.sock\"\n\
         metrics_listen = \"198.18.{i}.2:9100\"\n\
         udp_gso = {batched}\n\
         vhosts = [\"{SERVICE_IP}\"]\n\
         \n\
         [[service]]\n\
         addr = \"{service}\"\n\
         mode = \"{mode}\"\n\
         backend = \"127.0.0.1:{backend_port}\"\n",
        batched = !lab.plain_io
    )
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Restarts a crashed host: kills whatever is left in its namespace, starts its backend and
/// its hydra-host again (same config, same key), and waits until the redirector counts its
/// new life live. A new life is a new member (its incarnation differs), which the redirector
/// swaps in at once, so there is no need to wait for the detector to notice the old life
/// died first (issue #12, finding 4); `wait_for_detector` still does, for soak replays of
/// seeds from before that (`--no-fast-restarts`).
pub(super) fn restart_host(
    lab: &LabState,
    bins: &Binaries,
    i: u16,
    wait_for_detector: bool,
) -> Result<Duration> {
    let node = Node::Host(i);
    let dir = lab.dir();
    let sock = dir.join("redir.sock");
    let old_life = live_life(lab, &sock, i)?;
    super::net::kill_all(std::slice::from_ref(&lab.ns(&node)))?;
    if wait_for_detector {
        let forget = Instant::now() + Duration::from_secs(5);
        while !hosts_not_live(lab, &sock)?.contains(&i) && Instant::now() < forget {
            thread::sleep(POLL);
        }
    }
    let started = Instant::now();
    spawn_backend(lab, i)?;
    let mut daemons = vec![spawn_host(lab, bins, i)?];
    let deadline = started + Duration::from_secs(10);
    loop {
        check_alive(lab, &mut daemons, None)?;
        if live_life(lab, &sock, i)?.is_some_and(|l| Some(&l) != old_life.as_ref()) {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            bail!(
                "{node} restarted but is not live at the redirector after 10 s; its log:\n{}",
                tail(&dir.join(format!("{node}.log")), 5)
            );
        }
        thread::sleep(POLL);
    }
}

/// Starts `program args` in `node`'s namespace, in a session of its own (so it outlives us
/// and no terminal signal reaches it), stdin null, stdout and stderr appended to `log`.
fn spawn_detached(
    lab: &LabState,
    node: &Node,
    program: &Path,
    args: &[&std::ffi::OsStr],
    cwd: &Path,
    log: &Path,
) -> Result<Child> {
    let ns = lab.ns(node);
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {}", log.display()))?;
    // `setsid` (util-linux) rather than a pre_exec hook: the workspace denies unsafe code.
    // Our child is never a process-group leader, so setsid execs in place and the PID we
    // hold is the daemon's own (`ip netns exec` execs too).
    Command::new("setsid")
        .args(["ip", "netns", "exec", &ns])
        .arg(program)
        .args(args)
        .current_dir(cwd)
        // HYDRA_LAB_LOG (e.g. `info,host_server::order=debug`) sets the daemons' filter.
        .env(
            "RUST_LOG",
            std::env::var("HYDRA_LAB_LOG").unwrap_or_else(|_| "info".into()),
        )
        // Logs are files people read (and `lab up` quotes): no colour codes.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {} in {ns}", program.display()))
}

/// Fails if one of the daemons has exited.
fn check_alive(lab: &LabState, daemons: &mut [Daemon], waited: Option<Duration>) -> Result<()> {
    for d in daemons.iter_mut() {
        let status = d
            .child
            .try_wait()
            .with_context(|| format!("checking on the {} daemon", d.node))?;
        if let Some(status) = status {
            return Err(NotReady::Exited(d.node, status).into_error(lab, waited));
        }
    }
    Ok(())
}

/// What is still missing while the lab comes up.
enum NotReady {
    /// A daemon died.
    Exited(Node, ExitStatus),
    /// The redirector's admin API does not answer (or answers nonsense).
    Admin(String),
    /// The redirector does not list these hosts as live with the service.
    Hosts(Vec<u16>),
    /// The service does not accept connections from the client namespace.
    Service(String),
}

impl NotReady {
    /// Says what is missing, with the relevant logs; `waited` if we gave up waiting.
    fn into_error(self, lab: &LabState, waited: Option<Duration>) -> anyhow::Error {
        let dir = lab.dir();
        let sock = dir.join("redir.sock");
        let (what, logs): (String, Vec<String>) = match self {
            NotReady::Exited(node, status) => {
                let mut logs = vec![log_name(&node)];
                if let Node::Host(_) = node {
                    logs.push(format!("{node}-backend.log"));
                }
                (format!("{} exited ({status})", daemon_name(&node)), logs)
            }
            NotReady::Admin(e) => (
                format!(
                    "the redirector's admin API ({}) does not answer: {e}",
                    sock.display()
                ),
                vec!["redir.log".to_string()],
            ),
            NotReady::Hosts(hosts) => {
                let names: Vec<String> = hosts.iter().map(|i| format!("h{i}")).collect();
                let mut logs = vec!["redir.log".to_string()];
                // Enough to see what goes wrong; a 200-host lab would bury the message.
                for i in hosts.iter().take(3) {
                    logs.push(format!("h{i}.log"));
                    logs.push(format!("h{i}-backend.log"));
                }
                (
                    format!(
                        "the redirector does not report {} as live with service {}",
                        names.join(", "),
                        lab.service()
                    ),
                    logs,
                )
            }
            NotReady::Service(e) => (
                format!(
                    "service {} does not answer from {}: {e}",
                    lab.service(),
                    lab.ns(&Node::Client)
                ),
                vec![
                    "redir.log".to_string(),
                    "h1.log".to_string(),
                    "h1-backend.log".to_string(),
                ],
            ),
        };
        let mut msg = match waited {
            Some(t) => format!(
                "lab {} did not come up within {} s: {what}",
                lab.name,
                t.as_secs()
            ),
            None => format!("lab {} did not come up: {what}", lab.name),
        };
        for log in logs {
            let path = dir.join(&log);
            msg += &format!("\n--- last lines of {} ---\n", path.display());
            msg += &tail(&path, 5);
        }
        msg += "\n(the lab was removed again)";
        anyhow!(msg)
    }
}

fn daemon_name(node: &Node) -> String {
    match node {
        Node::Redir => "hydra-redirector".to_string(),
        other => format!("hydra-host on {other}"),
    }
}

fn log_name(node: &Node) -> String {
    match node {
        Node::Redir => "redir.log".to_string(),
        other => format!("{other}.log"),
    }
}

/// The last `n` lines of a log file, or a note saying why there are none.
fn tail(path: &Path, n: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(empty)".to_string(),
        Ok(text) => {
            let lines: Vec<&str> = text.trim_end().lines().collect();
            strip_ansi(&lines[lines.len().saturating_sub(n)..].join("\n"))
        }
        Err(e) => format!("({e})"),
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`), in case a daemon logs in colour.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the redirector reports every host live with the service and the service
/// accepts a TCP connection from the client namespace. On timeout, says what is missing
/// and shows the relevant logs.
pub(super) fn wait_ready(lab: &LabState, started: Started) -> Result<()> {
    let Started { mut daemons, at } = started;
    let client_ns = Path::new("/run/netns").join(lab.ns(&Node::Client));
    let service: SocketAddr = lab
        .service()
        .parse()
        .context("parsing the service address")?;
    let sock = lab.dir().join("redir.sock");
    let deadline = at + ready_timeout();

    let result = thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // setns affects only this thread: the probe connects from inside the client
            // namespace without spawning a process per attempt.
            let ns = File::open(&client_ns)
                .with_context(|| format!("opening {}", client_ns.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {}", client_ns.display()))?;
            loop {
                check_alive(lab, &mut daemons, None)?;
                let missing = match hosts_not_live(lab, &sock) {
                    Ok(hosts) if hosts.is_empty() => {
                        match TcpStream::connect_timeout(&service, Duration::from_millis(500)) {
                            Ok(_) => return Ok(()),
                            Err(e) => NotReady::Service(e.to_string()),
                        }
                    }
                    Ok(hosts) => NotReady::Hosts(hosts),
                    Err(e) => NotReady::Admin(format!("{e:#}")),
                };
                if Instant::now() >= deadline {
                    return Err(missing.into_error(lab, Some(ready_timeout())));
                }
                thread::sleep(POLL);
            }
        })
        .join()
    });
    result.map_err(|_| anyhow!("the thread waiting for lab {} panicked", lab.name))?
}

#[derive(Deserialize)]
struct Status {
    hosts: Vec<HostStatus>,
}

#[derive(Deserialize)]
struct HostStatus {
    id: u64,
    #[serde(default)]
    incarnation: Option<String>,
    #[serde(default)]
    live: bool,
    #[serde(default)]
    services: Vec<String>,
}

/// The redirector's `/status` (at most 2 s per read: it may be starting, or stuck).
fn redirector_status(sock: &Path) -> Result<Status> {
    let body = control::request_within(sock, "GET", "/status", None, Duration::from_secs(2))?;
    serde_json::from_str(&body).context("GET /status answered unexpected JSON")
}

/// The hosts the redirector does not (yet) list as live with the lab's service.
fn hosts_not_live(lab: &LabState, sock: &Path) -> Result<Vec<u16>> {
    Ok(missing_hosts(lab, &redirector_status(sock)?))
}

/// The life of host `i` the redirector counts live with the lab's service, if any.
fn live_life(lab: &LabState, sock: &Path, i: u16) -> Result<Option<String>> {
    let service = lab.service();
    Ok(redirector_status(sock)?
        .hosts
        .into_iter()
        .find(|h| h.id == u64::from(i) && h.live && h.services.contains(&service))
        .and_then(|h| h.incarnation))
}

fn missing_hosts(lab: &LabState, status: &Status) -> Vec<u16> {
    let service = lab.service();
    (1..=lab.replicas)
        .filter(|i| {
            !status
                .hosts
                .iter()
                .any(|h| h.id == u64::from(*i) && h.live && h.services.contains(&service))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m up"),
            "time  INFO up"
        );
    }

    #[test]
    fn status_lists_hosts_not_live() {
        let lab = LabState {
            name: "t".into(),
            replicas: 3,
            mode: super::super::Mode::Ft,
            port: 80,
            backend_port: 8080,
            backend_cmd: String::new(),
            plain_io: false,
        };
        let body = r#"{"kind":"redirector","hosts":[
            {"id":1,"addr":"198.18.1.2:7000","live":true,"services":["198.19.0.10:80"]},
            {"id":2,"addr":"198.18.2.2:7000","live":false,"services":["198.19.0.10:80"]},
            {"id":3,"addr":"198.18.3.2:7000","live":true,"services":[]}]}"#;
        let status: Status = serde_json::from_str(body).unwrap();
        assert_eq!(missing_hosts(&lab, &status), vec![2, 3]);
    }

    #[test]
    fn backend_program_is_the_first_word_sh_runs() {
        assert_eq!(
            backend_program("redis-server --port 8080"),
            Some("redis-server")
        );
        assert_eq!(
            backend_program("exec python3 -m http.server 8080"),
            Some("python3")
        );
        assert_eq!(
            backend_program("  RUST_LOG=info exec /opt/x/bin/srv --flag"),
            Some("/opt/x/bin/srv")
        );
        // What only the shell can tell: not checked.
        for cmd in [
            "exit 3",
            "cd www && nginx",
            "$SERVER --port 1",
            "'redis-server' --port 1",
            "./srv",
            "(redis-server)",
            "",
        ] {
            assert_eq!(backend_program(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn host_config_is_exact() {
        let lab = LabState {
            name: "t1".into(),
            replicas: 3,
            mode: super::super::Mode::Ft,
            port: 80,
            backend_port: 8080,
            backend_cmd: String::new(),
            plain_io: false,
        };
        assert_eq!(
            host_config(&lab, 2),
            "node_id = 2\n\
             listen = \"198.18.2.2:7000\"\n\
             redirector = \"198.18.2.1:7000\"\n\
             key_file = \"/run/hydranet/lab-t1/cluster.key\"\n\
             admin_socket = \"/run/hydranet/lab-t1/h2.sock\"\n\
             metrics_listen = \"198.18.2.2:9100\"\n\
             udp_gso = true\n\
             vhosts = [\"198.19.0.10\"]\n\
             \n\
             [[service]]\n\
             addr = \"198.19.0.10:80\"\n\
             mode = \"ft\"\n\
             backend = \"127.0.0.1:8080\"\n"
        );
        assert!(toml::from_str::<toml::Value>(&host_config(&lab, 2)).is_ok());
        assert!(toml::from_str::<toml::Value>(&redirector_config(&lab)).is_ok());
    }
}
