//! `hydra-fileserver`: a deterministic HTTP/1.1 file server for HydraNet labs and demos.

use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Serve the files under a directory over HTTP/1.1, byte-identically for identical requests
/// (no Date header), optionally paced.
#[derive(Parser)]
#[command(name = "hydra-fileserver", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory to serve.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Pace each response to at most this many bytes per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Testing output agreement: while this file exists, start every 200 response's body
    /// with one extra random byte (a nondeterministic replica).
    #[arg(long, value_name = "PATH")]
    noise_file: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hydra-fileserver: {e:#}");
        std::process::exit(1);
    }
}

/// A listening socket with a backlog of 1024 (std's is 128): a HydraNet host opens one
/// backend connection per client connection, and a burst of them must not overflow the
/// accept queue (the kernel would drop the SYN and the host retry only after 1 s), as
/// nginx's and redis's own backlogs (511) are meant to prevent.
fn listen(addr: std::net::SocketAddrV4) -> nix::Result<TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(addr),
    )?;
    listen(&fd, Backlog::new(1024)?)?;
    Ok(TcpListener::from(fd))
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr: std::net::SocketAddrV4 = args
        .listen
        .parse()
        .with_context(|| format!("--listen {}: expected IPv4 address:port", args.listen))?;
    let listener =
        listen(addr).with_context(|| format!("cannot listen on {addr}: is the port in use?"))?;
    eprintln!(
        "hydra-fileserver: serving {} on {}",
        args.root.display(),
        args.listen
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let root = args.root.clone();
        let rate = args.rate;
        let noise = args.noise_file.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let _ = demo::serve_connection(stream, &root, rate, noise.as_deref());
        });
    }
    Ok(())
}
