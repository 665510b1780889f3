//! Total order under faults, simulated (issue #12): the sequencers of several replicas
//! (`host_server::order`, sans-IO) driven as the host's loop drives them, over lossy,
//! duplicating, late links, with primary crashes, restarts as new members, and client bytes
//! that reach each replica late or after retransmission.
//!
//! The model of the host around each sequencer follows `dataplane/total_order.rs` (`run_order`,
//! `on_order`, `on_order_repair`, `abandon_order_losers`): a granted chunk becomes credit
//! that the backend takes as the client's bytes arrive, the backend answers a chunk a little
//! later, a connection this replica left is no longer shown to its sequencer. Views reach
//! each replica late, so replicas disagree about the primary for a while.
//!
//! Checked at the end (a backup whose answer to a new primary's sync was lost differs from it
//! for a while, until it hears the primary number a stamp it processed otherwise and leaves
//! every connection: the safety net):
//! - the same chunk sequence at every live backend: for any two live replicas, the chunks
//!   (connection, length) they handed their backends, restricted to the connections both hold
//!   and neither left, are one a prefix of the other. A crashed primary's backend is not
//!   compared: it may have taken chunks whose stamps reached nobody before it crashed (the
//!   primary delivers a chunk as it stamps it), and the new primary orders those bytes anew.
//!   What the client saw of that backend's answers is output agreement's business;
//! - every queue within its bound;
//! - without loss, no backup finds its past numbered differently by a new primary (the
//!   safety net that then makes it leave every connection is for lost sync answers);
//! - no stall: once the clients are done, every live replica has handed its backend every
//!   byte of every connection it holds and did not leave; without loss, every connection
//!   some live replica held from its start is complete at one of them at least.
//!
//! `ORDER_SEED=n` replays a seed, `ORDER_SEEDS=n` sets how many fresh seeds run (default 200).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ft_tcp::FlowKey;
use host_server::order::{NeedAnswer, Sequencer, Stamp, QUEUE_MAX};

const CONNS: usize = 20;
const STEP: Duration = Duration::from_micros(200);
const DETECT: Duration = Duration::from_millis(25);
const QUIET: Duration = Duration::from_millis(2);
/// The speaker's stall clock (`--stall-timeout`'s default), which bounds a backup's wait.
const STALL: Duration = Duration::from_millis(1000);
/// Virtual time a run may take before it counts as stalled.
const LIMIT: Duration = Duration::from_secs(60);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

enum Msg {
    /// Stamps from `from` (the primary's, or a member's answer to a new primary's sync).
    Order { from: usize, stamps: Vec<Stamp> },
    /// "Send me the stamps in [from, to)" (a backup's repair request, or a new primary's sync).
    Need { from: usize, range: (u64, u64) },
    /// The primary's "gone": the oldest stamp it keeps and its next.
    Gone { from: usize, oldest: u64, next: u64 },
    /// A view: its epoch, the members, primary first.
    View { epoch: u64, members: Vec<usize> },
    /// A member's answer to a new primary's sync is complete: it delivered the stamps
    /// before `end`.
    Synced { from: usize, end: u64 },
}

/// One connection as a replica holds it.
#[derive(Default)]
struct Held {
    /// Client bytes received (contiguous).
    received: usize,
    /// Bytes handed to the backend.
    delivered: usize,
    /// Granted and not yet handed over.
    credit: usize,
    /// Answers the backend wrote (one per chunk it got, a little later).
    answered: u64,
    answer_at: Option<Instant>,
    left: bool,
}

struct Replica {
    alive: bool,
    seq: Sequencer,
    /// Its view: members, primary first (`None` before its first one), and its epoch.
    view: Option<Vec<usize>>,
    epoch: u64,
    conns: BTreeMap<usize, Held>,
    /// The chunks its backend got, in order.
    chunks: Vec<(usize, u32)>,
    /// How often a client segment reaches it per step (loss and retransmission).
    reach: f64,
    /// Times its sequencer found it had delivered a stamp the primary numbers differently.
    diverged: u64,
}

struct Client {
    /// The whole client stream's length, and how much of it the client sent so far.
    total: usize,
    sent: usize,
    /// When the client sends its next piece.
    next_at: Instant,
    opened: bool,
}

struct Sim {
    rng: Rng,
    t0: Instant,
    now: Instant,
    reps: Vec<Replica>,
    /// The redirector's view and its epoch.
    view: Vec<usize>,
    epoch: u64,
    clients: Vec<Client>,
    /// Messages in flight: (arrival, to, message).
    net: Vec<(Instant, usize, Msg)>,
    loss: f64,
    dup: f64,
    /// Faults still to come: (when, crash (true) or a new member (false)).
    faults: Vec<(Instant, bool)>,
    /// When a crashed member leaves the redirector's view.
    pending_drop: Vec<(Instant, usize)>,
    resend_at: Instant,
    log: Vec<String>,
    seed: u64,
    /// New primaries' syncs that ended without every member's complete answer.
    sync_incomplete: u64,
}

fn key_of(c: usize) -> FlowKey {
    FlowKey {
        client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000 + c as u16),
        service: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), 6379),
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(0x6a09_e667_f3bc_c909)
            | 1);
        #[allow(clippy::disallowed_methods)] // the harness is the I/O shell: any origin will do
        let t0 = Instant::now();
        let loss = [0.0, 0.02, 0.1, 0.3][rng.range(0, 4) as usize];
        let dup = [0.0, 0.05][rng.range(0, 2) as usize];
        let mut reps = Vec::new();
        for _ in 0..3 {
            let reach = [1.0, 0.5, 0.05][rng.range(0, 3) as usize];
            reps.push(Replica {
                alive: true,
                seq: Sequencer::new(QUIET).with_stall(STALL),
                view: Some(vec![0, 1, 2]),
                epoch: 1,
                conns: BTreeMap::new(),
                chunks: Vec::new(),
                reach,
                diverged: 0,
            });
        }
        let clients = (0..CONNS)
            .map(|_| Client {
                total: rng.range(200, 20_000) as usize,
                sent: 0,
                next_at: t0 + Duration::from_micros(rng.range(0, 2_000_000)),
                opened: false,
            })
            .collect();
        let mut faults = Vec::new();
        for _ in 0..rng.range(0, 6) {
            let at = t0 + Duration::from_micros(rng.range(100_000, 3_000_000));
            faults.push((at, rng.chance(0.7)));
        }
        faults.sort_by_key(|f| f.0);
        Sim {
            rng,
            t0,
            now: t0,
            reps,
            view: vec![0, 1, 2],
            epoch: 1,
            clients,
            net: Vec::new(),
            loss,
            dup,
            faults,
            pending_drop: Vec::new(),
            resend_at: t0,
            log: vec![format!("seed {seed}: loss {loss} dup {dup}")],
            seed,
            sync_incomplete: 0,
        }
    }

    fn ms(&self) -> f64 {
        (self.now - self.t0).as_secs_f64() * 1e3
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).collect();
        let tail: Vec<&str> = tail.iter().rev().map(|s| s.as_str()).collect();
        panic!(
            "ORDER_SEED={} failed at {:.1} ms: {what}\n{}",
            self.seed,
            self.ms(),
            tail.join("\n")
        );
    }

    fn send(&mut self, to: usize, m: Msg, reliable: bool) {
        if !reliable && self.rng.chance(self.loss) {
            return;
        }
        // Mostly a LAN's delay, some datagrams much later (queues, reordering).
        let delay = if self.rng.chance(0.1) {
            Duration::from_micros(self.rng.range(3_000, 30_000))
        } else {
            Duration::from_micros(self.rng.range(100, 3_000))
        };
        let copy = match &m {
            Msg::Order { from, stamps } if self.rng.chance(self.dup) => Some(Msg::Order {
                from: *from,
                stamps: stamps.clone(),
            }),
            _ => None,
        };
        self.net.push((self.now + delay, to, m));
        if let Some(c) = copy {
            let d = Duration::from_micros(self.rng.range(100, 6_000));
            self.net.push((self.now + d, to, c));
        }
    }

    fn broadcast_view(&mut self) {
        self.epoch += 1;
        self.log
            .push(format!("{:.1} ms: view {:?}", self.ms(), self.view));
        for r in 0..self.reps.len() {
            if self.reps[r].alive {
                let members = self.view.clone();
                // Views are repeated until they arrive: late, never lost.
                let epoch = self.epoch;
                self.send(r, Msg::View { epoch, members }, true);
            }
        }
    }

    fn primary_of(&self, r: usize) -> Option<usize> {
        self.reps[r].view.as_ref().and_then(|v| v.first().copied())
    }

    fn faults(&mut self) {
        while self.faults.first().is_some_and(|f| f.0 <= self.now) {
            let (_, crash) = self.faults.remove(0);
            let alive: Vec<usize> = self.view.clone();
            if crash && alive.len() > 1 {
                // Mostly the primary: that is the failover total order must survive.
                let victim = if self.rng.chance(0.7) {
                    alive[0]
                } else {
                    alive[self.rng.range(0, alive.len() as u64) as usize]
                };
                self.reps[victim].alive = false;
                self.log
                    .push(format!("{:.1} ms: crash {victim}", self.ms()));
                self.pending_drop.push((self.now + DETECT, victim));
            } else if !crash {
                // A restarted host is a new member: it holds none of the open connections
                // and joins at the end of the view.
                let id = self.reps.len();
                let reach = [1.0, 0.5][self.rng.range(0, 2) as usize];
                self.reps.push(Replica {
                    alive: true,
                    seq: Sequencer::new(QUIET).with_stall(STALL),
                    view: None,
                    epoch: 0,
                    conns: BTreeMap::new(),
                    chunks: Vec::new(),
                    reach,
                    diverged: 0,
                });
                self.view.push(id);
                self.log
                    .push(format!("{:.1} ms: member {id} joins", self.ms()));
                self.broadcast_view();
            }
        }
        let now = self.now;
        let due: Vec<usize> = self
            .pending_drop
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, r)| *r)
            .collect();
        if !due.is_empty() {
            self.pending_drop.retain(|(t, _)| *t > now);
            self.view.retain(|m| !due.contains(m));
            self.broadcast_view();
        }
    }

    fn clients(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].next_at > self.now || self.clients[c].sent >= self.clients[c].total {
                continue;
            }
            if !self.clients[c].opened {
                // The SYN reaches the redirector's view; those members hold the connection.
                self.clients[c].opened = true;
                for &r in &self.view.clone() {
                    if self.reps[r].alive && self.reps[r].view.is_some() {
                        self.reps[r].conns.insert(c, Held::default());
                    }
                }
                self.log.push(format!(
                    "{:.1} ms: conn {c} opens at {:?}",
                    self.ms(),
                    self.view
                ));
            }
            let piece = self.rng.range(10, 400) as usize;
            let cl = &mut self.clients[c];
            cl.sent = (cl.sent + piece).min(cl.total);
            cl.next_at = self.now + Duration::from_micros(self.rng.range(200, 8_000));
        }
        // Client bytes reach each holder, late or after loss (TCP resends; repair).
        for r in 0..self.reps.len() {
            if !self.reps[r].alive {
                continue;
            }
            let reach = self.reps[r].reach;
            let cs: Vec<usize> = self.reps[r].conns.keys().copied().collect();
            for c in cs {
                if self.rng.chance(reach) {
                    let sent = self.clients[c].sent;
                    let h = self.reps[r].conns.get_mut(&c).expect("held");
                    h.received = h.received.max(sent);
                }
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].0 <= now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|d| d.0);
        for (_, to, m) in due {
            if !self.reps[to].alive {
                continue;
            }
            match m {
                Msg::View { epoch, members } => {
                    // A host keeps the newest view only (dataplane/views.rs, on_view).
                    if epoch <= self.reps[to].epoch {
                        continue;
                    }
                    self.reps[to].epoch = epoch;
                    let old = self.primary_of(to);
                    self.reps[to].view = Some(members.clone());
                    let new = members.first().copied();
                    if old.is_some() && old != new {
                        // dataplane/views.rs, on_view: total order across a failover.
                        self.reps[to].seq.on_primary_changed(new == Some(to), now);
                    }
                    if new == Some(to) {
                        let others: Vec<u32> = members
                            .iter()
                            .filter(|m| **m != to)
                            .map(|m| *m as u32)
                            .collect();
                        self.reps[to].seq.sync_members(&others);
                    }
                }
                Msg::Order { from, stamps } => {
                    let primary = self.primary_of(to);
                    let member_answer = primary == Some(to) && from != to;
                    if primary != Some(from) && !member_answer {
                        continue;
                    }
                    if member_answer {
                        self.reps[to].seq.on_member_stamps(&stamps, now);
                    } else {
                        self.reps[to].seq.on_stamps(&stamps, now);
                    }
                }
                Msg::Need { from, range } => {
                    let primary = self.primary_of(to);
                    if primary == Some(to) {
                        match self.reps[to].seq.on_need(range.0, range.1) {
                            NeedAnswer::Stamps(stamps) => {
                                self.send(from, Msg::Order { from: to, stamps }, false)
                            }
                            NeedAnswer::Gone { oldest, next } => self.send(
                                from,
                                Msg::Gone {
                                    from: to,
                                    oldest,
                                    next,
                                },
                                false,
                            ),
                        }
                    } else if primary == Some(from) && from != to {
                        let end = self.reps[to].seq.delivered_end();
                        if let NeedAnswer::Stamps(stamps) =
                            self.reps[to].seq.on_need(range.0, range.1)
                        {
                            self.send(from, Msg::Order { from: to, stamps }, false);
                        }
                        self.send(from, Msg::Synced { from: to, end }, false);
                    }
                }
                Msg::Synced { from, end } => {
                    if self.primary_of(to) == Some(to) && from != to {
                        self.reps[to].seq.on_member_synced(from as u32, end);
                    }
                }
                Msg::Gone { from, oldest, next } => {
                    if self.primary_of(to) == Some(from) && from != to {
                        let held: Vec<FlowKey> =
                            self.reps[to].conns.keys().map(|c| key_of(*c)).collect();
                        self.reps[to].seq.on_gone(oldest, next, &held, now);
                        self.abandon(to);
                    }
                }
            }
        }
    }

    /// dataplane/total_order.rs, abandon_order_losers: the replica leaves what its sequencer cannot follow.
    fn abandon(&mut self, r: usize) {
        for key in self.reps[r].seq.take_abandoned() {
            let c = (key.client.port() - 40000) as usize;
            if let Some(h) = self.reps[r].conns.get_mut(&c) {
                if !h.left {
                    h.left = true;
                    h.credit = 0;
                    self.reps[r].seq.on_left(key, self.now);
                    self.log
                        .push(format!("{:.1} ms: {r} leaves conn {c}", self.ms()));
                }
            }
        }
    }

    /// One turn of each live replica's loop: grants, backend, stamps out, repair requests.
    fn run_replicas(&mut self) {
        let now = self.now;
        let resend = now >= self.resend_at;
        if resend {
            self.resend_at = now + Duration::from_millis(10);
        }
        for r in 0..self.reps.len() {
            if !self.reps[r].alive || self.reps[r].view.is_none() {
                continue;
            }
            let primary = self.primary_of(r) == Some(r);
            // The backend takes granted bytes as they are here, and answers a chunk later.
            let mut delivered = Vec::new();
            for (c, h) in self.reps[r].conns.iter_mut() {
                if h.left {
                    continue;
                }
                let n = h.credit.min(h.received - h.delivered);
                if n > 0 {
                    h.delivered += n;
                    h.credit -= n;
                    delivered.push((*c, n));
                    h.answer_at = Some(now + Duration::from_micros(self.rng.range(50, 1_500)));
                }
                if h.answer_at.is_some_and(|t| t <= now) {
                    h.answered += 1;
                    h.answer_at = None;
                }
            }
            for (c, n) in delivered {
                self.reps[r].seq.on_delivered(key_of(c), n, now);
            }
            let keys: Vec<FlowKey> = self.reps[r].conns.keys().map(|c| key_of(*c)).collect();
            let rep = &mut self.reps[r];
            let conns = &rep.conns;
            let view = |k: FlowKey| {
                let h = conns.get(&((k.client.port() - 40000) as usize))?;
                if h.left {
                    return None;
                }
                Some(host_server::order::ConnView {
                    pending: (h.received - h.delivered).saturating_sub(h.credit),
                    answered: h.answered,
                })
            };
            let grant = rep.seq.next_grant(now, primary, &keys, view);
            let stuck = rep.seq.stuck(now, Duration::from_secs(2), primary, view);
            if let Some((key, len)) = grant {
                let c = (key.client.port() - 40000) as usize;
                if let Some(h) = rep.conns.get_mut(&c).filter(|h| !h.left) {
                    h.credit += len as usize;
                    rep.chunks.push((c, len));
                }
            }
            if let Some(why) = stuck {
                let ms = (now - self.t0).as_secs_f64() * 1e3;
                self.log.push(format!(
                    "{ms:.1} ms: {r}: total order has not moved for 2 s: {why}"
                ));
            }
            let rep = &mut self.reps[r];
            let (mut stamps, mut need, mut sync) = (None, None, None);
            if primary {
                sync = rep.seq.poll_sync(now);
                stamps = rep.seq.take_outbox();
                if stamps.is_none() && resend {
                    let recent = rep.seq.recent();
                    stamps = (!recent.is_empty()).then_some(recent);
                }
            } else {
                need = rep.seq.poll_need(now);
            }
            let st = rep.seq.take_stats();
            rep.diverged += st.diverged;
            self.sync_incomplete += st.sync_incomplete;
            if rep.seq.queued() as u64 > QUEUE_MAX {
                let q = rep.seq.queued();
                self.fail(&format!("replica {r} queues {q} stamps"));
            }
            self.abandon(r);
            let members = self.reps[r].view.clone().unwrap_or_default();
            if let Some(st) = stamps {
                for &m in members.iter().filter(|m| **m != r) {
                    self.send(
                        m,
                        Msg::Order {
                            from: r,
                            stamps: st.clone(),
                        },
                        false,
                    );
                }
            }
            if let Some(range) = sync {
                for &m in members.iter().filter(|m| **m != r) {
                    self.send(m, Msg::Need { from: r, range }, false);
                }
            }
            if let (Some(range), Some(p)) = (need, self.primary_of(r)) {
                self.send(p, Msg::Need { from: r, range }, false);
            }
        }
    }

    /// The same chunk sequence at every backend, on the connections two replicas share.
    fn check_agreement(&self) {
        let live: Vec<usize> = (0..self.reps.len())
            .filter(|&r| self.reps[r].alive)
            .collect();
        for (i, &a) in live.iter().enumerate() {
            for &b in &live[i + 1..] {
                let (ra, rb) = (&self.reps[a], &self.reps[b]);
                let shared: HashSet<usize> = ra
                    .conns
                    .iter()
                    .filter(|(c, h)| !h.left && rb.conns.get(c).is_some_and(|g| !g.left))
                    .map(|(c, _)| *c)
                    .collect();
                let sa: Vec<&(usize, u32)> =
                    ra.chunks.iter().filter(|x| shared.contains(&x.0)).collect();
                let sb: Vec<&(usize, u32)> =
                    rb.chunks.iter().filter(|x| shared.contains(&x.0)).collect();
                let n = sa.len().min(sb.len());
                if let Some(i) = (0..n).find(|&i| sa[i] != sb[i]) {
                    self.fail(&format!(
                        "replicas {a} and {b} differ at chunk {i} of their shared connections: {:?} vs {:?}",
                        sa[i], sb[i]
                    ));
                }
            }
        }
    }

    fn done(&self) -> bool {
        self.clients.iter().all(|c| c.sent >= c.total)
            && self.reps.iter().all(|r| {
                !r.alive
                    || r.conns
                        .iter()
                        .all(|(c, h)| h.left || h.delivered == self.clients[*c].total)
            })
    }

    fn run(&mut self) {
        while self.now < self.t0 + LIMIT {
            self.faults();
            self.clients();
            self.deliver();
            self.run_replicas();
            if self.done() && self.faults.is_empty() && self.pending_drop.is_empty() {
                break;
            }
            self.now += STEP;
        }
        self.check_agreement();
        if !self.done() {
            let mut what = String::new();
            for (r, rep) in self.reps.iter().enumerate().filter(|(_, r)| r.alive) {
                for (c, h) in rep
                    .conns
                    .iter()
                    .filter(|(c, h)| !h.left && h.delivered < self.clients[**c].total)
                {
                    what.push_str(&format!(
                        "\n  replica {r} conn {c}: delivered {} of {}, received {}, credit {}",
                        h.delivered, self.clients[*c].total, h.received, h.credit
                    ));
                }
            }
            if std::env::var_os("ORDER_DEBUG").is_some() {
                for (r, rep) in self.reps.iter().enumerate().filter(|(_, r)| r.alive) {
                    let d = format!("{:?}", rep.seq);
                    let d: String = d.chars().filter(|c| *c != '\n').collect();
                    let cut = d.find("history").map_or(d.len(), |i| i);
                    let rest = d.find("fresh").map_or(d.len(), |i| i);
                    println!("replica {r}: {} ... {}", &d[..cut], &d[rest..]);
                }
            }
            self.fail(&format!("stalled: not every connection is complete{what}"));
        }
        if std::env::var_os("ORDER_STATS").is_some() {
            let left: usize = self
                .reps
                .iter()
                .filter(|r| r.alive)
                .map(|r| r.conns.values().filter(|h| h.left).count())
                .sum();
            let crashes = self.reps.iter().filter(|r| !r.alive).count();
            let chunks: Vec<usize> = self.reps.iter().map(|r| r.chunks.len()).collect();
            println!(
                "seed {}: {:.0} ms, {crashes} crashed, {} members, {left} (replica, conn) left, chunks {chunks:?}",
                self.seed,
                self.ms(),
                self.reps.len()
            );
        }
        // Without loss every new primary hears its members' stamps in its sync: no backup
        // may find its past numbered differently (the safety net that makes it leave every
        // connection is for lost sync answers).
        // With loss too, now that a new primary's sync waits for every member's complete
        // answer: only a sync that hit its bound may leave a member behind.
        if self.sync_incomplete == 0 {
            for (r, rep) in self.reps.iter().enumerate() {
                if rep.diverged > 0 {
                    self.fail(&format!(
                        "replica {r} diverged from the primary's numbering (loss {}), though every sync heard every member",
                        self.loss
                    ));
                }
            }
        }
        // Without loss, every connection a live replica held from its start completes
        // somewhere (a member may leave one it cannot follow, not all of them). With loss, a
        // backup whose sync answer was lost leaves every connection (the safety net), and
        // if the new primary then crashes too, they are lost with it.
        for (c, cl) in self.clients.iter().enumerate().filter(|_| self.loss == 0.0) {
            let holders: Vec<usize> = (0..self.reps.len())
                .filter(|&r| self.reps[r].alive && self.reps[r].conns.contains_key(&c))
                .collect();
            if !holders.is_empty()
                && !holders
                    .iter()
                    .any(|&r| self.reps[r].conns[&c].delivered == cl.total)
            {
                self.fail(&format!(
                    "conn {c}: every live holder ({holders:?}) left it; none completed it"
                ));
            }
        }
    }
}

fn run_seed(seed: u64) {
    Sim::new(seed).run();
}

#[test]
fn total_order_gives_every_backend_the_same_chunks_under_faults() {
    if let Ok(s) = std::env::var("ORDER_SEED") {
        run_seed(s.parse().expect("ORDER_SEED is a number"));
        return;
    }
    let n: u64 = std::env::var("ORDER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    #[allow(clippy::disallowed_methods)] // a fresh base each run, printed
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .wrapping_mul(1_000_003);
    let base: u64 = std::env::var("ORDER_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(base);
    println!(
        "order sim: seeds {base}..{} (replay one with ORDER_SEED=n)",
        base + n
    );
    let mut failures = Vec::new();
    for seed in base..base + n {
        if let Err(e) = std::panic::catch_unwind(|| run_seed(seed)) {
            let text = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(text);
        }
    }
    let firsts: Vec<&str> = failures.iter().filter_map(|f| f.lines().next()).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} seeds failed:\n{}\nfirst in full:\n{}",
        failures.len(),
        firsts.join("\n"),
        failures.first().map(String::as_str).unwrap_or("")
    );
}
