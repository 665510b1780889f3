//! The redirector's threads: TUN to tunnel, tunnel to TUN, and housekeeping.
//!
//! The two packet threads run on both cores at once; they share the [`Table`] behind a mutex
//! held only for the routing decision.

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

/// Counters the admin API exposes at `/metrics`.
#[derive(Debug, Default)]
pub struct RedirMetrics {
    /// Packets read from the TUN.
    pub tun_in: Counter,
    /// Packets written to the TUN (before coalescing).
    pub tun_out: Counter,
    /// TUN reads (one may carry a client's TCP super-segment with offload).
    pub tun_reads: Counter,
    /// TUN reads that failed (a malformed super-segment, or the device).
    pub tun_read_errors: Counter,
    /// Client packets that are not IPv4/TCP.
    pub not_tcp: Counter,
    /// Client packets for a service no host offers.
    pub no_service: Counter,
    /// Client packets for a service whose hosts are all dead.
    pub no_live_host: Counter,
    /// Datagrams received.
    pub datagrams_in: Counter,
    /// System calls that received datagrams (one per run with UDP GRO).
    pub recv_calls: Counter,
    /// Datagrams dropped: malformed.
    pub dropped_malformed: Counter,
    /// Datagrams dropped: bad MAC.
    pub dropped_bad_mac: Counter,
    /// Datagrams dropped: replay.
    pub dropped_replay: Counter,
    /// Datagrams dropped: sealed for another node.
    pub dropped_misaddressed: Counter,
    /// Datagrams dropped: for an earlier life of ours, or from an earlier life of a host.
    pub dropped_stale: Counter,
    /// Welcomes sent: answers to heartbeats that did not name our current life.
    pub welcomes_sent: Counter,
    /// Exclusion notices sent to hosts (who speaks for a connection).
    pub exclusion_notices: Counter,
    /// Datagrams of a type the redirector does not take.
    pub dropped_unexpected: Counter,
    /// Heartbeats whose payload did not parse.
    pub dropped_bad_heartbeat: Counter,
    /// Server packets from a host that does not own the connection (fencing).
    pub fenced: Counter,
    /// Server packets that are not IPv4/TCP.
    pub bad_server_packet: Counter,
    /// Datagrams sent to hosts.
    pub datagrams_out: Counter,
    /// System calls that sent datagrams (one per run with UDP GSO).
    pub send_calls: Counter,
    /// Sends or TUN writes the kernel refused.
    pub send_errors: Counter,
    /// Packets passed to clients, per sending host (who actually spoke).
    pub to_client_by_host: Mutex<std::collections::BTreeMap<u32, u64>>,
    /// Detector rounds put off because heartbeats may wait unread in the receive queue.
    pub detector_deferred: Counter,
}

impl RedirMetrics {
    /// Counts one datagram sent with its own system call; returns whether it left.
    fn sent_one(&self, r: std::io::Result<usize>) -> bool {
        self.send_calls.inc();
        match r {
            Ok(_) => {
                self.datagrams_out.inc();
                true
            }
            Err(_) => {
                self.send_errors.inc();
                false
            }
        }
    }

    /// Counts a datagram the opener refused.
    fn on_drop(&self, reason: DropReason) {
        match reason {
            DropReason::Malformed(_) => self.dropped_malformed.inc(),
            DropReason::BadMac => self.dropped_bad_mac.inc(),
            DropReason::Replay => self.dropped_replay.inc(),
            DropReason::Misaddressed => self.dropped_misaddressed.inc(),
            DropReason::Stale => self.dropped_stale.inc(),
        }
    }

    /// Prometheus text (plus table gauges).
    pub fn render(&self, table: &Table, now: Instant) -> String {
        let mut e = Exposition::default();
        e.build_info(
            "hydra-redirector",
            env!("CARGO_PKG_VERSION"),
            ack_channel::wire::VERSION,
        );
        let c = "counter";
        e.sample(
            "hydra_tun_packets_total",
            c,
            "Packets through the TUN device, by direction",
            "dir=\"in\"",
            self.tun_in.get(),
        );
        e.sample(
            "hydra_tun_packets_total",
            c,
            "Packets through the TUN device, by direction",
            "dir=\"out\"",
            self.tun_out.get(),
        );
        e.sample(
            "hydra_datagrams_received_total",
            c,
            "UDP datagrams received",
            "",
            self.datagrams_in.get(),
        );
        e.sample(
            "hydra_tun_reads_total",
            c,
            "TUN reads (with offload one read may carry a client's TCP super-segment, cut here into segments)",
            "",
            self.tun_reads.get(),
        );
        e.sample(
            "hydra_tun_read_errors_total",
            c,
            "TUN reads that failed: a malformed super-segment or a device error",
            "",
            self.tun_read_errors.get(),
        );
        e.sample(
            "hydra_send_calls_total",
            c,
            "System calls that sent datagrams to hosts (one per run of datagrams with UDP GSO)",
            "",
            self.send_calls.get(),
        );
        e.sample(
            "hydra_recv_calls_total",
            c,
            "System calls that received datagrams from hosts (one per run of datagrams with UDP GRO)",
            "",
            self.recv_calls.get(),
        );
        e.sample(
            "hydra_datagrams_sent_total",
            c,
            "UDP datagrams sent",
            "",
            self.datagrams_out.get(),
        );
        for (reason, v) in [
            ("malformed", &self.dropped_malformed),
            ("bad_mac", &self.dropped_bad_mac),
            ("replay", &self.dropped_replay),
            ("misaddressed", &self.dropped_misaddressed),
            ("stale", &self.dropped_stale),
            ("unexpected_type", &self.dropped_unexpected),
            ("bad_heartbeat", &self.dropped_bad_heartbeat),
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
            ("not_tcp", &self.not_tcp),
            ("no_service", &self.no_service),
            ("no_live_host", &self.no_live_host),
            ("fenced", &self.fenced),
            ("bad_server_packet", &self.bad_server_packet),
        ] {
            e.sample(
                "hydra_packets_dropped_total",
                c,
                "Packets not forwarded, by reason",
                &format!("reason=\"{reason}\""),
                v.get(),
            );
        }
        e.sample(
            "hydra_send_errors_total",
            c,
            "Sends or TUN writes the kernel refused",
            "",
            self.send_errors.get(),
        );
        e.sample(
            "hydra_redirector_detector_deferred_total",
            c,
            "Detector rounds (2 ms) put off because datagrams waited unread (heartbeats may be among them)",
            "",
            self.detector_deferred.get(),
        );
        e.sample(
            "hydra_redirector_welcomes_sent_total",
            c,
            "Welcomes sent: answers to heartbeats that did not name this life of the redirector (a host or the redirector just started)",
            "",
            self.welcomes_sent.get(),
        );
        let live = table
            .hosts()
            .filter(|(id, _)| table.host_live(now, *id))
            .count();
        e.sample(
            "hydra_hosts_live",
            "gauge",
            "Host servers whose heartbeats are current",
            "",
            live as u64,
        );
        e.sample(
            "hydra_connections_pinned",
            "gauge",
            "Connections in the redirection table",
            "",
            table.flow_count() as u64,
        );
        // The flow table's bound and what it did under pressure (flows.rs).
        let g = "gauge";
        for (phase, n) in table.flows_by_phase().labelled() {
            e.sample(
                "hydra_redirector_flows",
                g,
                "Connections in the redirection table, by phase",
                &format!("phase=\"{phase}\""),
                n,
            );
        }
        e.sample(
            "hydra_redirector_flows_max",
            g,
            "The most connections the redirection table holds (max_flows)",
            "",
            table.max_flows() as u64,
        );
        let st = table.flow_stats();
        e.sample(
            "hydra_redirector_flows_pinned_total",
            c,
            "Connections pinned to a host (a client SYN, or host data with no entry)",
            "",
            st.pinned,
        );
        for (phase, n) in st.expired.labelled() {
            e.sample(
                "hydra_redirector_flow_expirations_total",
                c,
                "Entries forgotten after their phase's idle time, by phase",
                &format!("phase=\"{phase}\""),
                n,
            );
        }
        for (phase, n) in st.evicted.labelled() {
            if phase == "open" {
                continue; // never evicted
            }
            e.sample(
                "hydra_redirector_flow_evictions_total",
                c,
                "Entries removed early to make room in a full table, by phase",
                &format!("phase=\"{phase}\""),
                n,
            );
        }
        for (packet, n) in [
            ("syn", st.unpinned_syns),
            ("host_reply", st.unpinned_replies),
        ] {
            e.sample(
                "hydra_redirector_flows_unpinned_total",
                c,
                "Connections routed by hash without an entry: the table was full of open connections",
                &format!("packet=\"{packet}\""),
                n,
            );
        }
        e.sample(
            "hydra_redirector_unknown_flow_packets_total",
            c,
            "Client packets other than a SYN for a connection not in the table, routed by hash",
            "",
            st.unknown_flow_packets,
        );
        let (records, sp) = table.speaker_stats();
        e.sample(
            "hydra_redirector_exclusion_records",
            "gauge",
            "Ft connections with members excluded (their speaker is not the view's primary)",
            "",
            records as u64,
        );
        e.sample(
            "hydra_redirector_exclusion_records_max",
            "gauge",
            "Most ft connections with exclusions at once; requests past it are refused",
            "",
            crate::table::MAX_EXCLUSION_RECORDS as u64,
        );
        for (outcome, n) in [
            ("excluded", sp.excluded),
            ("repeated", sp.repeated),
            ("refused_not_member", sp.refused_not_member),
            ("refused_not_speaker", sp.refused_not_speaker),
            ("refused_full", sp.refused_full),
        ] {
            e.sample(
                "hydra_redirector_exclusion_requests_total",
                c,
                "Requests to exclude a member from an ft connection, by outcome",
                &format!("outcome=\"{outcome}\""),
                n,
            );
        }
        e.sample(
            "hydra_redirector_exclusion_notices_total",
            c,
            "Exclusion notices sent to hosts (repeated until acknowledged)",
            "",
            self.exclusion_notices.get(),
        );
        e.sample(
            "hydra_redirector_exclusion_records_expired_total",
            c,
            "Exclusion records dropped after their connection was idle for 3 hours",
            "",
            sp.expired,
        );
        e.sample(
            "hydra_redirector_syn_on_open_record_total",
            c,
            "Client SYNs on the 4-tuple of a connection whose exclusion record is still in use \
             (kept until the client acknowledges the view primary's SYN-ACK: the SYN may be \
             forged)",
            "",
            sp.syn_on_open_record,
        );
        e.sample(
            "hydra_redirector_reused_ports_total",
            c,
            "Exclusion records that went because a client reused their 4-tuple: it acknowledged \
             the view primary's SYN-ACK to its new SYN",
            "",
            sp.reused_ports,
        );
        e.finish()
    }
}

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

/// Sends a service's current view to every host offering it in ft mode (members learn their
/// role; a host dropped from the view learns it is out).
fn broadcast_view(shared: &Shared, udp: &UdpSocket, service: std::net::SocketAddrV4) {
    let (epoch, view, dests) = {
        let t = lock(shared);
        let Some(v) = t.view(service) else { return };
        let members = v
            .members
            .iter()
            .filter_map(|m| {
                let h = t.host(*m)?;
                match h.addr {
                    SocketAddr::V4(addr) => Some(Member {
                        id: *m,
                        incarnation: h.incarnation,
                        since: v.since.get(m).copied().unwrap_or(v.epoch),
                        addr,
                    }),
                    SocketAddr::V6(_) => None,
                }
            })
            .collect();
        (v.epoch, View { members }, t.ft_hosts(service))
    };
    let payload = view.emit();
    let mut out = Vec::new();
    for (id, incarnation, addr) in dests {
        // One seal per host: a view names its receiver, in its current life.
        shared.sealer.seal_into(
            MsgType::View,
            ServiceId::from_addr(service),
            epoch,
            Receiver::node(id, incarnation),
            &payload,
            &mut out,
        );
        shared.metrics.sent_one(udp.send_to(&out, addr));
    }
}

fn log_event(ev: &HostEvent) {
    match ev {
        HostEvent::Down(id) => {
            tracing::warn!(host = %id, "host silent past its timeout; no new connections go to it")
        }
        HostEvent::Up(id, addr) => tracing::info!(host = %id, %addr, "host up"),
        HostEvent::Restarted(id, old, new) => tracing::warn!(
            host = %id, old = %old, new = %new,
            "host restarted: its old life leaves every view, the new one joins at the end"
        ),
        HostEvent::ViewChanged(svc, epoch, members) => {
            let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            tracing::info!(service = %svc, epoch = epoch.0, ?members, "new view (first member is the primary)")
        }
    }
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

/// Datagrams collected per host during one TUN read, sent in runs (UDP GSO).
#[derive(Debug, Default)]
struct PerHost(Vec<(SocketAddr, tunnel_io::Batcher)>);

impl PerHost {
    fn push(&mut self, udp: &UdpSocket, to: SocketAddr, datagram: &[u8], gso: bool) -> Sent {
        let i = match self.0.iter().position(|(a, _)| *a == to) {
            Some(i) => i,
            None => {
                self.0.push((to, tunnel_io::Batcher::new(gso)));
                self.0.len() - 1
            }
        };
        self.0[i].1.push(udp, to, datagram)
    }

    fn flush(&mut self, udp: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        for (_, b) in &mut self.0 {
            sent += b.flush(udp);
        }
        // A host that left keeps no batcher.
        if self.0.len() > 16 {
            self.0.clear();
        }
        sent
    }
}

fn count_sent(m: &RedirMetrics, sent: Sent) {
    m.datagrams_out.add(sent.datagrams);
    m.send_calls.add(sent.syscalls);
    if sent.failed > 0 {
        m.send_errors.add(sent.failed);
        tracing::trace!(lost = sent.failed, "tunnel send failed");
    }
}

/// Client packets from the TUN to the hosts. With offload, one read may be a TCP
/// super-segment of up to 64 KiB from the client's kernel, cut here into segments of its MSS;
/// each goes to its hosts in its own sealed datagram, and the datagrams for one host leave in
/// one run.
fn to_hosts(tun: &SyncDevice, udp: &UdpSocket, shared: &Shared, opts: DataOpts) {
    let sealer = &shared.sealer;
    let m = &shared.metrics;
    let mut original = vec![0u8; HEADROOM + 65535];
    let mut bufs = vec![vec![0u8; HEADROOM + opts.mtu.max(1500)]; tun_rs::IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; tun_rs::IDEAL_BATCH_SIZE];
    let mut out = Vec::with_capacity(2048);
    let mut per_host = PerHost::default();
    loop {
        let n = match tun.recv_multiple(&mut original, &mut bufs, &mut sizes, HEADROOM) {
            Ok(n) => n,
            Err(e) => {
                // A malformed super-segment is refused whole; an error of the device itself
                // (it has an OS error code) may repeat, so do not spin on it.
                m.tun_read_errors.inc();
                if e.raw_os_error().is_some() {
                    tracing::warn!(error = %e, "tun read failed");
                    std::thread::sleep(Duration::from_millis(10));
                } else {
                    tracing::debug!(error = %e, "malformed packet from the tun refused");
                }
                continue;
            }
        };
        m.tun_reads.inc();
        for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
            m.tun_in.inc();
            let packet = &buf[HEADROOM..HEADROOM + len];
            let Ok(meta) = TcpMeta::parse(packet) else {
                m.not_tcp.inc();
                continue;
            };
            let route = lock(shared).route_inbound(clock(), &meta);
            match route {
                Route::Host(id, incarnation, addr) => {
                    sealer.seal_into(
                        MsgType::ToHost,
                        ServiceId::from_addr(meta.dst),
                        Epoch(0),
                        Receiver::node(id, incarnation),
                        packet,
                        &mut out,
                    );
                    count_sent(m, per_host.push(udp, addr, &out, opts.udp_gso));
                }
                Route::Members(epoch, addrs) => {
                    // One seal for all members: each host keeps its own replay window, and
                    // takes a group datagram only with an epoch of a view that names it.
                    sealer.seal_into(
                        MsgType::ToHost,
                        ServiceId::from_addr(meta.dst),
                        epoch,
                        Receiver::GROUP,
                        packet,
                        &mut out,
                    );
                    for addr in addrs {
                        count_sent(m, per_host.push(udp, addr, &out, opts.udp_gso));
                    }
                }
                Route::NoService => m.no_service.inc(),
                Route::NoLiveHost => m.no_live_host.inc(),
            }
        }
        count_sent(m, per_host.flush(udp));
    }
}

/// Writes the packets collected for clients; with offload, consecutive segments of one
/// connection go to the kernel as one super-segment (tun-rs's GRO table).
fn write_tun(tun: &SyncDevice, gro: &mut GROTable, bufs: &mut [Vec<u8>], m: &RedirMetrics) {
    if bufs.is_empty() {
        return;
    }
    m.tun_out.add(bufs.len() as u64);
    if let [one] = bufs {
        // Nothing to coalesce: skip the GRO table. With offload the zeroed headroom is the
        // virtio-net header (no segmentation, checksum complete); without, it is not sent.
        let packet = if tun.tcp_gso() {
            &one[..]
        } else {
            &one[HEADROOM..]
        };
        if let Err(e) = tun.send(packet) {
            m.send_errors.inc();
            tracing::trace!(error = %e, "tun write failed");
        }
        return;
    }
    if let Err(e) = tun.send_multiple(gro, bufs, HEADROOM) {
        m.send_errors.inc();
        tracing::trace!(error = %e, "tun write failed");
    }
}

fn to_clients(tun: &SyncDevice, udp: &UdpSocket, opener: &mut Opener, shared: &Shared) {
    let m = &shared.metrics;
    // Runs of datagrams from a host's GSO send arrive as one buffer (tunnel-io).
    if !tunnel_io::enable_gro(udp) {
        tracing::info!("UDP GRO not available: datagrams from hosts are received one by one");
    }
    let mut buf = vec![0u8; 65536];
    let mut gro = GROTable::default();
    // Client packets from this receive, each behind HEADROOM bytes.
    let mut to_tun: Vec<Vec<u8>> = Vec::new();
    loop {
        let got = match tunnel_io::recv(udp, &mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                m.dropped_malformed.inc();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        m.recv_calls.inc();
        let mut n = 0;
        for datagram in got.datagrams(&buf) {
            if let Some(packet) = on_datagram(udp, opener, shared, datagram, got.from) {
                if n == to_tun.len() {
                    // Room for a whole super-segment: the GRO table appends the segments
                    // that follow onto the first one's buffer, and only where it has the
                    // capacity already.
                    to_tun.push(Vec::with_capacity(2 * HEADROOM + 65535));
                }
                let b = &mut to_tun[n];
                b.clear();
                b.resize(HEADROOM, 0);
                b.extend_from_slice(packet);
                n += 1;
            }
        }
        write_tun(tun, &mut gro, &mut to_tun[..n], m);
    }
}

/// One datagram from a host (or anyone: it is opened first). Returns the packet to pass to
/// the client, if it is one the table admits.
fn on_datagram<'a>(
    udp: &UdpSocket,
    opener: &mut Opener,
    shared: &Shared,
    datagram: &'a [u8],
    from: Option<SocketAddr>,
) -> Option<&'a [u8]> {
    let m = &shared.metrics;
    m.datagrams_in.inc();
    let (header, payload) = match opener.open(datagram) {
        Ok(v) => v,
        Err(reason) => {
            m.on_drop(reason);
            tracing::trace!(%reason, ?from, "datagram dropped");
            return None;
        }
    };
    match header.msg_type {
        MsgType::Heartbeat => match Heartbeat::parse(payload) {
            Ok(hb) if header.receiver_incarnation != shared.sealer.incarnation() => {
                // The host does not know this life of ours yet (we or it just started):
                // tell it who we are. Only a heartbeat that names our life counts, so
                // one recorded before we restarted cannot keep a dead host in a view.
                let mut out = Vec::new();
                shared.sealer.seal_into(
                    MsgType::Welcome,
                    ServiceId(0),
                    Epoch(0),
                    Receiver::node(header.sender, header.sender_incarnation),
                    &[],
                    &mut out,
                );
                if m.sent_one(udp.send_to(&out, SocketAddr::V4(hb.addr))) {
                    m.welcomes_sent.inc();
                }
            }
            Ok(hb) => {
                let now = clock();
                // INVARIANT: no code panics while holding this lock.
                shared
                    .heard
                    .lock()
                    .expect("heard lock")
                    .insert(header.sender, now);
                let events =
                    lock(shared).on_heartbeat(now, header.sender, header.sender_incarnation, hb);
                for ev in events {
                    log_event(&ev);
                    if let HostEvent::ViewChanged(svc, ..) = ev {
                        broadcast_view(shared, udp, svc);
                    }
                }
            }
            Err(_) => m.dropped_bad_heartbeat.inc(),
        },
        MsgType::ToClient => {
            let Ok(meta) = TcpMeta::parse(payload) else {
                m.bad_server_packet.inc();
                return None;
            };
            let accepted = {
                let mut t = lock(shared);
                let now = clock();
                t.on_traffic(now, header.sender, header.sender_incarnation);
                t.accept_outbound(
                    now,
                    header.sender,
                    header.sender_incarnation,
                    header.epoch,
                    &meta,
                )
            };
            if !accepted {
                m.fenced.inc();
                return None;
            }
            if let Ok(mut per) = m.to_client_by_host.lock() {
                *per.entry(header.sender.0).or_default() += 1;
            }
            return Some(payload);
        }
        MsgType::Exclude | MsgType::ExcludedAck => match parse_exclusions(payload) {
            Ok(entries) => {
                on_exclusions(shared, udp, &header, &entries);
            }
            Err(_) => m.dropped_malformed.inc(),
        },
        MsgType::ToHost
        | MsgType::Progress
        | MsgType::View
        | MsgType::Repair
        | MsgType::Digest
        | MsgType::Order
        | MsgType::Welcome
        | MsgType::Excluded
        | MsgType::OrderRepair => m.dropped_unexpected.inc(),
    }
    None
}

/// A host's exclusion requests or acknowledgements (who speaks for a connection is decided
/// here: `ft_tcp::speaker`). Requests cause notices to every member, sent at once.
fn on_exclusions(shared: &Shared, udp: &UdpSocket, header: &Header, entries: &[ExclusionEntry]) {
    let now = clock();
    {
        let mut t = lock(shared);
        for e in entries {
            let key = FlowKey {
                client: e.client,
                service: e.service,
            };
            if header.msg_type == MsgType::ExcludedAck {
                t.on_excluded_ack(
                    header.sender,
                    header.sender_incarnation,
                    &key,
                    e.members.len(),
                );
                continue;
            }
            let results = t.on_exclude(
                now,
                header.sender,
                header.sender_incarnation,
                key,
                &e.members,
            );
            for (m, r) in e.members.iter().zip(results) {
                match r {
                    Ok(true) => {
                        tracing::info!(client = %e.client, service = %e.service, member = m, by = header.sender.0, "member excluded from the connection")
                    }
                    Ok(false) => {}
                    Err(why) => {
                        tracing::debug!(client = %e.client, service = %e.service, member = m, by = header.sender.0, %why, "exclusion request refused")
                    }
                }
            }
        }
    }
    send_notices(shared, udp, now);
}

/// Sends the exclusion notices that are due.
fn send_notices(shared: &Shared, udp: &UdpSocket, now: Instant) {
    let notices = lock(shared).poll_notices(now);
    let mut out = Vec::new();
    for n in notices {
        let payload = emit_exclusions(&[ExclusionEntry {
            client: n.key.client,
            service: n.key.service,
            members: n.excluded,
        }]);
        shared.sealer.seal_into(
            MsgType::Excluded,
            ServiceId::from_addr(n.key.service),
            Epoch(0),
            Receiver::node(n.to, n.incarnation),
            &payload,
            &mut out,
        );
        if shared.metrics.sent_one(udp.send_to(&out, n.addr)) {
            shared.metrics.exclusion_notices.inc();
        }
    }
}

/// How long the detector may wait for a receive queue that is not drained (see
/// [`housekeeping`]) before it judges liveness anyway.
const BACKLOG_DEFER_MAX: Duration = Duration::from_millis(25);

/// Whether datagrams wait in the socket's receive queue (the receiving thread is behind).
fn backlogged(udp: &UdpSocket) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut one = [0u8; 1];
    recv(
        std::os::fd::AsRawFd::as_raw_fd(udp),
        &mut one,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    )
    .is_ok()
}

fn housekeeping(shared: &Shared, udp: &UdpSocket) {
    let mut next_refresh = clock();
    let mut behind_since: Option<Instant> = None;
    loop {
        // Fast enough for a 25 ms detector: the check itself costs microseconds.
        std::thread::sleep(Duration::from_millis(2));
        let now = clock();
        // Heartbeats may be sitting unread while the receiving thread is starved (a flood of
        // return packets on 2 busy cores): silence is only evidence once the queue was
        // drained, or after BACKLOG_DEFER_MAX. Overload is not a failure.
        behind_since = if backlogged(udp) {
            Some(behind_since.unwrap_or(now))
        } else {
            None
        };
        if behind_since.is_some_and(|t| now.duration_since(t) < BACKLOG_DEFER_MAX) {
            shared.metrics.detector_deferred.inc();
            continue;
        }
        // INVARIANT: no code panics while holding this lock.
        let heard = std::mem::take(&mut *shared.heard.lock().expect("heard lock"));
        let events = {
            let mut t = lock(shared);
            for (id, at) in heard {
                t.heard_from(id, at);
            }
            t.expire(now)
        };
        for ev in events {
            log_event(&ev);
            if let HostEvent::ViewChanged(svc, ..) = ev {
                broadcast_view(shared, udp, svc);
            }
        }
        send_notices(shared, udp, now);
        if now >= next_refresh {
            next_refresh = now + VIEW_REFRESH;
            lock(shared).expire_exclusions(now);
            let services: Vec<_> = lock(shared).views().map(|(s, _)| s).collect();
            for svc in services {
                broadcast_view(shared, udp, svc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_show_the_flow_table_bound_and_its_outcomes() {
        let now = clock();
        let t = Table::with_max_flows(Duration::from_millis(300), 1000);
        let text = RedirMetrics::default().render(&t, now);
        for line in [
            "hydra_redirector_flows{phase=\"half_open\"} 0",
            "hydra_redirector_flows{phase=\"open\"} 0",
            "hydra_redirector_flows{phase=\"closed\"} 0",
            "hydra_redirector_flows_max 1000",
            "hydra_redirector_flows_pinned_total 0",
            "hydra_redirector_flow_expirations_total{phase=\"half_open\"} 0",
            "hydra_redirector_flow_evictions_total{phase=\"half_open\"} 0",
            "hydra_redirector_flow_evictions_total{phase=\"closed\"} 0",
            "hydra_redirector_flows_unpinned_total{packet=\"syn\"} 0",
            "hydra_redirector_flows_unpinned_total{packet=\"host_reply\"} 0",
            "hydra_redirector_unknown_flow_packets_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("hydra_redirector_flow_evictions_total{phase=\"open\"}"));
    }
}
