//! hydractl: HydraNet's control tool.
//!
//! Talks to a daemon's admin API (a Unix socket) for `v_host`, `setportopt` and `status`,
//! makes cluster keys, and builds whole deployments in network namespaces (`lab`).

mod bench;
mod lab;

use std::fmt::Write as _;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::Value;

/// Control HydraNet daemons and labs.
///
/// v_host and setportopt go to a host server (hydra-host); status works on a host server or
/// the redirector. Point at a daemon with --socket (its config's admin_socket).
#[derive(Parser)]
#[command(name = "hydractl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which daemon to talk to.
#[derive(clap::Args)]
struct Target {
    /// The daemon's admin socket (admin_socket in its config).
    #[arg(
        long,
        global = true,
        env = "HYDRA_SOCKET",
        default_value = "/run/hydranet/host.sock"
    )]
    socket: PathBuf,
}

// Built once per run from argv, so the gap between setportopt's many options and the
// other variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a new random cluster key file (copy it to every node of the cluster).
    Keygen {
        /// Where to write the key (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Create, recall or list virtual hosts (service IP addresses) on a host server.
    #[command(name = "v_host", alias = "vhost")]
    VHost {
        #[command(subcommand)]
        action: VHostAction,
        #[command(flatten)]
        target: Target,
    },
    /// Set how a service port is served on a host server (HydraNet's setportopt).
    Setportopt {
        /// The service, ip:port (the ip must be a v_host here).
        service: String,
        /// redirect: each connection to one live host; ft: every replica gets every packet,
        /// one answers, connections survive its crash; off: not served.
        #[arg(long)]
        mode: String,
        /// The local backend, 127.0.0.1:PORT (required unless --mode off).
        #[arg(long)]
        backend: Option<String>,
        /// ft failure detector: heartbeat interval (e.g. 5ms; default: the host's, 5ms).
        #[arg(long)]
        hb: Option<String>,
        /// ft failure detector: silence after which the redirector drops a replica (e.g.
        /// 25ms; default: the host's, 25ms).
        #[arg(long)]
        timeout: Option<String>,
        /// ft hop-by-hop repair: the primary sends a backup the client bytes it missed at
        /// once, instead of the client's retransmission timer (on|off; default on).
        #[arg(long, value_parser = parse_on_off, action = clap::ArgAction::Set)]
        repair: Option<bool>,
        /// ft order across connections: none (bytes ordered per connection only) or total
        /// (the primary stamps each chunk it gives its backend; every replica's backend gets
        /// the chunks of all connections in that order, one at a time, so a deterministic
        /// single-threaded server such as redis evolves identically on every replica).
        /// Default none.
        #[arg(long, value_parser = ["none", "total"])]
        order: Option<String>,
        /// Total order: the longest wait for the backend's answer before the next
        /// connection's chunk (e.g. 100ms). Past it the next chunk goes without the answer,
        /// and a backend slower than that may execute two connections' chunks in another
        /// order on some replica: keep it well above the backend's worst answer time.
        /// Default: the host's, 100ms.
        #[arg(long)]
        quiet: Option<String>,
        /// ft: a member whose backend lags more than this behind output the other members'
        /// backends already produced (stopped, hung, or ended early) is treated as failed for
        /// that connection: a primary hands the connection to the next member, a backup is
        /// dropped from it (e.g. 500ms, 2s; default: the host's, 1s).
        #[arg(long)]
        stall_timeout: Option<String>,
        /// Most client connections of this service on this host at once; past it a new
        /// client's SYN gets no answer and the client retries (default: only the host's
        /// max_conns applies).
        #[arg(long)]
        max_conns: Option<u32>,
        /// Reset a connection after this long with no byte either way: an abandoned client
        /// must not hold its buffers and backend connection forever (e.g. 30s, 10m; 0:
        /// never; default 10m).
        #[arg(long)]
        idle_timeout: Option<String>,
        /// TCP keep-alive: after this long without a segment from the client, probe it
        /// (every third of it), and reset the connection after 3 unanswered probes: a
        /// client whose machine died is found long before the idle timeout (e.g. 60s;
        /// default 0: off, as in Linux).
        #[arg(long)]
        keepalive: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Show a daemon's services, hosts and connections.
    ///
    /// A host's connections are counted by TCP state, and the first --connections of them
    /// listed (--all lists every one); --json prints the daemon's JSON as it is.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// List at most N connections (the count by state covers all of them).
        #[arg(long, value_name = "N", default_value_t = 20)]
        connections: usize,
        /// List every connection.
        #[arg(long, conflicts_with = "connections")]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Build and drive a whole HydraNet deployment in network namespaces on this machine.
    Lab(lab::LabArgs),
    /// Measure kernel routing, an nginx stream proxy, redirect, ft2 and ft3 side by side in
    /// one run: bulk throughput, latency, requests per second, failover, scale.
    Bench(bench::BenchArgs),
    /// Print a shell completion script for hydractl.
    ///
    /// bash: `hydractl completions bash > /etc/bash_completion.d/hydractl`; zsh: into a
    /// directory of $fpath as `_hydractl`; fish: `~/.config/fish/completions/hydractl.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write hydractl's man pages (`hydractl.1` and one per subcommand, e.g.
    /// `hydractl-setportopt.1`) into a directory.
    Man {
        /// The directory (created if missing), e.g. /usr/local/share/man/man1.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum VHostAction {
    /// Create a virtual host.
    Add {
        /// Service IPv4 address, e.g. 198.19.0.10.
        ip: String,
    },
    /// Recall a virtual host and its port options (open connections run to their end).
    Del {
        /// Service IPv4 address.
        ip: String,
    },
    /// List virtual hosts.
    List,
}

/// Writes `hydractl.1` and a page per subcommand (nested ones too, `hydractl-lab-up.1`).
fn man_pages(out: &Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut written = Vec::new();
    let mut todo = vec![(String::from("hydractl"), Cli::command())];
    while let Some((name, cmd)) = todo.pop() {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let sub_name = format!("{name}-{}", sub.get_name());
            todo.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        let path = out.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    eprintln!("wrote {} man pages into {}", written.len(), out.display());
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out, force } => keygen(&out, force),
        Command::VHost { action, target } => vhost(&target.socket, action),
        Command::Setportopt {
            service,
            mode,
            backend,
            hb,
            timeout,
            repair,
            order,
            quiet,
            stall_timeout,
            max_conns,
            idle_timeout,
            keepalive,
            target,
        } => (|| {
            // Left out: the host's defaults apply (host-server's Detector and FtOpts, the
            // one place they are defined).
            let hb = given(&hb, "--hb", parse_ms)?;
            let timeout = given(&timeout, "--timeout", parse_ms)?;
            let quiet = given(&quiet, "--quiet", parse_ms)?;
            let stall = given(&stall_timeout, "--stall-timeout", parse_ms_with_unit)?;
            let idle = given(&idle_timeout, "--idle-timeout", parse_secs)?;
            let keepalive = given(&keepalive, "--keepalive", parse_secs)?;
            if max_conns == Some(0) {
                bail!("--max-conns 0 would refuse every client: pass at least 1, or leave it out");
            }
            setportopt(
                &target.socket,
                &service,
                &mode,
                backend.as_deref(),
                (hb, timeout),
                (repair, order.as_deref(), quiet, stall),
                (max_conns, idle, keepalive),
            )
        })(),
        Command::Status {
            json,
            connections,
            all,
            target,
        } => status(&target.socket, json, (!all).then_some(connections)),
        Command::Lab(args) => lab::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "hydractl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { out } => man_pages(&out),
    };
    if let Err(e) = result {
        eprintln!("hydractl: {e:#}");
        std::process::exit(1);
    }
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = ack_channel::ClusterKey::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .create_new(!force)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {}: pass --force to replace an existing key, or another --out",
                out.display()
            )
        })?;
    writeln!(f, "{}", key.to_hex()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote a new cluster key to {} (mode 0600); copy it to every node and set key_file",
        out.display()
    );
    Ok(())
}

fn parse_ip(s: &str) -> anyhow::Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not an IPv4 address: pass e.g. 198.19.0.10"))
}

fn call(socket: &Path, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string());
    let text = control::request(socket, method, url, body.as_deref())?;
    serde_json::from_str(&text).with_context(|| format!("daemon sent invalid JSON for {url}"))
}

fn vhost(socket: &Path, action: VHostAction) -> anyhow::Result<()> {
    match action {
        VHostAction::Add { ip } => {
            let ip = parse_ip(&ip)?;
            call(
                socket,
                "POST",
                "/v_host/add",
                Some(serde_json::json!({ "ip": ip.to_string() })),
            )?;
            println!("v_host {ip} added");
        }
        VHostAction::Del { ip } => {
            let ip = parse_ip(&ip)?;
            call(
                socket,
                "POST",
                "/v_host/del",
                Some(serde_json::json!({ "ip": ip.to_string() })),
            )?;
            println!("v_host {ip} recalled");
        }
        VHostAction::List => {
            let v = call(socket, "GET", "/v_host", None)?;
            for ip in v["vhosts"].as_array().into_iter().flatten() {
                println!("{}", ip.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Parses `5ms`, `1s` or a bare number of milliseconds.
/// An option's value parsed with `parse`, if the option was given.
fn given<T>(
    value: &Option<String>,
    flag: &str,
    parse: fn(&str, &str) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    value.as_deref().map(|s| parse(s, flag)).transpose()
}

fn parse_ms(s: &str, flag: &str) -> anyhow::Result<u16> {
    let bad =
        || anyhow::anyhow!("{flag} `{s}` is not a duration: write e.g. 5ms or 1s (1ms to 60s)");
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    let v: u32 = num.trim().parse().map_err(|_| bad())?;
    let ms = v.checked_mul(mult).ok_or_else(bad)?;
    if !(1..=60_000).contains(&ms) {
        return Err(bad());
    }
    Ok(ms as u16)
}

/// A duration of at least 1 ms that must say its unit: `500ms`, `2s`. Unlike [`parse_ms`] a
/// bare number is refused, since `1` could mean either.
fn parse_ms_with_unit(s: &str, flag: &str) -> anyhow::Result<u32> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else {
        bail!("{flag} `{s}` needs a unit: e.g. 500ms or 2s");
    };
    let ms = num
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            anyhow::anyhow!("{flag} `{s}` is not a whole number of ms or s: e.g. 500ms or 2s")
        })?;
    if ms == 0 {
        bail!("{flag} 0 would fail every member at once: pass at least 1ms (default 1s)");
    }
    Ok(ms)
}

/// One connection's output agreement: who this host vouches for, and who differs.
fn agreement_line(a: &Value) -> String {
    let pairs = |v: &Value| -> Vec<(u64, u64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_u64()?, p[1].as_u64()?)))
            .collect()
    };
    let attests: Vec<String> = pairs(&a["attests"])
        .into_iter()
        .map(|(m, n)| format!("node{m} up to byte {n}"))
        .collect();
    let differs: Vec<String> = pairs(&a["differs_from_byte"])
        .into_iter()
        .map(|(m, n)| format!("node{m} from byte {n}"))
        .collect();
    let divergent: Vec<String> = a["divergent"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("node{m}"))
        .collect();
    let list = |v: Vec<String>| {
        if v.is_empty() {
            "-".into()
        } else {
            v.join(", ")
        }
    };
    format!(
        "    output agreement: {} blocks compared, {} different; attests {}; differs {}; divergent (never takes over) {}",
        a["blocks_compared"],
        a["blocks_different"],
        list(attests),
        list(differs),
        list(divergent),
    )
}

/// A duration in whole seconds: `30s`, `10m`, `1h`, or `0` (never).
fn parse_secs(s: &str, flag: &str) -> anyhow::Result<u32> {
    let t = s.trim();
    let (num, mul) = if let Some(n) = t.strip_suffix('h') {
        (n, 3600)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1)
    } else if t == "0" {
        ("0", 1)
    } else {
        bail!("{flag} `{s}` needs a unit: e.g. 30s, 10m, 1h (or 0 for never)");
    };
    num.parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--idle-timeout `{s}` is not a whole number of seconds, minutes or hours"
            )
        })
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("`{other}` is not on or off")),
    }
}

fn setportopt(
    socket: &Path,
    service: &str,
    mode: &str,
    backend: Option<&str>,
    (hb_ms, timeout_ms): (Option<u16>, Option<u16>),
    (repair, order, quiet_ms, stall_ms): (Option<bool>, Option<&str>, Option<u16>, Option<u32>),
    (max_conns, idle_timeout_s, keepalive_s): (Option<u32>, Option<u32>, Option<u32>),
) -> anyhow::Result<()> {
    let svc: SocketAddrV4 = service
        .parse()
        .map_err(|_| anyhow::anyhow!("`{service}` is not ip:port: pass e.g. 198.19.0.10:80"))?;
    let mode: ack_channel::Mode = mode.parse().map_err(anyhow::Error::msg)?;
    let backend = match backend {
        Some(b) => Some(b.parse::<SocketAddrV4>().map_err(|_| {
            anyhow::anyhow!("backend `{b}` is not ip:port: pass e.g. --backend 127.0.0.1:8080")
        })?),
        None if mode != ack_channel::Mode::Off => {
            bail!(
                "mode {} needs a backend: pass --backend 127.0.0.1:PORT",
                mode.as_str()
            )
        }
        None => None,
    };
    call(
        socket,
        "POST",
        "/setportopt",
        Some(serde_json::json!({
            "service": svc.to_string(),
            "mode": mode.as_str(),
            "backend": backend.map(|b| b.to_string()),
            "hb_ms": hb_ms,
            "timeout_ms": timeout_ms,
            "repair": repair,
            "order": order,
            "quiet_ms": quiet_ms,
            "stall_ms": stall_ms,
            "max_conns": max_conns,
            "idle_timeout_s": idle_timeout_s,
            "keepalive_s": keepalive_s,
        })),
    )?;
    println!("{svc}: mode {}", mode.as_str());
    Ok(())
}

fn status(socket: &Path, json: bool, limit: Option<usize>) -> anyhow::Result<()> {
    let v = call(socket, "GET", "/status", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_status(&v, limit)?);
    }
    Ok(())
}

/// `n` with thousands separators: 4,312.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A JSON count with thousands separators, anything else as it is.
fn count(v: &Value) -> String {
    v.as_u64().map(thousands).unwrap_or_else(|| v.to_string())
}

/// How many connections are in each TCP state, most first: the host's `connection_states`
/// (over all its connections) when it sends one, else a count of the listed `connections`.
fn connection_states(v: &Value) -> Vec<(String, u64)> {
    let mut states: Vec<(String, u64)> = match v["connection_states"].as_object() {
        Some(m) => m
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect(),
        None => {
            let mut m = std::collections::BTreeMap::<String, u64>::new();
            for c in v["connections"].as_array().into_iter().flatten() {
                let state = c["state"].as_str().unwrap_or("?").to_string();
                *m.entry(state).or_default() += 1;
            }
            m.into_iter().collect()
        }
    };
    states.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    states
}

/// The human-readable `status`: a host's services, views and connections (summarised by
/// state, at most `limit` listed; `None` lists all), or the redirector's hosts and views.
fn render_status(v: &Value, limit: Option<usize>) -> anyhow::Result<String> {
    let mut out = String::new();
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    match v["kind"].as_str() {
        Some("host") => {
            writeln!(out, "host server node{}", v["node_id"])?;
            let vh: Vec<String> = v["vhosts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            writeln!(
                out,
                "v_hosts: {}",
                if vh.is_empty() {
                    "(none)".into()
                } else {
                    vh.join(", ")
                }
            )?;
            writeln!(
                out,
                "{:<22} {:<9} {:<22} backend",
                "service", "mode", "backend"
            )?;
            for p in v["services"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<22} {:<9} {:<22} {}",
                    s(&p["service"]),
                    s(&p["mode"]),
                    s(&p["backend"]),
                    if p["backend_healthy"].as_bool() == Some(true) {
                        "up"
                    } else {
                        "DOWN"
                    }
                )?;
            }
            for view in v["views"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "view {}: epoch {} members {} (this host: {})",
                    s(&view["service"]),
                    view["epoch"],
                    view["members"],
                    s(&view["role"])
                )?;
            }
            writeln!(
                out,
                "connections: {} open, {} since start",
                count(&v["connections_active"]),
                count(&v["connections_total"])
            )?;
            render_connections(&mut out, v, limit)?;
        }
        Some("redirector") => {
            writeln!(
                out,
                "redirector: {} connections pinned",
                count(&v["connections"])
            )?;
            for view in v["views"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "ft view {}: epoch {} members {} primary node{} (timeout {} ms)",
                    s(&view["service"]),
                    view["epoch"],
                    view["members"],
                    view["primary"],
                    view["timeout_ms"]
                )?;
            }
            writeln!(
                out,
                "{:<6} {:<22} {:<5} {:>7} services",
                "host", "address", "live", "conns"
            )?;
            for h in v["hosts"].as_array().into_iter().flatten() {
                let svcs: Vec<String> = h["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(s)
                    .collect();
                writeln!(
                    out,
                    "{:<6} {:<22} {:<5} {:>7} {}",
                    format!("node{}", h["id"]),
                    s(&h["addr"]),
                    if h["live"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "NO"
                    },
                    count(&h["connections"]),
                    svcs.join(", ")
                )?;
            }
        }
        _ => writeln!(out, "{}", serde_json::to_string_pretty(v)?)?,
    }
    Ok(out)
}

/// A host's connections: how many in each state, then at most `limit` of them, then how
/// many were left out and how to see them.
fn render_connections(out: &mut String, v: &Value, limit: Option<usize>) -> anyhow::Result<()> {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let states = connection_states(v);
    if !states.is_empty() {
        let by_state: Vec<String> = states
            .iter()
            .map(|(state, n)| format!("{state} {}", thousands(*n)))
            .collect();
        writeln!(out, "by state: {}", by_state.join(", "))?;
    }
    let listed = v["connections"].as_array().map_or(&[][..], Vec::as_slice);
    let total = (states.iter().map(|(_, n)| n).sum::<u64>()).max(listed.len() as u64);
    let shown = limit.map_or(listed.len(), |l| l.min(listed.len()));
    for c in &listed[..shown] {
        writeln!(
            out,
            "  {} -> {} {} to_backend={} to_client={}",
            s(&c["client"]),
            s(&c["service"]),
            s(&c["state"]),
            c["to_backend"],
            c["to_client"]
        )?;
        let ft = &c["ft"];
        if !ft.is_null() {
            writeln!(
                out,
                "    ft {}: gate={} client_ack={} shadow={}B members(node,rcv_nxt)={} retransmits={}",
                s(&ft["role"]),
                ft["gate"],
                ft["client_ack"],
                ft["shadow_bytes"],
                ft["members"],
                ft["retransmits"]
            )?;
            writeln!(out, "{}", agreement_line(&ft["agreement"]))?;
        }
    }
    let rest = total - shown as u64;
    if rest > 0 {
        let more = thousands(rest);
        if shown == listed.len() {
            writeln!(out, "  ... and {more} more the host does not list")?;
        } else if total > listed.len() as u64 {
            writeln!(
                out,
                "  ... and {more} more; --all lists the {} the host reports",
                thousands(listed.len() as u64)
            )?;
        } else {
            writeln!(out, "  ... and {more} more; --all lists them")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idle_timeout_takes_units_and_refuses_bare_numbers() {
        assert_eq!(parse_secs("30s", "--idle-timeout").unwrap(), 30);
        assert_eq!(parse_secs("10m", "--idle-timeout").unwrap(), 600);
        assert_eq!(parse_secs("1h", "--idle-timeout").unwrap(), 3600);
        assert_eq!(parse_secs("0", "--idle-timeout").unwrap(), 0);
        assert!(
            parse_secs("30", "--idle-timeout").is_err(),
            "a bare number is ambiguous"
        );
        assert!(parse_secs("xs", "--idle-timeout").is_err());
        assert!(
            parse_secs("9999999h", "--idle-timeout").is_err(),
            "overflow is refused, not wrapped"
        );
    }

    #[test]
    fn stall_timeout_takes_ms_or_s_and_refuses_bare_numbers_and_zero() {
        assert_eq!(parse_ms_with_unit("500ms", "--stall-timeout").unwrap(), 500);
        assert_eq!(parse_ms_with_unit("2s", "--stall-timeout").unwrap(), 2000);
        assert_eq!(parse_ms_with_unit("1s", "--stall-timeout").unwrap(), 1000);
        assert!(
            parse_ms_with_unit("500", "--stall-timeout").is_err(),
            "a bare number is ambiguous"
        );
        assert!(parse_ms_with_unit("0ms", "--stall-timeout").is_err());
        assert!(parse_ms_with_unit("0s", "--stall-timeout").is_err());
        assert!(parse_ms_with_unit("xs", "--stall-timeout").is_err());
        assert!(
            parse_ms_with_unit("9999999s", "--stall-timeout").is_err(),
            "overflow is refused, not wrapped"
        );
    }

    /// A host's status with `n` listed connections, the first `syn` of them half open.
    fn host_status(n: usize, syn: usize) -> Value {
        let conns: Vec<Value> = (0..n)
            .map(|i| {
                json!({
                    "client": format!("198.18.0.2:{}", 40000 + i),
                    "service": "198.19.0.10:80",
                    "state": if i < syn { "SYN-RECEIVED" } else { "ESTABLISHED" },
                    "to_backend": 10,
                    "to_client": 20,
                    "ft": null,
                })
            })
            .collect();
        json!({
            "kind": "host",
            "node_id": 1,
            "vhosts": ["198.19.0.10"],
            "services": [],
            "views": [],
            "connections_active": n,
            "connections_total": 12345,
            "connections": conns,
        })
    }

    fn connection_lines(text: &str) -> usize {
        text.lines().filter(|l| l.contains(" -> ")).count()
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4312), "4,312");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn host_status_lists_at_most_n_connections_and_counts_states_of_all() {
        let text = render_status(&host_status(30, 5), Some(20)).unwrap();
        assert!(
            text.contains("connections: 30 open, 12,345 since start"),
            "{text}"
        );
        assert!(
            text.contains("by state: ESTABLISHED 25, SYN-RECEIVED 5\n"),
            "{text}"
        );
        assert_eq!(connection_lines(&text), 20, "{text}");
        assert!(text.contains("... and 10 more; --all lists them"), "{text}");

        let all = render_status(&host_status(30, 5), None).unwrap();
        assert_eq!(connection_lines(&all), 30, "{all}");
        assert!(!all.contains("more"), "{all}");

        let few = render_status(&host_status(3, 0), Some(20)).unwrap();
        assert_eq!(connection_lines(&few), 3, "{few}");
        assert!(few.contains("by state: ESTABLISHED 3\n"), "{few}");
        assert!(!few.contains("more"), "{few}");

        let none = render_status(&host_status(0, 0), Some(20)).unwrap();
        assert!(!none.contains("by state"), "{none}");
    }

    #[test]
    fn host_status_prefers_the_hosts_state_counts_over_the_listed_connections() {
        let mut v = host_status(30, 5);
        v["connection_states"] = json!({"ESTABLISHED": 312, "SYN-RECEIVED": 4000});
        let text = render_status(&v, Some(20)).unwrap();
        assert!(
            text.contains("by state: SYN-RECEIVED 4,000, ESTABLISHED 312\n"),
            "{text}"
        );
        assert_eq!(connection_lines(&text), 20, "{text}");
        assert!(
            text.contains("... and 4,292 more; --all lists the 30 the host reports"),
            "{text}"
        );
        let all = render_status(&v, None).unwrap();
        assert_eq!(connection_lines(&all), 30, "{all}");
        assert!(
            all.contains("... and 4,282 more the host does not list"),
            "{all}"
        );
    }

    #[test]
    fn redirector_status_shows_counts() {
        let v = json!({
            "kind": "redirector",
            "views": [],
            "hosts": [{"id": 1, "addr": "198.18.1.2:7000", "live": true,
                       "services": ["198.19.0.10:80"], "connections": 12000}],
            "connections": 12000,
        });
        let text = render_status(&v, Some(20)).unwrap();
        assert!(
            text.contains("redirector: 12,000 connections pinned"),
            "{text}"
        );
        assert!(text.contains("12,000 198.19.0.10:80"), "{text}");
    }
}
