//! The single-connection harness (issue #12's seeds were found with it): a smoltcp client,
//! three replicas running the FT layer over their own smoltcp, deterministic backends, a
//! redirector that multicasts and fences, an ack channel between replicas, all on a virtual
//! clock, with views delivered at once and one global epoch. Kept so that its seeds replay
//! the scenarios they were found in; the cluster scenario in `cluster_sim.rs` goes further.
//! The redirector holds a [`SpeakerBook`]: replicas' exclusion requests, its notices and the
//! replicas' acknowledgements travel like any other message, and it passes the client only
//! the packets of the connection's speaker by the book.
//!
//! After every step: the client's received bytes are a prefix of the backend output for its
//! input; every live backend's input is a prefix of what the client sent (exactly once, in
//! order); the client never receives a reset; nothing the client sees acknowledged is missing
//! at a live member holding the connection. At the end: everything arrived both ways.
//!
//! Half of the seeds open the connection the way hosts do, with a SYN cookie: the primary
//! answers the SYN statelessly and every replica builds its connection from the client's ACK
//! ([`FtConn::accept`]); the other half with the SYN-ACK hold ([`FtConn::new`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use ft_tcp::speaker::SpeakerBook;
use ft_tcp::syncookie::{self, CookieJar, SynOpts};
use ft_tcp::{rewrite, EndpointConfig, FlowKey, FtConfig, FtConn};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};

const REPLICAS: usize = 3;
const BANNER: usize = 40_000;

/// SplitMix64: the harness's only source of randomness.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

pub struct QueueDev {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}
pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut Vec<Vec<u8>>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push(b);
        r
    }
}
impl phy::Device for QueueDev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1500;
        c
    }
}

#[derive(Debug)]
enum Msg {
    ToClient {
        from: usize,
        epoch: u64,
        pkt: Vec<u8>,
    },
    ToReplica {
        to: usize,
        pkt: Vec<u8>,
    },
    Progress {
        to: usize,
        from: usize,
        p: ft_tcp::Progress,
    },
    Repair {
        to: usize,
        pkt: Vec<u8>,
    },
    Digest {
        to: usize,
        from: usize,
        d: ft_tcp::agreement::BlockDigest,
    },
    /// A replica asks the redirector to exclude `member` from the connection.
    Request {
        from: usize,
        member: u32,
    },
    /// The redirector's notice: every member excluded from the connection.
    Notice {
        to: usize,
        excluded: Vec<u32>,
    },
    /// A replica acknowledges the first `count` exclusions.
    NoticeAck {
        from: usize,
        count: usize,
    },
}

struct Replica {
    alive: bool,
    conn: Option<FtConn>,
    input: Vec<u8>,
    out_pending: VecDeque<u8>,
    /// Bytes the backend moves per step at most (a slow backend makes the replica lag).
    rate: usize,
    /// The backend crashed (issue #14): it moves no byte any more.
    backend_dead: bool,
    /// It crashed with a FIN (EarlyFin): the next client byte for it gets an RST from the
    /// backend's kernel, as on Linux, and the host sees the backend reset.
    reset_on_input: bool,
}

/// How a replica's backend fails (issue #14).
#[derive(Debug, Clone, Copy)]
enum BackendFault {
    /// Reset: its connection is refused or reset.
    Reset,
    /// It closes its side early (a crashed process's sockets get a FIN).
    EarlyFin,
}

pub fn transform(b: u8) -> u8 {
    b.wrapping_mul(31).wrapping_add(7)
}

fn banner(seed: u64) -> Vec<u8> {
    let mut r = Rng(seed ^ 0xba22e2);
    (0..BANNER).map(|_| r.next() as u8).collect()
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: Instant,
    net: BinaryHeap<Reverse<(i64, u64)>>,
    msgs: std::collections::HashMap<u64, Msg>,
    next_id: u64,
    loss: f64,
    dup: f64,
    replicas: Vec<Replica>,
    view: Vec<usize>,
    epoch: u64,
    /// The redirector's speaker book.
    book: SpeakerBook,
    /// The book's clock at virtual time zero (it only compares instants).
    book_base: std::time::Instant,
    crashes: Vec<(Instant, usize)>,
    /// Backend crashes (issue #14): when, whose (usize::MAX: the speaker's), how.
    backend_crashes: Vec<(Instant, usize, BackendFault)>,
    detections: Vec<(Instant, usize)>,
    client_iface: Interface,
    client_dev: QueueDev,
    client_sockets: SocketSet<'static>,
    client_handle: smoltcp::iface::SocketHandle,
    client_data: Vec<u8>,
    client_sent: usize,
    client_got: Vec<u8>,
    expected: Vec<u8>,
    key: FlowKey,
    log: Vec<String>,
    /// Open by SYN cookie (the hosts' way) rather than with the SYN-ACK hold.
    cookies: Option<CookieJar>,
    /// The ISN the client saw (from the SYN-ACK it received).
    isn_s: Option<ft_tcp::SeqNumber>,
    /// The last speaker whose first data segment was checked (issue #10, defect 4).
    speaker_checked: Option<usize>,
}

/// The wall clock the cookies see (seconds); the sim runs for well under a period.
const COOKIE_NOW: u64 = 1_800_000_000;
const SIM_EP: EndpointConfig = EndpointConfig {
    mtu: 1420,
    rx_buffer: 65536,
    tx_buffer: 65536,
};

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let loss = [0.0, 0.01, 0.03, 0.05][rng.range(0, 4) as usize];
        let dup = [0.0, 0.01, 0.03][rng.range(0, 3) as usize];
        let mut client_dev = QueueDev {
            rx: VecDeque::new(),
            tx: Vec::new(),
        };
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = rng.next();
        let mut iface = Interface::new(cfg, &mut client_dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(198, 18, 0, 2), 24))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(198, 18, 0, 1))
            .unwrap();
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        sock.set_nagle_enabled(false);
        sock.connect(iface.context(), (IpAddress::v4(198, 19, 0, 10), 80), 40000)
            .unwrap();
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(sock);
        let data_len = rng.range(1, 60_000) as usize;
        let client_data: Vec<u8> = (0..data_len).map(|_| rng.next() as u8).collect();
        let mut expected = banner(seed);
        expected.extend(client_data.iter().map(|b| transform(*b)));
        let mut crashes = Vec::new();
        let n_crash = rng.range(0, 3);
        let mut t = 0;
        for _ in 0..n_crash {
            t += rng.range(2, 400);
            // -1 marks "the primary at that moment"; otherwise a replica index.
            let who = if rng.chance(0.6) {
                usize::MAX
            } else {
                rng.range(0, REPLICAS as u64) as usize
            };
            crashes.push((Instant::from_millis(t as i64), who));
        }
        let cookies = rng
            .chance(0.5)
            .then(|| CookieJar::from_cluster_key(&seed.to_be_bytes()));
        // Backend crashes draw from their own stream, so that seeds from before they existed
        // replay the same host crashes, loss and data. A host crash and a backend crash
        // together leave at least one member whole.
        let mut brng = Rng(seed ^ 0xbac4e9d);
        let mut backend_crashes = Vec::new();
        // FT_NO_BACKEND_FAULTS=1 replays a seed without them (to tell which fault matters).
        let backend_faults = std::env::var_os("FT_NO_BACKEND_FAULTS").is_none();
        if n_crash < 2 && brng.chance(0.3) && backend_faults {
            let at = Instant::from_millis(brng.range(2, 600) as i64);
            let who = if brng.chance(0.6) {
                usize::MAX
            } else {
                brng.range(0, REPLICAS as u64) as usize
            };
            let how = if brng.chance(0.5) {
                BackendFault::Reset
            } else {
                BackendFault::EarlyFin
            };
            backend_crashes.push((at, who, how));
        }
        let replicas = (0..REPLICAS)
            .map(|_| Replica {
                alive: true,
                conn: None,
                input: Vec::new(),
                out_pending: VecDeque::new(),
                rate: [usize::MAX, 20_000, 3_000][rng.range(0, 3) as usize],
                backend_dead: false,
                reset_on_input: false,
            })
            .collect();
        Sim {
            seed,
            rng,
            now: Instant::from_millis(0),
            net: BinaryHeap::new(),
            msgs: Default::default(),
            next_id: 0,
            loss,
            dup,
            replicas,
            view: (0..REPLICAS).collect(),
            epoch: 1,
            book: SpeakerBook::new(65536),
            // The harness is the I/O shell: any instant will do as the book's origin.
            #[allow(clippy::disallowed_methods)]
            book_base: std::time::Instant::now(),
            crashes,
            backend_crashes,
            detections: Vec::new(),
            client_iface: iface,
            client_dev,
            client_sockets: sockets,
            client_handle: handle,
            client_data,
            client_sent: 0,
            client_got: Vec::new(),
            expected,
            key: FlowKey {
                client: "198.18.0.2:40000".parse().unwrap(),
                service: "198.19.0.10:80".parse().unwrap(),
            },
            log: Vec::new(),
            cookies,
            isn_s: None,
            speaker_checked: None,
        }
    }

    fn send(&mut self, m: Msg) {
        if self.rng.chance(self.loss) {
            return;
        }
        let copies = if self.rng.chance(self.dup) { 2 } else { 1 };
        for c in 0..copies {
            let delay = self.rng.range(100, 1500) as i64 + c * self.rng.range(0, 800) as i64;
            let id = self.next_id;
            self.next_id += 1;
            self.net
                .push(Reverse((self.now.total_micros() + delay, id)));
            self.msgs.insert(id, clone_msg(&m));
        }
    }

    fn fail(&self, what: &str) -> ! {
        let mut tail: Vec<_> = self.log.iter().rev().take(30).rev().cloned().collect();
        for (i, r) in self.replicas.iter().enumerate() {
            tail.push(format!(
                "replica {i}: alive={} rate={} input={} pending={} conn={:?} shadow={} client_ack={:?} gate={:?} members={:?} stats={:?}",
                r.alive,
                r.rate,
                r.input.len(),
                r.out_pending.len(),
                r.conn,
                r.conn.as_ref().map_or(0, |c| c.shadow_len()),
                r.conn.as_ref().and_then(|c| c.client_ack()),
                r.conn.as_ref().and_then(|c| c.gate()),
                r.conn.as_ref().map(|c| c.member_progress()),
                r.conn.as_ref().map(|c| c.stats),
            ));
        }
        let cs = self.client_sockets.get::<tcp::Socket>(self.client_handle);
        tail.push(format!(
            "client: state={} send_queue={} recv_queue={}",
            cs.state(),
            cs.send_queue(),
            cs.recv_queue()
        ));
        panic!(
            "FT_SEED={} failed at t={} ms: {what}\nloss={} dup={} view={:?} epoch={} client_got={}/{} sent={}/{}\nlast events:\n{}",
            self.seed,
            self.now.total_millis(),
            self.loss,
            self.dup,
            self.view,
            self.epoch,
            self.client_got.len(),
            self.expected.len(),
            self.client_sent,
            self.client_data.len(),
            tail.join("\n")
        );
    }

    /// The redirector's view, as the FT layer numbers members.
    fn members(&self) -> Vec<u32> {
        self.view.iter().map(|&x| x as u32).collect()
    }

    /// The speaker book's clock now.
    fn book_now(&self) -> std::time::Instant {
        self.book_base + std::time::Duration::from_micros(self.now.total_micros() as u64)
    }

    /// Whether the redirector's book excluded replica `r` from the connection.
    fn excluded(&self, r: usize) -> bool {
        self.book.excluded(&self.key).contains(&(r as u32))
    }

    /// Whether the redirector admits a packet from replica `r` now.
    fn admits(&self, r: usize, epoch: u64) -> bool {
        epoch == self.epoch && self.book.may_speak(&self.key, &self.members(), r as u32)
    }

    /// The redirector sends the notices that are due.
    fn run_redirector(&mut self) {
        let t = self.book_now();
        let members = self.members();
        for (to, _, excluded) in self.book.poll_notices(t, |_| Some(&members)) {
            self.send(Msg::Notice {
                to: to as usize,
                excluded,
            });
        }
    }

    fn deliver(&mut self, m: Msg) {
        match m {
            Msg::ToClient { from, epoch, pkt } => {
                // The redirector's fencing: the current epoch, and only the connection's
                // speaker by its book. `check` asserts that at most one member thinks it
                // speaks (among those the book did not exclude).
                if !self.admits(from, epoch) {
                    return;
                }
                let Some(seg) = rewrite::parse(&pkt) else {
                    return;
                };
                if seg.rst {
                    self.fail("the client received a reset");
                }
                if seg.syn && seg.ack_flag && self.isn_s.is_none() {
                    self.isn_s = Some(seg.seq);
                }
                if seg.ack_flag && !seg.syn {
                    // Atomicity: what the client sees acknowledged, every live member holding
                    // the connection has.
                    for &r in &self.view {
                        if self.excluded(r) {
                            // The redirector never makes it the speaker again.
                            continue;
                        }
                        if let Some(c) = self.replicas[r].conn.as_ref().filter(|c| !c.is_retired())
                        {
                            if let Some((_, rcv)) = c.member_progress().first() {
                                if rcv.lt(seg.ack) {
                                    let msg = format!(
                                        "client sees ack {} but live member {r} has only {}",
                                        seg.ack, rcv
                                    );
                                    self.fail(&msg);
                                }
                            }
                        }
                    }
                }
                self.client_dev.rx.push_back(pkt);
            }
            Msg::ToReplica { to, pkt } => {
                let now = self.now;
                let members: Vec<u32> = self.view.iter().map(|&x| x as u32).collect();
                let rep = &mut self.replicas[to];
                if !rep.alive {
                    return;
                }
                if rep.conn.is_none() {
                    let Some(seg) = rewrite::parse(&pkt) else {
                        return;
                    };
                    let seed = self.seed ^ ((to as u64 + 1) * 7919);
                    match &self.cookies {
                        None if seg.syn && !seg.ack_flag => {
                            rep.conn = Some(FtConn::new(
                                self.key,
                                FtConfig::default(),
                                SIM_EP,
                                seed,
                                now,
                                to as u32,
                                &members,
                            ));
                        }
                        None => return,
                        Some(jar) if seg.syn && !seg.ack_flag => {
                            // Stateless: only the view's first member answers.
                            if members.first() == Some(&(to as u32)) {
                                let opts = SynOpts::of_syn(&seg);
                                let isn = jar.isn(self.key, seg.seq, opts, COOKIE_NOW);
                                let synack = syncookie::synack(
                                    self.key,
                                    seg.seq,
                                    isn,
                                    opts,
                                    SIM_EP.mtu,
                                    SIM_EP.rx_buffer,
                                );
                                let epoch = self.epoch;
                                self.send(Msg::ToClient {
                                    from: to,
                                    epoch,
                                    pkt: synack,
                                });
                            }
                            return;
                        }
                        Some(jar) => {
                            if !seg.ack_flag || seg.rst {
                                return;
                            }
                            let client_isn = seg.seq.minus(1);
                            let isn_s = seg.ack.minus(1);
                            let Some(opts) = jar.check(self.key, client_isn, isn_s, COOKIE_NOW)
                            else {
                                return;
                            };
                            let syn = syncookie::rebuild_syn(self.key, client_isn, opts);
                            rep.conn = Some(FtConn::accept(
                                self.key,
                                FtConfig::default(),
                                SIM_EP,
                                seed,
                                now,
                                to as u32,
                                &members,
                                &syn,
                                isn_s,
                            ));
                        }
                    }
                    rep.out_pending.extend(banner(self.seed));
                }
                if let Some(c) = rep.conn.as_mut() {
                    c.handle_client_packet(now, &pkt);
                }
            }
            Msg::Progress { to, from, p } => {
                let now = self.now;
                let rep = &mut self.replicas[to];
                if rep.alive {
                    if let Some(c) = rep.conn.as_mut() {
                        c.handle_progress(now, from as u32, p);
                    }
                }
            }
            Msg::Repair { to, pkt } => {
                let now = self.now;
                let rep = &mut self.replicas[to];
                if rep.alive {
                    if let Some(c) = rep.conn.as_mut() {
                        c.handle_repair(now, &pkt);
                    }
                }
            }
            Msg::Digest { to, from, d } => {
                let rep = &mut self.replicas[to];
                if rep.alive {
                    if let Some(c) = rep.conn.as_mut() {
                        c.handle_digest(from as u32, d);
                    }
                }
            }
            Msg::Request { from, member } => {
                // The redirector decides by its own current view.
                let t = self.book_now();
                let members = self.members();
                let r = self
                    .book
                    .handle_request(t, from as u32, self.key, member, &members);
                self.log.push(format!(
                    "{} ms: replica {from} asks to exclude {member}: {r:?}, excluded {:?}",
                    self.now.total_millis(),
                    self.book.excluded(&self.key)
                ));
            }
            Msg::Notice { to, excluded } => {
                let now = self.now;
                let rep = &mut self.replicas[to];
                if !rep.alive {
                    return;
                }
                // A replica that does not hold the connection acknowledges it anyway.
                let count = match rep.conn.as_mut() {
                    Some(c) => {
                        c.handle_exclusions(now, &excluded);
                        c.exclusions_known()
                    }
                    None => excluded.len(),
                };
                self.send(Msg::NoticeAck { from: to, count });
            }
            Msg::NoticeAck { from, count } => {
                self.book.handle_ack(from as u32, &self.key, count);
            }
        }
    }

    fn run_replica(&mut self, r: usize) {
        let now = self.now;
        let epoch = self.epoch;
        let view = self.view.clone();
        let rep = &mut self.replicas[r];
        if !rep.alive {
            return;
        }
        let Some(c) = rep.conn.as_mut() else { return };
        if rep.reset_on_input && c.endpoint().recv_queue() > 0 {
            rep.reset_on_input = false;
            c.on_backend_failed(now);
        }
        let rate = if rep.backend_dead { 0 } else { rep.rate };
        let input = &mut rep.input;
        let pending = &mut rep.out_pending;
        c.endpoint().recv_into(|buf| {
            let n = buf.len().min(rate);
            input.extend_from_slice(&buf[..n]);
            pending.extend(buf[..n].iter().map(|b| transform(*b)));
            n
        });
        if !pending.is_empty() {
            c.endpoint().send_from(|buf| {
                let n = buf.len().min(pending.len()).min(rate);
                for (i, b) in pending.drain(..n).enumerate() {
                    buf[i] = b;
                }
                n
            });
        }
        c.poll(now);
        let out = c.take_to_client();
        let progress = c.take_progress(now);
        let repairs = c.take_repairs();
        let digests = c.take_digests();
        for member in c.take_exclusion_requests(now) {
            self.send(Msg::Request { from: r, member });
        }
        for d in digests {
            for &to in view.iter().filter(|&&x| x != r) {
                self.send(Msg::Digest { to, from: r, d });
            }
        }
        for (to, pkt) in repairs {
            self.send(Msg::Repair {
                to: to as usize,
                pkt,
            });
        }
        // A member out of the view, or excluded, may still think it speaks: the redirector
        // fences it.
        let speaks = self.admits(r, epoch)
            && self.replicas[r]
                .conn
                .as_ref()
                .is_some_and(|c| c.role() == ft_tcp::Role::Primary && !c.is_retired());
        if speaks && self.speaker_checked != Some(r) {
            // A new primary's first data segment starts at or before the client's next
            // byte: a hole there would wait for a retransmission timer (issue #10, defect 4).
            let first = out
                .iter()
                .filter_map(|p| rewrite::parse(p))
                .find(|s| s.payload_len > 0 && !s.syn);
            if let (Some(seg), None) = (first, self.isn_s) {
                // The opening primary, before its SYN-ACK reached the client.
                let _ = seg;
                self.speaker_checked = Some(r);
            } else if let (Some(seg), Some(isn)) = (first, self.isn_s) {
                let sock = self.client_sockets.get::<tcp::Socket>(self.client_handle);
                let got = self.client_got.len() + sock.recv_queue();
                let next = isn.plus(1 + got as u32);
                if next.lt(seg.seq) {
                    let msg = format!(
                        "new primary {r} first sent {} while the client expects {next}",
                        seg.seq
                    );
                    self.fail(&msg);
                }
                self.speaker_checked = Some(r);
            }
        }
        for pkt in out {
            self.send(Msg::ToClient {
                from: r,
                epoch,
                pkt,
            });
        }
        if let Some(p) = progress {
            for &to in view.iter().filter(|&&x| x != r) {
                self.send(Msg::Progress { to, from: r, p });
            }
        }
    }

    fn run_client(&mut self) {
        let now = self.now;
        self.client_iface
            .poll(now, &mut self.client_dev, &mut self.client_sockets);
        let sock = self
            .client_sockets
            .get_mut::<tcp::Socket>(self.client_handle);
        if sock.state() == tcp::State::Closed && self.client_sent > 0 {
            self.fail("client connection closed (reset or abort)");
        }
        while sock.can_recv() {
            let got = &mut self.client_got;
            let _ = sock.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            });
        }
        if sock.may_send() && self.client_sent < self.client_data.len() {
            let data = &self.client_data[self.client_sent..];
            if let Ok(n) = sock.send_slice(data) {
                self.client_sent += n;
            }
        }
        self.client_iface
            .poll(now, &mut self.client_dev, &mut self.client_sockets);
        let out: Vec<_> = self.client_dev.tx.drain(..).collect();
        for pkt in out {
            // The redirector multicasts to the current view.
            for to in self.view.clone() {
                self.send(Msg::ToReplica {
                    to,
                    pkt: pkt.clone(),
                });
            }
        }
    }

    fn check(&self) {
        if self.client_got.len() > self.expected.len()
            || self.client_got[..] != self.expected[..self.client_got.len()]
        {
            let at = self
                .client_got
                .iter()
                .zip(&self.expected)
                .position(|(a, b)| a != b)
                .unwrap_or(self.expected.len());
            self.fail(&format!(
                "client stream differs from the backend output at byte {at}"
            ));
        }
        // At most one speaker: one live member of the view in the primary role (one the
        // book excluded that has not heard yet is fenced).
        let speakers: Vec<usize> = self
            .view
            .iter()
            .copied()
            .filter(|&r| {
                let rep = &self.replicas[r];
                rep.alive
                    && !self.excluded(r)
                    && rep
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.role() == ft_tcp::Role::Primary && !c.is_retired())
            })
            .collect();
        if speakers.len() > 1 {
            self.fail(&format!(
                "two members speak for the connection: {speakers:?}"
            ));
        }
        let backend_failed = self.replicas.iter().any(|r| r.backend_dead);
        for &r in &self.view {
            if let Some(c) = self.replicas[r].conn.as_ref() {
                let mut a = c.agreement();
                // A member whose backend ended early is divergent by design (issue #14).
                a.divergent.retain(|m| {
                    !self
                        .replicas
                        .get(*m as usize)
                        .is_some_and(|x| x.backend_dead)
                });
                if (a.mismatched > 0 && !backend_failed) || !a.divergent.is_empty() {
                    self.fail(&format!(
                        "replica {r} saw deterministic output differ: {a:?}"
                    ));
                }
            }
            let inp = &self.replicas[r].input;
            if inp.len() > self.client_sent || inp[..] != self.client_data[..inp.len()] {
                self.fail(&format!(
                    "backend {r} input is not a prefix of the client's bytes"
                ));
            }
        }
    }

    fn done(&self) -> bool {
        self.client_got.len() == self.expected.len()
            && self.client_sent == self.client_data.len()
            && self.view.iter().all(|&r| {
                let rep = &self.replicas[r];
                rep.conn.is_none()
                    || self.excluded(r)
                    || rep.backend_dead
                    || rep.conn.as_ref().is_some_and(|c| c.is_retired())
                    || rep.input.len() == self.client_data.len()
            })
    }

    fn crash_and_detect(&mut self) {
        let now = self.now;
        while let Some(&(t, who, how)) = self.backend_crashes.first() {
            if t > now {
                break;
            }
            // The hosts connect to the backend once the handshake completed: a backend
            // fails only on an established connection.
            let established = self.replicas.iter().any(|r| {
                r.conn
                    .as_ref()
                    .is_some_and(|c| c.state() == ft_tcp::TcpState::Established)
            });
            if !established {
                break;
            }
            self.backend_crashes.remove(0);
            // Never the last member that holds the connection with a working backend: then
            // nobody could serve it, a loss no design avoids (as for host crashes).
            let whole = self
                .view
                .iter()
                .filter(|&&r| {
                    let rep = &self.replicas[r];
                    rep.alive && !rep.backend_dead && rep.conn.is_some() && !self.excluded(r)
                })
                .count();
            if whole <= 1 {
                continue;
            }
            let speaker = self.view.iter().copied().find(|&r| {
                self.replicas[r]
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.role() == ft_tcp::Role::Primary)
            });
            let r = if who == usize::MAX {
                speaker.unwrap_or(self.view[0])
            } else {
                who
            };
            let rep = &mut self.replicas[r];
            if !rep.alive
                || !rep
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.state() == ft_tcp::TcpState::Established)
            {
                continue;
            }
            rep.backend_dead = true;
            rep.reset_on_input = matches!(how, BackendFault::EarlyFin);
            rep.out_pending.clear();
            if let Some(c) = rep.conn.as_mut() {
                match how {
                    BackendFault::Reset => c.on_backend_failed(now),
                    BackendFault::EarlyFin => c.endpoint().close(),
                }
            }
            self.log.push(format!(
                "{} ms: backend of replica {r} fails: {how:?}",
                now.total_millis()
            ));
            // Its host's health check is refused and withdraws the service: the redirector
            // drops it from the view (its host lives on, fenced).
            self.detections.push((now + Duration::from_millis(30), r));
            self.detections.sort_by_key(|d| d.0);
        }
        while let Some(&(t, who)) = self.crashes.first() {
            if t > now {
                break;
            }
            self.crashes.remove(0);
            if self.view.len() <= 1 {
                continue;
            }
            let r = if who == usize::MAX { self.view[0] } else { who };
            if !self.replicas[r].alive {
                continue;
            }
            self.replicas[r].alive = false;
            self.replicas[r].conn = None;
            self.log
                .push(format!("{} ms: crash replica {r}", now.total_millis()));
            // The redirector's detector: 25 ms after the crash the view drops it.
            self.detections.push((now + Duration::from_millis(25), r));
        }
        while let Some(&(t, r)) = self.detections.first() {
            if t > now {
                break;
            }
            self.detections.remove(0);
            self.view.retain(|&x| x != r);
            self.epoch += 1;
            self.log.push(format!(
                "{} ms: view {} = {:?}",
                now.total_millis(),
                self.epoch,
                self.view
            ));
            let members: Vec<u32> = self.view.iter().map(|&x| x as u32).collect();
            for &m in &self.view.clone() {
                if let Some(c) = self.replicas[m].conn.as_mut() {
                    c.set_view(now, &members);
                }
            }
        }
    }

    fn next_time(&mut self) -> Instant {
        let mut t = self.now + Duration::from_millis(200);
        if let Some(Reverse((at, _))) = self.net.peek() {
            t = t.min(Instant::from_micros(*at));
        }
        if let Some(x) = self.client_iface.poll_at(self.now, &self.client_sockets) {
            t = t.min(x);
        }
        let now = self.now;
        for r in &mut self.replicas {
            if let Some(c) = r.conn.as_mut() {
                if let Some(x) = c.poll_at(now) {
                    t = t.min(x);
                }
                if !r.out_pending.is_empty() || c.endpoint().recv_queue() > 0 {
                    t = t.min(now + Duration::from_micros(200));
                }
            }
        }
        for &(x, _) in self.crashes.iter().chain(&self.detections) {
            t = t.min(x);
        }
        for &(x, _, _) in &self.backend_crashes {
            t = t.min(x);
        }
        if let Some(at) = self.book.poll_at() {
            let us = at.saturating_duration_since(self.book_base).as_micros() as i64;
            t = t.min(Instant::from_micros(us));
        }
        t.max(self.now + Duration::from_micros(50))
    }

    fn run(mut self) {
        let limit = Instant::from_secs(120);
        let mut steps = 0u64;
        while !self.done() {
            steps += 1;
            if self.now > limit || steps > 2_000_000 {
                self.fail("did not complete within 120 s of virtual time");
            }
            self.crash_and_detect();
            while let Some(Reverse((at, id))) = self.net.peek().copied() {
                if at > self.now.total_micros() {
                    break;
                }
                self.net.pop();
                if let Some(m) = self.msgs.remove(&id) {
                    self.deliver(m);
                }
            }
            self.run_redirector();
            for r in 0..REPLICAS {
                self.run_replica(r);
            }
            self.run_client();
            self.check();
            self.now = self.next_time();
        }
        if std::env::var("FT_SEED").is_ok() {
            println!(
                "seed {} done at {} ms after {steps} steps: loss {} dup {} crashes {:?} view {:?} got {} sent {}",
                self.seed,
                self.now.total_millis(),
                self.loss,
                self.dup,
                self.log,
                self.view,
                self.client_got.len(),
                self.client_sent
            );
        }
    }
}

fn clone_msg(m: &Msg) -> Msg {
    match m {
        Msg::ToClient { from, epoch, pkt } => Msg::ToClient {
            from: *from,
            epoch: *epoch,
            pkt: pkt.clone(),
        },
        Msg::ToReplica { to, pkt } => Msg::ToReplica {
            to: *to,
            pkt: pkt.clone(),
        },
        Msg::Progress { to, from, p } => Msg::Progress {
            to: *to,
            from: *from,
            p: *p,
        },
        Msg::Repair { to, pkt } => Msg::Repair {
            to: *to,
            pkt: pkt.clone(),
        },
        Msg::Digest { to, from, d } => Msg::Digest {
            to: *to,
            from: *from,
            d: *d,
        },
        Msg::Request { from, member } => Msg::Request {
            from: *from,
            member: *member,
        },
        Msg::Notice { to, excluded } => Msg::Notice {
            to: *to,
            excluded: excluded.clone(),
        },
        Msg::NoticeAck { from, count } => Msg::NoticeAck {
            from: *from,
            count: *count,
        },
    }
}

/// Runs one seed of the single-connection scenario; panics with the seed and a trace.
pub fn run(seed: u64) {
    Sim::new(seed).run();
}
