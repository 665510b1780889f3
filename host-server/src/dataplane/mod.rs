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
//!
//! Where things are:
//!
//! | module | what |
//! |---|---|
//! | here | the loop (`Dataplane::run`), client packets, handshakes, opening, servicing and reaping connections |
//! | `tunnel` | the UDP socket: receives and sends in runs, sealing, datagrams to members |
//! | `dispatch` | each datagram opened and handed on; progress, digest and repair handlers |
//! | `bridge` | a connection's backend socket: connect, bytes both ways, half-close, reset |
//! | `views` | views from the redirector, membership changes, exclusion notices |
//! | `order` | the sequencers in the loop: stamps, stamp repair, sync, grants |
//! | `metrics` | the counters behind `/metrics` |
//! | `status` | the snapshots behind `status`, and what the admin thread shares with the loop |
//! | `heartbeat` | the heartbeat thread |
//! | `drain` | the drain after SIGTERM: hand over, finish, exit |
//!
//! Datagrams to the redirector leave in runs and arrive in runs through the `tunnel-io` crate
//! (UDP GSO and GRO); datagrams to members are sent one at a time (`tunnel`), heartbeats
//! from their own thread and socket (`heartbeat`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::order::{ConnView, NeedAnswer, OrderStats, Sequencer, Stamp};
use ack_channel::{
    emit_digests, emit_exclusions, emit_order, emit_progress, parse_digests, parse_exclusions,
    parse_order, parse_progress, DigestEntry, DropReason, Epoch, ExclusionEntry, Header, Heartbeat,
    Incarnation, Member, Mode, MsgType, Opener, OrderEntry, OrderRepair, OrderRepairKind,
    ProgressEntry, Receiver, ReplicaId, Sealer, ServiceId, View, DIGESTS_PER_DATAGRAM,
    EXCLUSIONS_PER_DATAGRAM, ORDER_PER_DATAGRAM, PROGRESS_PER_DATAGRAM,
};
use control::metrics::{Counter, Exposition};
use ft_tcp::agreement::BlockDigest;
use ft_tcp::synack_retry::SynAckRetry;
use ft_tcp::syncookie::{self, CookieJar, SynOpts};
use ft_tcp::{
    rewrite, DropReasons, Endpoint, EndpointConfig, FlowKey, FtConfig, FtConn, OutputEnd,
    PacketError, PlainConn, Progress, Role, SeqNumber, TcpMeta, TcpState,
};
use mio::net::{TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use smoltcp::time::{Duration as SDuration, Instant as SInstant};

use crate::services::{FtOpts, Services};

mod bridge;
mod dispatch;
mod drain;
mod heartbeat;
mod metrics;
mod order;
mod status;
mod tunnel;
mod views;

use bridge::{bridge, reset_backend, Backend};
use dispatch::digest_entry;
use drain::DRAIN_TICK;
pub use heartbeat::realtime_priority;
use heartbeat::{heartbeat_loop, HeartbeatTo};
use metrics::note_agreement;
pub use metrics::{FtMetrics, HostMetrics, OrderMetrics};
use order::sequencer_for;
pub use status::{AgreementView, ConnStatus, FtStatus, Shared};
use tunnel::resize_socket_buffers;
use views::ServiceView;

const UDP: Token = Token(0);
/// Wakes the loop from another thread (the drain's signal); no connection has this token.
const WAKE: Token = Token(usize::MAX);
/// Datagrams read per wake-up before the loop services timers again.
const RECV_BATCH: usize = 256;
/// How often the connection table snapshot for `status` is refreshed.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);
/// How often a total-order primary repeats its recent stamps.
const ORDER_RESEND_EVERY: Duration = Duration::from_millis(20);
/// A total-order sequencer with work that has not moved for this long is logged (what holds
/// it up), once per stay.
const ORDER_STUCK_AFTER: Duration = Duration::from_secs(2);
/// The most connections listed one by one in `status`.
const SNAPSHOT_MAX: usize = 1000;
/// How often idle connections are looked for, and how many are reset at most each time:
/// small, frequent batches, so that thousands of connections abandoned together are reset
/// without one burst of RSTs crowding out everyone else's packets.
const REAP_EVERY: Duration = Duration::from_millis(100);
const REAP_BATCH: usize = 256;
/// How long a connection that closed in order is remembered after its endpoint is gone
/// (smoltcp keeps TIME-WAIT 10 s, Linux 60 s): the client's retransmitted FINs still get
/// their ACK, a stray segment of the old connection gets silence, not a reset.
const LINGER: Duration = Duration::from_secs(15);
/// Unanswered keep-alive probes before a connection is reset (Linux's tcp_keepalive_probes
/// is 9, over 75 s intervals; ours come every third of the keep-alive time).
const KEEPALIVE_PROBES: u32 = 3;
/// Challenge ACKs a host sends per second at most (RFC 5961 §7; Linux's
/// tcp_challenge_ack_limit was 1000): an attacker's guesses must not make us a reflector.
const CHALLENGE_ACKS_PER_SEC: u32 = 1000;
/// Expired linger records dropped per loop iteration at most (expiry is amortised).
const LINGER_EXPIRE_BATCH: usize = 256;

/// Settings of the dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// The redirector.
    pub redirector: SocketAddr,
    /// The redirector's id: the only sender whose views and welcomes are taken.
    pub redirector_id: ReplicaId,
    /// Where the redirector and peers reach us (named in heartbeats).
    pub advertise: SocketAddrV4,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Endpoint tunables.
    pub endpoint: EndpointConfig,
    /// Most connections on this host at once.
    pub max_conns: u32,
    /// Send runs of datagrams to the redirector with UDP GSO.
    pub udp_gso: bool,
    /// Makes and checks SYN cookies (secret derived from the cluster key).
    pub cookies: CookieJar,
    /// The longest drain after SIGTERM before the loop ends anyway.
    pub drain_timeout: Duration,
}

/// A connection's TCP side: plain (redirect mode) or with the FT layer (ft mode).
enum Tcp {
    Plain(Box<PlainConn>),
    Ft(Box<FtConn>),
}

impl Tcp {
    fn ep(&mut self) -> &mut Endpoint {
        match self {
            Tcp::Plain(p) => p.endpoint(),
            Tcp::Ft(f) => f.endpoint(),
        }
    }

    fn ep_ref(&self) -> &Endpoint {
        match self {
            Tcp::Plain(p) => p.endpoint_ref(),
            Tcp::Ft(f) => f.endpoint_ref(),
        }
    }
}

/// Seconds of wall-clock time: SYN cookies are valid for a period of it, on every replica.
fn wall_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A connection that is over, reduced to what TCP still needs to answer its late segments.
/// Its endpoint, buffers and backend socket are gone.
enum Ending {
    /// Closed in order: the sequence numbers of its last ACK (client space), for the
    /// client's retransmitted FIN.
    Closed {
        /// Our next sequence number (after our FIN).
        snd_nxt: SeqNumber,
        /// The client's next sequence number (after its FIN).
        rcv_nxt: SeqNumber,
    },
    /// Reset (by either side, or for being idle): later data gets an RST, as from a Linux
    /// port with no socket (RFC 9293 §3.10.7.1), and never silence.
    Reset,
    /// This replica left an ft connection that lives on at other members (its backend
    /// failed, or it was handed on): its late segments are none of our business, and a
    /// cookie-valid one must not open it again here.
    Silent,
}

struct Linger {
    ending: Ending,
    until: Instant,
}

struct Conn {
    key: FlowKey,
    /// The epoch of the client packet that opened it here. A member back in the view since
    /// a later epoch (it was out, or restarted) was no member of it then, or left it since.
    opened: Epoch,
    tcp: Tcp,
    backend: Backend,
    /// Readiness of the backend socket, as the poller last reported it.
    readable: bool,
    writable: bool,
    deadline: Option<SInstant>,
    /// Output-agreement counts already added to the metrics.
    agreement_seen: (u64, u64),
    /// Handoffs and dropped members already added to the metrics.
    handoffs_seen: (u64, DropReasons),
    /// This host left the connection (ft), and the health checker was asked to look.
    retired_seen: bool,
    /// The service is in total order: client bytes reach the backend only as granted.
    total: bool,
    /// Client bytes the sequencer granted and the backend has not taken yet.
    credit: usize,
    /// The furthest client byte (C) another member reported holding for this connection,
    /// its `rcv_nxt` without the client's FIN.
    peer_rcv: Option<SeqNumber>,
    /// Total order, at the primary, once this member left the connection: where in C its
    /// stamps end. It stamps the connection on for the members that still follow it, from
    /// their reports (its own stack is fed no more).
    order_pos: Option<SeqNumber>,
    /// This member left the connection while a backup: it skipped the connection's stamps
    /// since, and does not know where they end (it never stamps it).
    order_lost: bool,
    /// Bytes the backend has written back (the sequencer's sign of an answer).
    from_backend: u64,
    /// When a byte last moved either way (or the connection opened): for the idle timeout.
    last_active: Instant,
    /// When the last segment came from the client: for keep-alive.
    last_client_rx: Instant,
    /// Keep-alive probes sent since then.
    probes: u32,
}

/// The packet loop.
pub struct Dataplane {
    poll: Poll,
    udp: UdpSocket,
    cfg: DataplaneConfig,
    opener: Opener,
    sealer: Arc<Sealer>,
    shared: Arc<Shared>,
    flows: HashMap<FlowKey, usize>,
    conns: HashMap<usize, Conn>,
    /// Connections per service (for the caps).
    per_service: HashMap<SocketAddrV4, u32>,
    /// Connections that closed in order, by 4-tuple.
    lingering: HashMap<FlowKey, Linger>,
    /// The cookie SYN-ACKs sent whose handshake has not completed here, sent again after 1,
    /// 2 and 4 s (`ft_tcp::synack_retry`: a lost handshake ACK must not hang a connection
    /// whose server speaks first).
    synacks: SynAckRetry,
    /// The same, oldest first (every record lives `LINGER`), for amortised expiry.
    linger_queue: VecDeque<(Instant, FlowKey)>,
    /// Challenge ACKs left this second, and when the second began.
    challenges: (u32, Instant),
    next_id: usize,
    timers: BTreeSet<(SInstant, usize)>,
    start: Instant,
    seed: u64,
    out: Vec<Vec<u8>>,
    sealed: Vec<u8>,
    /// Datagrams to the redirector, sent in runs (UDP GSO) at the end of each loop iteration.
    to_authority: tunnel_io::Batcher,
    me: ReplicaId,
    /// The latest view of each ft service.
    views: HashMap<SocketAddrV4, ServiceView>,
    /// The newest epoch the redirector's client packets carried, per ft service: above the
    /// view's, the view we hold is behind (a newer one is on its way or was lost).
    heard_epochs: HashMap<SocketAddrV4, Epoch>,
    /// Progress reports waiting to be sent this loop iteration.
    progress_out: Vec<ProgressEntry>,
    /// Repair packets for peers: service, peer id, packet.
    repairs_out: Vec<(SocketAddrV4, u32, Vec<u8>)>,
    /// Digests of our output waiting to be sent this loop iteration.
    digests_out: Vec<DigestEntry>,
    /// Exclusion requests to the view authority, waiting to be sent this loop iteration.
    exclude_out: Vec<ExclusionEntry>,
    /// Acknowledgements of the authority's exclusion notices, likewise.
    excluded_acks: Vec<ExclusionEntry>,
    /// Total-order sequencers of the services in `--order total`.
    sequencers: HashMap<SocketAddrV4, Sequencer>,
    /// When the primary repeats its recent stamps next (the last datagram may be lost).
    order_resend_at: Instant,
    /// When the drain after SIGTERM began here (`drain.rs`).
    drain_began: Option<Instant>,
}

/// The last ACK of a connection that closed in order (our next sequence number, the
/// client's next), for its FIN when it comes again.
fn last_ack(key: FlowKey, snd_nxt: SeqNumber, rcv_nxt: SeqNumber) -> Vec<u8> {
    rewrite::build(key.service, key.client, snd_nxt, rcv_nxt, 0, &[], false)
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
        let me = sealer.sender();
        let sealer = Arc::new(sealer);
        let poll = Poll::new()?;
        let std_udp = std::net::UdpSocket::bind(cfg.listen)?;
        std_udp.set_nonblocking(true)?;
        // Heartbeats leave from their own thread through the same socket (same source
        // address, which the redirector hands to peers), so that a busy packet loop never
        // delays them into a false failure detection.
        // (A dup shares O_NONBLOCK with the packet loop's socket: it stays non-blocking; a
        // full send buffer loses one heartbeat, counted as a send error.)
        let hb_udp = std_udp.try_clone()?;
        {
            let (sealer, shared, cap) = (sealer.clone(), shared.clone(), cfg.heartbeat);
            let to = HeartbeatTo {
                addr: cfg.redirector,
                id: cfg.redirector_id,
                me: cfg.advertise,
            };
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || heartbeat_loop(&hb_udp, &sealer, &shared, to, cap))?;
        }
        let mut udp = UdpSocket::from_std(std_udp);
        resize_socket_buffers(&udp);
        // Runs of datagrams the redirector sends with GSO arrive as one buffer.
        if !tunnel_io::enable_gro(&udp) {
            tracing::info!("UDP GRO not available: datagrams are received one by one");
        }
        let udp_gso = cfg.udp_gso;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        // One loop per process: a second `set` would only keep the first waker.
        let _ = shared.waker.set(mio::Waker::new(poll.registry(), WAKE)?);
        Ok(Dataplane {
            drain_began: None,
            poll,
            udp,
            cfg,
            opener,
            sealer,
            shared,
            flows: HashMap::new(),
            conns: HashMap::new(),
            per_service: HashMap::new(),
            lingering: HashMap::new(),
            synacks: SynAckRetry::default(),
            linger_queue: VecDeque::new(),
            challenges: (CHALLENGE_ACKS_PER_SEC, Instant::now()),
            next_id: 1,
            timers: BTreeSet::new(),
            start: Instant::now(),
            seed,
            out: Vec::new(),
            sealed: Vec::new(),
            to_authority: tunnel_io::Batcher::new(udp_gso),
            me,
            views: HashMap::new(),
            heard_epochs: HashMap::new(),
            progress_out: Vec::new(),
            repairs_out: Vec::new(),
            digests_out: Vec::new(),
            exclude_out: Vec::new(),
            excluded_acks: Vec::new(),
            sequencers: HashMap::new(),
            order_resend_at: Instant::now(),
        })
    }

    fn stamp(&self, t: Instant) -> SInstant {
        SInstant::from_micros(t.saturating_duration_since(self.start).as_micros() as i64)
    }

    /// Runs forever (until an unrecoverable I/O error of the poller).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 65536];
        let mut next_snapshot = Instant::now();
        let mut next_reap = Instant::now();
        let mut dirty: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            let mut wake = next_snapshot.min(next_reap);
            if let Some((t, _)) = self.timers.first() {
                let t = self.start + Duration::from_micros(t.total_micros().max(0) as u64);
                wake = wake.min(t);
            }
            if let Some(t) = self.order_wake(now) {
                wake = wake.min(t);
            }
            if let Some(t) = self.synacks.wake_at() {
                wake = wake.min(t);
            }
            if self.drain_began.is_some() {
                wake = wake.min(now + DRAIN_TICK);
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
                if ev.token() == WAKE {
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
            for id in self.run_order() {
                self.service(id, snow);
            }
            // The connections' packets first: progress reports to the members below cost a
            // system call each, and a reply to the client should not wait for them.
            self.flush_tunnel();
            self.flush_progress();
            self.expire_lingers(now);
            self.resend_synacks(now);
            if now >= next_reap {
                self.reap_idle(now, snow);
                next_reap = now + REAP_EVERY;
            }
            if now >= next_snapshot {
                self.snapshot();
                next_snapshot = now + SNAPSHOT_EVERY;
            }
            if self.shared.is_draining() && self.drain(now, snow) {
                self.flush_tunnel();
                self.flush_progress();
                return Ok(());
            }
            self.flush_tunnel();
        }
    }

    /// Delivers one client packet; returns the connection it touched.
    /// A client packet the redirector sent under view `epoch`.
    fn on_client_packet(&mut self, packet: &[u8], epoch: Epoch) -> Option<usize> {
        let m = &self.shared.metrics;
        // Checked before anything acts on it: a damaged ACK must not move the FT layer's
        // client_ack, damaged bytes must not enter the repair log.
        let meta = match TcpMeta::parse_checked(packet) {
            Ok(meta) => meta,
            Err(PacketError::Checksum) => {
                m.packets_bad_checksum.inc();
                tracing::trace!("client packet with a bad checksum dropped");
                return None;
            }
            Err(_) => {
                m.packets_not_tcp.inc();
                return None;
            }
        };
        let key = meta.inbound_flow();
        let mut existing = self.flows.get(&key).copied();
        // A linger record never stands beside a live connection of its 4-tuple: look for one
        // only when there is none (not on every packet of an open connection).
        if existing.is_none() && self.lingering.contains_key(&key) && !self.on_lingering(key, &meta)
        {
            return None;
        }
        let wall = Instant::now();
        let now = self.stamp(wall);
        if let Some(id) = existing {
            let state = self.conns.get(&id).map(|c| c.tcp.ep_ref().state());
            if meta.is_syn() && matches!(state, Some(TcpState::TimeWait | TcpState::Closed)) {
                // A new SYN on a 4-tuple whose old connection is over: the client reused the
                // port.
                self.remove(id);
                existing = None;
            } else if meta.is_syn() && self.is_retired(id) {
                // A new SYN on the 4-tuple of a connection this member left: it never speaks
                // for that one again, and the client's FIN or RST that would have ended it
                // here may never come (we were out of the view when the client closed). Kept,
                // it swallowed the SYN (a member that left has no challenge ACK to send): when
                // this member was the view's primary, nobody answered, and the client's
                // connect timed out (the soak, seed 961789355045568426, 12 s after a
                // partition). A forged SYN costs nothing here: we left that connection.
                tracing::debug!(client = %key.client, "SYN on the 4-tuple of a connection this member left: it goes, the SYN is a new connection");
                self.shared.metrics.conns_superseded.inc();
                self.remove(id);
                existing = None;
            } else if self.completes_a_newer_handshake(id, key, &meta) {
                // The client reused the 4-tuple of a connection we still hold: another member
                // already reset it (replicas reap idle connections in their own order), the
                // client's port was free again, and this segment completes a handshake with
                // our SYN cookie. The old connection is over for the client; ours was left
                // behind. Without this a backup fed the new connection's segments to the old
                // one and reported the old one's progress under the same 4-tuple: the new
                // connection stalled at the primary's gate.
                tracing::debug!(client = %key.client, "4-tuple reused by a new connection: the old one was left behind here");
                self.shared.metrics.conns_superseded.inc();
                self.remove(id);
                existing = None;
            }
        }
        let id = match existing {
            Some(id) => id,
            None if meta.is_syn() => {
                self.on_syn(key, packet);
                return None;
            }
            None => self.on_handshake_ack(key, &meta, now, epoch)?,
        };
        if (meta.flags.rst || meta.is_syn()) && !self.screen_rst_syn(id, &meta) {
            return None;
        }
        let c = self.conns.get_mut(&id)?;
        if meta.payload_len > 0 || meta.flags.fin {
            c.last_active = wall;
        }
        c.last_client_rx = wall;
        c.probes = 0;
        self.out.clear();
        match &mut c.tcp {
            Tcp::Plain(ep) => ep.handle_packet(now, packet, &mut self.out),
            Tcp::Ft(f) => f.handle_client_packet(now, packet),
        }
        self.flush_out(key.service);
        Some(id)
    }

    /// A segment for a connection that is over. Closed in order: a retransmitted FIN (or
    /// data) gets the last ACK again. Reset: anything but an RST gets an RST. In ft mode only
    /// the primary answers. An RST or a new SYN ends the record. Returns whether the segment
    /// goes on as one of no known connection (a SYN).
    fn on_lingering(&mut self, key: FlowKey, meta: &TcpMeta) -> bool {
        if meta.flags.rst || meta.is_syn() {
            self.lingering.remove(&key);
            return meta.is_syn();
        }
        let speaks = self
            .members_of(key.service)
            .is_none_or(|m| m.first() == Some(&self.me.0));
        let m = &self.shared.metrics;
        let reply = match self.lingering.get(&key).map(|l| &l.ending) {
            _ if !speaks => None,
            Some(Ending::Closed { snd_nxt, rcv_nxt }) if meta.flags.fin || meta.payload_len > 0 => {
                m.linger_acks.inc();
                Some(last_ack(key, *snd_nxt, *rcv_nxt))
            }
            Some(Ending::Reset) => {
                m.linger_resets.inc();
                meta.reset_reply()
            }
            Some(Ending::Silent) => None,
            _ => None,
        };
        if let Some(p) = reply {
            self.send_to_client(key.service, &p);
        }
        false
    }

    /// Remembers a connection that is over by what its late segments need. One that closed
    /// in order sends its last ACK at once if the client has not had it (the FT gate held
    /// it back).
    fn linger(&mut self, key: FlowKey, ending: Ending, told: bool) {
        let until = Instant::now() + LINGER;
        if let (false, Ending::Closed { snd_nxt, rcv_nxt }) = (told, &ending) {
            self.send_to_client(key.service, &last_ack(key, *snd_nxt, *rcv_nxt));
            self.shared.metrics.linger_acks.inc();
        }
        self.lingering.insert(key, Linger { ending, until });
        self.linger_queue.push_back((until, key));
    }

    /// Forgets linger records whose time is up, a bounded number per call.
    fn expire_lingers(&mut self, now: Instant) {
        for _ in 0..LINGER_EXPIRE_BATCH {
            match self.linger_queue.front() {
                Some(&(t, key)) if t <= now => {
                    self.linger_queue.pop_front();
                    // A record replaced since (the 4-tuple closed again) lives on.
                    if self.lingering.get(&key).is_some_and(|l| l.until <= now) {
                        self.lingering.remove(&key);
                    }
                }
                _ => break,
            }
        }
    }

    /// RFC 5961 for an RST or a SYN on an open connection: only an RST at exactly the next
    /// expected sequence number reaches the stack; one elsewhere in the window, and any
    /// SYN, gets a challenge ACK (from the primary only, at most CHALLENGE_ACKS_PER_SEC per
    /// second); the rest is dropped. Returns whether the segment goes on to the stack.
    fn screen_rst_syn(&mut self, id: usize, meta: &TcpMeta) -> bool {
        use ft_tcp::rfc5961::{screen_rst, Screen};
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let (window, challenge) = match &c.tcp {
            Tcp::Plain(p) => (p.rst_window(), p.challenge_ack()),
            Tcp::Ft(f) => (f.rst_window(), f.challenge_ack()),
        };
        let verdict = match (meta.flags.rst, window) {
            (true, Some((exact, edge))) => screen_rst(SeqNumber(meta.seq), &exact, edge),
            // Nothing sent yet: nothing an attacker could aim at either.
            (true, None) => Screen::Accept,
            (false, _) => Screen::Challenge,
        };
        match verdict {
            Screen::Accept => return true,
            Screen::Drop => {}
            Screen::Challenge => {
                let now = Instant::now();
                if now.duration_since(self.challenges.1) >= Duration::from_secs(1) {
                    self.challenges = (CHALLENGE_ACKS_PER_SEC, now);
                }
                if let (Some(p), true) = (challenge, self.challenges.0 > 0) {
                    self.challenges.0 -= 1;
                    self.send_to_client(c.key.service, &p);
                    self.shared.metrics.challenge_acks.inc();
                }
            }
        }
        self.shared.metrics.rst_syn_dropped.inc();
        false
    }

    /// A client's SYN: answered with a SYN cookie and forgotten (nothing is kept or connected
    /// before the handshake completes). In ft mode only the view's first member answers; the
    /// others build the connection from the client's ACK like it.
    fn on_syn(&mut self, key: FlowKey, packet: &[u8]) {
        let m = &self.shared.metrics;
        let Some(seg) = rewrite::parse(packet) else {
            m.packets_not_tcp.inc();
            return;
        };
        let opt = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services.serving(key.service).map(|p| (p.mode, p.max_conns))
        };
        let Some((mode, max)) = opt else {
            m.packets_no_service.inc();
            tracing::debug!(service = %key.service, "SYN for a service not served here");
            return;
        };
        if mode == Mode::Ft {
            match self.views.get(&key.service) {
                None => {
                    // No view yet: the redirector does not count this host as a member.
                    m.ft.ft_unknown_flow.inc();
                    return;
                }
                Some(v) if v.members.first().map(|x| x.id) != Some(self.me) => return,
                Some(_) => {}
            }
        }
        if !self.has_room(key.service, max, false) {
            return;
        }
        let opts = SynOpts::of_syn(&seg);
        let isn = self.cfg.cookies.isn(key, seg.seq, opts, wall_secs());
        let ep = self.cfg.endpoint;
        let synack = syncookie::synack(key, seg.seq, isn, opts, ep.mtu, ep.rx_buffer);
        self.send_to_client(key.service, &synack);
        if !self.synacks.sent(key, synack, Instant::now()) {
            self.shared.metrics.synacks_unkept.inc();
        }
        self.shared.metrics.syn_cookies_sent.inc();
    }

    /// Sends again the cookie SYN-ACKs whose handshake is still open here: the client, if it
    /// took the first one and its ACK was lost, answers with that ACK again, which opens the
    /// connection. Only while this host still answers the service's SYNs (in ft mode, its
    /// view's primary) and holds no connection of the 4-tuple.
    fn resend_synacks(&mut self, now: Instant) {
        for (key, synack) in self.synacks.due(now) {
            if self.flows.contains_key(&key) {
                continue;
            }
            let answers = match self.views.get(&key.service) {
                Some(v) => v.members.first().map(|m| m.id) == Some(self.me),
                None => {
                    // INVARIANT: no code panics while holding the lock.
                    let services = self.shared.services.lock().expect("services lock");
                    services
                        .serving(key.service)
                        .is_some_and(|p| p.mode != Mode::Ft)
                }
            };
            if answers {
                tracing::trace!(client = %key.client, "handshake not completed: SYN-ACK sent again");
                self.send_to_client(key.service, &synack);
                self.shared.metrics.synacks_resent.inc();
            }
        }
    }

    /// Whether connection `id` is one this member left (ft): it never speaks for it again.
    fn is_retired(&self, id: usize) -> bool {
        self.conns
            .get(&id)
            .is_some_and(|c| matches!(&c.tcp, Tcp::Ft(f) if f.is_retired()))
    }

    /// Whether `meta`, for the 4-tuple of connection `id`, lies far outside that connection's
    /// receive window and is the handshake ACK of a SYN cookie of ours (the BLAKE3 check runs
    /// only for such strays).
    fn completes_a_newer_handshake(&self, id: usize, key: FlowKey, meta: &TcpMeta) -> bool {
        if meta.is_syn() || meta.flags.rst || !meta.flags.ack {
            return false;
        }
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        let window = match &c.tcp {
            Tcp::Plain(p) => p.rst_window(),
            Tcp::Ft(f) => f.rst_window(),
        };
        let Some((exact, edge)) = window else {
            return false;
        };
        // A segment of the old connection is within a window of its expected bytes (1 MiB
        // of slack for old duplicates); a new connection's ISN is random.
        let seq = SeqNumber(meta.seq);
        const SLACK: u32 = 1 << 20;
        let near = exact
            .iter()
            .any(|e| e.minus(SLACK).le(seq) && seq.lt(edge.plus(SLACK)));
        if near {
            return false;
        }
        let client_isn = SeqNumber(meta.seq.wrapping_sub(1));
        let isn_s = SeqNumber(meta.ack.wrapping_sub(1));
        self.cfg
            .cookies
            .check(key, client_isn, isn_s, wall_secs())
            .is_some()
    }

    /// A non-SYN segment of no known connection: the handshake ACK of a SYN this service
    /// answered (the cookie checks), or a stray.
    fn on_handshake_ack(
        &mut self,
        key: FlowKey,
        meta: &TcpMeta,
        now: SInstant,
        epoch: Epoch,
    ) -> Option<usize> {
        let cookie = (meta.flags.ack && !meta.flags.rst).then(|| {
            let client_isn = SeqNumber(meta.seq.wrapping_sub(1));
            let isn_s = SeqNumber(meta.ack.wrapping_sub(1));
            let opts = self
                .cfg
                .cookies
                .check(key, client_isn, isn_s, wall_secs())?;
            Some((syncookie::rebuild_syn(key, client_isn, opts), isn_s))
        });
        if let Some(Some((syn, isn_s))) = cookie {
            return self.open(key, now, &syn, isn_s, epoch);
        }
        if self.views.contains_key(&key.service) {
            // ft: another replica may hold it; never reset a connection we lack.
            self.shared.metrics.ft.ft_unknown_flow.inc();
            return None;
        }
        self.shared.metrics.packets_unknown_flow.inc();
        if let Some(rst) = meta.reset_reply() {
            self.send_to_client(key.service, &rst);
        }
        None
    }

    /// Whether one more connection of `service` fits under the host's and the service's caps
    /// (counted when not). A backup (`slack`) takes a few more than the primary allows: it
    /// may still hold connections the primary has already forgotten, and it must not miss
    /// one the primary accepted.
    fn has_room(&self, service: SocketAddrV4, max: Option<u32>, slack: bool) -> bool {
        let extra = |cap: u32| if slack { cap + (cap / 8).max(16) } else { cap };
        let m = &self.shared.metrics;
        if self.conns.len() >= extra(self.cfg.max_conns) as usize {
            m.syn_dropped_host_cap.inc();
            tracing::debug!(%service, cap = self.cfg.max_conns, "host at max_conns: new connection refused");
            return false;
        }
        let n = self.per_service.get(&service).copied().unwrap_or(0);
        if max.is_some_and(|cap| n >= extra(cap)) {
            m.syn_dropped_service_cap.inc();
            tracing::debug!(%service, cap = ?max, "service at max_conns: new connection refused");
            return false;
        }
        true
    }

    /// Builds a connection whose client completed the handshake against the cookie `isn_s`
    /// (`syn` is its SYN, rebuilt from the cookie), and connects to the backend: the first
    /// moment anything is spent on it.
    fn open(
        &mut self,
        key: FlowKey,
        now: SInstant,
        syn: &[u8],
        isn_s: SeqNumber,
        epoch: Epoch,
    ) -> Option<usize> {
        let opt = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services
                .serving(key.service)
                .map(|p| (p.backend, p.mode, p.ft, p.max_conns))
        };
        let Some((Some(backend), mode, ft_opts, max)) = opt else {
            self.shared.metrics.packets_no_service.inc();
            tracing::debug!(service = %key.service, "handshake for a service not served here");
            return None;
        };
        let primary = self
            .members_of(key.service)
            .is_none_or(|m| m.first() == Some(&self.me.0));
        if !self.has_room(key.service, max, !primary) {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        let seed = self.seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let tcp = if mode == Mode::Ft {
            let (Some(members), Some(view_epoch)) = (
                self.members_of(key.service),
                self.views.get(&key.service).map(|v| v.epoch),
            ) else {
                // No view yet: the redirector does not count this host as a member.
                self.shared.metrics.ft.ft_unknown_flow.inc();
                return None;
            };
            let ft_cfg = FtConfig {
                repair: ft_opts.repair,
                stall_after: SDuration::from_millis(u64::from(ft_opts.stall_ms)),
                ..FtConfig::default()
            };
            let mut f = FtConn::accept(
                key,
                ft_cfg,
                self.cfg.endpoint,
                seed,
                now,
                self.me.0,
                &members,
                syn,
                isn_s,
            );
            f.set_view_stale(view_epoch < epoch);
            Tcp::Ft(Box::new(f))
        } else {
            let Some(p) = PlainConn::accept(key, self.cfg.endpoint, seed, now, syn, isn_s) else {
                tracing::warn!(client = %key.client, "local stack did not answer a rebuilt SYN");
                return None;
            };
            Tcp::Plain(Box::new(p))
        };
        self.shared.metrics.syn_cookies_accepted.inc();
        self.synacks.opened(key);
        let mut conn = Conn {
            key,
            opened: epoch,
            tcp,
            backend: Backend::Aborted,
            readable: false,
            writable: false,
            deadline: None,
            agreement_seen: (0, 0),
            handoffs_seen: (0, DropReasons::default()),
            retired_seen: false,
            total: mode == Mode::Ft && ft_opts.total_order,
            credit: 0,
            peer_rcv: None,
            order_pos: None,
            order_lost: false,
            from_backend: 0,
            last_active: Instant::now(),
            last_client_rx: Instant::now(),
            probes: 0,
        };
        if conn.total {
            self.sequencers
                .entry(key.service)
                .or_insert_with(|| sequencer_for(&ft_opts));
        }
        let connect_began = Instant::now();
        match TcpStream::connect(SocketAddr::V4(backend)) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(id),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    tracing::warn!(error = %e, "cannot register backend socket");
                    self.shared.metrics.backend_connect_failures.inc();
                } else {
                    conn.backend = Backend::Connecting(s, connect_began);
                }
            }
            Err(e) => {
                // Stays Aborted: the first service() resets the client.
                tracing::warn!(%backend, error = %e, "backend connect failed");
                self.shared.metrics.backend_connect_failures.inc();
            }
        }
        tracing::debug!(client = %key.client, service = %key.service, %backend, "connection opened");
        self.shared.metrics.conns_total.inc();
        self.shared.metrics.conns_active.add(1);
        *self.per_service.entry(key.service).or_insert(0) += 1;
        self.flows.insert(key, id);
        self.conns.insert(id, conn);
        Some(id)
    }

    fn remove(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            if let Some(d) = c.deadline {
                self.timers.remove(&(d, id));
            }
            if let Some(mut s) = c.backend.end(Backend::Aborted) {
                let _ = self.poll.registry().deregister(&mut s);
            }
            self.flows.remove(&c.key);
            if let Some(n) = self.per_service.get_mut(&c.key.service) {
                *n = n.saturating_sub(1);
            }
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
        let (abort_client, drop_backend_hard) =
            bridge(c, &mut self.sequencers, &self.shared.metrics);
        let mut backend_failed = false;
        match &mut c.tcp {
            // ft: a failed backend is a failed member for this connection, not the end of
            // the client's connection: the other members' backends carry on (issue #14).
            Tcp::Ft(f) if abort_client => {
                if !f.is_retired() {
                    backend_failed = true;
                }
                f.on_backend_failed(now);
            }
            tcp if abort_client => tcp.ep().abort(),
            _ => {}
        }
        if abort_client || drop_backend_hard {
            reset_backend(self.poll.registry(), &mut c.backend);
        }
        if let Tcp::Ft(f) = &mut c.tcp {
            if f.is_retired() && !matches!(c.backend, Backend::Aborted | Backend::Finished) {
                reset_backend(self.poll.registry(), &mut c.backend);
            }
            if f.wants_abort() && f.state() != TcpState::Closed {
                // Every member's backend reset: so is the client's connection.
                f.abort();
            }
        }
        self.out.clear();
        match &mut c.tcp {
            Tcp::Plain(ep) => ep.poll(now, &mut self.out),
            Tcp::Ft(f) => {
                f.poll(now);
                self.out.extend(f.take_to_client());
                if let Some(p) = f.take_progress(now) {
                    self.progress_out.push(ProgressEntry {
                        client: c.key.client,
                        service: c.key.service,
                        isn_local: p.isn_local.0,
                        isn_s: p.isn_s.map(|s| s.0),
                        rcv_nxt: p.rcv_nxt.0,
                        client_fin: p.client_fin,
                        edge: p.edge.0,
                        hole_end: p.hole_end.0,
                        out: p.out.map(|o| o.0),
                        end: match p.end {
                            OutputEnd::Open => ack_channel::OutputEnd::Open,
                            OutputEnd::Fin => ack_channel::OutputEnd::Fin,
                            OutputEnd::Reset => ack_channel::OutputEnd::Reset,
                        },
                    });
                }
                let exclude = f.take_exclusion_requests(now);
                if !exclude.is_empty() {
                    self.exclude_out.push(ExclusionEntry {
                        client: c.key.client,
                        service: c.key.service,
                        members: exclude,
                    });
                }
                let seen = (f.stats.handoffs, f.stats.dropped);
                let ft = &self.shared.metrics.ft;
                ft.handoffs.add(seen.0.saturating_sub(c.handoffs_seen.0));
                let (now_d, was) = (seen.1, c.handoffs_seen.1);
                ft.dropped_ended.add(now_d.ended.saturating_sub(was.ended));
                ft.dropped_stalled
                    .add(now_d.stalled.saturating_sub(was.stalled));
                ft.dropped_differs
                    .add(now_d.differs.saturating_sub(was.differs));
                ft.dropped_silent
                    .add(now_d.silent.saturating_sub(was.silent));
                if seen.0 > c.handoffs_seen.0 {
                    tracing::warn!(client = %c.key.client, service = %c.key.service, "this host's backend ended early, reset or stalls: connection handed to the next member");
                }
                c.handoffs_seen = seen;
                if f.is_retired() && !c.retired_seen {
                    // Our backend failed this connection (ended early, reset, stalled): is
                    // it down? A refused probe takes the host out of the view at once.
                    c.retired_seen = true;
                    backend_failed = true;
                    if c.total {
                        self.shared.metrics.ft.order.left.inc();
                    }
                }
                for (to, pkt) in f.take_repairs() {
                    self.repairs_out.push((c.key.service, to, pkt));
                }
                for d in f.take_digests() {
                    self.digests_out.push(digest_entry(c.key, d));
                }
                note_agreement(&mut c.agreement_seen, f, &self.shared.metrics.ft);
            }
        }
        let state = c.tcp.ep_ref().state();
        if matches!(
            c.backend,
            Backend::Open {
                eof: true,
                fin_sent: true,
                ..
            }
        ) {
            // Both directions closed in order: the backend socket is no longer needed.
            if let Some(mut s) = c.backend.end(Backend::Finished) {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        let (service, key) = (c.key.service, c.key);
        // Closed in order both ways: keep only the sequence numbers of the last ACK.
        let close = match &c.tcp {
            Tcp::Plain(p) => p.close_point().map(|(s, r)| (s, r, true)),
            Tcp::Ft(f) => f.close_point(),
        }
        .filter(|_| {
            matches!(c.backend, Backend::Finished)
                && matches!(state, TcpState::TimeWait | TcpState::Closed)
        });
        let retired = matches!(&c.tcp, Tcp::Ft(f) if f.is_retired());
        let retired_done = matches!(&c.tcp, Tcp::Ft(f) if f.is_retired() && f.client_done());
        let finished = state == TcpState::Closed || close.is_some() || retired_done;
        let next = if finished {
            None
        } else {
            match &mut c.tcp {
                Tcp::Plain(ep) => ep.poll_at(now),
                Tcp::Ft(f) => f.poll_at(now),
            }
        };
        let old = c.deadline;
        c.deadline = next;
        if let Some(d) = old {
            self.timers.remove(&(d, id));
        }
        if let Some(d) = next {
            self.timers.insert((d, id));
        }
        self.flush_out(service);
        self.flush_repairs();
        if backend_failed {
            self.backend_failed(service);
        }
        if finished {
            self.remove(id);
            match close {
                _ if retired => self.linger(key, Ending::Silent, true),
                Some((snd_nxt, rcv_nxt, told)) => {
                    self.linger(key, Ending::Closed { snd_nxt, rcv_nxt }, told)
                }
                None => self.linger(key, Ending::Reset, true),
            }
        }
    }

    /// A connection's backend was refused or reset: if the backend no longer accepts
    /// connections, the service is withdrawn now rather than at the next health check, so
    /// the redirector takes this host out of the view (issue #14).
    fn backend_failed(&mut self, service: SocketAddrV4) {
        self.shared.poke_health(service);
    }

    /// Resets connections idle for longer than their service's idle timeout (an abandoned
    /// client, gone without FIN or RST, would otherwise hold its buffers and backend
    /// connection forever), and probes silent clients with TCP keep-alives where the
    /// service asks for them, resetting after KEEPALIVE_PROBES unanswered ones. Runs every
    /// REAP_EVERY, at most REAP_BATCH resets each time. Every replica counts probes alike
    /// (they all see the client's answers), so they reset together; only the primary sends.
    fn reap_idle(&mut self, now: Instant, snow: SInstant) {
        let limits: HashMap<SocketAddrV4, (u32, u32)> = {
            // INVARIANT: no code panics while holding the lock.
            let services = self.shared.services.lock().expect("services lock");
            services
                .ports()
                .map(|(a, p)| (a, (p.idle_timeout_s, p.keepalive_s)))
                .collect()
        };
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let mut reset = Vec::new();
        let mut probe = Vec::new();
        for (id, c) in &self.conns {
            let Some(&(idle, keepalive)) = limits.get(&c.key.service) else {
                continue;
            };
            if reset.len() >= REAP_BATCH {
                break;
            }
            if idle > 0 && now.duration_since(c.last_active) >= secs(idle) {
                reset.push((*id, false));
                continue;
            }
            if keepalive == 0 {
                continue;
            }
            let every = secs((keepalive / 3).max(1));
            let due = secs(keepalive) + every * c.probes;
            if now.duration_since(c.last_client_rx) < due {
                continue;
            }
            if c.probes >= KEEPALIVE_PROBES {
                reset.push((*id, true));
            } else {
                probe.push(*id);
            }
        }
        for id in probe {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.probes += 1;
            let p = match &c.tcp {
                Tcp::Plain(p) => p.keepalive_probe(),
                Tcp::Ft(f) => f.keepalive_probe(),
            };
            if let Some(p) = p {
                let service = c.key.service;
                self.send_to_client(service, &p);
                self.shared.metrics.keepalive_probes.inc();
            }
        }
        for (id, by_keepalive) in reset {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if by_keepalive {
                tracing::debug!(client = %c.key.client, service = %c.key.service, "keep-alive unanswered: resetting the connection");
                self.shared.metrics.keepalive_resets.inc();
            } else {
                tracing::debug!(client = %c.key.client, service = %c.key.service, "idle timeout: resetting the connection");
                self.shared.metrics.idle_timeouts.inc();
            }
            match &mut c.tcp {
                Tcp::Ft(f) => f.abort(),
                Tcp::Plain(p) => p.endpoint().abort(),
            }
            reset_backend(self.poll.registry(), &mut c.backend);
            self.service(id, snow);
        }
    }
}
