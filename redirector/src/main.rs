//! `hydra-redirector`: the HydraNet redirector daemon.

// The binary is the I/O shell: it may read the wall clock (for the tunnel counter base).
#![allow(clippy::disallowed_methods)]

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ack_channel::{ClusterKey, Epoch, Incarnation, Opener, ReplicaId, Sealer};
use anyhow::Context;
use clap::Parser;
use redirector::config::RedirConfig;
use redirector::dataplane::{self, RedirMetrics, Shared};
use redirector::table::Table;

/// HydraNet redirector: takes client packets for the service prefix from a TUN device and
/// sends each connection through the authenticated tunnel to a live host server.
#[derive(Parser)]
#[command(name = "hydra-redirector", version, about, long_about = None)]
struct Args {
    /// TOML config file (see redirector/src/config.rs for every key).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the config file and the cluster key it names, print what would run, and exit:
    /// 0 if both are usable, 2 with the error otherwise (its line and column, for an error
    /// in the file). Starts nothing, as `nginx -t`.
    #[arg(long)]
    check: bool,
}

fn main() {
    if let Err(e) = control::init_logging() {
        eprintln!("hydra-redirector: {e}");
        std::process::exit(1);
    }
    let args = Args::parse();
    let check = args.check;
    if let Err(e) = run(args) {
        eprintln!("hydra-redirector: {e:#}");
        // 2: the config (or its key) is unusable, what `--check` is asked; 1: it failed.
        std::process::exit(if check { 2 } else { 1 });
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cfg = RedirConfig::load(&args.config)?;
    let key = ClusterKey::load(&cfg.key_file)?;
    let (addr, prefix) = cfg.tun_prefix()?;
    if args.check {
        println!(
            "{}: config OK: node {}, tunnel {} (key {}), TUN {} {addr}/{prefix} mtu {}, admin {}",
            args.config.display(),
            cfg.node_id,
            cfg.listen,
            cfg.key_file.display(),
            cfg.tun_name,
            cfg.mtu,
            cfg.admin_socket.display()
        );
        return Ok(());
    }
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(cfg.tun_name.clone())
            .ipv4(addr, prefix, None)
            .mtu(cfg.mtu)
            .offload(offload)
            .build_sync()
    };
    let tun = match build(cfg.tun_offload) {
        Err(e) if cfg.tun_offload => {
            tracing::warn!(error = %e, "TUN offload refused by the kernel; reading and writing one packet at a time");
            build(false)
        }
        r => r,
    }
    .with_context(|| {
        format!(
            "cannot create TUN device {}: run as root (CAP_NET_ADMIN) with /dev/net/tun present",
            cfg.tun_name
        )
    })?;
    tracing::info!(offload = tun.tcp_gso(), "TUN device ready");
    let udp = UdpSocket::bind(cfg.listen)
        .with_context(|| format!("cannot bind the tunnel socket {}", cfg.listen))?;
    {
        use nix::sys::socket::{setsockopt, sockopt};
        const WANT: usize = 8 << 20;
        if setsockopt(&udp, sockopt::RcvBufForce, &WANT).is_err() {
            let _ = setsockopt(&udp, sockopt::RcvBuf, &WANT);
        }
        if setsockopt(&udp, sockopt::SndBufForce, &WANT).is_err() {
            let _ = setsockopt(&udp, sockopt::SndBuf, &WANT);
        }
    }
    let wall = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // This life of the redirector: datagrams for an earlier one are refused, and its views
    // are numbered above any its earlier life issued.
    let me = ReplicaId(cfg.node_id);
    let incarnation = Incarnation(wall.as_nanos() as u64);
    let sealer = Sealer::new(key.clone(), me, incarnation);
    let shared = Arc::new(Shared {
        table: Mutex::new(
            Table::with_max_flows(Duration::from_millis(cfg.host_timeout_ms), cfg.max_flows)
                .with_epoch_base(Epoch(wall.as_micros() as u64)),
        ),
        metrics: RedirMetrics::default(),
        sealer,
        heard: Mutex::default(),
    });
    let admin_shared = shared.clone();
    control::serve(&cfg.admin_socket, move |m, u, _| {
        redirector::admin::handle(&admin_shared, m, u)
    })?;
    if let Some(addr) = cfg.metrics_listen {
        let metrics_shared = shared.clone();
        let (bound, _) = control::serve_metrics(addr, move || {
            redirector::admin::handle(&metrics_shared, "GET", "/metrics").body
        })?;
        tracing::info!(%bound, "serving GET /metrics for Prometheus");
    }
    dataplane::start(
        Arc::new(tun),
        udp,
        Opener::new(key, me, incarnation),
        shared,
        dataplane::DataOpts {
            mtu: usize::from(cfg.mtu),
            udp_gso: cfg.udp_gso,
        },
    )
    .context("starting the packet threads")?;
    tracing::info!(listen = %cfg.listen, tun = %cfg.tun_name, prefix = %cfg.tun_addr, admin = %cfg.admin_socket.display(), "hydra-redirector running");
    // systemd's Type=notify: ready once the TUN, the tunnel and the admin socket are up.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    loop {
        std::thread::park();
    }
}
