//! The redirector's threads: TUN to tunnel, tunnel to TUN, and housekeeping.
//!
//! The two packet threads run on both cores at once; they share the [`Table`] behind a mutex
//! held only for the routing decision.
//!
//! | module | what |
//! |---|---|
//! | here | what the threads share, and `start` |
//! | `to_hosts` | the TUN thread: client packets to the hosts |
//! | `to_clients` | the tunnel thread: datagrams from the hosts, client packets to the TUN |
//! | `views` | the housekeeping thread: failure detection, views, exclusion notices |
//! | `metrics` | the counters behind `/metrics` |

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ack_channel::{
    emit_exclusions, parse_exclusions, DropReason, Epoch, ExclusionEntry, Header, Heartbeat,
    Member, MsgType, Opener, Receiver, Sealer, ServiceId, View,
};
use control::metrics::{Counter, Exposition};
use ft_tcp::{FlowKey, TcpMeta};
use tun_rs::{GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};
use tunnel_io::Sent;

use crate::table::{HostEvent, Route, Table};

mod metrics;
mod to_clients;
mod to_hosts;
mod views;

pub use metrics::RedirMetrics;
use to_clients::to_clients;
use to_hosts::to_hosts;
use views::{broadcast_view, housekeeping, log_event, send_notices};

/// What the threads share.
#[derive(Debug)]
pub struct Shared {
    /// The redirection table.
    pub table: Mutex<Table>,
    /// Counters.
    pub metrics: RedirMetrics,
    /// Seals every datagram the redirector sends (one counter across threads).
    pub sealer: Sealer,
    /// When each host's last authenticated heartbeat arrived, recorded before the table lock
    /// is taken: the detector reads it even while the receiving thread waits for that lock
    /// (the tun thread takes it for every client packet, 20,000 times a second in a flood).
    pub heard: Mutex<std::collections::HashMap<ack_channel::ReplicaId, Instant>>,
}

/// Views are re-sent this often even without change, so a lost view costs little.
const VIEW_REFRESH: Duration = Duration::from_millis(50);

/// Starts the packet threads and the housekeeping thread; returns at once.
pub fn start(
    tun: Arc<SyncDevice>,
    udp: UdpSocket,
    mut opener: Opener,
    shared: Arc<Shared>,
    opts: DataOpts,
) -> std::io::Result<()> {
    let udp_rx = udp.try_clone()?;
    let udp_hk = udp.try_clone()?;
    let (t1, s1) = (tun.clone(), shared.clone());
    std::thread::Builder::new()
        .name("tun-to-hosts".into())
        .spawn(move || to_hosts(&t1, &udp, &s1, opts))?;
    let (t2, s2) = (tun, shared.clone());
    std::thread::Builder::new()
        .name("hosts-to-tun".into())
        .spawn(move || to_clients(&t2, &udp_rx, &mut opener, &s2))?;
    std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || housekeeping(&shared, &udp_hk))?;
    Ok(())
}

/// The I/O shell's clock; the table (the routing decision) only ever gets `now` passed in.
#[allow(clippy::disallowed_methods)]
pub fn clock() -> Instant {
    Instant::now()
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Table> {
    // INVARIANT: no code panics while holding the table lock.
    shared.table.lock().expect("table lock")
}

/// Room in front of each packet buffer for the virtio-net header of an offloading TUN.
const HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// What the packet threads need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DataOpts {
    /// The TUN's MTU: the largest packet one TUN read yields after splitting.
    pub mtu: usize,
    /// Send runs of datagrams to a host with UDP GSO.
    pub udp_gso: bool,
}
