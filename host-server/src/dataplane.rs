//! The host server's packet loop: one thread, one UDP socket, one smoltcp endpoint and one
//! backend socket per client connection, all driven by `mio`.
//!
//! Per event the loop touches only the connection concerned (a `HashMap` lookup by 4-tuple),
//! so the per-packet cost does not grow with the number of connections. Timers live in an
//! ordered set keyed by deadline.
//!
//! The bridge between a client connection and its backend keeps backpressure both ways: bytes
//! move from the backend only into free space of the endpoint's send buffer, and from the
//! endpoint only as fast as the backend socket accepts them (the rest stays in smoltcp's
//! receive buffer, shrinking the window the client sees). Half-close travels both ways (a
//! client FIN becomes `shutdown(Write)` on the backend socket, a backend EOF becomes a FIN),
//! and so does reset (client RST aborts the backend socket with SO_LINGER 0; a backend reset
//! or refused connect aborts the client connection with RST).

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ack_channel::{DropReason, Epoch, Heartbeat, MsgType, Opener, Sealer, ServiceId};
use control::metrics::{Counter, Exposition};
use ft_tcp::{Endpoint, EndpointConfig, FlowKey, TcpMeta, TcpState};
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use smoltcp::time::Instant as SInstant;

use crate::services::Services;

const UDP: Token = Token(0);
/// Datagrams read per wake-up before the loop services timers again.
const RECV_BATCH: usize = 256;
/// How often the connection table snapshot for `status` is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);
/// The most connections listed one by one in `status`.
const SNAPSHOT_MAX: usize = 1000;

/// Counters the admin API exposes at `/metrics`.
#[derive(Debug, Default)]
pub struct HostMetrics {
    /// Datagrams received.
    pub datagrams_in: Counter,
    /// Datagrams dropped: malformed.
    pub dropped_malformed: Counter,
    /// Datagrams dropped: bad MAC.
    pub dropped_bad_mac: Counter,
    /// Datagrams dropped: replayed counter.
    pub dropped_replay: Counter,
    /// Datagrams of a type a host does not take.
    pub dropped_unexpected: Counter,
    /// Tunnelled packets that are not IPv4/TCP.
    pub packets_not_tcp: Counter,
    /// SYNs for a service this host does not serve.
    pub packets_no_service: Counter,
    /// Non-SYN packets of no known connection (answered with RST).
    pub packets_unknown_flow: Counter,
    /// Datagrams sent.
    pub datagrams_out: Counter,
    /// Datagrams the kernel refused to send.
    pub send_errors: Counter,
    /// Open connections.
    pub conns_active: Counter,
    /// Connections ever opened.
    pub conns_total: Counter,
    /// Backend connects that failed (client got RST).
    pub backend_connect_failures: Counter,
    /// Connections the client reset.
    pub client_resets: Counter,
    /// Connections the backend reset.
    pub backend_resets: Counter,
}

impl HostMetrics {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        let c = "counter";
        e.sample(
            "hydra_datagrams_received_total",
            c,
            "UDP datagrams received",
            "",
            self.datagrams_in.get(),
        );
        for (reason, v) in [
            ("malformed", &self.dropped_malformed),
            ("bad_mac", &self.dropped_bad_mac),
            ("replay", &self.dropped_replay),
            ("unexpected_type", &self.dropped_unexpected),
        ] {
            e.sample(
                "hydra_datagrams_dropped_total",
                c,
                "UDP datagrams dropped before use, by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        for (reason, v) in [
            ("not_tcp", &self.packets_not_tcp),
            ("no_service", &self.packets_no_service),
            ("unknown_flow", &self.packets_unknown_flow),
        ] {
            e.sample(
                "hydra_packets_dropped_total",
                c,
                "Tunnelled client packets not delivered to a connection, by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        e.sample(
            "hydra_datagrams_sent_total",
            c,
            "UDP datagrams sent",
            "",
            self.datagrams_out.get(),
        );
        e.sample(
            "hydra_send_errors_total",
            c,
            "UDP sends the kernel refused",
            "",
            self.send_errors.get(),
        );
        e.sample(
            "hydra_connections_active",
            "gauge",
            "Client connections open",
            "",
            self.conns_active.get(),
        );
        e.sample(
            "hydra_connections_total",
            c,
            "Client connections accepted",
            "",
            self.conns_total.get(),
        );
        e.sample(
            "hydra_backend_connect_failures_total",
            c,
            "Backend connects that failed",
            "",
            self.backend_connect_failures.get(),
        );
        e.sample(
            "hydra_resets_total",
            c,
            "Connections ended by a reset, by side",
            "side=\"client\"",
            self.client_resets.get(),
        );
        e.sample(
            "hydra_resets_total",
            c,
            "Connections ended by a reset, by side",
            "side=\"backend\"",
            self.backend_resets.get(),
        );
        e.finish()
    }
}

/// One connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnStatus {
    /// Client `ip:port`.
    pub client: String,
    /// Service `ip:port`.
    pub service: String,
    /// TCP state of the client connection.
    pub state: String,
    /// Whether the backend socket is connected.
    pub backend_connected: bool,
    /// Bytes waiting for the backend.
    pub to_backend: usize,
    /// Bytes queued for the client, unacknowledged.
    pub to_client: usize,
}

/// State shared between the dataplane, the admin API and the health checker.
#[derive(Debug, Default)]
pub struct Shared {
    /// vhosts and port options.
    pub services: Mutex<Services>,
    /// Counters.
    pub metrics: HostMetrics,
    /// The last connection snapshot.
    pub conns: Mutex<Vec<ConnStatus>>,
}

/// Settings of the dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The redirector.
    pub redirector: SocketAddr,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Endpoint tunables.
    pub endpoint: EndpointConfig,
}

struct Conn {
    key: FlowKey,
    ep: Endpoint,
    backend: Option<TcpStream>,
    connected: bool,
    readable: bool,
    writable: bool,
    backend_eof: bool,
    fin_to_backend: bool,
    deadline: Option<SInstant>,
}

/// The packet loop.
pub struct Dataplane {
    poll: Poll,
    udp: UdpSocket,
    cfg: DataplaneConfig,
    opener: Opener,
    sealer: Sealer,
    shared: Arc<Shared>,
    flows: HashMap<FlowKey, usize>,
    conns: HashMap<usize, Conn>,
    next_id: usize,
    timers: BTreeSet<(SInstant, usize)>,
    start: Instant,
    seed: u64,
    out: Vec<Vec<u8>>,
    sealed: Vec<u8>,
}

fn resize_socket_buffers(udp: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    const WANT: usize = 8 << 20;
    // The Force variants pass net.core.*mem_max as root; fall back quietly otherwise.
    if setsockopt(udp, sockopt::RcvBufForce, &WANT).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &WANT);
    }
    if setsockopt(udp, sockopt::SndBufForce, &WANT).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &WANT);
    }
}

fn abort_backend(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    // SO_LINGER 0: close sends RST instead of FIN (how a reset crosses the bridge).
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(stream, sockopt::Linger, &linger);
}

impl Dataplane {
    /// Binds the UDP socket. `seed` varies smoltcp's initial sequence numbers between runs.
    pub fn new(
        cfg: DataplaneConfig,
        opener: Opener,
        sealer: Sealer,
        shared: Arc<Shared>,
        seed: u64,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut udp = UdpSocket::bind(cfg.listen)?;
        resize_socket_buffers(&udp);
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        Ok(Dataplane {
            poll,
            udp,
            cfg,
            opener,
            sealer,
            shared,
            flows: HashMap::new(),
            conns: HashMap::new(),
            next_id: 1,
            timers: BTreeSet::new(),
            start: Instant::now(),
            seed,
            out: Vec::new(),
            sealed: Vec::new(),
        })
    }

    fn stamp(&self, t: Instant) -> SInstant {
        SInstant::from_micros(t.saturating_duration_since(self.start).as_micros() as i64)
    }

    /// Runs forever (until an unrecoverable I/O error of the poller).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 65536];
        let mut next_heartbeat = Instant::now();
        let mut next_snapshot = Instant::now();
        let mut dirty: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            let mut wake = next_heartbeat;
            if let Some((t, _)) = self.timers.first() {
                let t = self.start + Duration::from_micros(t.total_micros().max(0) as u64);
                wake = wake.min(t);
            }
            let timeout = wake.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            dirty.clear();
            let mut udp_ready = false;
            for ev in events.iter() {
                if ev.token() == UDP {
                    udp_ready = true;
                    continue;
                }
                let id = ev.token().0;
                if let Some(c) = self.conns.get_mut(&id) {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        c.readable = true;
                    }
                    if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                        c.writable = true;
                    }
                    dirty.push(id);
                }
            }
            if udp_ready {
                self.drain_udp(&mut buf, &mut dirty);
            }
            let now = Instant::now();
            let snow = self.stamp(now);
            while let Some(&(t, id)) = self.timers.first() {
                if t > snow {
                    break;
                }
                self.timers.pop_first();
                if let Some(c) = self.conns.get_mut(&id) {
                    c.deadline = None;
                    dirty.push(id);
                }
            }
            dirty.sort_unstable();
            dirty.dedup();
            for &id in &dirty {
                self.service(id, snow);
            }
            if now >= next_heartbeat {
                self.heartbeat();
                next_heartbeat = now + self.cfg.heartbeat;
            }
            if now >= next_snapshot {
                self.snapshot();
                next_snapshot = now + SNAPSHOT_EVERY;
            }
        }
    }

    fn drain_udp(&mut self, buf: &mut [u8], dirty: &mut Vec<usize>) {
        for _ in 0..RECV_BATCH {
            let n = match self.udp.recv_from(buf) {
                Ok((n, _from)) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            };
            self.shared.metrics.datagrams_in.inc();
            let m = &self.shared.metrics;
            let (header, payload) = match self.opener.open(&buf[..n]) {
                Ok(v) => v,
                Err(reason) => {
                    match reason {
                        DropReason::Malformed(_) => m.dropped_malformed.inc(),
                        DropReason::BadMac => m.dropped_bad_mac.inc(),
                        DropReason::Replay => m.dropped_replay.inc(),
                    }
                    tracing::trace!(%reason, "datagram dropped");
                    continue;
                }
            };
            if header.msg_type != MsgType::ToHost {
                m.dropped_unexpected.inc();
                continue;
            }
            let packet = payload.to_vec();
            if let Some(id) = self.on_client_packet(&packet) {
                dirty.push(id);
            }
        }
        // More may be waiting: mio is edge-triggered, so come back at once.
        let _ = self
            .poll
            .registry()
            .reregister(&mut self.udp, UDP, Interest::READABLE);
    }

    /// Delivers one client packet; returns the connection it touched.
    fn on_client_packet(&mut self, packet: &[u8]) -> Option<usize> {
        let m = &self.shared.metrics;
        let meta = match TcpMeta::parse(packet) {
            Ok(meta) => meta,
            Err(_) => {
                m.packets_not_tcp.inc();
                return None;
            }
        };
        let key = meta.inbound_flow();
        let now = self.stamp(Instant::now());
        let existing = self.flows.get(&key).copied();
        let id = match existing {
            // A new SYN on a 4-tuple whose old connection is over: the client reused the port.
            Some(id)
                if meta.is_syn()
                    && matches!(
                        self.conns.get(&id).map(|c| c.ep.state()),
                        Some(TcpState::TimeWait | TcpState::Closed)
                    ) =>
            {
                self.remove(id);
                self.open(key, now)?
            }
            Some(id) => id,
            None if meta.is_syn() => self.open(key, now)?,
            None => {
                self.shared.metrics.packets_unknown_flow.inc();
                if let Some(rst) = meta.reset_reply() {
                    self.send_to_client(ServiceId::from_addr(key.service), &rst);
                }
                return None;
            }
        };
        let c = self.conns.get_mut(&id)?;
        self.out.clear();
        c.ep.handle_packet(now, packet, &mut self.out);
        self.flush_out(key.service);
        Some(id)
    }

    /// Accepts a new connection: an endpoint listening for its SYN and a backend connect.
    fn open(&mut self, key: FlowKey, now: SInstant) -> Option<usize> {
        let backend = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services.serving(key.service).and_then(|p| p.backend)
        };
        let Some(backend) = backend else {
            self.shared.metrics.packets_no_service.inc();
            tracing::debug!(service = %key.service, "SYN for a service not served here");
            return None;
        };
        let id = self.next_id;
        self.next_id += 1;
        let ep = Endpoint::listen(
            key.service,
            self.cfg.endpoint,
            self.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            now,
        );
        let mut conn = Conn {
            key,
            ep,
            backend: None,
            connected: false,
            readable: false,
            writable: false,
            backend_eof: false,
            fin_to_backend: false,
            deadline: None,
        };
        match TcpStream::connect(SocketAddr::V4(backend)) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    tracing::warn!(error = %e, "cannot register backend socket");
                } else {
                    conn.backend = Some(s);
                }
            }
            Err(e) => tracing::warn!(%backend, error = %e, "backend connect failed"),
        }
        tracing::debug!(client = %key.client, service = %key.service, %backend, "connection opened");
        self.shared.metrics.conns_total.inc();
        self.shared.metrics.conns_active.add(1);
        self.flows.insert(key, id);
        self.conns.insert(id, conn);
        Some(id)
    }

    fn remove(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            if let Some(d) = c.deadline {
                self.timers.remove(&(d, id));
            }
            if let Some(mut s) = c.backend.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
            self.flows.remove(&c.key);
            let active = self.shared.metrics.conns_active.get();
            self.shared
                .metrics
                .conns_active
                .set(active.saturating_sub(1));
            tracing::debug!(client = %c.key.client, "connection closed");
        }
    }

    /// Moves bytes across the bridge, runs the endpoint, reschedules its timer.
    fn service(&mut self, id: usize, now: SInstant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let m = &self.shared.metrics;
        let mut abort_client = false;
        let mut drop_backend_hard = false;
        if let Some(s) = c.backend.as_mut() {
            if !c.connected && c.writable {
                match (s.take_error(), s.peer_addr()) {
                    (Ok(None), Ok(_)) => c.connected = true,
                    (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => {
                        c.writable = false
                    }
                    _ => {
                        m.backend_connect_failures.inc();
                        tracing::warn!(client = %c.key.client, "backend refused the connection; resetting the client");
                        abort_client = true;
                    }
                }
            }
        } else if !abort_client && c.ep.state() != TcpState::Closed {
            // No backend socket at all (connect failed synchronously).
            m.backend_connect_failures.inc();
            abort_client = true;
        }
        if c.connected && !abort_client {
            if let Some(s) = c.backend.as_mut() {
                // Backend -> client, only into free send-buffer space (backpressure).
                while c.readable && !c.backend_eof && c.ep.may_send() && c.ep.send_space() > 0 {
                    let mut res = Ok(0);
                    c.ep.send_from(|buf| {
                        res = s.read(buf);
                        *res.as_ref().unwrap_or(&0)
                    });
                    match res {
                        Ok(0) => {
                            c.backend_eof = true;
                            c.ep.close();
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            m.backend_resets.inc();
                            abort_client = true;
                            break;
                        }
                    }
                }
                // Client -> backend, as fast as the backend takes it.
                while c.writable && !c.fin_to_backend && c.ep.recv_queue() > 0 {
                    let mut res = Ok(0);
                    c.ep.recv_into(|buf| {
                        res = s.write(buf);
                        *res.as_ref().unwrap_or(&0)
                    });
                    match res {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            m.backend_resets.inc();
                            abort_client = true;
                            break;
                        }
                    }
                }
                // Client half-close -> backend half-close, once everything was delivered.
                let state = c.ep.state();
                if !abort_client
                    && !c.fin_to_backend
                    && c.ep.recv_queue() == 0
                    && !c.ep.may_recv()
                    && !matches!(
                        state,
                        TcpState::Listen | TcpState::SynReceived | TcpState::Closed
                    )
                {
                    let _ = s.shutdown(Shutdown::Write);
                    c.fin_to_backend = true;
                }
                if state == TcpState::Closed && !(c.fin_to_backend && c.backend_eof) {
                    // The client reset the connection: reset the backend's too.
                    m.client_resets.inc();
                    drop_backend_hard = true;
                }
            }
        } else if !abort_client && c.ep.state() == TcpState::Closed {
            drop_backend_hard = true;
        }
        if abort_client {
            c.ep.abort();
            drop_backend_hard = true;
        }
        if drop_backend_hard {
            if let Some(mut s) = c.backend.take() {
                abort_backend(&s);
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        self.out.clear();
        c.ep.poll(now, &mut self.out);
        let state = c.ep.state();
        let done_both_ways = c.fin_to_backend && c.backend_eof;
        if done_both_ways {
            // Backend socket no longer needed; TIME-WAIT lives on in the endpoint.
            if let Some(mut s) = c.backend.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        let service = c.key.service;
        let finished = state == TcpState::Closed;
        let next = if finished { None } else { c.ep.poll_at(now) };
        let old = c.deadline;
        c.deadline = next;
        if let Some(d) = old {
            self.timers.remove(&(d, id));
        }
        if let Some(d) = next {
            self.timers.insert((d, id));
        }
        self.flush_out(service);
        if finished {
            self.remove(id);
        }
    }

    fn flush_out(&mut self, service: SocketAddrV4) {
        let sid = ServiceId::from_addr(service);
        let out = std::mem::take(&mut self.out);
        for p in &out {
            self.send_to_client(sid, p);
        }
        self.out = out;
    }

    fn send_to_client(&mut self, service: ServiceId, packet: &[u8]) {
        self.sealer.seal_into(
            MsgType::ToClient,
            service,
            Epoch(0),
            packet,
            &mut self.sealed,
        );
        match self.udp.send_to(&self.sealed, self.cfg.redirector) {
            Ok(_) => self.shared.metrics.datagrams_out.inc(),
            Err(e) => {
                // A full socket buffer loses the packet; TCP retransmits it.
                self.shared.metrics.send_errors.inc();
                tracing::trace!(error = %e, "udp send failed");
            }
        }
    }

    fn heartbeat(&mut self) {
        let hb = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            Heartbeat {
                services: services.ads(),
            }
        };
        self.sealer.seal_into(
            MsgType::Heartbeat,
            ServiceId(0),
            Epoch(0),
            &hb.emit(),
            &mut self.sealed,
        );
        match self.udp.send_to(&self.sealed, self.cfg.redirector) {
            Ok(_) => self.shared.metrics.datagrams_out.inc(),
            Err(e) => {
                self.shared.metrics.send_errors.inc();
                tracing::debug!(error = %e, redirector = %self.cfg.redirector, "heartbeat not sent");
            }
        }
    }

    fn snapshot(&mut self) {
        let list: Vec<ConnStatus> = self
            .conns
            .values()
            .take(SNAPSHOT_MAX)
            .map(|c| ConnStatus {
                client: c.key.client.to_string(),
                service: c.key.service.to_string(),
                state: c.ep.state().to_string(),
                backend_connected: c.connected && c.backend.is_some(),
                to_backend: c.ep.recv_queue(),
                to_client: c.ep.send_queue(),
            })
            .collect();
        // INVARIANT: no code panics while holding the lock.
        *self.shared.conns.lock().expect("conns lock") = list;
    }
}
