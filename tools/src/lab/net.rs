//! Namespaces, veth pairs, addresses and routes of a lab, made with `ip`.
//!
//! Every command here runs inside a lab namespace (`ip -n NS`, `ip netns exec NS`): the root
//! namespace's interfaces and routes are never touched, and veth pairs are created directly
//! between two lab namespaces.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{LabState, Node};

/// Runs a command to completion, returning its stdout; on failure the error quotes the
/// command line and its stderr.
pub(super) fn run(cmd: &mut Command) -> Result<String> {
    run_with_input(cmd, None)
}

/// Like [`run`], feeding `input` to the command's stdin.
pub(super) fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let line = command_line(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {line}"))?;
    if let Some(input) = input {
        // INVARIANT: stdin was set to piped just above.
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {line}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("{line} failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// The Debian package that installs `program`, for the programs the lab runs itself and the
/// backends and clients its users and tests run most (all in scripts/packages.txt).
fn debian_package(program: &str) -> Option<&'static str> {
    Some(match program {
        "ip" => "iproute2",
        "sysctl" => "procps",
        "setsid" => "util-linux",
        "nft" => "nftables",
        "iptables" => "iptables",
        "redis-server" => "redis-server",
        "redis-benchmark" | "redis-cli" => "redis-tools",
        "nginx" => "nginx",
        "ffmpeg" => "ffmpeg",
        "iperf3" => "iperf3",
        "curl" => "curl",
        "python3" => "python3",
        _ => return None,
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Where `program` (a bare name) is on PATH, as `sh` and `ip netns exec` would find it.
pub(super) fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// Fails at once, with the package that installs it, unless `program` can be run: a bare
/// name must be on PATH, a path must be an executable file. Checked before a lab is built,
/// so a missing program is one line rather than a lab that never answers.
pub(super) fn require_program(program: &str) -> Result<()> {
    if program.contains('/') {
        if !is_executable(Path::new(program)) {
            bail!("{program} is not an executable file: check the path");
        }
        return Ok(());
    }
    if find_program(program).is_some() {
        return Ok(());
    }
    match debian_package(program) {
        Some(package) => bail!(
            "{program} not found on PATH: install it with `apt-get install {package}` \
             (or run scripts/install-deps)"
        ),
        None => bail!("{program} not found on PATH: install it, or give its full path"),
    }
}

/// The namespaces that belong to the lab named `lab`, whether or not `lab.json` knows them:
/// `hn-LAB-client`, `hn-LAB-redir` and `hn-LAB-h<digits>`.
pub(super) fn lab_namespaces(lab: &str) -> Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    let prefix = format!("hn-{lab}-");
    Ok(out
        .lines()
        // Lines look like "hn-t1-h1 (id: 3)".
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(&prefix).is_some_and(|node| {
                node == "client"
                    || node == "redir"
                    || node
                        .strip_prefix('h')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(str::to_string)
        .collect())
}

/// The PIDs of the processes in any of the namespaces `namespaces`, found the way
/// `ip netns pids` finds them (a process's `/proc/PID/ns/net` is the same file as
/// `/run/netns/NAME`), but in one pass over /proc for all of them.
pub(super) fn pids_in(namespaces: &[String]) -> Result<Vec<Pid>> {
    let mut ids = HashSet::new();
    for ns in namespaces {
        let path = Path::new("/run/netns").join(ns);
        let meta = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        ids.insert((meta.dev(), meta.ino()));
    }
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes exit while we look, and zombies have no namespaces: skip errors.
        let Ok(meta) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if pid != me && ids.contains(&(meta.dev(), meta.ino())) {
            // INVARIANT: Linux PIDs are at most 2^22, well inside i32.
            pids.push(Pid::from_raw(i32::try_from(pid).expect("pid fits i32")));
        }
    }
    Ok(pids)
}

/// SIGKILLs every process in the namespaces `namespaces`, again and again until none is
/// left (a process may fork while we kill). Returns how many were killed.
///
/// Every process is first stopped (SIGSTOP), then killed: a crash takes a whole host at once,
/// so no process may see another die and react (a host server noticing its backend's death
/// would close the client's connection, which a real crash never does).
pub(super) fn kill_all(namespaces: &[String]) -> Result<usize> {
    let mut killed = 0;
    for _ in 0..100 {
        let pids = pids_in(namespaces)?;
        if pids.is_empty() {
            return Ok(killed);
        }
        for pid in &pids {
            let _ = kill(*pid, Signal::SIGSTOP);
        }
        for pid in pids {
            // ESRCH: it died on its own meanwhile; anything else we will see again next round.
            if kill(pid, Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "processes keep appearing in {} after 100 rounds of SIGKILL",
        namespaces.join(", ")
    )
}

pub(super) fn delete_ns(ns: &str) -> Result<()> {
    run(Command::new("ip").args(["netns", "delete", ns]))?;
    Ok(())
}

/// Sets sysctls inside namespace `ns`.
fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    run(Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
        .args(settings))?;
    Ok(())
}

/// Runs `ip -n NS -batch -` with the given commands, one per line.
fn ip_batch(ns: &str, commands: &str) -> Result<()> {
    run_with_input(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        Some(commands),
    )
    .with_context(|| format!("configuring links in {ns}"))?;
    Ok(())
}

/// Creates the lab's namespaces and links, all ending in the redirector's namespace.
pub(super) fn create_topology(lab: &LabState) -> Result<()> {
    let redir = lab.ns(&Node::Redir);
    let leaves: Vec<Node> = lab
        .nodes()
        .into_iter()
        .filter(|n| *n != Node::Redir)
        .collect();

    for node in lab.nodes() {
        let ns = lab.ns(&node);
        run(Command::new("ip").args(["netns", "add", &ns]))
            .with_context(|| format!("creating namespace {ns}"))?;
        // rp_filter off before any link exists, so new links inherit 0 from `default`:
        // the redirector forwards packets whose sources it has no route back to by that link.
        let mut settings = vec![
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        if node == Node::Redir {
            settings.push("net.ipv4.ip_forward=1");
        }
        sysctl(&ns, &settings).with_context(|| format!("setting sysctls in {ns}"))?;
    }

    // Every pair is created from inside the redirector's namespace, its peer placed directly
    // into the leaf's namespace: no veth ever exists in the root namespace.
    let mut batch = String::from("link set lo up\n");
    for node in &leaves {
        // INVARIANT: leaves excludes Redir, the only node without a link.
        let iface = node.redir_iface().expect("leaf has a link");
        let peer = node.peer_addr().expect("leaf has a link");
        batch += &format!(
            "link add {iface} type veth peer name eth0 netns {leaf}\n\
             addr add {peer}/24 dev {iface}\n\
             link set {iface} up\n",
            leaf = lab.ns(node),
        );
    }
    ip_batch(&redir, &batch)?;

    for node in &leaves {
        // INVARIANT: as above.
        let addr = node.addr().expect("leaf has a link");
        let gw = node.peer_addr().expect("leaf has a link");
        ip_batch(
            &lab.ns(node),
            &format!(
                "link set lo up\n\
                 addr add {addr}/24 dev eth0\n\
                 link set eth0 up\n\
                 route add default via {gw} dev eth0\n"
            ),
        )?;
    }
    Ok(())
}
