//! The redirection table: which host servers are live, which services they offer, and which
//! host each connection is pinned to. Pure: every method takes `now`.
//!
//! A new connection goes to one live host by rendezvous (highest-random-weight) hashing of its
//! 4-tuple, so that all redirectors choose alike and a change of membership moves only the
//! connections of the host that came or went. A connection stays on its host for its
//! lifetime; only a new SYN on a 4-tuple whose host is dead is placed again.
//!
//! For services in `ft` mode the table is the view authority: per service an epoch and the
//! ordered list of live replicas (the first is the primary). A member silent past the
//! service's detector timeout leaves the view (epoch + 1), a new replica joins at the end
//! (epoch + 1) so that the primary changes only when it fails. Client packets go to every
//! member; packets for clients pass only from the current epoch's members (fencing).
//!
//! In redirect mode only a client's SYN creates an entry ([`crate::flows`] bounds them). Any
//! other packet of a connection the table does not know goes where the hash over the live
//! hosts sends it, without an entry: that is where its SYN went unless the live set changed,
//! and a flood of them costs nothing but the hash.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ack_channel::{Epoch, Heartbeat, Incarnation, Mode, ReplicaId, ServiceAd};
use ft_tcp::speaker::{Refused, SpeakerBook};
use ft_tcp::{FlowKey, TcpMeta};

use crate::flows::{FlowStats, FlowTable, PerPhase, Phase, DEFAULT_MAX_FLOWS};
pub use crate::flows::{CLOSED_FLOW_TTL, HALF_OPEN_FLOW_TTL, IDLE_FLOW_TTL};

/// Most flow entries one [`Table::expire`] call forgets. It runs every 2 ms, so this clears
/// 512,000 entries a second while holding the lock for tens of microseconds per call.
pub const FLOW_EXPIRY_BUDGET: usize = 1024;

/// What the redirector knows of one host server.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// Its current life; a newer one replaces it in every view (it restarted).
    pub incarnation: Incarnation,
    /// Where its tunnel datagrams go: the address its heartbeat names (under the MAC).
    pub addr: SocketAddr,
    /// Its last heartbeat.
    pub last_seen: Instant,
    /// What it offered then.
    pub services: Vec<ServiceAd>,
}

/// A service's view in ft mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtView {
    /// Increases with every membership change.
    pub epoch: Epoch,
    /// Live replicas in order; the first is the primary.
    pub members: Vec<ReplicaId>,
    /// Per member, the epoch of the view it last joined. Views carry it: a member whose
    /// `since` changed was out in between and holds none of its old connections.
    pub since: BTreeMap<ReplicaId, Epoch>,
    /// The detector timeout the service asked for.
    pub timeout: Duration,
    /// When a client-bound packet of the service last passed.
    pub last_out: Option<Instant>,
    /// Set when a crash changed the primary: the last client-bound packet before it. The
    /// first one after closes the failover pause ([`Table::take_timings`]).
    pub failover_from: Option<Instant>,
}

/// A gap in a service's client-bound packets across a failover longer than this is an idle
/// service, not a pause, and is not counted.
pub const PAUSE_MAX: Duration = Duration::from_secs(1);

/// What the table measured since the last [`Table::take_timings`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Timings {
    /// For each view change that dropped silent members: how long the newest of them had
    /// been silent (the detection time: timeout plus the housekeeping round).
    pub detections: Vec<Duration>,
    /// For each crash of a service's primary: the gap in its client-bound packets, from the
    /// last one before the view change to the first one after (the failover pause a client
    /// of a busy connection sees, as the redirector sees it).
    pub pauses: Vec<Duration>,
}

/// Where a client packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// To this host, in this life.
    Host(ReplicaId, Incarnation, SocketAddr),
    /// To every member of an ft view, stamped with its epoch.
    Members(Epoch, Vec<SocketAddr>),
    /// No host offers the service.
    NoService,
    /// Hosts offer it, none is live.
    NoLiveHost,
}

/// A change of host liveness, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// First heartbeat, or back after silence.
    Up(ReplicaId, SocketAddr),
    /// A heartbeat from a newer life of a known host: it restarted, and its old life left
    /// every view (it holds none of its old connections).
    Restarted(ReplicaId, Incarnation, Incarnation),
    /// Silent longer than the timeout.
    Down(ReplicaId),
    /// An ft service's view changed.
    ViewChanged(SocketAddrV4, Epoch, Vec<ReplicaId>),
}

/// The table.
#[derive(Debug)]
pub struct Table {
    timeout: Duration,
    hosts: BTreeMap<ReplicaId, HostEntry>,
    down: BTreeMap<ReplicaId, bool>,
    flows: FlowTable,
    views: BTreeMap<SocketAddrV4, FtView>,
    /// The epoch a service's first view follows (see [`Table::with_epoch_base`]).
    epoch_base: Epoch,
    /// Who speaks for each ft connection: the members excluded from it (`ft_tcp::speaker`).
    speakers: SpeakerBook,
    /// Detection times and failover pauses measured since the last take.
    timings: Timings,
}

/// Most ft connections with exclusions at once. A request past it is refused (counted); the
/// member asking keeps asking and the speaker keeps counting it.
pub const MAX_EXCLUSION_RECORDS: usize = 65_536;

/// A record of exclusions goes once its connection saw no packet for this long (longer than
/// a connection lives idle: keep-alive probes pass through here).
pub const EXCLUSION_IDLE: Duration = Duration::from_secs(3 * 3600);

/// An exclusion notice to send: to host `to` in its life `incarnation` at `addr`, for
/// connection `key`, the members excluded from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The host.
    pub to: ReplicaId,
    /// Its current life.
    pub incarnation: Incarnation,
    /// Its tunnel address.
    pub addr: SocketAddr,
    /// The connection.
    pub key: FlowKey,
    /// Every member excluded from it so far.
    pub excluded: Vec<u32>,
}

fn mix(a: u64, b: u64) -> u64 {
    // SplitMix64 finaliser over the pair: a well-spread weight per (flow, host).
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Table {
    /// A table that considers a host dead after `timeout` without heartbeat, with room for
    /// [`DEFAULT_MAX_FLOWS`] connections.
    pub fn new(timeout: Duration) -> Self {
        Self::with_max_flows(timeout, DEFAULT_MAX_FLOWS)
    }

    /// A table with room for `max_flows` pinned connections (see [`crate::flows`]).
    pub fn with_max_flows(timeout: Duration, max_flows: usize) -> Self {
        Table {
            timeout,
            hosts: BTreeMap::new(),
            down: BTreeMap::new(),
            flows: FlowTable::new(max_flows),
            views: BTreeMap::new(),
            epoch_base: Epoch(0),
            speakers: SpeakerBook::new(MAX_EXCLUSION_RECORDS),
            timings: Timings::default(),
        }
    }

    /// Numbers views from `base` up. The redirector passes the wall clock at its start in
    /// microseconds, so that a restarted redirector's epochs are above every epoch its
    /// earlier life issued: hosts take its views (they ignore any that is not newer than
    /// theirs), and datagrams stamped with an old epoch stay stale.
    pub fn with_epoch_base(mut self, base: Epoch) -> Self {
        self.epoch_base = base;
        self
    }

    fn is_live(&self, h: &HostEntry, now: Instant) -> bool {
        now.saturating_duration_since(h.last_seen) <= self.timeout
    }

    /// Liveness only: an authenticated heartbeat from `id` arrived at `at` (its payload is
    /// recorded by [`Table::on_heartbeat`]). Unknown hosts are left to that.
    pub fn heard_from(&mut self, id: ReplicaId, at: Instant) {
        if let Some(h) = self.hosts.get_mut(&id) {
            if at > h.last_seen {
                h.last_seen = at;
            }
        }
    }

    /// Records a heartbeat from `id` in its life `incarnation`: liveness, services, ft view
    /// membership. The host's address is the one the heartbeat names. A heartbeat from an
    /// older life than the one known is ignored (the opener refuses those anyway).
    pub fn on_heartbeat(
        &mut self,
        now: Instant,
        id: ReplicaId,
        incarnation: Incarnation,
        hb: Heartbeat,
    ) -> Vec<HostEvent> {
        let mut events = Vec::new();
        let addr = SocketAddr::V4(hb.addr);
        if let Some(old) = self.hosts.get(&id).map(|h| h.incarnation) {
            if incarnation < old {
                return events;
            }
            if incarnation > old {
                // A new life joins as a new member, at the end: never the primary of
                // connections it does not hold. Its old life leaves first (epoch + 1), so
                // that no view lists the old life and the new one as the same member.
                events.push(HostEvent::Restarted(id, old, incarnation));
                for (svc, v) in self.views.iter_mut() {
                    if v.members.contains(&id) {
                        v.members.retain(|m| *m != id);
                        v.epoch = Epoch(v.epoch.0 + 1);
                        events.push(HostEvent::ViewChanged(*svc, v.epoch, v.members.clone()));
                    }
                }
            }
        }
        let was_up = self.down.get(&id) == Some(&false);
        if !was_up {
            events.push(HostEvent::Up(id, addr));
        }
        // Join the views of the ft services it offers; leave those it stopped offering.
        let base = self.epoch_base;
        for ad in hb.services.iter().filter(|s| s.mode == Mode::Ft) {
            let v = self.views.entry(ad.addr).or_insert_with(|| FtView {
                epoch: base,
                members: Vec::new(),
                since: BTreeMap::new(),
                // Set from the host's advertisement just below.
                timeout: Duration::ZERO,
                last_out: None,
                failover_from: None,
            });
            v.timeout = Duration::from_millis(u64::from(ad.timeout_ms.max(1)));
            if !v.members.contains(&id) {
                v.members.push(id);
                v.epoch = Epoch(v.epoch.0 + 1);
                v.since.insert(id, v.epoch);
                events.push(HostEvent::ViewChanged(ad.addr, v.epoch, v.members.clone()));
            }
        }
        for (svc, v) in self.views.iter_mut() {
            let offers = hb
                .services
                .iter()
                .any(|s| s.addr == *svc && s.mode == Mode::Ft);
            if !offers && v.members.contains(&id) {
                v.members.retain(|m| *m != id);
                v.epoch = Epoch(v.epoch.0 + 1);
                events.push(HostEvent::ViewChanged(*svc, v.epoch, v.members.clone()));
            }
        }
        self.hosts.insert(
            id,
            HostEntry {
                incarnation,
                addr,
                last_seen: now,
                services: hb.services,
            },
        );
        self.down.insert(id, false);
        events
    }

    /// Any authenticated datagram from a known host's current life shows it is alive
    /// (heartbeats can queue behind its data in a busy socket).
    pub fn on_traffic(&mut self, now: Instant, id: ReplicaId, incarnation: Incarnation) {
        if let Some(h) = self.hosts.get_mut(&id) {
            if h.incarnation == incarnation && h.last_seen < now {
                h.last_seen = now;
            }
        }
    }

    /// The ft view of a service.
    pub fn view(&self, service: SocketAddrV4) -> Option<&FtView> {
        self.views.get(&service)
    }

    /// Every ft view.
    pub fn views(&self) -> impl Iterator<Item = (SocketAddrV4, &FtView)> + '_ {
        self.views.iter().map(|(s, v)| (*s, v))
    }

    /// A host's current life and tunnel address.
    pub fn host(&self, id: ReplicaId) -> Option<&HostEntry> {
        self.hosts.get(&id)
    }

    /// The hosts that offer `service` in ft mode (members or not): who must hear its views.
    pub fn ft_hosts(&self, service: SocketAddrV4) -> Vec<(ReplicaId, Incarnation, SocketAddr)> {
        self.hosts
            .iter()
            .filter(|(_, h)| {
                h.services
                    .iter()
                    .any(|s| s.addr == service && s.mode == Mode::Ft)
            })
            .map(|(id, h)| (*id, h.incarnation, h.addr))
            .collect()
    }

    /// Notes hosts that fell silent and forgets connections silent past their phase's idle
    /// time, at most [`FLOW_EXPIRY_BUDGET`] of them per call.
    pub fn expire(&mut self, now: Instant) -> Vec<HostEvent> {
        let mut events = Vec::new();
        for (id, h) in &self.hosts {
            let live = self.is_live(h, now);
            let down = self.down.entry(*id).or_insert(false);
            if !live && !*down {
                *down = true;
                events.push(HostEvent::Down(*id));
            }
        }
        for (svc, v) in self.views.iter_mut() {
            let timeout = v.timeout;
            let hosts = &self.hosts;
            let before = v.members.len();
            let kept: Vec<ReplicaId> = v
                .members
                .iter()
                .copied()
                .filter(|m| {
                    hosts
                        .get(m)
                        .is_some_and(|h| now.saturating_duration_since(h.last_seen) <= timeout)
                })
                .collect();
            // Every member silent at once is news about us, not about them: our receiving
            // thread, or the kernel delivering to it, fell behind (a flood on 2 busy cores
            // did that: both backups of an ft3 lab were dropped and back 0.3 ms later). Keep
            // the view; a member still silent once another speaks again leaves then. (An
            // empty view could never serve anyone either.)
            if kept.len() == before || kept.is_empty() {
                continue;
            }
            // Several members silent in the same round is more likely the same kind of news,
            // unless their silence lasts: wait up to twice the timeout before believing it
            // (a real double failure is then detected 25 ms later than a single one).
            let gone = before - kept.len();
            let newest_silence = v
                .members
                .iter()
                .filter(|m| !kept.contains(m))
                .filter_map(|m| hosts.get(m))
                .map(|h| now.saturating_duration_since(h.last_seen))
                .min()
                .unwrap_or_default();
            if gone >= 2 && newest_silence < timeout * 2 {
                continue;
            }
            self.timings.detections.push(newest_silence);
            if v.members.first() != kept.first() {
                v.failover_from = v.last_out;
            }
            v.members = kept;
            v.epoch = Epoch(v.epoch.0 + 1);
            events.push(HostEvent::ViewChanged(*svc, v.epoch, v.members.clone()));
        }
        self.flows.expire(now, FLOW_EXPIRY_BUDGET);
        events
    }

    fn offers(h: &HostEntry, service: SocketAddrV4) -> bool {
        h.services
            .iter()
            .any(|s| s.addr == service && s.mode == Mode::Redirect)
    }

    fn pick(&self, now: Instant, key: &FlowKey) -> Route {
        let fh = key.flow_hash();
        let mut offered = false;
        let mut best: Option<(u64, ReplicaId, Incarnation, SocketAddr)> = None;
        for (id, h) in &self.hosts {
            if !Self::offers(h, key.service) {
                continue;
            }
            offered = true;
            if !self.is_live(h, now) {
                continue;
            }
            let w = mix(fh, u64::from(id.0));
            if best.is_none_or(|(bw, ..)| w > bw) {
                best = Some((w, *id, h.incarnation, h.addr));
            }
        }
        match best {
            Some((_, id, inc, addr)) => Route::Host(id, inc, addr),
            None if offered => Route::NoLiveHost,
            None => Route::NoService,
        }
    }

    /// Decides where a packet from a client goes. A SYN pins its connection to the host the
    /// hash picks (if the table has room); a packet of a pinned connection goes to its host,
    /// live or not; any other packet goes where the hash sends it, and is not pinned.
    pub fn route_inbound(&mut self, now: Instant, meta: &TcpMeta) -> Route {
        let key = meta.inbound_flow();
        if let Some(v) = self.views.get(&key.service) {
            if !self.speakers.is_empty() {
                self.speakers.on_segment(now, &key, true, meta);
            }
            if !v.members.is_empty() {
                let addrs = v
                    .members
                    .iter()
                    .filter_map(|m| self.hosts.get(m).map(|h| h.addr))
                    .collect();
                return Route::Members(v.epoch, addrs);
            }
        }
        let syn = meta.is_syn();
        if let Some(f) = self.flows.get(&key).copied() {
            let pinned = self.hosts.get(&f.host);
            let dead = pinned.is_none_or(|h| !self.is_live(h, now));
            // A SYN on a closed 4-tuple is a new connection; one whose host died (the client
            // retransmitting its SYN) is placed again.
            let place_again = syn && (f.phase == Phase::Closed || dead);
            if let (false, Some(h)) = (place_again, pinned) {
                let (inc, addr) = (h.incarnation, h.addr);
                self.flows.on_inbound(now, &key, meta.flags);
                return Route::Host(f.host, inc, addr);
            }
        }
        let route = self.pick(now, &key);
        if let Route::Host(id, ..) = route {
            if !syn {
                self.flows.stats_mut().unknown_flow_packets += 1;
            } else if !self.flows.pin(now, key, id, Phase::HalfOpen) {
                self.flows.stats_mut().unpinned_syns += 1;
            }
        }
        route
    }

    /// Whether a packet for a client from host `sender`, in its life `incarnation`, may
    /// pass: only the host a connection is pinned to speaks for it.
    pub fn accept_outbound(
        &mut self,
        now: Instant,
        sender: ReplicaId,
        incarnation: Incarnation,
        epoch: Epoch,
        meta: &TcpMeta,
    ) -> bool {
        let key = meta.outbound_flow();
        let current = self
            .hosts
            .get(&sender)
            .is_some_and(|h| h.incarnation == incarnation);
        if !current {
            // An earlier life of the host (a process that should be dead) never speaks.
            return false;
        }
        if let Some(v) = self.views.get_mut(&key.service) {
            // Fencing: only the current epoch speaks, and for each connection only its
            // speaker: the first member of the view not excluded from it (ft_tcp::speaker).
            if v.epoch != epoch {
                return false;
            }
            let admitted =
                self.speakers
                    .admit(now, &key, v.members.iter().map(|m| m.0), sender.0, meta);
            if admitted {
                if let Some(from) = v.failover_from.take() {
                    let gap = now.saturating_duration_since(from);
                    if gap < PAUSE_MAX {
                        self.timings.pauses.push(gap);
                    }
                }
                v.last_out = Some(now);
            }
            return admitted;
        }
        match self.flows.get(&key) {
            Some(f) if f.host == sender => {
                self.flows.on_outbound(now, &key, meta.flags);
                true
            }
            Some(_) => false,
            // Not pinned (the redirector restarted, the table was full when the SYN came, or
            // the entry expired): a host that offers the service may carry on. Its data pins
            // the connection from now on if there is room. Its SYN-ACK does not: only a
            // client's SYN makes a half-open entry, and a host retransmits SYN-ACKs to spoofed
            // SYNs long after their entries expired. Its RST ends the connection and needs
            // no entry: that is how a host answers a stray segment.
            None => {
                let ok = self
                    .hosts
                    .get(&sender)
                    .is_some_and(|h| Self::offers(h, key.service));
                if ok && !meta.flags.rst && !meta.flags.syn {
                    let phase = Phase::Open {
                        fin_in: false,
                        fin_out: meta.flags.fin,
                    };
                    if !self.flows.pin(now, key, sender, phase) {
                        self.flows.stats_mut().unpinned_replies += 1;
                    }
                }
                ok
            }
        }
    }

    /// Detection times and failover pauses measured since the last call.
    pub fn take_timings(&mut self) -> Timings {
        std::mem::take(&mut self.timings)
    }

    /// Host `from` (in life `incarnation`) asks to exclude `members` from ft connection
    /// `key`: accepted for itself, or for others when it is the connection's speaker
    /// (`ft_tcp::speaker`). The notices it causes come from [`Table::poll_notices`].
    pub fn on_exclude(
        &mut self,
        now: Instant,
        from: ReplicaId,
        incarnation: Incarnation,
        key: FlowKey,
        members: &[u32],
    ) -> Vec<Result<bool, Refused>> {
        let current = self
            .hosts
            .get(&from)
            .is_some_and(|h| h.incarnation == incarnation);
        let view: Vec<u32> = match self.views.get(&key.service) {
            Some(v) if current => v.members.iter().map(|m| m.0).collect(),
            _ => Vec::new(),
        };
        members
            .iter()
            .map(|m| self.speakers.handle_request(now, from.0, key, *m, &view))
            .collect()
    }

    /// Host `from` acknowledges the first `count` exclusions of `key`.
    pub fn on_excluded_ack(
        &mut self,
        from: ReplicaId,
        incarnation: Incarnation,
        key: &FlowKey,
        count: usize,
    ) {
        if self
            .hosts
            .get(&from)
            .is_some_and(|h| h.incarnation == incarnation)
        {
            self.speakers.handle_ack(from.0, key, count);
        }
    }

    /// Exclusion notices due now, each for one member of the connection's current view.
    pub fn poll_notices(&mut self, now: Instant) -> Vec<Notice> {
        if self.speakers.is_empty() {
            return Vec::new();
        }
        let members: BTreeMap<SocketAddrV4, Vec<u32>> = self
            .views
            .iter()
            .map(|(s, v)| (*s, v.members.iter().map(|m| m.0).collect()))
            .collect();
        let due = self
            .speakers
            .poll_notices(now, |k| members.get(&k.service).map(Vec::as_slice));
        due.into_iter()
            .filter_map(|(to, key, excluded)| {
                let h = self.hosts.get(&ReplicaId(to))?;
                Some(Notice {
                    to: ReplicaId(to),
                    incarnation: h.incarnation,
                    addr: h.addr,
                    key,
                    excluded,
                })
            })
            .collect()
    }

    /// Forgets exclusion records of connections idle for [`EXCLUSION_IDLE`].
    pub fn expire_exclusions(&mut self, now: Instant) {
        self.speakers.expire(now, EXCLUSION_IDLE);
    }

    /// The members excluded from an ft connection.
    pub fn excluded(&self, key: &FlowKey) -> &[u32] {
        self.speakers.excluded(key)
    }

    /// The speaker book's size and counters.
    pub fn speaker_stats(&self) -> (usize, ft_tcp::speaker::BookStats) {
        (self.speakers.len(), self.speakers.stats)
    }

    /// Whether a host is known and live.
    pub fn host_live(&self, now: Instant, id: ReplicaId) -> bool {
        self.hosts.get(&id).is_some_and(|h| self.is_live(h, now))
    }

    /// All hosts.
    pub fn hosts(&self) -> impl Iterator<Item = (ReplicaId, &HostEntry)> + '_ {
        self.hosts.iter().map(|(id, h)| (*id, h))
    }

    /// Connections pinned per host (kept as entries come and go: no walk of the table).
    pub fn flows_per_host(&self) -> BTreeMap<ReplicaId, usize> {
        self.flows.per_host().clone()
    }

    /// Number of pinned connections.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Pinned connections by phase.
    pub fn flows_by_phase(&self) -> PerPhase {
        self.flows.by_phase()
    }

    /// The bound on pinned connections.
    pub fn max_flows(&self) -> usize {
        self.flows.max()
    }

    /// What happened to flow entries so far.
    pub fn flow_stats(&self) -> &FlowStats {
        self.flows.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn svc() -> SocketAddrV4 {
        "198.19.0.10:80".parse().unwrap()
    }

    /// Every host's life in these tests (restarts are tested on their own).
    const INC: Incarnation = Incarnation(1);

    /// A heartbeat from `id`'s life [`INC`], naming `addr` as its address.
    fn beat(
        t: &mut Table,
        at: Instant,
        id: ReplicaId,
        addr: SocketAddr,
        mut hb: Heartbeat,
    ) -> Vec<HostEvent> {
        let SocketAddr::V4(a) = addr else {
            panic!("hosts have IPv4 addresses")
        };
        hb.addr = a;
        t.on_heartbeat(at, id, INC, hb)
    }

    fn hb() -> Heartbeat {
        Heartbeat {
            addr: "0.0.0.0:0".parse().unwrap(),
            services: vec![ServiceAd {
                addr: svc(),
                mode: Mode::Redirect,
                hb_ms: 50,
                timeout_ms: 300,
            }],
        }
    }

    fn pkt(port: u16, syn: bool, fin: bool) -> TcpMeta {
        let mut b =
            PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64).tcp(port, 80, 1, 100);
        if syn {
            b = b.syn();
        } else {
            b = b.ack(1);
        }
        if fin {
            b = b.fin();
        }
        let mut v = Vec::new();
        b.write(&mut v, b"").unwrap();
        TcpMeta::parse(&v).unwrap()
    }

    fn table_with_hosts(t0: Instant, n: u32) -> Table {
        let mut t = Table::new(Duration::from_millis(300));
        for i in 1..=n {
            let addr: SocketAddr = format!("198.18.{i}.2:7000").parse().unwrap();
            assert_eq!(
                beat(&mut t, t0, ReplicaId(i), addr, hb()),
                vec![HostEvent::Up(ReplicaId(i), addr)]
            );
        }
        t
    }

    #[test]
    fn connections_spread_and_stay_pinned() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 3);
        let mut per_host = BTreeMap::new();
        for port in 1000..1300 {
            let Route::Host(id, ..) = t.route_inbound(t0, &pkt(port, true, false)) else {
                panic!("no route");
            };
            *per_host.entry(id).or_insert(0) += 1;
            assert_eq!(
                t.route_inbound(t0, &pkt(port, false, false)),
                t.route_inbound(t0, &pkt(port, false, false))
            );
        }
        assert_eq!(per_host.len(), 3);
        assert!(
            per_host.values().all(|&n| n > 50),
            "uneven spread {per_host:?}"
        );
    }

    #[test]
    fn new_connections_avoid_a_silent_host_but_old_ones_stay() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 3);
        let mut pinned_to_1 = None;
        for port in 1000..1100 {
            if let Route::Host(ReplicaId(1), ..) = t.route_inbound(t0, &pkt(port, true, false)) {
                pinned_to_1 = Some(port);
            }
        }
        let port = pinned_to_1.expect("some flow lands on host 1");
        let t1 = t0 + Duration::from_millis(400);
        for i in 2..=3 {
            beat(
                &mut t,
                t1,
                ReplicaId(i),
                format!("198.18.{i}.2:7000").parse().unwrap(),
                hb(),
            );
        }
        assert_eq!(t.expire(t1), vec![HostEvent::Down(ReplicaId(1))]);
        for p in 2000..2200 {
            assert!(!matches!(
                t.route_inbound(t1, &pkt(p, true, false)),
                Route::Host(ReplicaId(1), ..)
            ));
        }
        // An established connection stays with its host; a retransmitted SYN is re-placed.
        assert!(matches!(
            t.route_inbound(t1, &pkt(port, false, false)),
            Route::Host(ReplicaId(1), ..)
        ));
        assert!(!matches!(
            t.route_inbound(t1, &pkt(port, true, false)),
            Route::Host(ReplicaId(1), ..)
        ));
    }

    #[test]
    fn only_the_pinned_host_speaks_for_a_connection() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 2);
        let Route::Host(id, ..) = t.route_inbound(t0, &pkt(5000, true, false)) else {
            panic!()
        };
        let reply = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 5000, 1, 100)
                .syn()
                .ack(2)
                .write(&mut b, b"")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        let other = ReplicaId(3 - id.0);
        assert!(t.accept_outbound(t0, id, INC, Epoch(0), &reply));
        assert!(!t.accept_outbound(t0, other, INC, Epoch(0), &reply));
        assert!(!t.accept_outbound(t0, ReplicaId(99), INC, Epoch(0), &reply));
    }

    /// Hosts 1..=n offer the ft service, in that order.
    fn join_ft(t: &mut Table, at: Instant, n: u32) {
        for i in 1..=n {
            let addr = format!("198.18.{i}.2:7000").parse().unwrap();
            beat(t, at, ReplicaId(i), addr, ft_hb());
        }
    }

    fn ft_hb() -> Heartbeat {
        Heartbeat {
            addr: "0.0.0.0:0".parse().unwrap(),
            services: vec![ServiceAd {
                addr: svc(),
                mode: Mode::Ft,
                hb_ms: 5,
                timeout_ms: 25,
            }],
        }
    }

    #[test]
    fn a_restarted_host_leaves_every_view_and_its_new_life_joins_at_the_end() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300)).with_epoch_base(Epoch(1_000));
        join_ft(&mut t, t0, 3);
        assert_eq!(t.view(svc()).unwrap().epoch, Epoch(1_003));
        // The primary, h1, restarts within the detector timeout: its new life's heartbeat.
        let mut hb = ft_hb();
        hb.addr = "198.18.1.2:7000".parse().unwrap();
        let events = t.on_heartbeat(t0, ReplicaId(1), Incarnation(2), hb.clone());
        assert_eq!(
            events,
            vec![
                HostEvent::Restarted(ReplicaId(1), INC, Incarnation(2)),
                HostEvent::ViewChanged(svc(), Epoch(1_004), vec![ReplicaId(2), ReplicaId(3)]),
                HostEvent::ViewChanged(
                    svc(),
                    Epoch(1_005),
                    vec![ReplicaId(2), ReplicaId(3), ReplicaId(1)]
                ),
            ]
        );
        assert_eq!(t.host(ReplicaId(1)).unwrap().incarnation, Incarnation(2));
        // The old life never speaks again, the new one does (as a member).
        let reply = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 1, 1, 100)
                .ack(2)
                .write(&mut b, b"")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        assert!(!t.accept_outbound(t0, ReplicaId(1), INC, Epoch(1_005), &reply));
        // The new life is a member at the end: it speaks for no connection it did not hold.
        assert!(!t.accept_outbound(t0, ReplicaId(1), Incarnation(2), Epoch(1_005), &reply));
        assert!(t.accept_outbound(t0, ReplicaId(2), INC, Epoch(1_005), &reply));
        // An older life heard after a newer one changes nothing.
        assert!(t.on_heartbeat(t0, ReplicaId(1), INC, hb).is_empty());
        assert_eq!(t.view(svc()).unwrap().epoch, Epoch(1_005));
    }

    /// A crash of the primary is measured twice: how long it had been silent when the view
    /// dropped it (detection), and the gap in the service's client-bound packets from the
    /// last one before to the first one the new primary sends (the failover pause). A
    /// backup's crash changes no speaker: no pause.
    #[test]
    fn a_primary_crash_yields_its_detection_time_and_the_failover_pause() {
        let ms = |n| Duration::from_millis(n);
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(ms(300));
        join_ft(&mut t, t0, 3);
        let reply = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 40000, 1, 100)
                .ack(2)
                .write(&mut b, b"x")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        let epoch = t.view(svc()).unwrap().epoch;
        assert!(t.accept_outbound(t0 + ms(10), ReplicaId(1), INC, epoch, &reply));
        let alive = |t: &mut Table, at: Instant, ids: &[u32]| {
            for &i in ids {
                let addr = format!("198.18.{i}.2:7000").parse().unwrap();
                beat(t, at, ReplicaId(i), addr, ft_hb());
            }
        };
        // h2 and h3 go on beating; h1 (the primary) falls silent after t0.
        for at in [ms(20), ms(30)] {
            alive(&mut t, t0 + at, &[2, 3]);
        }
        let t1 = t0 + ms(31);
        let events = t.expire(t1);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, HostEvent::ViewChanged(..))),
            "{events:?}"
        );
        let epoch = t.view(svc()).unwrap().epoch;
        assert!(t.accept_outbound(t1 + ms(4), ReplicaId(2), INC, epoch, &reply));
        assert!(t.accept_outbound(t1 + ms(5), ReplicaId(2), INC, epoch, &reply));
        assert_eq!(
            t.take_timings(),
            Timings {
                detections: vec![ms(31)],
                pauses: vec![ms(25)],
            }
        );
        // A backup (h3) crashes: detected, but the speaker's packets never stopped.
        for at in [ms(40), ms(50)] {
            alive(&mut t, t1 + at, &[2]);
        }
        assert!(!t.expire(t1 + ms(51)).is_empty());
        let epoch = t.view(svc()).unwrap().epoch;
        assert!(t.accept_outbound(t1 + ms(52), ReplicaId(2), INC, epoch, &reply));
        let timings = t.take_timings();
        assert_eq!(timings.detections.len(), 1);
        assert!(timings.pauses.is_empty(), "{timings:?}");
    }

    #[test]
    fn only_the_speaker_the_exclusions_leave_passes_and_every_member_is_told() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300));
        join_ft(&mut t, t0, 3);
        let epoch = t.view(svc()).unwrap().epoch;
        let reply = |client_port: u16| {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, client_port, 1, 100)
                .ack(2)
                .write(&mut b, b"x")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        let (a, b) = (reply(1), reply(2));
        let key = a.outbound_flow();
        // h2 may not drop h1 (it is not the speaker); a stale life of h1 may not either.
        assert_eq!(
            t.on_exclude(t0, ReplicaId(2), INC, key, &[1]),
            vec![Err(Refused::NotSpeaker)]
        );
        assert_eq!(
            t.on_exclude(t0, ReplicaId(1), Incarnation(7), key, &[1]),
            vec![Err(Refused::NotMember)]
        );
        assert!(t.poll_notices(t0).is_empty());
        // h1's backend failed: it leaves connection `a`. h2 speaks for it, h1 still for `b`.
        assert_eq!(
            t.on_exclude(t0, ReplicaId(1), INC, key, &[1]),
            vec![Ok(true)]
        );
        assert!(!t.accept_outbound(t0, ReplicaId(1), INC, epoch, &a));
        assert!(t.accept_outbound(t0, ReplicaId(2), INC, epoch, &a));
        assert!(!t.accept_outbound(t0, ReplicaId(3), INC, epoch, &a));
        assert!(t.accept_outbound(t0, ReplicaId(1), INC, epoch, &b));
        assert!(!t.accept_outbound(t0, ReplicaId(2), INC, epoch, &b));
        // Every member is told, in its current life, at its address.
        let n = t.poll_notices(t0);
        assert_eq!(
            n.iter()
                .map(|n| (n.to.0, n.excluded.clone()))
                .collect::<Vec<_>>(),
            vec![(1, vec![1]), (2, vec![1]), (3, vec![1])]
        );
        assert_eq!(n[1].addr, "198.18.2.2:7000".parse().unwrap());
        // Until each acknowledges.
        t.on_excluded_ack(ReplicaId(1), INC, &key, 1);
        t.on_excluded_ack(ReplicaId(2), INC, &key, 1);
        let n = t.poll_notices(t0 + Duration::from_millis(25));
        assert_eq!(n.iter().map(|n| n.to.0).collect::<Vec<_>>(), vec![3]);
        // The speaker h2 drops h3 (it stalls); an RST from h2 ends the record.
        assert_eq!(
            t.on_exclude(t0, ReplicaId(2), INC, key, &[3]),
            vec![Ok(true)]
        );
        assert_eq!(t.excluded(&key), &[1, 3]);
        let mut rst = Vec::new();
        PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
            .tcp(80, 1, 1, 100)
            .rst()
            .write(&mut rst, b"")
            .unwrap();
        assert!(t.accept_outbound(t0, ReplicaId(2), INC, epoch, &TcpMeta::parse(&rst).unwrap()));
        assert!(t.excluded(&key).is_empty());
        let (records, stats) = t.speaker_stats();
        assert_eq!(
            (records, stats.excluded, stats.refused_not_speaker),
            (0, 2, 1)
        );
    }

    #[test]
    fn a_member_back_in_the_view_after_leaving_it_has_a_new_since_and_the_others_keep_theirs() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300)).with_epoch_base(Epoch(1_000));
        join_ft(&mut t, t0, 3);
        let since = |t: &Table| {
            let v = t.view(svc()).unwrap();
            v.members
                .iter()
                .map(|m| (m.0, v.since[m].0))
                .collect::<Vec<_>>()
        };
        assert_eq!(since(&t), vec![(1, 1_001), (2, 1_002), (3, 1_003)]);
        let addr = |i: u32| format!("198.18.{i}.2:7000").parse().unwrap();
        // h2 falls silent (a partition) and leaves the view; h1 and h3 stay.
        let t1 = t0 + Duration::from_millis(30);
        for i in [1, 3] {
            beat(&mut t, t1, ReplicaId(i), addr(i), ft_hb());
        }
        t.expire(t1);
        assert_eq!(since(&t), vec![(1, 1_001), (3, 1_003)]);
        // It is heard again, in the same life: back at the end, a member since the new epoch.
        beat(&mut t, t1, ReplicaId(2), addr(2), ft_hb());
        assert_eq!(t.view(svc()).unwrap().epoch, Epoch(1_005));
        assert_eq!(since(&t), vec![(1, 1_001), (3, 1_003), (2, 1_005)]);
        // Heartbeats of members already in the view change nothing.
        beat(&mut t, t1, ReplicaId(1), addr(1), ft_hb());
        assert_eq!(since(&t), vec![(1, 1_001), (3, 1_003), (2, 1_005)]);
    }

    #[test]
    fn two_members_silent_together_are_believed_only_after_twice_the_timeout() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300));
        join_ft(&mut t, t0, 3);
        let speak = |t: &mut Table, at: Instant| {
            beat(
                t,
                at,
                ReplicaId(1),
                "198.18.1.2:7000".parse().unwrap(),
                ft_hb(),
            )
        };
        let t1 = t0 + Duration::from_millis(30);
        speak(&mut t, t1);
        t.expire(t1);
        assert_eq!(t.view(svc()).unwrap().members.len(), 3, "dropped at 30 ms");
        let t2 = t0 + Duration::from_millis(55);
        speak(&mut t, t2);
        t.expire(t2);
        assert_eq!(t.view(svc()).unwrap().members, vec![ReplicaId(1)]);
    }

    #[test]
    fn a_heartbeat_heard_before_its_payload_is_recorded_keeps_the_member_in_the_view() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300));
        join_ft(&mut t, t0, 2);
        let epoch = t.view(svc()).unwrap().epoch;
        // 30 ms later both were heard (their payloads still wait for the table lock).
        let t1 = t0 + Duration::from_millis(30);
        t.heard_from(ReplicaId(1), t1);
        t.heard_from(ReplicaId(2), t1);
        t.heard_from(ReplicaId(7), t1);
        assert!(t.expire(t1).is_empty(), "a heard member left the view");
        assert_eq!(t.view(svc()).unwrap().epoch, epoch);
        // One falls silent: the view moves on without it.
        let t2 = t1 + Duration::from_millis(30);
        t.heard_from(ReplicaId(1), t2);
        t.expire(t2);
        assert_eq!(t.view(svc()).unwrap().members, vec![ReplicaId(1)]);
    }

    #[test]
    fn ft_view_orders_members_by_join_and_fences_stale_epochs_and_non_members() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300));
        join_ft(&mut t, t0, 3);
        let v = t.view(svc()).unwrap().clone();
        assert_eq!(v.members, vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
        assert_eq!(v.epoch, Epoch(3));
        let Route::Members(e, addrs) = t.route_inbound(t0, &pkt(1, true, false)) else {
            panic!("ft service not multicast")
        };
        assert_eq!((e, addrs.len()), (Epoch(3), 3));
        let reply = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 1, 1, 100)
                .syn()
                .ack(2)
                .write(&mut b, b"")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        assert!(t.accept_outbound(t0, ReplicaId(1), INC, Epoch(3), &reply));
        assert!(
            !t.accept_outbound(t0, ReplicaId(2), INC, Epoch(3), &reply),
            "a backup spoke for a connection"
        );
        assert!(!t.accept_outbound(t0, ReplicaId(1), INC, Epoch(2), &reply));
        assert!(!t.accept_outbound(t0, ReplicaId(9), INC, Epoch(3), &reply));
        // The primary falls silent: 30 ms later the view moves on without it.
        let t1 = t0 + Duration::from_millis(30);
        for i in 2..=3 {
            beat(
                &mut t,
                t1,
                ReplicaId(i),
                format!("198.18.{i}.2:7000").parse().unwrap(),
                ft_hb(),
            );
        }
        let ev = t.expire(t1);
        assert!(
            ev.contains(&HostEvent::ViewChanged(
                svc(),
                Epoch(4),
                vec![ReplicaId(2), ReplicaId(3)]
            )),
            "{ev:?}"
        );
        assert!(
            !t.accept_outbound(t1, ReplicaId(1), INC, Epoch(3), &reply),
            "old primary fenced"
        );
        assert!(t.accept_outbound(t1, ReplicaId(2), INC, Epoch(4), &reply));
        // It comes back: it joins at the end and does not take the primary role back.
        let t2 = t1 + Duration::from_millis(5);
        beat(
            &mut t,
            t2,
            ReplicaId(1),
            "198.18.1.2:7000".parse().unwrap(),
            ft_hb(),
        );
        assert_eq!(
            t.view(svc()).unwrap().members,
            vec![ReplicaId(2), ReplicaId(3), ReplicaId(1)]
        );
        // Every member silent at once: the observer is behind, the view stays.
        let t3 = t2 + Duration::from_secs(1);
        let ev = t.expire(t3);
        assert!(
            !ev.iter().any(|e| matches!(e, HostEvent::ViewChanged(..))),
            "{ev:?}"
        );
        assert_eq!(t.view(svc()).unwrap().members.len(), 3);
        // One speaks again: the ones still silent leave then.
        beat(
            &mut t,
            t3,
            ReplicaId(3),
            "198.18.3.2:7000".parse().unwrap(),
            ft_hb(),
        );
        t.expire(t3);
        assert_eq!(t.view(svc()).unwrap().members, vec![ReplicaId(3)]);
    }

    #[test]
    fn no_service_and_no_live_host_are_told_apart() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::new(Duration::from_millis(300));
        assert_eq!(t.route_inbound(t0, &pkt(1, true, false)), Route::NoService);
        beat(
            &mut t,
            t0,
            ReplicaId(1),
            "198.18.1.2:7000".parse().unwrap(),
            hb(),
        );
        let late = t0 + Duration::from_secs(1);
        assert_eq!(
            t.route_inbound(late, &pkt(1, true, false)),
            Route::NoLiveHost
        );
    }

    #[test]
    fn closed_flows_are_forgotten_and_open_ones_kept() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 1);
        t.route_inbound(t0, &pkt(7, true, false));
        t.route_inbound(t0, &pkt(7, false, true));
        t.route_inbound(t0, &pkt(8, true, false));
        t.route_inbound(t0, &pkt(8, false, true));
        let fin_back = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 7, 1, 100)
                .ack(2)
                .fin()
                .write(&mut b, b"")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        assert!(t.accept_outbound(t0, ReplicaId(1), INC, Epoch(0), &fin_back));
        assert_eq!(t.flow_count(), 2);
        let t1 = t0 + CLOSED_FLOW_TTL + Duration::from_millis(1);
        beat(
            &mut t,
            t1,
            ReplicaId(1),
            "198.18.1.2:7000".parse().unwrap(),
            hb(),
        );
        t.expire(t1);
        assert_eq!(
            t.flow_count(),
            1,
            "flow 7 closed both ways is gone, half-closed 8 stays"
        );
    }

    /// SplitMix64: a seeded stream, so a failure replays.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0, 0)
        }
    }

    /// A client packet from a source in the flood range 198.18.128.0/17, built without
    /// serialising (a million of them).
    fn from(client: SocketAddrV4, syn: bool, ack: bool) -> TcpMeta {
        TcpMeta {
            src: client,
            dst: svc(),
            flags: ft_tcp::TcpFlags {
                syn,
                ack,
                fin: false,
                rst: false,
            },
            payload_len: 0,
            seq: 1,
            ack: 1,
        }
    }

    fn random_client(rng: &mut Rng) -> SocketAddrV4 {
        let r = rng.next();
        SocketAddrV4::new(
            std::net::Ipv4Addr::from(0xc612_8000 | (r as u32 & 0x7fff)),
            (r >> 32) as u16,
        )
    }

    fn alive(t: &mut Table, now: Instant, n: u32) {
        for i in 1..=n {
            let addr = format!("198.18.{i}.2:7000").parse().unwrap();
            beat(t, now, ReplicaId(i), addr, hb());
        }
    }

    #[test]
    fn only_a_syn_creates_a_flow_entry() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 3);
        let mut rng = Rng(7);
        for flags in [(false, true), (true, true), (false, false)] {
            for _ in 0..100 {
                let p = from(random_client(&mut rng), flags.0, flags.1);
                let expected = t.pick(t0, &p.inbound_flow());
                assert!(matches!(expected, Route::Host(..)));
                assert_eq!(t.route_inbound(t0, &p), expected, "routed by the hash");
            }
        }
        let rst = TcpMeta::parse(&{
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64)
                .tcp(9, 80, 1, 100)
                .rst()
                .write(&mut b, b"")
                .unwrap();
            b
        })
        .unwrap();
        t.route_inbound(t0, &rst);
        t.route_inbound(t0, &pkt(9, false, true));
        assert_eq!(
            t.flow_count(),
            0,
            "ACK, SYN-ACK, bare, RST and FIN pin nothing"
        );
        assert_eq!(t.flow_stats().unknown_flow_packets, 302);
        t.route_inbound(t0, &pkt(9, true, false));
        assert_eq!(t.flow_count(), 1, "a SYN does");
        assert_eq!(t.flow_stats().pinned, 1);
    }

    #[test]
    fn a_million_random_syns_keep_the_table_within_its_cap_and_evictions_are_counted() {
        // 100,000 SYN/s for 10 s from random sources in 198.18.128.0/17, against the default
        // cap; one client in a thousand is real and completes its handshake.
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 3);
        let mut rng = Rng(10);
        let mut real = Vec::new();
        let mut now = t0;
        for i in 0..1_000_000u32 {
            now += Duration::from_micros(10);
            if i % 200 == 0 {
                alive(&mut t, now, 3);
                t.expire(now);
            }
            let client = random_client(&mut rng);
            let Route::Host(id, ..) = t.route_inbound(now, &from(client, true, false)) else {
                panic!("SYN {i} not routed to a host");
            };
            if i % 1000 == 0 {
                assert_eq!(t.route_inbound(now, &from(client, false, true)), {
                    let addr = t.host(id).unwrap().addr;
                    Route::Host(id, INC, addr)
                });
                real.push((client, id));
            }
            assert!(
                t.flow_count() <= DEFAULT_MAX_FLOWS,
                "over the cap at SYN {i}"
            );
        }
        let st = *t.flow_stats();
        assert_eq!(t.flow_count(), DEFAULT_MAX_FLOWS);
        assert!(
            st.evicted.half_open > 700_000,
            "evictions not counted: {st:?}"
        );
        assert_eq!((st.evicted.open, st.unpinned_syns), (0, 0), "{st:?}");
        let gone = st.expired.half_open + st.expired.open + st.expired.closed;
        assert_eq!(
            st.pinned,
            t.flow_count() as u64 + gone + st.evicted.half_open + st.evicted.closed
        );
        // Every real connection kept its entry and its host.
        assert_eq!(t.flows_by_phase().open, 1000);
        for (client, id) in real {
            assert!(matches!(
                t.route_inbound(now, &from(client, false, true)),
                Route::Host(h, ..) if h == id
            ));
        }
        // Once the flood stops, the SYN-only entries are gone within their idle time.
        let mut later = now;
        while later < now + HALF_OPEN_FLOW_TTL + Duration::from_millis(500) {
            later += Duration::from_millis(2);
            alive(&mut t, later, 3);
            t.expire(later);
        }
        assert_eq!(t.flow_count(), 1000);
    }

    #[test]
    fn a_full_table_of_open_connections_routes_a_new_syn_by_hash_without_pinning() {
        let t0 = crate::dataplane::clock();
        let mut t = Table::with_max_flows(Duration::from_millis(300), 10);
        alive(&mut t, t0, 3);
        for port in 1..=10 {
            t.route_inbound(t0, &pkt(port, true, false));
            t.route_inbound(t0, &pkt(port, false, false));
        }
        assert_eq!(t.flows_by_phase().open, 10);
        for port in 100..200 {
            let syn = pkt(port, true, false);
            let expected = t.pick(t0, &syn.inbound_flow());
            assert_eq!(t.route_inbound(t0, &syn), expected);
            // The client's next packet finds the same host by the same hash.
            assert_eq!(t.route_inbound(t0, &pkt(port, false, false)), expected);
        }
        assert_eq!(t.flow_count(), 10);
        assert_eq!(t.flow_stats().unpinned_syns, 100);
        assert_eq!(t.flow_stats().unknown_flow_packets, 100);
        // The host's SYN-ACK passes without an entry; its data finds no room either, and
        // passes.
        let Route::Host(id, ..) = t.route_inbound(t0, &pkt(300, true, false)) else {
            panic!()
        };
        assert!(t.accept_outbound(t0, id, INC, Epoch(0), &syn_ack(300)));
        assert!(t.accept_outbound(t0, id, INC, Epoch(0), &data_from_host(300)));
        assert_eq!(t.flow_count(), 10);
        assert_eq!(t.flow_stats().unpinned_replies, 1);
    }

    fn data_from_host(port: u16) -> TcpMeta {
        let mut b = Vec::new();
        PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
            .tcp(80, port, 1, 100)
            .ack(2)
            .write(&mut b, b"x")
            .unwrap();
        TcpMeta::parse(&b).unwrap()
    }

    fn syn_ack(port: u16) -> TcpMeta {
        let mut b = Vec::new();
        PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
            .tcp(80, port, 1, 100)
            .syn()
            .ack(2)
            .write(&mut b, b"")
            .unwrap();
        TcpMeta::parse(&b).unwrap()
    }

    #[test]
    fn half_open_entries_expire_after_ten_seconds_and_established_ones_stay() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 1);
        for port in 1..=100 {
            t.route_inbound(t0, &pkt(port, true, false));
        }
        for port in 1..=10 {
            t.route_inbound(t0, &pkt(port, false, false));
        }
        let t1 = t0 + HALF_OPEN_FLOW_TTL - Duration::from_millis(1);
        alive(&mut t, t1, 1);
        t.expire(t1);
        assert_eq!(t.flow_count(), 100);
        let t2 = t0 + HALF_OPEN_FLOW_TTL;
        alive(&mut t, t2, 1);
        t.expire(t2);
        assert_eq!(t.flow_count(), 10, "only the established connections stay");
        assert_eq!(t.flow_stats().expired.half_open, 90);
    }

    #[test]
    fn expire_forgets_at_most_its_budget_per_call() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 1);
        let mut rng = Rng(3);
        let n = 3 * FLOW_EXPIRY_BUDGET + 5;
        for _ in 0..n {
            t.route_inbound(t0, &from(random_client(&mut rng), true, false));
        }
        assert_eq!(t.flow_count(), n);
        let late = t0 + HALF_OPEN_FLOW_TTL;
        alive(&mut t, late, 1);
        for left in [2 * FLOW_EXPIRY_BUDGET + 5, FLOW_EXPIRY_BUDGET + 5, 5, 0, 0] {
            t.expire(late);
            assert_eq!(t.flow_count(), left);
        }
    }

    #[test]
    fn a_flow_pinned_before_the_live_set_changed_stays_pinned() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 3);
        let mut pinned = Vec::new();
        for port in 1000..1300 {
            let Route::Host(id, ..) = t.route_inbound(t0, &pkt(port, true, false)) else {
                panic!("no route")
            };
            // Half of them complete the handshake before the change, half after.
            if port % 2 == 0 {
                t.route_inbound(t0, &pkt(port, false, false));
            }
            pinned.push((port, id));
        }
        // Host 4 joins and host 3 falls silent: the hash now places many 4-tuples elsewhere.
        let t1 = t0 + Duration::from_millis(400);
        alive(&mut t, t1, 2);
        beat(
            &mut t,
            t1,
            ReplicaId(4),
            "198.18.4.2:7000".parse().unwrap(),
            hb(),
        );
        t.expire(t1);
        assert!(!t.host_live(t1, ReplicaId(3)));
        let mut moved_by_hash = 0;
        for (port, id) in pinned {
            let p = pkt(port, false, false);
            if t.pick(t1, &p.inbound_flow()) != Route::Host(id, INC, t.host(id).unwrap().addr) {
                moved_by_hash += 1;
            }
            assert!(
                matches!(t.route_inbound(t1, &p), Route::Host(h, ..) if h == id),
                "port {port} left host {id}"
            );
            // A retransmitted SYN stays too, unless its host is dead.
            let again = t.route_inbound(t1, &pkt(port, true, false));
            if id != ReplicaId(3) {
                assert!(matches!(again, Route::Host(h, ..) if h == id));
            }
        }
        assert!(moved_by_hash > 100, "the change moved only {moved_by_hash}");
    }

    #[test]
    fn a_host_reply_without_an_entry_pins_it_unless_it_is_a_syn_ack_or_a_reset() {
        let t0 = crate::dataplane::clock();
        let mut t = table_with_hosts(t0, 2);
        // A SYN-ACK retransmitted after the spoofed SYN's entry expired passes, pins nothing.
        assert!(t.accept_outbound(t0, ReplicaId(1), INC, Epoch(0), &syn_ack(4000)));
        assert_eq!(t.flow_count(), 0);
        // The redirector restarted under an open connection: its host's data re-pins it.
        let data = data_from_host(5000);
        assert!(t.accept_outbound(t0, ReplicaId(2), INC, Epoch(0), &data));
        assert!(matches!(
            t.route_inbound(t0, &pkt(5000, false, false)),
            Route::Host(ReplicaId(2), ..)
        ));
        assert!(!t.accept_outbound(t0, ReplicaId(1), INC, Epoch(0), &data));
        // A host's RST for a stray segment passes and leaves nothing behind.
        let rst = {
            let mut b = Vec::new();
            PacketBuilder::ipv4([198, 19, 0, 10], [198, 18, 0, 2], 64)
                .tcp(80, 6000, 1, 0)
                .rst()
                .write(&mut b, b"")
                .unwrap();
            TcpMeta::parse(&b).unwrap()
        };
        assert!(t.accept_outbound(t0, ReplicaId(1), INC, Epoch(0), &rst));
        assert_eq!(t.flow_count(), 1);
    }
}
