//! The processes of a lab node, read from /proc: which of a host's are hydra-host and which
//! its backend, and signalling them (`lab kill|pause|resume --backend`, `lab status`).
//!
//! A host namespace holds hydra-host and the backend, each started in a session of its own
//! (`setsid`, daemons.rs). The backend's own session and process tree are not enough to find
//! it: a backend that daemonizes (nginx's master, `redis-server --daemonize yes`) calls
//! setsid itself and is reparented away from the `sh` that started it. So the backend is
//! every process in the host's namespace whose session
//!
//! - holds no hydra-host (the lab starts hydra-host as its own session leader; whatever
//!   shares a session with a hydra-host is never the backend),
//! - and whose leader is not a live process outside the namespace: that is a terminal or a
//!   test that ran a command there with `lab exec` or `ip netns exec`, left alone.
//!
//! That leaves the backend's `sh` and what it started, daemons that made their own session
//! inside the namespace, and processes whose session leader has exited (the `sh` of a
//! daemonizing command, a daemon's first fork).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{net, LabState, Node};

/// The name (`comm`) of the host daemon's process.
const HOST_COMM: &str = "hydra-host";

/// One process, as /proc showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Proc {
    pub pid: i32,
    /// The session it belongs to: its leader's PID (0 when the leader is outside our PID
    /// namespace).
    pub sid: i32,
    /// The scheduler state letter: `T` is stopped (SIGSTOP).
    pub state: char,
    pub comm: String,
    /// Its command line, for people to read.
    pub cmdline: String,
}

impl Proc {
    /// Whether it is stopped by a signal (`T`; `t` is a debugger's stop, not ours).
    pub fn is_stopped(&self) -> bool {
        self.state == 'T'
    }
}

impl std::fmt::Display for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.pid, self.cmdline)
    }
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    comm: String,
    state: char,
    sid: i32,
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid pgrp session ...`. The name may hold
/// spaces and parentheses, so it runs to the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let _pgrp = fields.next()?;
    let sid = fields.next()?.parse().ok()?;
    Some(Stat { comm, state, sid })
}

/// A command line from `/proc/PID/cmdline` (NUL-separated, perhaps rewritten in place with
/// trailing NULs or spaces, as nginx does) for one line of output; `[comm]` when empty.
fn display_cmdline(raw: &[u8], comm: &str) -> String {
    const MAX: usize = 100;
    let words: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|w| String::from_utf8_lossy(w).trim().to_string())
        .filter(|w| !w.is_empty())
        .collect();
    let line = words.join(" ");
    if line.is_empty() {
        return format!("[{comm}]");
    }
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The live processes in `node`'s namespace, by PID.
fn procs_in(lab: &LabState, node: &Node) -> Result<BTreeMap<i32, Proc>> {
    let mut procs = BTreeMap::new();
    for pid in net::pids_in(&[lab.ns(node)])? {
        let pid = pid.as_raw();
        // It may exit while we look: then it is not there.
        let Some(stat) = read_stat(pid) else { continue };
        let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = display_cmdline(&raw, &stat.comm);
        procs.insert(
            pid,
            Proc {
                pid,
                sid: stat.sid,
                state: stat.state,
                comm: stat.comm,
                cmdline,
            },
        );
    }
    Ok(procs)
}

/// Where a process's session leader is, which says whose the process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leader {
    /// The session holds hydra-host: the process is the host daemon or one of its own.
    HydraHost,
    /// Another live process in the namespace: the backend's `sh`, or a backend daemon that
    /// made its own session.
    InNamespace,
    /// Exited (or a zombie): the `sh` of a daemonizing backend, a daemon's first fork.
    Gone,
    /// A live process elsewhere: the terminal or test that ran `lab exec`.
    Outside,
}

impl Leader {
    /// Whether a process whose session leader is here belongs to the backend.
    fn is_backend(self) -> bool {
        matches!(self, Leader::InNamespace | Leader::Gone)
    }
}

/// Where session `sid`'s leader is: `in_ns` holds the namespace's live processes,
/// `host_sids` the sessions holding a hydra-host, `outside` the leader's state letter when it
/// is a process outside the namespace.
fn leader(
    sid: i32,
    in_ns: &BTreeMap<i32, Proc>,
    host_sids: &HashSet<i32>,
    outside: Option<char>,
) -> Leader {
    if host_sids.contains(&sid) {
        return Leader::HydraHost;
    }
    match in_ns.get(&sid) {
        Some(_) => Leader::InNamespace,
        // Session 0: the leader is beyond our PID namespace, so it is not one of the lab's.
        None if sid <= 0 => Leader::Outside,
        None => match outside {
            None | Some('Z' | 'X') => Leader::Gone,
            Some(_) => Leader::Outside,
        },
    }
}

/// A host's processes, split by owner.
#[derive(Debug, Default)]
pub(super) struct HostProcs {
    /// hydra-host (normally one process).
    pub host: Vec<Proc>,
    pub backend: Vec<Proc>,
    /// Commands run in the namespace from outside (`lab exec`); never signalled here.
    pub other: Vec<Proc>,
}

/// Splits the processes of a host namespace by the leader of their sessions; `outside`
/// answers for leaders that are not in the namespace.
fn split(in_ns: &BTreeMap<i32, Proc>, outside: impl Fn(i32) -> Option<char>) -> HostProcs {
    let host_sids: HashSet<i32> = in_ns
        .values()
        .filter(|p| p.comm == HOST_COMM)
        .map(|p| p.sid)
        .collect();
    let mut leaders: HashMap<i32, Leader> = HashMap::new();
    let mut out = HostProcs::default();
    for p in in_ns.values() {
        let l = *leaders.entry(p.sid).or_insert_with(|| {
            let o = if in_ns.contains_key(&p.sid) {
                None
            } else {
                outside(p.sid)
            };
            leader(p.sid, in_ns, &host_sids, o)
        });
        match l {
            Leader::HydraHost => out.host.push(p.clone()),
            l if l.is_backend() => out.backend.push(p.clone()),
            _ => out.other.push(p.clone()),
        }
    }
    out
}

/// Host `i`'s processes, split into hydra-host, backend and others.
pub(super) fn host_procs(lab: &LabState, i: u16) -> Result<HostProcs> {
    let in_ns = procs_in(lab, &Node::Host(i))?;
    Ok(split(&in_ns, |sid| read_stat(sid).map(|s| s.state)))
}

/// The processes of `node`: all of its namespace, or only host `i`'s backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Node(Node),
    Backend(u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(n) => write!(f, "{n}"),
            Target::Backend(i) => write!(f, "h{i}'s backend"),
        }
    }
}

/// The processes `target` names, now.
pub(super) fn target_procs(lab: &LabState, target: Target) -> Result<Vec<Proc>> {
    Ok(match target {
        Target::Node(node) => procs_in(lab, &node)?.into_values().collect(),
        Target::Backend(i) => host_procs(lab, i)?.backend,
    })
}

/// SIGKILLs host `i`'s backend, again until none of it is left (a process may fork while we
/// kill); returns the processes killed. Like a host crash, each round stops every process
/// first, so none sees another die and reacts (nginx's master would start new workers).
pub(super) fn kill_backend(lab: &LabState, i: u16) -> Result<Vec<Proc>> {
    let mut killed = BTreeMap::new();
    for _ in 0..100 {
        let procs = target_procs(lab, Target::Backend(i))?;
        if procs.is_empty() {
            return Ok(killed.into_values().collect());
        }
        for p in &procs {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGSTOP);
        }
        for p in procs {
            // ESRCH: it died on its own meanwhile; anything else we will see again next round.
            if kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok() {
                killed.entry(p.pid).or_insert(p);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!("h{i}'s backend keeps starting processes after 100 rounds of SIGKILL")
}

/// SIGSTOPs `target`'s processes until every one is stopped (one may fork meanwhile);
/// returns the processes it stopped (those already stopped are not listed).
pub(super) fn pause(lab: &LabState, target: Target) -> Result<Vec<Proc>> {
    let mut stopped = BTreeMap::new();
    for _ in 0..100 {
        let running: Vec<Proc> = target_procs(lab, target)?
            .into_iter()
            .filter(|p| !p.is_stopped())
            .collect();
        if running.is_empty() {
            return Ok(stopped.into_values().collect());
        }
        for p in running {
            if kill(Pid::from_raw(p.pid), Signal::SIGSTOP).is_ok() {
                stopped.entry(p.pid).or_insert(p);
            }
        }
        // The state letter changes once the signal is delivered.
        thread::sleep(Duration::from_millis(10));
    }
    bail!("{target} keeps running processes after 100 rounds of SIGSTOP")
}

/// SIGCONTs every stopped process of `target` (a stopped process cannot fork, so one pass
/// finds them all); returns them.
pub(super) fn resume(lab: &LabState, target: Target) -> Result<Vec<Proc>> {
    let mut resumed = Vec::new();
    for p in target_procs(lab, target)? {
        if p.is_stopped() && kill(Pid::from_raw(p.pid), Signal::SIGCONT).is_ok() {
            resumed.push(p);
        }
    }
    Ok(resumed)
}

/// How a set of processes is doing, for `lab status` and the refusals of `lab restart`.
pub(super) fn describe(procs: &[Proc]) -> String {
    let n = procs.len();
    let stopped = procs.iter().filter(|p| p.is_stopped()).count();
    let pids: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
    let pids = pids.join(",");
    match (n, stopped) {
        (0, _) => "not running".to_string(),
        (_, 0) => format!("running (pid {pids})"),
        (_, s) if s == n => format!("paused (pid {pids})"),
        (_, s) => format!("partly paused, {s} of {n} stopped (pid {pids})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, sid: i32, comm: &str) -> Proc {
        Proc {
            pid,
            sid,
            state: 'S',
            comm: comm.to_string(),
            cmdline: comm.to_string(),
        }
    }

    fn ns(procs: &[Proc]) -> BTreeMap<i32, Proc> {
        procs.iter().map(|p| (p.pid, p.clone())).collect()
    }

    fn pids(procs: &[Proc]) -> Vec<i32> {
        procs.iter().map(|p| p.pid).collect()
    }

    #[test]
    fn stat_name_may_hold_spaces_and_parentheses() {
        let text = "4242 (nginx: (worker) x) S 4241 4241 4241 0 -1 4194624 12 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                comm: "nginx: (worker) x".into(),
                state: 'S',
                sid: 4241
            })
        );
        assert_eq!(
            parse_stat("17 (hydra-host) T 1 17 17 0").map(|s| (s.state, s.sid)),
            Some(('T', 17))
        );
        for bad in [
            "",
            "17 hydra-host S 1 17 17",
            "17 (x) S 1 17",
            "17 (x) S 1 17 sid",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rewritten_cmdline_reads_as_one_line() {
        // nginx writes its title over argv and pads with NULs and spaces.
        let raw = b"nginx: master process /usr/sbin/nginx -c /tmp/n.conf\0\0\0   \0";
        assert_eq!(
            display_cmdline(raw, "nginx"),
            "nginx: master process /usr/sbin/nginx -c /tmp/n.conf"
        );
        assert_eq!(
            display_cmdline(b"sh\0-c\0exec srv\0", "sh"),
            "sh -c exec srv"
        );
        assert_eq!(display_cmdline(b"", "kworker"), "[kworker]");
        assert!(display_cmdline(&[b'x'; 300], "x").ends_with("..."));
    }

    #[test]
    fn hydra_host_is_never_the_backend() {
        let procs = [p(10, 10, "hydra-host"), p(20, 20, "hydra-fileserver")];
        let s = split(&ns(&procs), |_| panic!("every leader is in the namespace"));
        assert_eq!(pids(&s.host), vec![10]);
        assert_eq!(pids(&s.backend), vec![20]);
        assert!(s.other.is_empty());
    }

    #[test]
    fn a_session_holding_hydra_host_is_never_the_backend() {
        // Started some other way (`setsid sh -c 'hydra-host ...'`): sh leads, hydra-host is a
        // member. Neither is signalled.
        let procs = [
            p(10, 10, "sh"),
            p(11, 10, "hydra-host"),
            p(20, 20, "redis-server"),
        ];
        let s = split(&ns(&procs), |_| panic!("every leader is in the namespace"));
        assert_eq!(pids(&s.host), vec![10, 11]);
        assert_eq!(pids(&s.backend), vec![20]);
    }

    #[test]
    fn daemonized_nginx_master_and_workers_are_the_backend() {
        // sh (30) forked nginx and exited; the master (31) made its own session, its
        // workers (32, 33) share it; a redis started with `&` stays in sh's session.
        let procs = [
            p(10, 10, "hydra-host"),
            p(31, 31, "nginx"),
            p(32, 31, "nginx"),
            p(33, 31, "nginx"),
            p(34, 30, "redis-server"),
        ];
        let s = split(&ns(&procs), |sid| {
            assert_eq!(
                sid, 30,
                "only sh's session has its leader outside the namespace"
            );
            None
        });
        assert_eq!(pids(&s.host), vec![10]);
        assert_eq!(pids(&s.backend), vec![31, 32, 33, 34]);
    }

    #[test]
    fn lab_exec_commands_are_left_alone() {
        // 50 was started by `lab exec` from a shell (9) in the root namespace; 60's session
        // leader is a zombie, as a killed backend `sh` is until its parent reaps it.
        let procs = [
            p(10, 10, "hydra-host"),
            p(50, 9, "tcpdump"),
            p(60, 59, "srv"),
        ];
        let s = split(&ns(&procs), |sid| match sid {
            9 => Some('S'),
            59 => Some('Z'),
            _ => None,
        });
        assert_eq!(pids(&s.other), vec![50]);
        assert_eq!(pids(&s.backend), vec![60]);
        assert_eq!(
            leader(0, &BTreeMap::new(), &HashSet::new(), None),
            Leader::Outside
        );
    }

    #[test]
    fn description_says_running_paused_or_gone() {
        let mut a = p(1, 1, "srv");
        let b = p(2, 1, "srv");
        assert_eq!(describe(&[]), "not running");
        assert_eq!(describe(&[a.clone(), b.clone()]), "running (pid 1,2)");
        a.state = 'T';
        assert_eq!(
            describe(&[a.clone(), b.clone()]),
            "partly paused, 1 of 2 stopped (pid 1,2)"
        );
        let mut b = b;
        b.state = 'T';
        assert_eq!(describe(&[a, b]), "paused (pid 1,2)");
    }
}
