//! `hydra-host`: the HydraNet host server daemon.

use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ack_channel::{ClusterKey, Incarnation, Opener, ReplicaId, Sealer};
use anyhow::Context;
use clap::Parser;
use ft_tcp::EndpointConfig;
use host_server::config::HostConfig;
use host_server::dataplane::{Dataplane, DataplaneConfig, Shared};
use nix::sys::signal::{SigSet, Signal};

/// HydraNet host server: terminates client connections that the redirector tunnels here and
/// bridges each to the local backend program.
#[derive(Parser)]
#[command(name = "hydra-host", version, about, long_about = None)]
struct Args {
    /// TOML config file (see host-server/src/config.rs for every key).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the config file and the cluster key it names, print what would run, and exit:
    /// 0 if both are usable, 2 with the error otherwise (its line and column, for an error
    /// in the file). Starts nothing, as `nginx -t`.
    #[arg(long)]
    check: bool,
}

/// How often every backend is probed with a TCP connect; a backend that does not accept is
/// not advertised to the redirector, so new connections go to hosts that can serve them.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

fn main() {
    // First, before any thread or allocation that matters: socket buffers cost only the
    // pages a connection touches (see `sys::map_large_allocations`).
    let mapped = host_server::sys::map_large_allocations();
    // Before any thread starts (each inherits the mask): SIGTERM and SIGINT are taken only
    // by the thread that waits for them (`on_signals`), never delivered at random.
    let signals = drain_signals();
    if let Err(e) = signals.thread_block() {
        eprintln!("hydra-host: cannot block SIGTERM and SIGINT to drain on them: {e}");
        std::process::exit(1);
    }
    if let Err(e) = control::init_logging() {
        eprintln!("hydra-host: {e}");
        std::process::exit(1);
    }
    if !mapped {
        tracing::warn!(
            "cannot fix the allocator's mapping threshold: every connection's socket buffers \
             will cost their full size in memory (not glibc?)"
        );
    }
    let args = Args::parse();
    let check = args.check;
    if let Err(e) = run(args, signals) {
        eprintln!("hydra-host: {e:#}");
        // 2: the config (or its key) is unusable, what `--check` is asked; 1: it failed.
        std::process::exit(if check { 2 } else { 1 });
    }
}

/// Tells systemd (when it started us with NOTIFY_SOCKET, `Type=notify`) how we stand; a
/// failure is logged, never fatal.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The signals the signal thread takes: SIGTERM and SIGINT drain, SIGHUP reloads.
fn drain_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Waits for signals. SIGHUP reloads the config file (`reload`). SIGTERM or SIGINT: the
/// first starts the drain (the packet loop ends once it is done, and the process exits 0),
/// a second one exits at once.
fn on_signals(set: SigSet, shared: &Shared, path: &Path, mut cfg: HostConfig) {
    loop {
        match set.wait() {
            Ok(Signal::SIGHUP) => {
                if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                    notify_systemd(&[sd_notify::NotifyState::Reloading, now]);
                }
                if let Some(new) = reload(shared, path, &cfg) {
                    cfg = new;
                }
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            Ok(sig) if shared.start_drain() => {
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                tracing::warn!(
                    signal = sig.as_str(),
                    "draining; a second signal exits at once"
                );
            }
            Ok(sig) => {
                tracing::warn!(
                    signal = sig.as_str(),
                    "second signal while draining: exiting now"
                );
                std::process::exit(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot wait for signals: SIGTERM will not drain");
                return;
            }
        }
    }
}

/// SIGHUP: reads the config file again and applies what changed in its vhosts and services
/// (`HostConfig::apply`); settings only a restart changes are named in a warning. A config
/// that does not load or apply changes nothing. Returns the config now in force.
fn reload(shared: &Shared, path: &Path, old: &HostConfig) -> Option<HostConfig> {
    let new = match HostConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(config = %path.display(), "SIGHUP: reload refused, the running config stays: {e:#}");
            return None;
        }
    };
    let applied = {
        // INVARIANT: no code panics while holding the lock.
        let mut s = shared.services.lock().expect("services lock");
        new.apply(&mut s, Some(old))
    };
    match applied {
        Ok(a) => {
            let restart = new.needs_restart(old);
            if !restart.is_empty() {
                tracing::warn!(settings = ?restart, "SIGHUP: these settings changed in the config and take effect at the next restart");
            }
            tracing::info!(
                config = %path.display(),
                added = ?a.added,
                changed = ?a.changed,
                withdrawn = ?a.withdrawn,
                vhosts_removed = ?a.vhosts_removed,
                "SIGHUP: config reloaded"
            );
            // New backends are probed now, not at the next round.
            for addr in a.added.iter().chain(&a.changed) {
                shared.poke_health(*addr);
            }
            Some(new)
        }
        Err(e) => {
            tracing::error!(config = %path.display(), "SIGHUP: reload refused, the running config stays: {e:#}");
            None
        }
    }
}

/// One backend socket per client connection: raise the open-files limit to the hard limit
/// so that tens of thousands of connections fit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, "cannot raise the open-files limit");
            }
        }
    }
}

fn run(args: Args, signals: SigSet) -> anyhow::Result<()> {
    let cfg = HostConfig::load(&args.config)?;
    let key = ClusterKey::load(&cfg.key_file)?;
    if args.check {
        println!(
            "{}: config OK: node {}, listen {}, redirector {} (node {}), key {}, admin {}, \
             runtime changes kept in {}",
            args.config.display(),
            cfg.node_id,
            cfg.listen,
            cfg.redirector,
            cfg.redirector_id,
            cfg.key_file.display(),
            cfg.admin_socket.display(),
            cfg.state_file_of(&args.config).display()
        );
        return Ok(());
    }
    raise_fd_limit();
    let node = ReplicaId(cfg.node_id);
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // This life of the host: datagrams for an earlier one are refused, and the redirector
    // makes it a new member, holding none of the old life's connections.
    let incarnation = Incarnation(wall.as_nanos() as u64);
    let state = cfg.state_file_of(&args.config);
    let shared = Arc::new(Shared {
        incarnation,
        state_file: Some(state.clone()),
        ..Shared::default()
    });
    {
        // INVARIANT: no code panics while holding the lock.
        let mut s = shared.services.lock().expect("services lock");
        cfg.apply(&mut s, None)?;
    }
    // Then what was changed at run time in earlier lives (hydractl v_host, setportopt).
    host_server::admin::replay(&shared, &state);
    let admin_shared = shared.clone();
    control::serve(&cfg.admin_socket, move |m, u, b| {
        host_server::admin::handle(&admin_shared, node, m, u, b)
    })?;
    if let Some(addr) = cfg.metrics_listen {
        let metrics_shared = shared.clone();
        let (bound, _) = control::serve_metrics(addr, move || metrics_shared.metrics.render())?;
        tracing::info!(%bound, "serving GET /metrics for Prometheus");
    }
    let signal_shared = shared.clone();
    let (signal_path, signal_cfg) = (args.config.clone(), cfg.clone());
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || on_signals(signals, &signal_shared, &signal_path, signal_cfg))
        .context("starting the signal thread")?;
    let health_shared = shared.clone();
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || health_loop(&health_shared))
        .context("starting the health checker")?;
    let sealer = Sealer::new(key.clone(), node, incarnation);
    let advertise = cfg.advertised()?;
    let cookies = ft_tcp::syncookie::CookieJar::from_cluster_key(key.as_bytes());
    let dp = Dataplane::new(
        DataplaneConfig {
            listen: cfg.listen,
            redirector: cfg.redirector,
            redirector_id: ReplicaId(cfg.redirector_id),
            advertise,
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            max_conns: cfg.max_conns,
            udp_gso: cfg.udp_gso,
            cookies,
            drain_timeout: Duration::from_secs(cfg.drain_timeout_s),
            endpoint: EndpointConfig {
                mtu: cfg.mtu,
                rx_buffer: cfg.socket_buffer,
                tx_buffer: cfg.socket_buffer,
            },
        },
        Opener::new(key, node, incarnation),
        sealer,
        shared,
        wall.as_nanos() as u64 ^ u64::from(cfg.node_id),
    )
    .with_context(|| format!("cannot bind the tunnel socket {}", cfg.listen))?;
    tracing::info!(node = cfg.node_id, listen = %cfg.listen, redirector = %cfg.redirector, admin = %cfg.admin_socket.display(), "hydra-host running");
    // systemd's Type=notify: ready once the tunnel socket and the admin socket are bound.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    dp.run().context("dataplane failed")?;
    // Drained (the loop ends only so): the admin socket goes with us.
    let _ = std::fs::remove_file(&cfg.admin_socket);
    Ok(())
}

/// Failed checks in a row before a backend that answered is marked down (HAProxy's `fall`):
/// one slow connect on a loaded machine is not a dead backend.
const HEALTH_FALL: u32 = 3;

fn health_loop(shared: &Shared) {
    let mut failures: std::collections::HashMap<SocketAddrV4, u32> = Default::default();
    let mut only: Vec<SocketAddrV4> = Vec::new();
    let mut full_at = std::time::Instant::now();
    loop {
        // Every backend is probed at least every HEALTH_EVERY, pokes or not: pokes for one
        // service arriving faster than that (a rejoined host excluded from its redis
        // connections one after another, 13 a second in the soak) kept the other service's
        // restarted backend from being probed, so the host never offered it again.
        let full = only.is_empty() || std::time::Instant::now() >= full_at;
        if full {
            full_at = std::time::Instant::now() + HEALTH_EVERY;
        }
        let targets: Vec<_> = {
            // INVARIANT: no code panics while holding the lock.
            let s = shared.services.lock().expect("services lock");
            s.ports()
                .filter(|(a, _)| full || only.contains(a))
                .filter_map(|(a, p)| p.backend.map(|b| (a, b, p.healthy)))
                .collect()
        };
        for (addr, backend, was) in targets {
            let tried =
                TcpStream::connect_timeout(&SocketAddr::V4(backend), Duration::from_millis(200));
            let answered = tried.is_ok();
            // Nothing listens: the backend is down, not slow (issue #14: leave the view at
            // once, so that new connections go to members whose backend runs).
            let refused = tried
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
            let fails = failures.entry(addr).or_insert(0);
            *fails = if answered { 0 } else { *fails + 1 };
            // Up at the first answer; down after HEALTH_FALL failures in a row, at once when
            // refused or when it never answered.
            let ok = answered || (was && !refused && *fails < HEALTH_FALL);
            if ok != was {
                if ok {
                    tracing::info!(service = %addr, %backend, "backend answers; advertising the service");
                } else {
                    tracing::warn!(service = %addr, %backend, refused, "backend does not answer; withdrawing the service");
                }
            }
            // INVARIANT: no code panics while holding the lock.
            shared
                .services
                .lock()
                .expect("services lock")
                .set_healthy(addr, backend, ok);
        }
        // The next round: the full one when due, or at once for a backend the dataplane saw
        // fail.
        only = shared.wait_health(full_at.saturating_duration_since(std::time::Instant::now()));
    }
}
