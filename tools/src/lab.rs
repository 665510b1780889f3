//! `hydractl lab`: a whole HydraNet deployment on one machine, in network namespaces.
//!
//! A lab named `NAME` is a client namespace, a redirector namespace and N host namespaces,
//! joined by veth pairs that all end in the redirector's namespace (README.md, "The lab"):
//!
//! ```text
//!   hn-NAME-client            hn-NAME-redir                 hn-NAME-h{i}
//!   eth0 198.18.0.2/24 ---- c0    198.18.0.1/24
//!                             h{i} 198.18.i.1/24 ---- eth0 198.18.i.2/24
//!                             hydra0 198.19.255.254/16 (the redirector's TUN)
//! ```
//!
//! Nothing links a lab to the root namespace: no veth, no route. The lab's state (key,
//! configs, logs, admin sockets) lives in `/run/hydranet/lab-NAME/`.
//!
//! Layers: `lab/net.rs` builds and removes namespaces, `lab/daemons.rs` starts the daemons
//! and waits for the service, `lab/procs.rs` tells a host's hydra-host from its backend and
//! signals them, `lab/faults.rs` partitions and impairs links, `lab/status.rs` reports.

mod daemons;
mod faults;
mod flood;
mod net;
mod procs;
mod rng;
mod soak;
mod status;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Where every lab keeps its state: `/run/hydranet/lab-NAME/`.
const STATE_ROOT: &str = "/run/hydranet";

/// The service address's IP: the one virtual host every lab serves.
const SERVICE_IP: &str = "198.19.0.10";

/// Most hosts a lab may have: host i gets 198.18.i.0/24, and we keep well inside the octet.
const MAX_REPLICAS: u16 = 200;

/// Build, drive and remove HydraNet labs (needs root).
///
/// A lab is a whole deployment on this machine, in network namespaces hn-NAME-client,
/// hn-NAME-redir and hn-NAME-h1..hN, joined by veth pairs (198.18.0.0/15) and serving
/// 198.19.0.10:PORT. Nothing is linked to the root namespace.
#[derive(Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand)]
enum LabCommand {
    /// Create a lab: namespaces, links, key, daemons and backends; wait until the service answers.
    ///
    /// Prints one JSON object on stdout naming the service address and every namespace.
    /// If anything fails, everything created so far is removed again.
    Up(UpArgs),
    /// Run a command inside one of the lab's namespaces; exits with the command's status.
    Exec(ExecArgs),
    /// Crash a node: SIGKILL every process in its namespace (with --backend, a host's backend).
    ///
    /// Each round stops every process first, then kills them, until none is left. With
    /// --backend, the host's hydra-host keeps running and sees its backend die (its health
    /// checker withdraws the service); the backend is all of it, daemonized processes
    /// included (nginx's master and workers). Prints what it killed.
    Kill(ProcArgs),
    /// Restart a crashed host (h1..hN): backend and hydra-host (with --backend, the backend).
    ///
    /// Without --backend: kills what is left in the host, starts its backend and hydra-host
    /// with the same config and key, and returns once the redirector counts it live; the host
    /// serves new connections from then on. With --backend: starts the backend with the same
    /// --backend-cmd, leaves hydra-host alone, and returns once the backend answers on its
    /// port and the redirector lists the host with the service again. It refuses while any of
    /// the backend still runs (or is paused), or when hydra-host is down.
    Restart(ProcArgs),
    /// Stop a host the planned way: SIGTERM to its hydra-host, which drains and exits.
    ///
    /// The host withdraws every service (no new connections, out of every ft view), hands its
    /// ft connections to the next member and serves its redirect-mode ones to their end
    /// (at most its `drain_timeout_s`). Returns once hydra-host has exited, or fails after
    /// --wait seconds. Its backend keeps running; `lab restart` brings the host back.
    Stop(StopArgs),
    /// Reload a host's config: SIGHUP to its hydra-host.
    ///
    /// The host reads its TOML again (in the lab's state directory, `hK.toml`) and applies
    /// what changed in its vhosts and services: new ones are served, removed ones withdrawn,
    /// unchanged ones and those set with `hydractl setportopt` left alone. Its log says what
    /// changed, or why the reload was refused (then nothing changed).
    Reload(HostArgs),
    /// Stall a node: SIGSTOP every process in its namespace (with --backend, a host's backend).
    ///
    /// Undo with `lab resume`.
    /// The processes keep their sockets open and answer nothing, as a hung server does:
    /// connections are accepted by the kernel but never served. `lab kill` works on paused
    /// processes too.
    Pause(ProcArgs),
    /// Continue a node after `lab pause`: SIGCONT its processes (with --backend, a host's
    /// backend's).
    Resume(ProcArgs),
    /// Show what runs in each node, and how the redirector sees each host.
    ///
    /// For every host: hydra-host and the backend, each running, paused or not running (with
    /// PIDs), and whether the redirector lists the host live with the service and where in
    /// the service's view (primary or backup).
    Status(NameArg),
    /// Cut a node's link to the redirector, both ways (undo with `lab heal`).
    Partition(NodeArgs),
    /// Restore a node's link to the redirector after `lab partition`.
    Heal(NodeArgs),
    /// Lose and/or duplicate packets on a node's link to the redirector.
    ///
    /// Each call replaces the node's previous impairment; `--loss 0` without `--dup` removes it.
    Impair(ImpairArgs),
    /// Fault soak: build an ft lab, drive checked traffic while a seeded nemesis injects
    /// faults, print a Jepsen-style summary, remove the lab.
    ///
    /// Workers in the client namespace run downloads (every byte compared, pauses timed),
    /// uploads (the backend's sha256 checked) and redis sequences on a total-order service
    /// (every reply checked). The nemesis kills and restarts hosts, restarts hosts at once
    /// without waiting for the detector (turn off with --no-fast-restarts), kills and
    /// restarts hosts' backends (hydra-host stays up; turn off with --no-backend-faults),
    /// partitions and heals hosts, and adds loss and duplication to links, one host fault at
    /// a time. Exits 0 only when no operation failed (an operation may end indeterminate only
    /// by overlapping loss on the client's own link), no byte was lost or corrupted, no
    /// connection was reset, the cluster recovered and the live redis replicas' digests agree.
    Soak(SoakCmd),
    /// SYN flood: send TCP SYNs to the service from the client namespace, from random
    /// addresses in 198.18.128.0/17 and random ports, at --rate per second for --seconds.
    ///
    /// Prints one JSON line on stdout: {"sent": N, "pps": R}, R the measured rate.
    Flood(FloodCmd),
    /// Remove a lab: kill its processes, delete its namespaces and its state directory.
    ///
    /// Works on half-built labs too; a lab that does not exist is not an error.
    Down(NameArg),
}

#[derive(Args)]
struct SoakCmd {
    /// The name of the lab the soak creates (and removes): 1 to 12 characters, a-z 0-9.
    #[arg(long)]
    name: String,
    /// How long the nemesis runs, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// The nemesis's seed (printed; give it again to replay the same faults). Default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Host namespaces (replicas).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=9))]
    replicas: u16,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
    /// Never kill a host's backend alone (the fault "kill hK's backend, restart it later",
    /// on by default). The other faults keep the schedule soaks had before backend faults, so
    /// a seed from before them replays with this flag.
    #[arg(long)]
    no_backend_faults: bool,
    /// Never restart a host at once, within the detector's timeout (the fault "kill hK and
    /// start it again without waiting for the redirector to notice", on by default).
    #[arg(long)]
    no_fast_restarts: bool,
    /// How the redis service orders client bytes: `total` (across its connections; the
    /// replicas' whole redis state is compared) or `none` (per connection; only each
    /// connection's own keys are compared).
    #[arg(long, default_value = "total", value_parser = ["total", "none"])]
    redis_order: String,
}

#[derive(Args)]
struct FloodCmd {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// SYNs per second (1 to 200000).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// How long to send, in seconds (1 to 120).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The port to flood. Default: the lab's service port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The address to flood: the service (198.19.0.10, the default) or a lab node's own
    /// address, e.g. 198.18.1.2 for h1's kernel TCP (the kernel-path baseline). Only lab
    /// addresses (198.18.0.0/15) are accepted.
    #[arg(long, default_value = "198.19.0.10")]
    to: std::net::Ipv4Addr,
}

/// The lab's name.
#[derive(Args)]
struct NameArg {
    /// The lab's name: 1 to 12 characters from a-z and 0-9.
    #[arg(long)]
    name: String,
}

#[derive(Args)]
struct UpArgs {
    /// The lab's name: 1 to 12 characters from a-z and 0-9.
    #[arg(long)]
    name: String,
    /// How many host namespaces (replicas) to create, each running a backend and hydra-host.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=MAX_REPLICAS as i64))]
    replicas: u16,
    /// How the hosts serve the service: `redirect` (one host per connection) or `ft`
    /// (fault-tolerant: every host replicates every connection).
    #[arg(long, value_enum, default_value_t = Mode::Redirect)]
    mode: Mode,
    /// The service's port on 198.19.0.10.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The port the backend listens on, on 127.0.0.1 inside each host namespace.
    #[arg(long, default_value_t = 8080, value_parser = clap::value_parser!(u16).range(1..))]
    backend_port: u16,
    /// The backend, run with `sh -c` in every host namespace (cwd /run/hydranet/lab-NAME/hI/);
    /// it must listen on 127.0.0.1:BACKEND_PORT.
    #[arg(long, value_name = "CMD")]
    backend_cmd: String,
    /// Turn off the batched data path (the redirector's TUN offload and UDP GSO at every
    /// daemon): one system call per packet, as on kernels without them. For comparison and
    /// for testing the fallback. HYDRA_LAB_PLAIN_IO=1 turns it on for every lab made,
    /// the soak's and the bench's included (to run the whole test suite that way).
    #[arg(long)]
    plain_io: bool,
    /// For debugging the topology: start only the backends, no HydraNet daemons, and do not
    /// wait for the service.
    #[arg(long, hide = true)]
    no_daemons: bool,
}

#[derive(Args)]
struct ExecArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The node to run in: client, redir, or h1..hN.
    node: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<String>,
}

#[derive(Args)]
struct NodeArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The node: client, redir, or h1..hN.
    node: String,
}

/// A node, or with --backend only a host's backend.
#[derive(Args)]
struct ProcArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The node: client, redir, or h1..hN.
    node: String,
    /// Only the host's backend (h1..hN): every process that --backend-cmd started, daemonized
    /// ones included; hydra-host and commands run with `lab exec` are left alone.
    #[arg(long)]
    backend: bool,
}

#[derive(Args)]
struct HostArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The host: h1..hN.
    node: String,
}

#[derive(Args)]
struct StopArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The host: h1..hN.
    node: String,
    /// Seconds to wait for hydra-host to finish its drain and exit.
    #[arg(long, default_value_t = 40)]
    wait: u64,
}

#[derive(Args)]
struct ImpairArgs {
    /// The lab's name.
    #[arg(long)]
    name: String,
    /// The node whose link to the redirector to impair: client or h1..hN.
    node: String,
    /// Percentage (0 to 100, fractions allowed) of packets to drop on the link, each way.
    #[arg(long, value_name = "PCT")]
    loss: f64,
    /// Percentage (0 to 100) of packets to send twice on the link, each way.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    dup: f64,
}

/// How the hosts serve the lab's service.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Each connection goes to one host.
    Redirect,
    /// Every host replicates every connection.
    Ft,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Redirect => "redirect",
            Mode::Ft => "ft",
        }
    }
}

/// `HYDRA_LAB_PLAIN_IO` set to anything but empty, 0, false, no or off.
fn plain_io_from_env() -> bool {
    std::env::var("HYDRA_LAB_PLAIN_IO").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// What `lab up` records in `lab.json`, read back by every other subcommand.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct LabState {
    name: String,
    replicas: u16,
    mode: Mode,
    port: u16,
    backend_port: u16,
    backend_cmd: String,
    /// `--plain-io`: no TUN offload, no UDP GSO.
    #[serde(default)]
    plain_io: bool,
}

impl LabState {
    fn dir(&self) -> PathBuf {
        state_dir(&self.name)
    }

    fn ns(&self, node: &Node) -> String {
        ns_name(&self.name, node)
    }

    fn service(&self) -> String {
        format!("{SERVICE_IP}:{}", self.port)
    }

    fn nodes(&self) -> Vec<Node> {
        let mut nodes = vec![Node::Client, Node::Redir];
        nodes.extend((1..=self.replicas).map(Node::Host));
        nodes
    }

    /// "h1..hN", or "h1" alone.
    fn host_list(&self) -> String {
        if self.replicas == 1 {
            "h1".to_string()
        } else {
            format!("h1..h{}", self.replicas)
        }
    }

    fn node_list(&self) -> String {
        format!("client, redir, {}", self.host_list())
    }

    /// Parses a node name given on the command line, naming the valid ones if it is wrong.
    fn parse_node(&self, s: &str) -> Result<Node> {
        let node = match s {
            "client" => Some(Node::Client),
            "redir" => Some(Node::Redir),
            _ => s
                .strip_prefix('h')
                .filter(|n| !n.starts_with('0'))
                .and_then(|n| n.parse::<u16>().ok())
                .filter(|i| (1..=self.replicas).contains(i))
                .map(Node::Host),
        };
        node.with_context(|| format!("unknown node {s}: this lab has {}", self.node_list()))
    }

    /// Reads `lab.json` of the lab named `name`, or says how to start one.
    fn load(name: &str) -> Result<LabState> {
        let path = state_dir(name).join("lab.json");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no lab named {name}: start one with hydractl lab up --name {name} --backend-cmd CMD"
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged: remove the lab with hydractl lab down --name {name}",
                path.display()
            )
        })
    }

    fn save(&self) -> Result<()> {
        let path = self.dir().join("lab.json");
        let text = serde_json::to_string_pretty(self)?;
        fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// One namespace of a lab.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Client,
    Redir,
    /// Host i, 1-based.
    Host(u16),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Client => f.write_str("client"),
            Node::Redir => f.write_str("redir"),
            Node::Host(i) => write!(f, "h{i}"),
        }
    }
}

impl Node {
    /// The third octet of this node's link to the redirector (198.18.X.0/24).
    fn subnet(self) -> Option<u16> {
        match self {
            Node::Client => Some(0),
            Node::Redir => None,
            Node::Host(i) => Some(i),
        }
    }

    /// The node's own address on its link to the redirector.
    fn addr(self) -> Option<String> {
        self.subnet().map(|s| format!("198.18.{s}.2"))
    }

    /// The redirector's address on this node's link.
    fn peer_addr(self) -> Option<String> {
        self.subnet().map(|s| format!("198.18.{s}.1"))
    }

    /// The redirector-side interface of this node's link.
    fn redir_iface(self) -> Option<String> {
        match self {
            Node::Client => Some("c0".to_string()),
            Node::Redir => None,
            Node::Host(i) => Some(format!("h{i}")),
        }
    }
}

fn ns_name(lab: &str, node: &Node) -> String {
    format!("hn-{lab}-{node}")
}

pub(crate) fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(format!("lab-{name}"))
}

/// Runs one `hydractl lab` subcommand.
pub fn run(args: LabArgs) -> Result<()> {
    match args.command {
        LabCommand::Up(a) => up(a),
        LabCommand::Exec(a) => exec(a),
        LabCommand::Kill(a) => kill(a),
        LabCommand::Stop(a) => stop(a),
        LabCommand::Reload(a) => {
            let lab = checked_lab(&a.name)?;
            let i = signal_host(&lab, &a.node, nix::sys::signal::Signal::SIGHUP, "reload")?;
            eprintln!(
                "hydra-host on h{i} reloads {} (its log says what changed)",
                lab.dir().join(format!("h{i}.toml")).display()
            );
            Ok(())
        }
        LabCommand::Restart(a) => restart(a),
        LabCommand::Pause(a) => pause(a, true),
        LabCommand::Resume(a) => pause(a, false),
        LabCommand::Status(a) => {
            let lab = checked_lab(&a.name)?;
            print!("{}", status::status(&lab)?);
            Ok(())
        }
        LabCommand::Partition(a) => faults::partition(&checked_lab(&a.name)?, &a.node, true),
        LabCommand::Heal(a) => faults::partition(&checked_lab(&a.name)?, &a.node, false),
        LabCommand::Impair(a) => faults::impair(&checked_lab(&a.name)?, &a.node, a.loss, a.dup),
        LabCommand::Down(a) => down(&a.name),
        LabCommand::Flood(a) => flood(a),
        LabCommand::Soak(a) => {
            validate_name(&a.name)?;
            require_root()?;
            let seed = a.seed.unwrap_or_else(random_seed);
            let ok = soak::soak(soak::SoakArgs {
                name: a.name,
                seconds: a.seconds,
                seed,
                replicas: a.replicas,
                workers: a.workers as usize,
                backend_faults: !a.no_backend_faults,
                fast_restarts: !a.no_fast_restarts,
                total_order: a.redis_order == "total",
            })?;
            if !ok {
                bail!("the soak broke an invariant (seed {seed}; summary above)");
            }
            Ok(())
        }
    }
}

/// A fresh seed from the cluster-key generator's randomness.
fn random_seed() -> u64 {
    ack_channel::ClusterKey::generate()
        .map(|k| {
            let h = k.to_hex();
            u64::from_str_radix(&h[..15], 16).unwrap_or(1)
        })
        .unwrap_or(1)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=12).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        bail!("lab name {name:?} is invalid: use 1 to 12 characters from a-z and 0-9");
    }
    Ok(())
}

fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("hydractl lab needs root (network namespaces): run it with sudo");
    }
    Ok(())
}

/// The common preamble of every subcommand that works on an existing lab.
fn checked_lab(name: &str) -> Result<LabState> {
    validate_name(name)?;
    require_root()?;
    LabState::load(name)
}

fn up(a: UpArgs) -> Result<()> {
    validate_name(&a.name)?;
    require_root()?;
    // Every program `up` runs, before anything is created: a missing one is one line now,
    // not a lab that never answers.
    for program in ["ip", "sysctl", "setsid"] {
        net::require_program(program)?;
    }
    if let Some(program) = daemons::backend_program(&a.backend_cmd) {
        net::require_program(program).context("--backend-cmd cannot start")?;
    }
    if state_dir(&a.name).exists() || !net::lab_namespaces(&a.name)?.is_empty() {
        bail!(
            "lab {0} exists: remove it with hydractl lab down --name {0}",
            a.name
        );
    }
    let bins = if a.no_daemons {
        None
    } else {
        Some(daemons::Binaries::find()?)
    };

    let lab = LabState {
        name: a.name.clone(),
        replicas: a.replicas,
        mode: a.mode,
        port: a.port,
        backend_port: a.backend_port,
        backend_cmd: a.backend_cmd,
        plain_io: a.plain_io || plain_io_from_env(),
    };
    let dir = lab.dir();

    fs::create_dir_all(STATE_ROOT).with_context(|| format!("creating {STATE_ROOT}"))?;
    // Creating the lab's directory is the lock: of two `lab up --name X` at once, one wins.
    match fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!(
                "lab {0} exists: remove it with hydractl lab down --name {0}",
                lab.name
            )
        }
        r => r.with_context(|| format!("creating {}", dir.display()))?,
    }
    // From here on, any error (or panic) removes whatever was created.
    let guard = DownGuard::new(&lab.name);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting permissions of {}", dir.display()))?;
    lab.save()?;
    write_key(&dir.join("cluster.key"))?;

    net::create_topology(&lab)?;

    if let Some(bins) = bins {
        let started = daemons::start_all(&lab, &bins, true)?;
        daemons::wait_ready(&lab, started)?;
    } else {
        daemons::start_all(&lab, &daemons::Binaries::none(), false)?;
    }

    let hosts: serde_json::Map<String, serde_json::Value> = (1..=lab.replicas)
        .map(|i| {
            let node = Node::Host(i);
            (node.to_string(), lab.ns(&node).into())
        })
        .collect();
    let out = serde_json::json!({
        "name": lab.name,
        "service": lab.service(),
        "client_ns": lab.ns(&Node::Client),
        "redirector_ns": lab.ns(&Node::Redir),
        "hosts": hosts,
    });
    println!("{out}");
    guard.disarm();
    Ok(())
}

/// Writes a fresh cluster key, readable by root only.
fn write_key(path: &Path) -> Result<()> {
    let key = ack_channel::ClusterKey::generate().context("generating the cluster key")?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    write!(f, "{}", key.to_hex()).with_context(|| format!("writing {}", path.display()))
}

/// Removes a half-built lab when `lab up` fails, unless disarmed.
struct DownGuard {
    name: Option<String>,
}

impl DownGuard {
    fn new(name: &str) -> Self {
        DownGuard {
            name: Some(name.to_string()),
        }
    }

    fn disarm(mut self) {
        self.name = None;
    }
}

impl Drop for DownGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            if let Err(e) = remove_lab(&name) {
                eprintln!("hydractl: while removing the half-built lab {name}: {e:#}");
            }
        }
    }
}

fn exec(a: ExecArgs) -> Result<()> {
    let lab = checked_lab(&a.name)?;
    let node = lab.parse_node(&a.node)?;
    let ns = lab.ns(&node);
    // Replacing ourselves with `ip netns exec`, which in turn execs the command, hands the
    // command our stdio and makes its exit status (or signal) ours.
    let err = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(&a.cmd)
        .exec();
    Err(err).with_context(|| format!("running ip netns exec {ns}"))
}

/// What `--backend` and a node name select, or why they do not go together.
fn target(lab: &LabState, node: &str, backend: bool, verb: &str) -> Result<procs::Target> {
    let node = lab.parse_node(node)?;
    match (node, backend) {
        (Node::Host(i), true) => Ok(procs::Target::Backend(i)),
        (_, true) => bail!(
            "{node} has no backend: lab {verb} --backend takes a host ({})",
            lab.host_list()
        ),
        (node, false) => Ok(procs::Target::Node(node)),
    }
}

/// Prints `what` and the processes it applied to, one per line (on stderr, like every
/// report of a lab action).
fn report(what: &str, procs: &[procs::Proc]) {
    let s = if procs.len() == 1 { "" } else { "es" };
    eprintln!("{what} ({} process{s}):", procs.len());
    for p in procs {
        eprintln!("  {p}");
    }
}

/// One line on hydra-host, after its backend was signalled.
fn host_line(i: u16, host: &[procs::Proc]) -> String {
    match host {
        [] => format!("hydra-host on h{i} is not running"),
        _ => format!("hydra-host on h{i} {}, untouched", procs::describe(host)),
    }
}

fn kill(a: ProcArgs) -> Result<()> {
    let lab = checked_lab(&a.name)?;
    match target(&lab, &a.node, a.backend, "kill")? {
        procs::Target::Node(node) => {
            let ns = lab.ns(&node);
            let n = net::kill_all(std::slice::from_ref(&ns))?;
            eprintln!("killed {n} processes in {ns}");
        }
        procs::Target::Backend(i) => {
            let killed = procs::kill_backend(&lab, i)?;
            if killed.is_empty() {
                eprintln!("h{i}'s backend was not running: nothing killed");
            } else {
                report(&format!("killed h{i}'s backend with SIGKILL"), &killed);
            }
            eprintln!("{}", host_line(i, &procs::host_procs(&lab, i)?.host));
        }
    }
    Ok(())
}

/// Sends `sig` to host `node`'s hydra-host (for `lab {verb}`); returns the host's number.
fn signal_host(
    lab: &LabState,
    node: &str,
    sig: nix::sys::signal::Signal,
    verb: &str,
) -> Result<u16> {
    let Node::Host(i) = lab.parse_node(node)? else {
        bail!(
            "{node} is not a host: lab {verb} signals a hydra-host ({})",
            lab.host_list()
        );
    };
    let host = procs::host_procs(lab, i)?.host;
    if host.is_empty() {
        bail!("hydra-host on h{i} is not running: nothing to {verb}");
    }
    for p in &host {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .with_context(|| format!("sending {sig} to hydra-host on h{i} ({p})"))?;
    }
    report(&format!("sent {sig} to hydra-host on h{i}"), &host);
    Ok(i)
}

fn stop(a: StopArgs) -> Result<()> {
    let lab = checked_lab(&a.name)?;
    let began = std::time::Instant::now();
    let i = signal_host(&lab, &a.node, nix::sys::signal::Signal::SIGTERM, "stop")?;
    let deadline = began + std::time::Duration::from_secs(a.wait);
    while std::time::Instant::now() < deadline {
        if procs::host_procs(&lab, i)?.host.is_empty() {
            eprintln!(
                "hydra-host on h{i} exited {} ms after SIGTERM (its log says how the drain went)",
                began.elapsed().as_millis()
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    bail!(
        "hydra-host on h{i} still runs {} s after SIGTERM (its log: {})",
        a.wait,
        lab.dir().join(format!("h{i}.log")).display()
    )
}

/// Why `lab restart --backend` must not start host `i`'s backend now, if it must not.
fn backend_restart_refusal(lab: &LabState, i: u16, now: &procs::HostProcs) -> Option<String> {
    let name = &lab.name;
    if !now.backend.is_empty() {
        let state = procs::describe(&now.backend);
        let resume = if now.backend.iter().any(|p| p.is_stopped()) {
            format!(" (or resume it: hydractl lab resume --name {name} h{i} --backend)")
        } else {
            String::new()
        };
        return Some(format!(
            "h{i}'s backend is {state}, so a second one would find its port taken: kill it \
             first with hydractl lab kill --name {name} h{i} --backend{resume}"
        ));
    }
    if now.host.is_empty() {
        return Some(format!(
            "hydra-host on h{i} is not running, so nothing would offer the backend: restart the \
             whole host with hydractl lab restart --name {name} h{i}"
        ));
    }
    None
}

fn restart(a: ProcArgs) -> Result<()> {
    let lab = checked_lab(&a.name)?;
    match target(&lab, &a.node, a.backend, "restart")? {
        procs::Target::Backend(i) => {
            if let Some(why) = backend_restart_refusal(&lab, i, &procs::host_procs(&lab, i)?) {
                bail!(why);
            }
            let r = daemons::restart_backend(&lab, i)?;
            eprintln!(
                "restarted h{i}'s backend: it answers on 127.0.0.1:{} after {} ms; the \
                 redirector lists h{i} with the service after {} ms",
                lab.backend_port,
                r.answered.as_millis(),
                r.offered.as_millis()
            );
            report(
                &format!("h{i}'s backend now"),
                &procs::host_procs(&lab, i)?.backend,
            );
        }
        procs::Target::Node(Node::Host(i)) => {
            let took = daemons::restart_host(&lab, &daemons::Binaries::find()?, i, false)?;
            eprintln!(
                "restarted h{i}: live at the redirector after {} ms",
                took.as_millis()
            );
        }
        procs::Target::Node(_) => bail!(
            "lab restart takes a host node ({}): {} is not one",
            lab.host_list(),
            a.node
        ),
    }
    Ok(())
}

/// `lab pause` (`stop`) and `lab resume` (`!stop`).
fn pause(a: ProcArgs, stop: bool) -> Result<()> {
    let lab = checked_lab(&a.name)?;
    let verb = if stop { "pause" } else { "resume" };
    let target = target(&lab, &a.node, a.backend, verb)?;
    let done = if stop {
        procs::pause(&lab, target)?
    } else {
        procs::resume(&lab, target)?
    };
    match (done.is_empty(), stop) {
        (true, _) => {
            let now = procs::describe(&procs::target_procs(&lab, target)?);
            eprintln!("{target} is {now}: nothing to {verb}");
        }
        (false, true) => report(&format!("paused {target} with SIGSTOP"), &done),
        (false, false) => report(&format!("resumed {target} with SIGCONT"), &done),
    }
    if let procs::Target::Backend(i) = target {
        eprintln!("{}", host_line(i, &procs::host_procs(&lab, i)?.host));
    }
    Ok(())
}

fn flood(a: FloodCmd) -> Result<()> {
    // Limits first: they need neither root nor a lab.
    flood::check_limits(a.rate, a.seconds)?;
    let o = a.to.octets();
    if !(o[0] == 198 && (o[1] == 18 || o[1] == 19)) {
        anyhow::bail!(
            "--to {} is not a lab address: flood only 198.19.0.10 or a lab node's 198.18.x.y",
            a.to
        );
    }
    let lab = checked_lab(&a.name)?;
    let report = flood::flood(
        &lab,
        &flood::FloodArgs {
            rate: a.rate,
            seconds: a.seconds,
            port: a.port.unwrap_or(lab.port),
            to: a.to,
            seed: random_seed(),
        },
    )?;
    if report.refused > 0 {
        eprintln!(
            "flood: the client namespace's firewall refused {} SYNs (is the client partitioned?)",
            report.refused
        );
    }
    if report.full > 0 {
        eprintln!(
            "flood: the client link's queue was full {} times (the machine cannot keep up)",
            report.full
        );
    }
    println!("{{\"sent\": {}, \"pps\": {}}}", report.sent, report.pps);
    Ok(())
}

fn down(name: &str) -> Result<()> {
    validate_name(name)?;
    require_root()?;
    if !remove_lab(name)? {
        eprintln!("no lab named {name}: nothing to remove");
    }
    Ok(())
}

/// Kills everything in the lab's namespaces, deletes them and the state directory.
/// Returns whether there was anything to remove. Does not need `lab.json`, so it also
/// cleans up labs whose `up` died halfway.
fn remove_lab(name: &str) -> Result<bool> {
    let namespaces = net::lab_namespaces(name)?;
    let dir = state_dir(name);
    let existed = !namespaces.is_empty() || dir.exists();
    // Kill in every namespace before deleting any, so no daemon sees its peers vanish
    // while it still runs (and logs confusing errors).
    let mut errors = Vec::new();
    if let Err(e) = net::kill_all(&namespaces) {
        errors.push(format!("{e:#}"));
    }
    for ns in &namespaces {
        if let Err(e) = net::delete_ns(ns) {
            errors.push(format!("{e:#}"));
        }
    }
    if dir.exists() {
        if let Err(e) = fs::remove_dir_all(&dir) {
            errors.push(format!("removing {}: {e}", dir.display()));
        }
    }
    if !errors.is_empty() {
        bail!(
            "lab {name} was not removed completely: {}",
            errors.join("; ")
        );
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> LabState {
        LabState {
            name: "t".into(),
            replicas: 3,
            mode: Mode::Ft,
            port: 80,
            backend_port: 8080,
            backend_cmd: "exec srv".into(),
            plain_io: false,
        }
    }

    fn proc(pid: i32, state: char) -> procs::Proc {
        procs::Proc {
            pid,
            sid: pid,
            state,
            comm: "srv".into(),
            cmdline: "srv".into(),
        }
    }

    /// Parses `hydractl lab ARGS...` as main.rs would.
    fn parse(args: &[&str]) -> Result<LabArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            lab: LabArgs,
        }
        let argv = std::iter::once("lab").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.lab)
    }

    #[test]
    fn backend_flag_selects_a_hosts_backend_only() {
        let lab = lab();
        assert_eq!(
            target(&lab, "h2", true, "kill").unwrap(),
            procs::Target::Backend(2)
        );
        assert_eq!(
            target(&lab, "h2", false, "kill").unwrap(),
            procs::Target::Node(Node::Host(2))
        );
        assert_eq!(
            target(&lab, "redir", false, "pause").unwrap(),
            procs::Target::Node(Node::Redir)
        );
        for node in ["client", "redir"] {
            let e = target(&lab, node, true, "kill").unwrap_err().to_string();
            assert_eq!(
                e,
                format!("{node} has no backend: lab kill --backend takes a host (h1..h3)")
            );
        }
        let e = target(&lab, "h4", true, "restart").unwrap_err().to_string();
        assert!(e.contains("unknown node h4"), "{e}");
    }

    #[test]
    fn backend_restart_refuses_while_the_backend_runs_or_the_host_is_down() {
        let lab = lab();
        let host = vec![proc(10, 'S')];
        let ok = procs::HostProcs {
            host: host.clone(),
            ..Default::default()
        };
        assert_eq!(backend_restart_refusal(&lab, 1, &ok), None);

        let running = procs::HostProcs {
            host: host.clone(),
            backend: vec![proc(20, 'S'), proc(21, 'S')],
            ..Default::default()
        };
        let why = backend_restart_refusal(&lab, 1, &running).unwrap();
        assert!(
            why.starts_with("h1's backend is running (pid 20,21)"),
            "{why}"
        );
        assert!(
            why.contains("hydractl lab kill --name t h1 --backend"),
            "{why}"
        );
        assert!(!why.contains("resume"), "{why}");

        let paused = procs::HostProcs {
            host: host.clone(),
            backend: vec![proc(20, 'T')],
            ..Default::default()
        };
        let why = backend_restart_refusal(&lab, 1, &paused).unwrap();
        assert!(why.starts_with("h1's backend is paused (pid 20)"), "{why}");
        assert!(
            why.contains("hydractl lab resume --name t h1 --backend"),
            "{why}"
        );

        let why = backend_restart_refusal(&lab, 3, &procs::HostProcs::default()).unwrap();
        assert_eq!(
            why,
            "hydra-host on h3 is not running, so nothing would offer the backend: restart the \
             whole host with hydractl lab restart --name t h3"
        );
    }

    #[test]
    fn cli_spells_backend_and_signal_commands() {
        for args in [
            &["kill", "--name", "t", "h1", "--backend"][..],
            &["restart", "--name", "t", "h1", "--backend"],
            &["pause", "--name", "t", "h1", "--backend"],
            &["resume", "--name", "t", "--backend", "h1"],
            &["pause", "--name", "t", "h2"],
            &["status", "--name", "t"],
            &["soak", "--name", "s", "--no-backend-faults"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        let a = parse(&["kill", "--name", "t", "h1", "--backend"]).unwrap();
        assert!(matches!(
            a.command,
            LabCommand::Kill(ProcArgs { backend: true, .. })
        ));
        let a = parse(&["soak", "--name", "s"]).unwrap();
        assert!(matches!(
            a.command,
            LabCommand::Soak(SoakCmd {
                no_backend_faults: false,
                ..
            })
        ));
        // Partitions and impairments are of links, not processes.
        assert!(parse(&["partition", "--name", "t", "h1", "--backend"]).is_err());
    }
}
