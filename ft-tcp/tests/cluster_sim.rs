//! The seeded in-process cluster simulation (issue #12): one smoltcp client with 20 to 24
//! concurrent connections of varied sizes, replicas that each run the FT layer over their own
//! smoltcp and a deterministic backend per connection, a redirector that multicasts, holds the
//! views and fences by epoch, and an ack channel between the replicas, all on a virtual clock.
//! A seed drives every choice; `FT_SEED=s` replays one.
//!
//! What the seed varies, as the hosts and the redirector behave (host-server's `dataplane`,
//! redirector's `table.rs`):
//! - loss, duplication and delay on every link; on the ack channel (progress, digests,
//!   repairs), for the speaker protocol (exclusion requests to the redirector, its notices,
//!   the replicas' acknowledgements) and for views their own rates, with late deliveries;
//! - views: the redirector issues epoch + 1 on every change and re-sends the current view
//!   every 50 ms; each replica holds the newest epoch it received, so replicas hold different
//!   epochs at the same time. A replica stamps its packets to the client with its own epoch;
//!   the redirector passes those of the current epoch from the connection's speaker only
//!   (its `SpeakerBook`: the first member of its view it has not excluded from the
//!   connection) and multicasts client packets to the current members;
//! - host crashes (the detector drops the host 25 ms later), and restarts as a new
//!   incarnation: a replica with a new id that joins the view at its end;
//! - partitions of one replica from everything, which heal; one that outlasts the detector
//!   leaves the view and joins it again at the end when it heals;
//! - backend crashes (reset, or a FIN of the crashed process) on every connection of a host,
//!   which then leaves the view;
//! - connections that the client keeps open, half-closes (FIN after its data, then reads the
//!   reply), or closes after the whole reply; the backend closes after the client's FIN;
//! - in a quarter of the seeds (`FT_TOTAL=1` replays one) the service orders client bytes
//!   across its connections (`--order total`): each replica runs host-server's sequencer as
//!   the host does (`run_order`, `on_order`, `on_order_repair`, `abandon_order_losers`), its
//!   stamps, repair requests and "gone" answers on the lossy ack channel, and a backend
//!   takes only the bytes its sequencer granted.
//!
//! After every step, per connection:
//! - at most one replica speaks: alive, at the redirector's epoch, in its view, not excluded
//!   by the redirector's book, and primary for the connection (a member the book excluded
//!   that has not heard yet is fenced by the redirector);
//! - a packet the redirector admits carries no ACK beyond what the sender itself holds, and
//!   no ACK beyond what any member that can still be promoted holds (members: in the view
//!   when the client opened the connection and in every view since, alive, not retired,
//!   not excluded by the redirector's book);
//! - every backend's input is a prefix of the client's bytes (none twice, none out of order);
//!   the client's stream is a prefix of the backend output; members agree on their output;
//! - the client never receives a reset.
//!
//! With total order, whenever a replica granted a chunk (at most every millisecond of virtual
//! time) and at the end: every two live replicas in the view granted their backends the same
//! chunks in the same order on the connections both follow (one sequence a prefix of the
//! other). At the end: unless a new primary's sync ended without a member's complete answer
//! (or a partition cut one out), no replica found its past numbered differently by a new
//! primary; without any loss (lost or late views included) no replica left a connection it
//! could not follow.
//!
//! At the end every connection completed both ways, closed where the client closed it, unless
//! every member of it died or left (then no design can carry it on).
//!
//! `FT_SEEDS=n` sets how many fresh seeds run (default 1000, 300 for the cluster harness;
//! `FT_SEED_BASE=b` from seed `b`
//! rather than a fresh base), `FT_SEED=s` replays one seed,
//! `FT_CLASSIC=1` with it replays a seed of the single-connection harness ([`classic`]).

#[path = "cluster_sim/classic.rs"]
mod classic;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use classic::{transform, QueueDev, Rng};
use ft_tcp::speaker::SpeakerBook;
use ft_tcp::synack_retry::SynAckRetry;
use ft_tcp::syncookie::{self, CookieJar, SynOpts};
use ft_tcp::{rewrite, EndpointConfig, FlowKey, FtConfig, FtConn, Role, SeqNumber, TcpState};
use host_server::order::{ConnView, NeedAnswer, Sequencer, Stamp};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// Seeds that failed once and are fixed, replayed on every run: (seed, harness); replay a
/// `ClusterTotal` one with `FT_TOTAL=1`.
/// The first four are issue #12's, found with the single-connection harness; they also run
/// as cluster seeds.
const REGRESSION_SEEDS: &[(u64, Harness)] = &[
    (1795322940957965, Harness::Classic),
    (1795941650838334, Harness::Classic),
    (1795322941000159, Harness::Classic),
    (1795941650885864, Harness::Classic),
    (1795322940957965, Harness::Cluster),
    (1795941650838334, Harness::Cluster),
    (1795322941000159, Harness::Cluster),
    (1795941650885864, Harness::Cluster),
    // The client's retransmitted last bytes + FIN: smoltcp dropped the FIN, the FT layer
    // swallowed the ACK that answered it; the client retransmitted forever.
    (1795967799887249, Harness::Cluster),
    // A primary by a stale view (just healed from a partition) held its SYN-ACK for ever
    // as a backup; the speaker never counted it.
    (1795967968887844, Harness::Cluster),
    // Every report of the client's FIN from one backup lost: the speaker repaired it forever
    // and never acknowledged the FIN.
    (1795968406889082, Harness::Cluster),
    (1795968406889086, Harness::Cluster),
    // A new speaker's first data went out while its epoch was behind the redirector's and
    // was fenced; the check took the hole that left for a lost byte (a harness bug).
    (1795968666889882, Harness::Cluster),
    // The client's FIN reached every replica before the data under it and was dropped; two
    // promotions and a network copy made three duplicate ACKs, after which smoltcp's client
    // never resent its FIN (a harness artifact: a kernel client would).
    (1796000000000138, Harness::Cluster),
    // A new speaker whose stack had closed (the client acknowledged its FIN) lost its first
    // ACK, the one covering the client's FIN; the client's resent FIN drew only a reset from
    // its stack, suppressed, and no ACK: the client stayed in CLOSING.
    (1796000000001055, Harness::Cluster),
    (1796000000001137, Harness::Cluster),
    // The client's FIN+ACK answer left smoltcp's client in CLOSING; the network's filter of
    // duplicate ACKs (above) then kept the ACK of its FIN from it (a harness bug).
    (1795978731920406, Harness::Cluster),
    // New incarnations took a connection on from the client's resent SYN after the book
    // excluded its only old member: they never got the notice, took the excluded member
    // for the speaker, and nobody answered the client.
    (1795978731921780, Harness::Cluster),
    // The opener's backend failed mid-handshake and its SYN-ACK never reached the client; a
    // backup kept the opener's reported isn_s while the client had accepted the next
    // speaker's, and stayed in SYN-RECEIVED (1700, 2439); a stale report of another isn_s
    // held the speaker's FIN (3033); every report of isn_s to a backup lost (1516).
    (1796000000001700, Harness::Cluster),
    (1795979163922439, Harness::Cluster),
    (1795979163923033, Harness::Cluster),
    (1795979163921516, Harness::Cluster),
    // A member the book excluded counted as able to carry the connection on (a harness bug).
    (1795979163921580, Harness::Cluster),
    // A late report without isn_s wiped the FIN a member had reported; the speaker held its
    // FIN for ever (6737). A backup took isn_s from the client's ACK of resent data, one
    // reply too high, once the opener was gone, and never compared with the speaker (6440).
    // A speaker with a stale view at the SYN (or promoted before any SYN-ACK left) answered
    // without a member the authority counted, which never had the connection (6031, 5454).
    (1795980482926737, Harness::Cluster),
    (1795980482926440, Harness::Cluster),
    (1795980482926031, Harness::Cluster),
    (1795980482925454, Harness::Cluster),
    // A member partitioned out of the view and back at its end was made the speaker of a
    // connection whose other holders had gone, lacking the client bytes of its time out:
    // views now carry each member's `since`, and a member that was out leaves.
    (1796100000000444, Harness::Cluster),
    // A speaker promoted before the client acknowledged any SYN-ACK sent one at once, without
    // waiting for a member of its view that had missed every SYN (it joined as the client sent
    // it); the gate then waited for that member, and once the speaker crashed nobody held the
    // connection.
    (1796300000000862, Harness::Cluster),
    // A primary partitioned out, back after every view it missed: it learns it was out from
    // its `since` alone and must leave (it had missed the client's FIN).
    (1796400000001494, Harness::Cluster),
    // A backup cut off while the SYN-ACK and the speaker's report of isn_s went out took
    // isn_s from a repair's ACK, which covered output; promoted, it sent its backend's first
    // bytes where the client expected later ones. The speaker's output now waits until every
    // member it counts holds isn_s.
    (1795995493970912, Harness::Cluster),
    // A member that had no view when the client's SYN came never held the connection; once
    // the holders crashed, the harness still counted it as able to carry it on.
    (1795995493970920, Harness::Cluster),
    // A SYN-cookie ACK opened the connection at a backup after the speaker (whose view lacked
    // it) had acknowledged more; every report of that backup lost, it never reported again
    // and was never excluded. A backup behind a member now keeps reporting.
    (1796000322991061, Harness::Cluster),
    // Total order: a primary that left a connection stamped it on from the members' rcv_nxt,
    // which counts the client's FIN; the backups waited for a byte that never came and left
    // (9620, 9924), and a new primary that adopted such a stamp, lacking the FIN (smoltcp
    // had dropped it out of order), held the whole service's order 2 s (55112). Reports now
    // say whether rcv_nxt counts the FIN. The last member had missed a connection's first
    // stamps and left it; the harness waited for it (990000).
    (1796001808989620, Harness::ClusterTotal),
    (1796001808989924, Harness::ClusterTotal),
    (1796800000055112, Harness::ClusterTotal),
    (1796001808990000, Harness::ClusterTotal),
    // The speaker lost the client's handshake ACK (SYN cookies) and the client waited for a
    // banner: a backup now forwards the ACK to a speaker it never heard from (16665). The
    // client's FIN was lost four times to the primary, due again at 127 s (91391).
    (1796800000016665, Harness::Cluster),
    (1796800000091391, Harness::Cluster),
    // A replica back in the view after a partition kept the order it numbered alone as a
    // primary, and handed its backend chunks of new connections in another order (49148).
    // A forwarded handshake ACK opened a connection at a member that joined the view after
    // its SYN, which then spoke without the bytes the client saw acknowledged (58572).
    (1796800000049148, Harness::ClusterTotal),
    (1796800000058572, Harness::ClusterTotal),
    // A backup heard a member its gate never counted report the connection, was promoted,
    // acknowledged bytes that member lacked and was cut off; the member spoke without them.
    (1797200000028465, Harness::Cluster),
    // A host restarted and got its first view late: it took the stamps of connections
    // opened since it joined for older ones, never marked them foreign, and followed one
    // whose first chunk it had passed. Stamps now carry the epoch they were issued under.
    (1797200000019720, Harness::ClusterTotal),
    // A backup that had missed two views (its view still named a member cut off before the
    // client's SYN) forwarded the client's handshake ACK to that member after it came back,
    // long after the connection closed; the member held it without a byte of the request
    // and, the others gone, became its speaker. A view older than the opening packet now
    // holds the forward back.
    (1797500000010065, Harness::Cluster),
    // The primary crashed after the client's handshake ACK, which a backup had lost; the
    // promoted speaker waited for that backup's report (a server banner, the client silent)
    // and was cut off before the stall timeout: nobody held the connection. The speaker now
    // forwards the ACK to the members it counts that never reported.
    (1797500000002967, Harness::Cluster),
    // A primary cut off and back, every newer view lost to it, still numbered chunks as the
    // primary while another member did: its backend took the connections' chunks in its own
    // order. A primary whose view is behind the client's packets now numbers nothing.
    (1797400000013768, Harness::ClusterTotal),
    (1797500000019020, Harness::ClusterTotal),
    (1797500000025604, Harness::ClusterTotal),
    // The same for a backup: back from a partition with its newer views lost, it followed
    // the old order for connections opened since, then at the view that said it had been
    // out started its order afresh and granted their chunks again. A replica whose view is
    // behind the client's packets now grants nothing (the chunk check runs during the run
    // now, and found it).
    (1798000000003376, Harness::ClusterTotal),
    // A backup opened a connection with an older view (a new member missing from it) and
    // never counted that member; promoted, it acknowledged client bytes the member lacked
    // (the member had the connection only from the old speaker's forwarded handshake ACK),
    // and the member, last one left, spoke without them. Members since before the open are
    // now counted at every view.
    (1798100000023626, Harness::Cluster),
    // Counting those members alone was not enough: a speaker whose view was stale at the
    // open had acknowledged client bytes before the newer view came, and the member it then
    // counted lacked them. A stale view now holds the ACK gate where it is.
    (1798200000011610, Harness::Cluster),
    (1798200000019314, Harness::Cluster),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Harness {
    /// The single-connection harness (`classic.rs`).
    Classic,
    /// This file's cluster scenario.
    Cluster,
    /// The cluster scenario with the service in total order (`FT_TOTAL=1` replays one).
    ClusterTotal,
}

/// A member of a connection (in the view when the client opened it, in every view since)
/// that holds it but that the speaker's ACK gate does not count (it opened the connection
/// with a stale view, e.g. just after a partition healed) lacks bytes the client saw
/// acknowledged until the redirector, at the speaker's request, excludes it (a round trip
/// to the speaker after its first report, then one to the redirector). Closing that window
/// needs the members fixed at open; ft-tcp alone cannot. With this switch on, such a holder is not checked
/// after every ACK the client sees but whenever it speaks: a packet the redirector admits
/// from it fails the run unless it holds every byte the client saw acknowledged.
/// Turn it off to see the window itself.
const UNCOUNTED_HOLDERS_CHECKED_WHEN_THEY_SPEAK: bool = true;

/// Hosts the cluster starts with.
const HOSTS: usize = 3;
/// Total order: the sequencer's quiet time (`quiet_ms`' default), how often a primary sends
/// its recent stamps again, and after how long a sequencer that has not moved is logged
/// (dataplane/mod.rs and dataplane/total_order.rs).
const ORDER_QUIET: std::time::Duration = std::time::Duration::from_millis(2);
const ORDER_RESEND_EVERY: Duration = Duration::from_millis(20);
const ORDER_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
/// The redirector's detector timeout, and how often it re-sends the current view.
const DETECT: Duration = Duration::from_millis(25);
const VIEW_REFRESH: Duration = Duration::from_millis(50);
/// The wall clock the cookies see (seconds); the sim runs for well under a period.
const COOKIE_NOW: u64 = 1_800_000_000;
const SIM_EP: EndpointConfig = EndpointConfig {
    mtu: 1420,
    rx_buffer: 65536,
    tx_buffer: 65536,
};

/// How the client ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// It never closes.
    Open,
    /// FIN right after its data, then it reads the whole reply (half-close).
    Half,
    /// FIN once it read the whole reply.
    AfterReply,
}

/// How a host's backend fails (issue #14); every connection of the host at once.
#[derive(Debug, Clone, Copy)]
enum BackendFault {
    /// Its connections are reset.
    Reset,
    /// The crashed process's sockets get a FIN; the next client byte draws an RST.
    EarlyFin,
}

/// Which replica a fault hits.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// The view's first member at that moment.
    Primary,
    /// Any member of the view (drawn from this number).
    Member(u64),
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Crash(Who),
    Partition(Who, Duration),
    Backend(Who, BackendFault),
    /// The detector's verdict on a replica whose heartbeats stopped.
    Detect(u32),
    /// A partition ends.
    Heal(u32),
    /// A crashed host comes back as a new incarnation.
    Restart,
}

#[derive(Debug, Clone)]
enum Msg {
    ToClient {
        from: u32,
        epoch: u64,
        conn: usize,
        pkt: Vec<u8>,
    },
    ToReplica {
        to: u32,
        /// The redirector's epoch when it sent the packet (the datagram header's).
        epoch: u64,
        conn: usize,
        pkt: Vec<u8>,
    },
    Progress {
        to: u32,
        from: u32,
        conn: usize,
        p: ft_tcp::Progress,
    },
    Repair {
        to: u32,
        from: u32,
        conn: usize,
        pkt: Vec<u8>,
    },
    Digest {
        to: u32,
        from: u32,
        conn: usize,
        d: ft_tcp::agreement::BlockDigest,
    },
    /// A replica asks the redirector to exclude `member` from the connection.
    Request { from: u32, conn: usize, member: u32 },
    /// The redirector's notice: every member excluded from the connection.
    Notice {
        to: u32,
        conn: usize,
        excluded: Vec<u32>,
    },
    /// A replica acknowledges the first `count` exclusions of the connection.
    NoticeAck {
        from: u32,
        conn: usize,
        count: usize,
    },
    View {
        to: u32,
        epoch: u64,
        members: Vec<u32>,
        /// Per member, the epoch of the view it last joined.
        since: Vec<u64>,
    },
    /// Total order: stamps from the primary, or a member's answer to a new primary's sync.
    Order {
        to: u32,
        from: u32,
        stamps: Vec<Stamp>,
    },
    /// Total order: "send me the stamps in [from, to)" (a backup's repair request, or a new
    /// primary's sync).
    OrderNeed {
        to: u32,
        from: u32,
        range: (u64, u64),
    },
    /// Total order: the primary's "gone" (the oldest stamp it keeps, and its next).
    OrderGone {
        to: u32,
        from: u32,
        oldest: u64,
        next: u64,
    },
    /// A backup's answer to a new primary's sync is complete: it delivered the stamps
    /// before `end`.
    OrderSynced { to: u32, from: u32, end: u64 },
}

impl Msg {
    /// The replica a message goes to and the one it comes from (`None`: client/redirector).
    fn ends(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Msg::ToClient { from, .. } => (None, Some(*from)),
            Msg::Request { from, .. } | Msg::NoticeAck { from, .. } => (None, Some(*from)),
            Msg::ToReplica { to, .. } | Msg::View { to, .. } | Msg::Notice { to, .. } => {
                (Some(*to), None)
            }
            Msg::Progress { to, from, .. }
            | Msg::Repair { to, from, .. }
            | Msg::Digest { to, from, .. }
            | Msg::Order { to, from, .. }
            | Msg::OrderNeed { to, from, .. }
            | Msg::OrderGone { to, from, .. }
            | Msg::OrderSynced { to, from, .. } => (Some(*to), Some(*from)),
        }
    }
}

/// Which loss, duplication and delay a message gets.
#[derive(Clone, Copy)]
enum Link {
    Data,
    Control,
    View,
}

/// One connection as a host holds it: the FT layer and the bridge to a deterministic backend
/// that sends a banner, then answers each client byte with `transform(byte)`, and closes after
/// the client's FIN once it said everything.
struct HostConn {
    ft: FtConn,
    /// The epoch of the packet that opened it here (dataplane/mod.rs, `Conn::opened`).
    opened: u64,
    input: Vec<u8>,
    /// How much of `input` was checked already.
    input_checked: usize,
    pending: VecDeque<u8>,
    backend_dead: bool,
    reset_on_input: bool,
    closed: bool,
    /// Something happened to it since it last ran.
    dirty: bool,
    /// When its timers are due (as after its last run).
    next_at: Option<Instant>,
    /// Total order (dataplane/mod.rs, `Conn`): client bytes the sequencer granted and the backend
    /// has not taken yet; bytes the backend wrote; the highest `rcv_nxt` a member reported;
    /// where this replica's stamps of a connection it left end (as primary); whether it can
    /// no longer tell.
    credit: usize,
    from_backend: u64,
    peer_rcv: Option<SeqNumber>,
    order_pos: Option<SeqNumber>,
    order_lost: bool,
}

struct Replica {
    alive: bool,
    partitioned: bool,
    /// The newest view it received: epoch, members, and when each member last joined.
    epoch: u64,
    view: Option<Vec<u32>>,
    /// The newest epoch a client packet from the redirector carried (dataplane/mod.rs,
    /// `ServiceView::heard`).
    heard: u64,
    since: Vec<u64>,
    conns: Vec<Option<HostConn>>,
    /// Whether it ever held each connection.
    held: Vec<bool>,
    /// Bytes its backend moves per step at most (a slow backend makes the replica lag).
    rate: usize,
    backend_dead: Option<BackendFault>,
    /// When it last left the redirector's view.
    left_view: Option<Instant>,
    /// The service's sequencer (total order only), and the chunks (connection, length) it
    /// granted its backends, in order.
    seq: Option<Sequencer>,
    chunks: Vec<(usize, u32)>,
    /// Times its sequencer found it had delivered a stamp the primary numbers differently
    /// (then it leaves every connection it holds).
    diverged: u64,
    /// Connections its sequencer could not follow (it left them).
    abandoned: u64,
    /// The cookie SYN-ACKs it sent whose handshake has not completed here (dataplane/mod.rs,
    /// on_syn): sent again after 1, 2 and 4 s.
    synacks: SynAckRetry,
}

/// One connection as the client holds it.
struct ClientConn {
    handle: SocketHandle,
    port: u16,
    start: Instant,
    close: Close,
    data: Vec<u8>,
    expected: Vec<u8>,
    banner: Vec<u8>,
    started: bool,
    established: bool,
    sent: usize,
    got: Vec<u8>,
    /// How much of `got` was checked already.
    got_checked: usize,
    fin_sent: bool,
    done: bool,
    /// The redirector's view when the client sent its first SYN: the connection's members.
    start_view: Vec<u32>,
    client_isn: Option<SeqNumber>,
    isn_s: Option<SeqNumber>,
    /// The highest ACK the client was sent (C).
    acked: Option<SeqNumber>,
    /// The last speaker whose first data segment was checked (issue #10, defect 4).
    speaker_checked: Option<u32>,
    /// Replicas that sent data for this connection while they could not speak (their epoch
    /// behind the redirector's): the redirector fenced it, so their first admitted data may
    /// leave a hole, which their own retransmission fills (the completion check still holds
    /// them to it).
    fenced_data_from: Vec<u32>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: Instant,
    net: BinaryHeap<Reverse<(i64, u64)>>,
    msgs: HashMap<u64, Msg>,
    next_id: u64,
    loss: f64,
    dup: f64,
    ctl_loss: f64,
    ctl_dup: f64,
    view_loss: f64,
    late: f64,
    replicas: Vec<Replica>,
    /// The redirector's view.
    view: Vec<u32>,
    /// Per member of the view, the epoch of the view it last joined.
    since: HashMap<u32, u64>,
    epoch: u64,
    /// The redirector's speaker book: who may speak for each connection.
    book: SpeakerBook,
    /// The book's clock at virtual time zero (it only compares instants).
    book_base: std::time::Instant,
    next_refresh: Instant,
    events: Vec<(Instant, Event)>,
    client_iface: Interface,
    client_dev: QueueDev,
    client_sockets: SocketSet<'static>,
    conns: Vec<ClientConn>,
    /// Open by SYN cookie (the hosts' way) rather than with the SYN-ACK hold.
    cookies: Option<CookieJar>,
    log: Vec<String>,
    /// `FT_TRACE=c`: the connection whose packets and grants the log shows (with
    /// `FT_TRACE_PROGRESS=1` its members' reports too; `FT_TRACE_ORDER=1` adds every stamp
    /// a replica hears from its primary and every answer to a new primary's sync).
    trace: Option<usize>,
    /// The service orders client bytes across its connections (`--order total`).
    total: bool,
    /// When the primaries send their recent stamps again.
    order_resend_at: Instant,
    /// Whether a partition cut a replica off (its messages were lost).
    partitioned_once: bool,
    /// A view sent to a replica was lost or came late: a host that just restarted may then
    /// drop its first client packets (it does not know yet that it is a member).
    views_disturbed: bool,
    /// New primaries' syncs that ended at their bound without every member's complete
    /// answer.
    sync_incomplete: u64,
    /// The chunks granted (over all replicas) at the last chunk-sequence check.
    chunks_checked: usize,
}

fn seg_text(s: &rewrite::Seg) -> String {
    format!(
        "seq={} ack={} len={} win={}{}{}{}{}",
        s.seq,
        s.ack,
        s.payload_len,
        s.window,
        if s.syn { " SYN" } else { "" },
        if s.ack_flag { "" } else { " noACK" },
        if s.fin { " FIN" } else { "" },
        if s.rst { " RST" } else { "" }
    )
}

const CLIENT_IP: [u8; 4] = [198, 18, 0, 2];
const SERVICE_IP: [u8; 4] = [198, 19, 0, 10];

fn key(port: u16) -> FlowKey {
    FlowKey {
        client: std::net::SocketAddrV4::new(CLIENT_IP.into(), port),
        service: std::net::SocketAddrV4::new(SERVICE_IP.into(), 80),
    }
}

fn bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next() as u8).collect()
}

impl Sim {
    fn new(seed: u64, total: bool) -> Sim {
        let mut rng = Rng(seed);
        let loss = [0.0, 0.01, 0.03, 0.05][rng.range(0, 4) as usize];
        let dup = [0.0, 0.01, 0.03][rng.range(0, 3) as usize];
        let ctl_loss = [0.0, 0.02, 0.1, 0.25][rng.range(0, 4) as usize];
        let ctl_dup = [0.0, 0.05, 0.2][rng.range(0, 3) as usize];
        let view_loss = [0.0, 0.1, 0.3, 0.6][rng.range(0, 4) as usize];
        let late = [0.0, 0.02, 0.1][rng.range(0, 3) as usize];
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
        let mut sockets = SocketSet::new(vec![]);
        let n_conns = rng.range(20, 25) as usize;
        // One big connection (~100 KB and more in total), some medium, the rest tiny: the
        // bytes, not the connections, cost the time.
        let big = 1;
        let mut conns = Vec::new();
        for i in 0..n_conns {
            let (banner_len, data_len) = if i < big {
                (rng.range(60_000, 110_000), rng.range(10_000, 40_000))
            } else if rng.chance(0.25) {
                (rng.range(0, 6_000), rng.range(0, 6_000))
            } else {
                (rng.range(0, 400), rng.range(0, 2_000))
            };
            let banner = bytes(&mut rng, banner_len as usize);
            let data = bytes(&mut rng, data_len as usize);
            let mut expected = banner.clone();
            expected.extend(data.iter().map(|b| transform(*b)));
            let close = [Close::Open, Close::Half, Close::AfterReply][rng.range(0, 3) as usize];
            let start = Instant::from_millis(rng.range(0, 300) as i64);
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            sock.set_nagle_enabled(false);
            let handle = sockets.add(sock);
            conns.push(ClientConn {
                handle,
                port: 40000 + i as u16,
                start,
                close,
                data,
                expected,
                banner,
                started: false,
                established: false,
                sent: 0,
                got: Vec::new(),
                got_checked: 0,
                fin_sent: false,
                done: false,
                start_view: Vec::new(),
                client_isn: None,
                isn_s: None,
                acked: None,
                speaker_checked: None,
                fenced_data_from: Vec::new(),
            });
        }
        let cookies = rng
            .chance(0.5)
            .then(|| CookieJar::from_cluster_key(&seed.to_be_bytes()));
        let mut events = Vec::new();
        let n_faults = rng.range(0, 4);
        let mut t = 0;
        let backend_faults = std::env::var_os("FT_NO_BACKEND_FAULTS").is_none();
        for _ in 0..n_faults {
            t += rng.range(2, 400);
            let who = if rng.chance(0.5) {
                Who::Primary
            } else {
                Who::Member(rng.next())
            };
            let ev = match rng.range(0, 10) {
                0..=3 => Event::Crash(who),
                4..=7 => {
                    // Short ones heal before the detector notices; long ones leave the view.
                    let d = if rng.chance(0.5) {
                        rng.range(2, 20)
                    } else {
                        rng.range(30, 300)
                    };
                    Event::Partition(who, Duration::from_millis(d))
                }
                _ if backend_faults => Event::Backend(
                    who,
                    if rng.chance(0.5) {
                        BackendFault::Reset
                    } else {
                        BackendFault::EarlyFin
                    },
                ),
                _ => continue,
            };
            events.push((Instant::from_millis(t as i64), ev));
            if matches!(ev, Event::Crash(_)) && rng.chance(0.7) {
                let back = t + rng.range(5, 300);
                events.push((Instant::from_millis(back as i64), Event::Restart));
            }
        }
        events.sort_by_key(|e| e.0);
        let mut sim = Sim {
            seed,
            rng,
            now: Instant::from_millis(0),
            net: BinaryHeap::new(),
            msgs: HashMap::new(),
            next_id: 0,
            loss,
            dup,
            ctl_loss,
            ctl_dup,
            view_loss,
            late,
            replicas: Vec::new(),
            view: Vec::new(),
            since: HashMap::new(),
            epoch: 0,
            book: SpeakerBook::new(65536),
            // The harness is the I/O shell: any instant will do as the book's origin.
            #[allow(clippy::disallowed_methods)]
            book_base: std::time::Instant::now(),
            next_refresh: Instant::from_millis(0),
            events,
            client_iface: iface,
            client_dev,
            client_sockets: sockets,
            conns,
            cookies,
            log: Vec::new(),
            trace: std::env::var("FT_TRACE").ok().and_then(|s| s.parse().ok()),
            total,
            order_resend_at: Instant::from_millis(0),
            partitioned_once: false,
            views_disturbed: false,
            sync_incomplete: 0,
            chunks_checked: 0,
        };
        for _ in 0..HOSTS {
            sim.add_replica();
        }
        // The hosts start with the first view already in place.
        for r in &mut sim.replicas {
            r.epoch = sim.epoch;
            r.view = Some(sim.view.clone());
            r.since = sim.view.iter().map(|m| sim.since[m]).collect();
        }
        sim
    }

    /// A new host (or a new incarnation of one): joins the view at its end.
    fn add_replica(&mut self) {
        let id = self.replicas.len() as u32;
        let rate = [usize::MAX, 20_000, 3_000][self.rng.range(0, 3) as usize];
        self.replicas.push(Replica {
            alive: true,
            partitioned: false,
            epoch: 0,
            view: None,
            heard: 0,
            since: Vec::new(),
            conns: (0..self.conns.len()).map(|_| None).collect(),
            held: vec![false; self.conns.len()],
            rate,
            backend_dead: None,
            left_view: None,
            seq: self.total.then(fresh_sequencer),
            chunks: Vec::new(),
            diverged: 0,
            abandoned: 0,
            synacks: SynAckRetry::default(),
        });
        self.view.push(id);
        self.new_view();
    }

    fn new_view(&mut self) {
        self.epoch += 1;
        let (view, epoch) = (&self.view, self.epoch);
        self.since.retain(|m, _| view.contains(m));
        for m in view {
            self.since.entry(*m).or_insert(epoch);
        }
        self.log.push(format!(
            "{} ms: view {} = {:?}",
            self.now.total_millis(),
            self.epoch,
            self.view
        ));
        self.broadcast_view();
    }

    fn broadcast_view(&mut self) {
        for to in 0..self.replicas.len() as u32 {
            if self.replicas[to as usize].alive {
                let m = Msg::View {
                    to,
                    epoch: self.epoch,
                    members: self.view.clone(),
                    since: self.view.iter().map(|m| self.since[m]).collect(),
                };
                self.send(Link::View, m);
            }
        }
    }

    fn cut_off(&self, r: Option<u32>) -> bool {
        r.is_some_and(|r| {
            let rep = &self.replicas[r as usize];
            !rep.alive || rep.partitioned
        })
    }

    fn send(&mut self, link: Link, m: Msg) {
        let (to, from) = m.ends();
        if self.cut_off(to) || self.cut_off(from) {
            return;
        }
        let (loss, dup) = match link {
            Link::Data => (self.loss, self.dup),
            Link::Control => (self.ctl_loss, self.ctl_dup),
            Link::View => (self.view_loss, self.ctl_dup),
        };
        if self.rng.chance(loss) {
            self.views_disturbed |= matches!(link, Link::View);
            if let Msg::ToReplica { to, conn, .. } = &m {
                if self.trace == Some(*conn) {
                    self.log.push(format!(
                        "{} us: conn {conn}: lost on the way to {to}",
                        self.now.total_micros()
                    ));
                }
            }
            return;
        }
        let copies = if self.rng.chance(dup) { 2 } else { 1 };
        for c in 0..copies {
            let mut delay = self.rng.range(100, 1500) as i64 + c * self.rng.range(0, 800) as i64;
            if !matches!(link, Link::Data) && self.rng.chance(self.late) {
                delay += self.rng.range(5_000, 80_000) as i64;
                self.views_disturbed |= matches!(link, Link::View);
            }
            let id = self.next_id;
            self.next_id += 1;
            self.net
                .push(Reverse((self.now.total_micros() + delay, id)));
            self.msgs.insert(id, m.clone());
        }
    }

    fn fail(&self, what: &str) -> ! {
        let keep = if self.trace.is_some() { 200_000 } else { 40 };
        let mut tail: Vec<_> = self.log.iter().rev().take(keep).rev().cloned().collect();
        for (i, r) in self.replicas.iter().enumerate() {
            tail.push(format!(
                "replica {i}: alive={} partitioned={} epoch={} view={:?} rate={} backend={:?} left_view={:?}",
                r.alive,
                r.partitioned,
                r.epoch,
                r.view,
                r.rate,
                r.backend_dead,
                r.left_view.map(|t| t.total_millis()),
            ));
        }
        panic!(
            "FT_SEED={}{} failed at t={} ms: {what}\nloss={} dup={} ctl_loss={} ctl_dup={} view_loss={} late={} cookies={} view={:?} epoch={}\nlast events:\n{}",
            self.seed,
            if self.total { " FT_TOTAL=1" } else { "" },
            self.now.total_millis(),
            self.loss,
            self.dup,
            self.ctl_loss,
            self.ctl_dup,
            self.view_loss,
            self.late,
            self.cookies.is_some(),
            self.view,
            self.epoch,
            tail.join("\n")
        );
    }

    /// Describes connection `c` everywhere (for a failure message).
    fn conn_state(&self, c: usize) -> String {
        let cc = &self.conns[c];
        let sock = self.client_sockets.get::<tcp::Socket>(cc.handle);
        let mut s = format!(
            "conn {c} (port {}): close={:?} start={} ms start_view={:?} client state={} got={}/{} sent={}/{} acked={:?} isn_s={:?}",
            cc.port,
            cc.close,
            cc.start.total_millis(),
            cc.start_view,
            sock.state(),
            cc.got.len(),
            cc.expected.len(),
            cc.sent,
            cc.data.len(),
            cc.acked,
            cc.isn_s,
        );
        for (i, r) in self.replicas.iter().enumerate() {
            if let Some(h) = r.conns[c].as_ref() {
                let f = &h.ft;
                s.push_str(&format!(
                    "\n  replica {i}: {:?} role={:?} retired={} input={} pending={} closed={} backend_dead={} shadow={} client_ack={:?} gate={:?} members={:?} stats={:?}",
                    f.state(),
                    f.role(),
                    f.is_retired(),
                    h.input.len(),
                    h.pending.len(),
                    h.closed,
                    h.backend_dead,
                    f.shadow_len(),
                    f.client_ack(),
                    f.gate(),
                    f.member_progress(),
                    f.stats,
                ));
            }
        }
        s
    }

    fn fail_conn(&self, c: usize, what: &str) -> ! {
        self.fail(&format!("{what}\n{}", self.conn_state(c)))
    }

    /// Replica `r` still counts for connection `c`: it was in the view when the client opened
    /// the connection and has not left the view since (README.md, "How ft mode works": a replica that leaves the
    /// view never returns for a connection; one that joins later never had it).
    fn is_member(&self, r: usize, c: usize) -> bool {
        let cc = &self.conns[c];
        cc.started
            && cc.start_view.contains(&(r as u32))
            && self.replicas[r].left_view.is_none_or(|t| t < cc.start)
    }

    /// Every member of connection `c` died or left (the view, or the connection: the book
    /// excluded it): nobody can carry it on. A member the speaker had excluded (it opened the
    /// connection with a stale view, uncounted by the speaker's gate) is as gone as one that
    /// left the view; the host crash that then takes the last one loses the connection
    /// (FT_SEED=1795979163921580: 0 excluded, 2's backend failed, 1 crashed).
    ///
    /// So is a member that never held it and no longer can: it missed every packet that
    /// opens it (it had no view yet when the client's SYN and first segments came), and the
    /// client sends none of those any more. The redirector still counts it, and no speaker is
    /// left to have it excluded (FT_SEED=1795995493970920: 3 joined, lost its first view,
    /// 0 and 1 crashed).
    ///
    /// So is a member whose backend is gone for the connection: a backend fault, or a total
    /// order it could not follow (FT_SEED=1796001808990000 FT_TOTAL=1: the last member had
    /// missed the connection's first stamps, its client packets lost, before the primary
    /// crashed). The host then resets the connection; the harness does not, and does not
    /// wait for it.
    fn is_lost(&self, c: usize) -> bool {
        self.conns[c].started
            && !(0..self.replicas.len()).any(|r| {
                let rep = &self.replicas[r];
                let holds = match rep.conns[c].as_ref() {
                    Some(h) => !h.backend_dead,
                    None => !rep.held[c] && self.could_open(c),
                };
                self.in_conn(r, c) && rep.alive && holds
            })
    }

    /// Whether a member that lacks connection `c` may still open it from the client's
    /// packets: the client still sends its SYN, or (SYN cookies) segments that complete the
    /// handshake (its first byte and our first byte unacknowledged).
    fn could_open(&self, c: usize) -> bool {
        let cc = &self.conns[c];
        let sock = self.client_sockets.get::<tcp::Socket>(cc.handle);
        if sock.state() == tcp::State::SynSent {
            return true;
        }
        let first = cc.client_isn.map(|i| i.plus(1));
        self.cookies.is_some()
            && cc.acked.is_none_or(|a| Some(a) == first)
            && sock.recv_queue() == 0
            && cc.got.is_empty()
    }

    /// The local `rcv_nxt` of replica `r` for connection `c` (every holder has the SYN).
    fn rcv_nxt(&self, r: usize, c: usize) -> Option<SeqNumber> {
        let h = self.replicas[r].conns[c].as_ref()?;
        h.ft.member_progress()
            .into_iter()
            .find(|(id, _)| id.is_none())
            .map(|(_, s)| s)
            .or(self.conns[c].client_isn.map(|i| i.plus(1)))
    }

    fn deliver(&mut self, m: Msg) {
        let (to, _) = m.ends();
        if self.cut_off(to) {
            return;
        }
        let now = self.now;
        match m {
            Msg::ToClient {
                from,
                epoch,
                conn,
                pkt,
            } => self.on_return_path(from, epoch, conn, pkt),
            Msg::ToReplica {
                to,
                epoch,
                conn,
                pkt,
            } => self.on_client_packet(to as usize, epoch, conn, pkt),
            Msg::View {
                to,
                epoch,
                members,
                since,
            } => {
                let rep = &mut self.replicas[to as usize];
                // The host keeps the newest view only. A member whose `since` changed was
                // out in between: a connection opened here before it came back sees a view
                // without it first (dataplane/views.rs, on_view).
                if epoch <= rep.epoch {
                    return;
                }
                let held = rep.view.as_deref().unwrap_or_default();
                let back: Vec<(u32, u64)> = held
                    .iter()
                    .zip(&rep.since)
                    .filter_map(|(m, s)| {
                        let (_, t) = members.iter().zip(&since).find(|(n, _)| *n == m)?;
                        (t != s).then_some((*m, *t))
                    })
                    .collect();
                for h in rep.conns.iter_mut().flatten() {
                    let without: Vec<u32> = members
                        .iter()
                        .copied()
                        .filter(|m| !back.iter().any(|(b, t)| b == m && *t > h.opened))
                        .collect();
                    if without.len() < members.len() {
                        h.ft.set_view(now, &without);
                    }
                }
                let old_primary = rep.view.as_ref().and_then(|v| v.first().copied());
                // Back in the view: its `since` changed, or the view it held did not name it.
                let rejoined = back.iter().any(|(m, _)| *m == to)
                    || rep.view.as_ref().is_some_and(|v| !v.contains(&to)) && members.contains(&to);
                rep.epoch = epoch;
                rep.view = Some(members.clone());
                rep.since = since;
                let new_primary = members.first().copied();
                let t =
                    self.book_base + std::time::Duration::from_micros(now.total_micros() as u64);
                if rejoined && rep.seq.is_some() {
                    // This replica was out of the view: its order is not the service's
                    // (dataplane/views.rs, on_view).
                    let mut q = fresh_sequencer();
                    if new_primary == Some(to) {
                        q.on_primary_changed(true, t);
                    }
                    rep.seq = Some(q);
                } else if let (Some(old), Some(new), Some(q)) =
                    (old_primary, new_primary, rep.seq.as_mut())
                {
                    if old != new {
                        // Total order across a failover (dataplane/views.rs, on_view).
                        q.on_primary_changed(new == to, t);
                    }
                }
                if let (Some(q), true) = (rep.seq.as_mut(), new_primary == Some(to)) {
                    let others: Vec<u32> = members.iter().copied().filter(|m| *m != to).collect();
                    q.sync_members(&others);
                }
                // Stamps carry their epoch (dataplane/views.rs, on_view: `set_epochs`).
                let joined = members
                    .iter()
                    .position(|m| *m == to)
                    .and_then(|i| rep.since.get(i));
                if let (Some(q), Some(&joined)) = (rep.seq.as_mut(), joined) {
                    q.set_epochs(epoch, joined);
                }
                for h in rep.conns.iter_mut().flatten() {
                    // dataplane/views.rs, apply_members: the members since before the open count.
                    let at_open: Vec<u32> = members
                        .iter()
                        .zip(&rep.since)
                        .filter(|(_, s)| **s <= h.opened)
                        .map(|(m, _)| *m)
                        .collect();
                    h.ft.count_members_at_open(&at_open);
                    h.ft.set_view(now, &members);
                    h.ft.set_view_stale(epoch < h.opened);
                    h.dirty = true;
                }
            }
            Msg::Progress { to, from, conn, p } => {
                if self.trace == Some(conn) && std::env::var_os("FT_TRACE_PROGRESS").is_some() {
                    self.log.push(format!(
                        "{} us: conn {conn} progress {from} -> {to}: {p:?}",
                        now.total_micros()
                    ));
                }
                if let Some(h) = self.replicas[to as usize].conns[conn].as_mut() {
                    let r = p.data_rcv();
                    h.peer_rcv = Some(h.peer_rcv.map_or(r, |x| x.max(r)));
                    h.ft.handle_progress(now, from, p);
                    h.dirty = true;
                }
            }
            Msg::Digest { to, from, conn, d } => {
                if let Some(h) = self.replicas[to as usize].conns[conn].as_mut() {
                    h.ft.handle_digest(from, d);
                    h.dirty = true;
                }
            }
            Msg::Repair {
                to,
                from,
                conn,
                pkt,
            } => {
                // Only members of the receiver's view may repair (dataplane/channel.rs, on_repair).
                let rep = &mut self.replicas[to as usize];
                if !rep.view.as_ref().is_some_and(|v| v.contains(&from)) {
                    return;
                }
                if let Some(h) = rep.conns[conn].as_mut() {
                    h.ft.handle_repair(now, &pkt);
                    h.dirty = true;
                } else if rewrite::parse(&pkt).is_some_and(|s| s.ack_flag && !s.syn) {
                    // The client's handshake ACK, forwarded by a member that holds the
                    // connection: taken as the client's own (its cookie must check).
                    if self.trace == Some(conn) {
                        self.log.push(format!(
                            "{} us: conn {conn} at {to}: handshake ACK forwarded by {from}",
                            now.total_micros()
                        ));
                    }
                    let epoch = rep.epoch;
                    self.on_client_packet(to as usize, epoch, conn, pkt);
                }
            }
            Msg::Request { from, conn, member } => {
                // The redirector decides by its own current view.
                let k = key(self.conns[conn].port);
                let t = self.book_now();
                let r = self.book.handle_request(t, from, k, member, &self.view);
                self.log.push(format!(
                    "{} ms: conn {conn}: replica {from} asks to exclude {member}: {r:?}, excluded {:?}",
                    now.total_millis(),
                    self.book.excluded(&k)
                ));
            }
            Msg::Notice { to, conn, excluded } => {
                let rep = &mut self.replicas[to as usize];
                // A host that does not hold the connection acknowledges the notice anyway.
                let count = match rep.conns[conn].as_mut() {
                    Some(h) => {
                        h.ft.handle_exclusions(now, &excluded);
                        h.dirty = true;
                        h.ft.exclusions_known()
                    }
                    None => excluded.len(),
                };
                let m = Msg::NoticeAck {
                    from: to,
                    conn,
                    count,
                };
                self.send(Link::Control, m);
            }
            Msg::NoticeAck { from, conn, count } => {
                let k = key(self.conns[conn].port);
                self.book.handle_ack(from, &k, count);
            }
            Msg::Order { to, from, stamps } => {
                // dataplane/total_order.rs, on_order: the primary's stamps, or a member's answer to us as
                // a new primary's sync.
                let t = self.std_time(now);
                let rep = &mut self.replicas[to as usize];
                let primary = rep.view.as_ref().and_then(|v| v.first().copied());
                let Some(q) = rep.seq.as_mut() else { return };
                let member_answer = primary == Some(to) && from != to;
                if member_answer {
                    if std::env::var_os("FT_TRACE_ORDER").is_some() {
                        self.log.push(format!(
                            "{} us: replica {to} sync answer from {from}: {stamps:?}",
                            now.total_micros()
                        ));
                    }
                    q.on_member_stamps(&stamps, t);
                } else if primary == Some(from) {
                    if std::env::var_os("FT_TRACE_ORDER").is_some() {
                        self.log.push(format!(
                            "{} us: replica {to} stamps from {from}: {:?}",
                            now.total_micros(),
                            stamps
                                .iter()
                                .map(|s| (s.stamp, s.key.client.port() - 40000, s.len))
                                .collect::<Vec<_>>()
                        ));
                    }
                    q.on_stamps(&stamps, t);
                }
            }
            Msg::OrderNeed { to, from, range } => {
                // dataplane/total_order.rs, on_order_repair: a backup's request to us as the primary, or
                // a new primary's sync.
                let rep = &mut self.replicas[to as usize];
                let primary = rep.view.as_ref().and_then(|v| v.first().copied());
                let Some(q) = rep.seq.as_mut() else { return };
                let mut synced = None;
                let answer = if primary == Some(to) {
                    Some(q.on_need(range.0, range.1))
                } else if primary == Some(from) && from != to {
                    synced = Some(q.delivered_end());
                    match q.on_need(range.0, range.1) {
                        a @ NeedAnswer::Stamps(_) => Some(a),
                        NeedAnswer::Gone { .. } => None,
                    }
                } else {
                    None
                };
                match answer {
                    Some(NeedAnswer::Stamps(stamps)) => {
                        let m = Msg::Order {
                            to: from,
                            from: to,
                            stamps,
                        };
                        self.send(Link::Control, m);
                    }
                    Some(NeedAnswer::Gone { oldest, next }) => {
                        let m = Msg::OrderGone {
                            to: from,
                            from: to,
                            oldest,
                            next,
                        };
                        self.send(Link::Control, m);
                    }
                    None => {}
                }
                if let Some(end) = synced {
                    let m = Msg::OrderSynced {
                        to: from,
                        from: to,
                        end,
                    };
                    self.send(Link::Control, m);
                }
            }
            Msg::OrderSynced { to, from, end } => {
                let rep = &mut self.replicas[to as usize];
                let primary = rep.view.as_ref().and_then(|v| v.first().copied());
                if let (Some(q), true) = (rep.seq.as_mut(), primary == Some(to) && from != to) {
                    q.on_member_synced(from, end);
                }
            }
            Msg::OrderGone {
                to,
                from,
                oldest,
                next,
            } => {
                let t = self.std_time(now);
                let ports: Vec<u16> = self.conns.iter().map(|c| c.port).collect();
                let rep = &mut self.replicas[to as usize];
                let primary = rep.view.as_ref().and_then(|v| v.first().copied());
                if primary != Some(from) || from == to {
                    return;
                }
                let held: Vec<FlowKey> = (0..ports.len())
                    .filter(|&c| rep.conns[c].is_some())
                    .map(|c| key(ports[c]))
                    .collect();
                if let Some(q) = rep.seq.as_mut() {
                    q.on_gone(oldest, next, &held, t);
                }
                self.abandon_order_losers(to as usize);
            }
        }
    }

    /// Virtual time `t` on the clock the book and the sequencers see.
    fn std_time(&self, t: Instant) -> std::time::Instant {
        self.book_base + std::time::Duration::from_micros(t.total_micros() as u64)
    }

    /// Replica `r`'s sequencer, as the host's loop runs it (dataplane/total_order.rs, `run_order` and
    /// `abandon_order_losers`): grants the next chunk where one may go, sends new stamps to
    /// the members of its view, asks for missing ones, and leaves the connections it can no
    /// longer follow.
    fn run_order(&mut self, r: usize) {
        let now = self.now;
        let std_now = self.std_time(now);
        let resend = now >= self.order_resend_at;
        let me = r as u32;
        let ports: Vec<u16> = self.conns.iter().map(|c| c.port).collect();
        let rep = &mut self.replicas[r];
        if !rep.alive || rep.seq.is_none() {
            return;
        }
        let primary = rep.view.as_ref().and_then(|v| v.first()) == Some(&me);
        if rep.heard > rep.epoch {
            // dataplane/total_order.rs, run_order: a replica whose view is behind the client's packets
            // grants nothing until the newer view comes.
            return;
        }
        let keys: Vec<FlowKey> = (0..ports.len())
            .filter(|&c| rep.conns[c].is_some())
            .map(|c| key(ports[c]))
            .collect();
        // Connections this member left: as the primary it stamps them on from where its own
        // stamps ended; as a backup it can no longer tell where they end.
        let mut left = Vec::new();
        for (c, h) in rep.conns.iter_mut().enumerate() {
            let Some(h) = h.as_mut() else { continue };
            if !h.ft.is_retired() || h.order_pos.is_some() || h.order_lost {
                continue;
            }
            left.push(key(ports[c]));
            if !primary {
                h.order_lost = true;
                continue;
            }
            let local = h.ft.local_data_rcv();
            let queued = h.ft.endpoint_ref().recv_queue() as u32;
            let credit = h.credit as u32;
            let passed = rep
                .seq
                .as_ref()
                .map_or(0, |q| q.passed_bytes(key(ports[c]))) as u32;
            h.order_pos = local.map(|r| {
                SeqNumber(
                    r.0.wrapping_sub(queued)
                        .wrapping_add(credit)
                        .wrapping_add(passed),
                )
            });
            h.order_lost = h.order_pos.is_none();
        }
        let q = rep.seq.as_mut().expect("checked above");
        for k in left {
            q.on_left(k, std_now);
        }
        let conns = &rep.conns;
        let view = |k: FlowKey| {
            let c = usize::from(k.client.port() - 40000);
            let h = conns.get(c)?.as_ref()?;
            if h.ft.is_retired() {
                let peer = match (h.peer_rcv, h.ft.local_data_rcv()) {
                    (Some(p), Some(l)) => Some(p.max(l)),
                    (p, l) => p.or(l),
                };
                let (true, Some(pos), Some(peer)) = (primary, h.order_pos, peer) else {
                    return None;
                };
                return Some(ConnView {
                    pending: if pos.lt(peer) {
                        peer.since(pos) as usize
                    } else {
                        0
                    },
                    answered: h.from_backend,
                });
            }
            if h.backend_dead || h.closed {
                return None;
            }
            Some(ConnView {
                pending: h.ft.endpoint_ref().recv_queue().saturating_sub(h.credit),
                answered: h.from_backend,
            })
        };
        let grant = q.next_grant(std_now, primary, &keys, view);
        let stuck = q.stuck(std_now, ORDER_STUCK_AFTER, primary, view);
        let (mut stamps, mut need, mut sync) = (None, None, None);
        if primary {
            sync = q.poll_sync(std_now);
            stamps = q.take_outbox();
            if stamps.is_none() && resend {
                let recent = q.recent();
                stamps = (!recent.is_empty()).then_some(recent);
            }
        } else {
            need = q.poll_need(std_now);
        }
        let st = q.take_stats();
        rep.diverged += st.diverged;
        rep.abandoned += st.abandoned;
        self.sync_incomplete += st.sync_incomplete;
        let notable = host_server::order::OrderStats {
            skipped: 0,
            asked: 0,
            served: 0,
            forgotten: 0,
            ..st
        };
        if notable != host_server::order::OrderStats::default() {
            let line = format!(
                "{} ms: replica {r}: total order: {notable:?}",
                now.total_millis()
            );
            self.log.push(line);
        }
        if let Some(why) = stuck {
            self.log.push(format!(
                "{} ms: replica {r}: total order has not moved for 2 s: {why}",
                now.total_millis()
            ));
        }
        if let Some((k, len)) = grant {
            let c = usize::from(k.client.port() - 40000);
            if self.trace == Some(c) {
                self.log.push(format!(
                    "{} us: conn {c}: replica {r} grants {len} bytes (primary {primary})",
                    now.total_micros()
                ));
            }
        }
        let rep = &mut self.replicas[r];
        if let Some((k, len)) = grant {
            let c = usize::from(k.client.port() - 40000);
            if let Some(h) = rep.conns[c].as_mut() {
                if let Some(pos) = h.order_pos.as_mut() {
                    // A connection this primary left: stamped for the others only.
                    *pos = pos.plus(len);
                    if let Some(q) = rep.seq.as_mut() {
                        q.on_delivered(k, len as usize, std_now);
                    }
                } else {
                    h.credit += len as usize;
                    h.dirty = true;
                    rep.chunks.push((c, len));
                }
            }
        }
        self.abandon_order_losers(r);
        let rep = &self.replicas[r];
        let members: Vec<u32> = rep.view.iter().flatten().copied().collect();
        let primary_id = members.first().copied();
        if let Some(st) = stamps {
            for &to in members.iter().filter(|m| **m != me) {
                let m = Msg::Order {
                    to,
                    from: me,
                    stamps: st.clone(),
                };
                self.send(Link::Control, m);
            }
        }
        // A new primary's sync goes to every member, a backup's request to its primary.
        let others: Vec<u32> = members.iter().copied().filter(|m| *m != me).collect();
        let asks = sync
            .map(|range| (range, others))
            .into_iter()
            .chain(need.zip(primary_id).map(|(range, p)| (range, vec![p])));
        for (range, tos) in asks {
            for to in tos {
                let m = Msg::OrderNeed {
                    to,
                    from: me,
                    range,
                };
                self.send(Link::Control, m);
            }
        }
    }

    /// The connections replica `r`'s sequencer can no longer follow: it leaves them as when
    /// its backend fails one (dataplane/total_order.rs, `abandon_order_losers`).
    fn abandon_order_losers(&mut self, r: usize) {
        let now = self.now;
        let rep = &mut self.replicas[r];
        let Some(q) = rep.seq.as_mut() else {
            return;
        };
        for k in q.take_abandoned() {
            let c = usize::from(k.client.port() - 40000);
            let Some(h) = rep.conns[c].as_mut() else {
                continue;
            };
            if !h.ft.is_retired() {
                self.log.push(format!(
                    "{} ms: conn {c}: replica {r} missed its total order and leaves it",
                    now.total_millis()
                ));
                h.ft.on_backend_failed(now);
            }
            h.backend_dead = true;
            h.pending.clear();
            h.dirty = true;
        }
    }

    /// Total order, at the end: every two live replicas granted their backends the same
    /// chunks (connection, length) in the same order, on the connections both hold and
    /// neither left; one sequence is a prefix of the other (order_sim.rs checks the
    /// sequencers alone the same way). A crashed replica's backend is not compared.
    fn check_total_order(&self) {
        if !self.total {
            return;
        }
        // A backup's past differs from a new primary's only when the primary's sync ended
        // without its complete answer (then it leaves every connection: the safety net):
        // the sync waits for every member's answer, up to its bound. Otherwise that net
        // must never be needed, loss or not: a sequencer that orders on its own is caught
        // here, not hidden by members leaving. (A partition that outlasts the detector cuts
        // a member out of the view; back, it starts its order afresh.)
        if self.sync_incomplete == 0 && !self.partitioned_once {
            if let Some(r) = (0..self.replicas.len()).find(|&r| self.replicas[r].diverged > 0) {
                self.fail(&format!(
                    "total order: replica {r}'s past differed from its primary's {} times without loss on the ack channel",
                    self.replicas[r].diverged
                ));
            }
        }
        // A member leaves a connection it cannot follow: one whose first stamps went by
        // before its client packets came (lost, late), or whose bytes never came. Without
        // any loss, nothing is late enough for that. A lost or late view is loss too: a host
        // that restarted drops the client packets that come before its first view, and
        // holds the connection only from the client's retransmission, long after its
        // stamps (FT_SEED=1796800000072692 FT_TOTAL=1).
        if self.ctl_loss == 0.0
            && self.loss == 0.0
            && !self.views_disturbed
            && !self.partitioned_once
        {
            if let Some(r) = (0..self.replicas.len()).find(|&r| self.replicas[r].abandoned > 0) {
                self.fail(&format!(
                    "total order: replica {r} left {} connections it could not follow, without loss",
                    self.replicas[r].abandoned
                ));
            }
        }
        self.check_chunk_sequences();
    }

    /// Total order, during the run: every two live replicas in the view granted their
    /// backends the same chunks (connection, length) in the same order, on the connections
    /// both hold and neither left; one sequence is a prefix of the other. Run after every
    /// step in which a replica granted a chunk (the sequences change at no other step), and
    /// at the end.
    fn check_chunk_sequences(&self) {
        // A member of the connection (in the view from the client's SYN on) that still
        // follows it. A replica out of the view since leaves the connection as soon as it
        // hears (a partition healed a moment ago): its chunks from when it was cut off, or
        // the old primary's last one its backups never got, are no longer the service's.
        let follows = |r: usize, c: usize| {
            self.is_member(r, c)
                && self.replicas[r].conns[c]
                    .as_ref()
                    .is_some_and(|h| !h.ft.is_retired() && !h.order_lost && !h.backend_dead)
        };
        // A replica cut off from the view (a partition that outlasted the detector) follows
        // nothing any more: it leaves every connection as soon as it hears.
        let live: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| {
                let rep = &self.replicas[r];
                rep.alive && !rep.partitioned && self.view.contains(&(r as u32))
            })
            .collect();
        for (i, &a) in live.iter().enumerate() {
            for &b in &live[i + 1..] {
                let shared = |c: usize| follows(a, c) && follows(b, c);
                let of = |r: usize| -> Vec<(usize, u32)> {
                    let chunks = self.replicas[r].chunks.iter().copied();
                    chunks.filter(|(c, _)| shared(*c)).collect()
                };
                let (sa, sb) = (of(a), of(b));
                let n = sa.len().min(sb.len());
                if let Some(i) = (0..n).find(|&i| sa[i] != sb[i]) {
                    self.fail(&format!(
                        "total order: replicas {a} and {b} granted different chunks at position {i} of the connections both follow: {:?} and {:?}",
                        &sa[i..(i + 3).min(sa.len())],
                        &sb[i..(i + 3).min(sb.len())]
                    ));
                }
            }
        }
    }

    /// The speaker book's clock now.
    fn book_now(&self) -> std::time::Instant {
        self.book_base + std::time::Duration::from_micros(self.now.total_micros() as u64)
    }

    /// Whether the redirector's book excluded replica `r` from connection `c`.
    fn excluded(&self, r: usize, c: usize) -> bool {
        self.book
            .excluded(&key(self.conns[c].port))
            .contains(&(r as u32))
    }

    /// Replica `r` is a member of connection `c` that the redirector may still make its
    /// speaker: a member ([`Sim::is_member`]) the book has not excluded.
    fn in_conn(&self, r: usize, c: usize) -> bool {
        self.is_member(r, c) && !self.excluded(r, c)
    }

    /// Whether the redirector admits a packet of connection `c` from replica `r` now.
    fn admits(&self, r: u32, epoch: u64, c: usize) -> bool {
        epoch == self.epoch && self.book.may_speak(&key(self.conns[c].port), &self.view, r)
    }

    /// The redirector sends the notices that are due.
    fn run_redirector(&mut self) {
        let t = self.book_now();
        let view = self.view.clone();
        let notices = self.book.poll_notices(t, |_| Some(&view));
        for (to, k, excluded) in notices {
            let conn = usize::from(k.client.port() - 40000);
            self.send(Link::Control, Msg::Notice { to, conn, excluded });
        }
    }

    /// The redirector's return path, then the client's network.
    fn on_return_path(&mut self, from: u32, epoch: u64, c: usize, pkt: Vec<u8>) {
        // Fencing: the current epoch, and the connection's speaker by the book only.
        if !self.admits(from, epoch, c) {
            return;
        }
        let Some(seg) = rewrite::parse(&pkt) else {
            return;
        };
        if seg.rst {
            self.fail_conn(
                c,
                &format!("the client received a reset from replica {from}"),
            );
        }
        if seg.syn && seg.ack_flag && self.conns[c].isn_s.is_none() {
            self.conns[c].isn_s = Some(seg.seq);
        }
        if self.dup_ack_idles_client_fin(c, &seg) {
            // The client stands in for a kernel TCP, which retransmits a lost FIN on its
            // timer whatever duplicate ACKs arrive. smoltcp's client idles its timer for good
            // after three duplicate ACKs while only its FIN is outstanding (docs/smoltcp-notes.md,
            // "Timers"): its network keeps such duplicates (network copies, a new speaker's
            // first ACK) from it, so that its FIN is resent as a kernel's would be.
            if self.trace == Some(c) {
                self.log.push(format!(
                    "{} us: conn {c} -> client from {from}: duplicate ACK kept from a FIN-waiting client: {}",
                    self.now.total_micros(),
                    seg_text(&seg)
                ));
            }
            return;
        }
        if seg.ack_flag && !seg.syn {
            // Atomicity: the sender holds what it acknowledges, and so does every member
            // that could still be promoted for the connection.
            let counted: Option<Vec<u32>> = self.replicas[from as usize].conns[c]
                .as_ref()
                .map(|h| h.ft.members().to_vec());
            for r in 0..self.replicas.len() {
                let rep = &self.replicas[r];
                let holds = rep.conns[c].as_ref().is_some_and(|h| !h.ft.is_retired());
                if !(rep.alive && holds && self.in_conn(r, c)) {
                    continue;
                }
                let uncounted = r != from as usize
                    && counted.as_ref().is_some_and(|m| !m.contains(&(r as u32)));
                if uncounted && UNCOUNTED_HOLDERS_CHECKED_WHEN_THEY_SPEAK {
                    continue;
                }
                let rcv = self.rcv_nxt(r, c);
                if !rcv.is_some_and(|x| seg.ack.le(x)) {
                    let msg = format!(
                        "client sees ack {} (from replica {from}) but member {r} holds only {rcv:?}",
                        seg.ack
                    );
                    self.fail_conn(c, &msg);
                }
            }
            let cc = &mut self.conns[c];
            cc.acked = Some(cc.acked.map_or(seg.ack, |a| a.max(seg.ack)));
        }
        if self.trace == Some(c) {
            self.log.push(format!(
                "{} us: conn {c} -> client from {from}: {}",
                self.now.total_micros(),
                seg_text(&seg)
            ));
        }
        self.client_dev.rx.push_back(pkt);
    }

    /// Whether `seg` is a duplicate pure ACK for a client of connection `c` whose only
    /// unacknowledged segment is its FIN (see `on_return_path`).
    fn dup_ack_idles_client_fin(&self, c: usize, seg: &rewrite::Seg) -> bool {
        let cc = &self.conns[c];
        let sock = self.client_sockets.get::<tcp::Socket>(cc.handle);
        let fin_waits = matches!(
            sock.state(),
            tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
        );
        // Every data byte acknowledged, the FIN not (smoltcp keeps unacknowledged bytes in
        // its send buffer): an ACK that does not cover the FIN repeats the last one.
        let Some(isn) = cc.client_isn else {
            return false;
        };
        let fin = isn.plus(1 + cc.sent as u32);
        fin_waits
            && sock.send_queue() == 0
            && seg.ack_flag
            && seg.payload_len == 0
            && !(seg.syn || seg.fin || seg.rst)
            && seg.ack.le(fin)
    }

    /// A client packet reaches host `r` (dataplane/mod.rs, on_client_packet).
    fn on_client_packet(&mut self, r: usize, epoch: u64, c: usize, pkt: Vec<u8>) {
        let now = self.now;
        let seed = self.seed;
        let std_now = self.std_time(now);
        let rep = &mut self.replicas[r];
        rep.heard = rep.heard.max(epoch);
        if rep.conns[c].is_none() {
            // No view yet: the host is no member and drops it.
            let Some(members) = rep.view.clone() else {
                return;
            };
            let Some(seg) = rewrite::parse(&pkt) else {
                return;
            };
            let k = key(self.conns[c].port);
            let cseed = seed ^ ((r as u64 + 1) * 7919) ^ ((c as u64) << 32);
            let ft = match &self.cookies {
                None if seg.syn && !seg.ack_flag => FtConn::new(
                    k,
                    FtConfig::default(),
                    SIM_EP,
                    cseed,
                    now,
                    r as u32,
                    &members,
                ),
                None => return,
                Some(jar) if seg.syn && !seg.ack_flag => {
                    // Stateless: only the first member of the host's view answers.
                    if members.first() == Some(&(r as u32)) {
                        let opts = SynOpts::of_syn(&seg);
                        let isn = jar.isn(k, seg.seq, opts, COOKIE_NOW);
                        let synack =
                            syncookie::synack(k, seg.seq, isn, opts, SIM_EP.mtu, SIM_EP.rx_buffer);
                        rep.synacks.sent(k, synack.clone(), std_now);
                        let m = Msg::ToClient {
                            from: r as u32,
                            epoch: rep.epoch,
                            conn: c,
                            pkt: synack,
                        };
                        self.send(Link::Data, m);
                    }
                    return;
                }
                Some(jar) => {
                    if !seg.ack_flag || seg.rst {
                        return;
                    }
                    let client_isn = seg.seq.minus(1);
                    let isn_s = seg.ack.minus(1);
                    let Some(opts) = jar.check(k, client_isn, isn_s, COOKIE_NOW) else {
                        return;
                    };
                    let syn = syncookie::rebuild_syn(k, client_isn, opts);
                    rep.synacks.opened(k);
                    FtConn::accept(
                        k,
                        FtConfig::default(),
                        SIM_EP,
                        cseed,
                        now,
                        r as u32,
                        &members,
                        &syn,
                        isn_s,
                    )
                }
            };
            let mut h = HostConn {
                ft,
                opened: epoch,
                input: Vec::new(),
                input_checked: 0,
                pending: self.conns[c].banner.iter().copied().collect(),
                backend_dead: false,
                reset_on_input: false,
                closed: false,
                dirty: true,
                next_at: None,
                credit: 0,
                from_backend: 0,
                peer_rcv: None,
                order_pos: None,
                order_lost: false,
            };
            // dataplane/mod.rs, open: a view older than the opening packet.
            h.ft.set_view_stale(rep.epoch < epoch);
            // A backend that is down refuses the connection: the host fails it at once.
            if let Some(how) = rep.backend_dead {
                backend_fails(&mut h, how, now);
            }
            rep.conns[c] = Some(h);
            rep.held[c] = true;
        }
        if let Some(h) = rep.conns[c].as_mut() {
            h.ft.handle_client_packet(now, &pkt);
            h.dirty = true;
            if self.trace == Some(c) {
                let line = format!(
                    "{} us: conn {c} at {r}: {} -> {:?} {:?} role={:?}",
                    now.total_micros(),
                    rewrite::parse(&pkt)
                        .map(|s| seg_text(&s))
                        .unwrap_or_default(),
                    h.ft.state(),
                    h.ft.member_progress().first(),
                    h.ft.role()
                );
                self.log.push(line);
            }
        }
    }

    /// Runs host `r`'s connections that have something to do, as its event loop would.
    fn run_replica(&mut self, r: usize) {
        let now = self.now;
        if !self.replicas[r].alive {
            return;
        }
        // Cookie SYN-ACKs due again (dataplane/mod.rs, resend_synacks): only while the handshake
        // is open here and this replica still answers SYNs (its view's first member).
        let std_now = self.std_time(now);
        let rep = &mut self.replicas[r];
        let due = rep.synacks.due(std_now);
        let first = rep.view.as_ref().and_then(|v| v.first().copied()) == Some(r as u32);
        let epoch = rep.epoch;
        for (k, pkt) in due {
            let c = usize::from(k.client.port() - 40000);
            if first && self.replicas[r].conns[c].is_none() {
                if self.trace == Some(c) {
                    self.log.push(format!(
                        "{} us: conn {c}: replica {r} sends its SYN-ACK again",
                        now.total_micros()
                    ));
                }
                let m = Msg::ToClient {
                    from: r as u32,
                    epoch,
                    conn: c,
                    pkt,
                };
                self.send(Link::Data, m);
            }
        }
        let (total, std_now) = (self.total, self.std_time(now));
        for c in 0..self.conns.len() {
            let k = key(self.conns[c].port);
            let rep = &mut self.replicas[r];
            let rate = rep.rate;
            let Some(h) = rep.conns[c].as_mut() else {
                continue;
            };
            if !(h.dirty || busy(h, total) || h.next_at.is_some_and(|t| t <= now)) {
                continue;
            }
            h.dirty = false;
            let taken = bridge(h, rate, now, total);
            if let (true, Some(q)) = (taken > 0, rep.seq.as_mut()) {
                q.on_delivered(k, taken, std_now);
            }
            let f = &mut h.ft;
            f.poll(now);
            let out = f.take_to_client();
            let progress = f.take_progress(now);
            let repairs = f.take_repairs();
            let digests = f.take_digests();
            let requests = f.take_exclusion_requests(now);
            h.next_at = f.poll_at(now);
            let epoch = rep.epoch;
            // The ack channel goes to the members of the sender's own view.
            let peers: Vec<u32> = rep
                .view
                .iter()
                .flatten()
                .copied()
                .filter(|&x| x != r as u32)
                .collect();
            let me = r as u32;
            for member in requests {
                let m = Msg::Request {
                    from: me,
                    conn: c,
                    member,
                };
                self.send(Link::Control, m);
            }
            for d in digests {
                for &to in &peers {
                    let m = Msg::Digest {
                        to,
                        from: me,
                        conn: c,
                        d,
                    };
                    self.send(Link::Control, m);
                }
            }
            for (to, pkt) in repairs {
                if peers.contains(&to) {
                    let m = Msg::Repair {
                        to,
                        from: me,
                        conn: c,
                        pkt,
                    };
                    self.send(Link::Control, m);
                }
            }
            if let Some(p) = progress {
                for &to in &peers {
                    let m = Msg::Progress {
                        to,
                        from: me,
                        conn: c,
                        p,
                    };
                    self.send(Link::Control, m);
                }
            }
            let speaks = self.admits(me, epoch, c)
                && self.replicas[r].conns[c]
                    .as_ref()
                    .is_some_and(|h| h.ft.role() == Role::Primary && !h.ft.is_retired());
            if speaks && self.conns[c].speaker_checked != Some(me) {
                self.check_first_data(r, c, &out);
            }
            if !speaks
                && out
                    .iter()
                    .any(|p| rewrite::parse(p).is_some_and(|s| s.payload_len > 0))
            {
                // Sent while its epoch is behind the redirector's (or before the view that
                // makes it primary reached the redirector): fenced, or lost.
                let cc = &mut self.conns[c];
                if !cc.fenced_data_from.contains(&me) {
                    cc.fenced_data_from.push(me);
                }
            }
            if speaks && !out.is_empty() {
                // The speaker holds every byte the client saw acknowledged.
                let own = self.rcv_nxt(r, c);
                if let Some(seen) = self.conns[c].acked {
                    if !own.is_some_and(|o| seen.le(o)) {
                        let msg = format!(
                            "replica {r} speaks, the client saw {seen} acknowledged, but it holds only {own:?}"
                        );
                        self.fail_conn(c, &msg);
                    }
                }
            }
            for pkt in out {
                let m = Msg::ToClient {
                    from: me,
                    epoch,
                    conn: c,
                    pkt,
                };
                self.send(Link::Data, m);
            }
        }
    }

    /// A new speaker's first data segment starts at or before the client's next byte: a hole
    /// there would wait for a retransmission timer (issue #10, defect 4).
    fn check_first_data(&mut self, r: usize, c: usize, out: &[Vec<u8>]) {
        let Some(seg) = out
            .iter()
            .filter_map(|p| rewrite::parse(p))
            .find(|s| s.payload_len > 0 && !s.syn)
        else {
            return;
        };
        let cc = &self.conns[c];
        // The opening primary, before its SYN-ACK reached the client, has nothing to check.
        // Nor has a speaker whose earlier data the redirector fenced (its epoch was behind):
        // that hole is the fence's, and its retransmission timer fills it.
        let fenced = cc.fenced_data_from.contains(&(r as u32));
        if let (Some(isn), false) = (cc.isn_s, fenced) {
            let sock = self.client_sockets.get::<tcp::Socket>(cc.handle);
            let got = cc.got.len() + sock.recv_queue();
            let next = isn.plus(1 + got as u32);
            if next.lt(seg.seq) {
                let msg = format!(
                    "new speaker {r} first sent {} while the client expects {next}",
                    seg.seq
                );
                self.fail_conn(c, &msg);
            }
        }
        self.conns[c].speaker_checked = Some(r as u32);
    }

    fn run_client(&mut self) {
        let now = self.now;
        for c in 0..self.conns.len() {
            let cc = &mut self.conns[c];
            if !cc.started && cc.start <= now {
                cc.started = true;
                cc.start_view = self.view.clone();
                let sock = self.client_sockets.get_mut::<tcp::Socket>(cc.handle);
                sock.connect(
                    self.client_iface.context(),
                    (IpAddress::v4(198, 19, 0, 10), 80),
                    cc.port,
                )
                .unwrap();
                self.log.push(format!(
                    "{} ms: conn {c} opens, view {:?}",
                    now.total_millis(),
                    self.view
                ));
            }
        }
        self.client_iface
            .poll(now, &mut self.client_dev, &mut self.client_sockets);
        for c in 0..self.conns.len() {
            if !self.conns[c].started || self.conns[c].done {
                continue;
            }
            let lost = self.is_lost(c);
            let cc = &mut self.conns[c];
            let sock = self.client_sockets.get_mut::<tcp::Socket>(cc.handle);
            if sock.state() == tcp::State::Established {
                cc.established = true;
            }
            if sock.state() == tcp::State::Closed && !lost {
                self.fail_conn(c, "client connection closed (reset or abort)");
            }
            while sock.can_recv() {
                let got = &mut cc.got;
                let _ = sock.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            if sock.may_send() && cc.sent < cc.data.len() {
                if let Ok(n) = sock.send_slice(&cc.data[cc.sent..]) {
                    cc.sent += n;
                }
            }
            let close = match cc.close {
                Close::Open => false,
                Close::Half => cc.sent == cc.data.len(),
                Close::AfterReply => cc.sent == cc.data.len() && cc.got.len() == cc.expected.len(),
            };
            if close && cc.established && !cc.fin_sent {
                sock.close();
                cc.fin_sent = true;
                self.log.push(format!(
                    "{} ms: conn {c}: client closes ({:?})",
                    now.total_millis(),
                    cc.close
                ));
            }
        }
        self.client_iface
            .poll(now, &mut self.client_dev, &mut self.client_sockets);
        let out: Vec<_> = self.client_dev.tx.drain(..).collect();
        for pkt in out {
            let Some(seg) = rewrite::parse(&pkt) else {
                continue;
            };
            let port = u16::from_be_bytes([pkt[20], pkt[21]]);
            let c = usize::from(port - 40000);
            if seg.syn && self.conns[c].client_isn.is_none() {
                self.conns[c].client_isn = Some(seg.seq);
            }
            if self.trace == Some(c) {
                self.log.push(format!(
                    "{} us: conn {c} client -> {:?}: {}",
                    self.now.total_micros(),
                    self.view,
                    seg_text(&seg)
                ));
            }
            // The redirector multicasts to the current view.
            for to in self.view.clone() {
                let m = Msg::ToReplica {
                    to,
                    epoch: self.epoch,
                    conn: c,
                    pkt: pkt.clone(),
                };
                self.send(Link::Data, m);
            }
        }
    }

    fn check(&mut self) {
        for c in 0..self.conns.len() {
            let cc = &self.conns[c];
            if !cc.started || cc.done {
                continue;
            }
            // Only the bytes that came since the last step need comparing.
            let from = cc.got_checked;
            if cc.got.len() > cc.expected.len() || cc.got[from..] != cc.expected[from..cc.got.len()]
            {
                let at = cc
                    .got
                    .iter()
                    .zip(&cc.expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(cc.expected.len());
                self.fail_conn(
                    c,
                    &format!("client stream differs from the backend output at byte {at}"),
                );
            }
            // At most one speaker: alive, at the redirector's epoch, in its view, not excluded
            // by its book, primary.
            let speakers: Vec<usize> = (0..self.replicas.len())
                .filter(|&r| {
                    let rep = &self.replicas[r];
                    rep.alive
                        && rep.epoch == self.epoch
                        && self.view.contains(&(r as u32))
                        && !self.excluded(r, c)
                        && rep.conns[c]
                            .as_ref()
                            .is_some_and(|h| h.ft.role() == Role::Primary && !h.ft.is_retired())
                })
                .collect();
            if speakers.len() > 1 {
                self.fail_conn(
                    c,
                    &format!("two replicas speak for the connection: {speakers:?}"),
                );
            }
            let backend_failed = self.replicas.iter().any(|r| r.backend_dead.is_some());
            for r in 0..self.replicas.len() {
                let Some(h) = self.replicas[r].conns[c].as_ref() else {
                    continue;
                };
                let inp = &h.input;
                let from = h.input_checked;
                if inp.len() > cc.sent || inp[from..] != cc.data[from..inp.len()] {
                    self.fail_conn(
                        c,
                        &format!("backend {r} input is not a prefix of the client's bytes"),
                    );
                }
                if !(self.replicas[r].alive && self.view.contains(&(r as u32))) {
                    continue;
                }
                let mut a = h.ft.agreement();
                // A member whose backend ended early is divergent by design (issue #14).
                a.divergent.retain(|m| {
                    self.replicas
                        .get(*m as usize)
                        .is_none_or(|x| x.backend_dead.is_none())
                });
                if (a.mismatched > 0 && !backend_failed) || !a.divergent.is_empty() {
                    self.fail_conn(
                        c,
                        &format!("replica {r} saw deterministic output differ: {a:?}"),
                    );
                }
            }
        }
    }

    /// Remembers how far the prefix checks got.
    fn checked(&mut self) {
        for cc in &mut self.conns {
            cc.got_checked = cc.got.len();
        }
        for r in &mut self.replicas {
            for h in r.conns.iter_mut().flatten() {
                h.input_checked = h.input.len();
            }
        }
    }

    fn is_done(&mut self, c: usize) -> bool {
        let cc = &self.conns[c];
        if cc.done {
            return true;
        }
        let state = self.client_sockets.get::<tcp::Socket>(cc.handle).state();
        let closed = match cc.close {
            Close::Open => true,
            _ => cc.fin_sent && matches!(state, tcp::State::TimeWait | tcp::State::Closed),
        };
        let done = cc.established
            && closed
            && cc.got.len() == cc.expected.len()
            && cc.sent == cc.data.len()
            && (0..self.replicas.len()).all(|r| {
                let rep = &self.replicas[r];
                let Some(h) = rep.conns[c].as_ref() else {
                    return true;
                };
                !(rep.alive && self.in_conn(r, c))
                    || h.backend_dead
                    || h.ft.is_retired()
                    || h.input.len() == cc.data.len()
            });
        if done {
            self.conns[c].done = true;
            self.log
                .push(format!("{} ms: conn {c} done", self.now.total_millis()));
        }
        done
    }

    fn done(&mut self) -> bool {
        let mut all = true;
        for c in 0..self.conns.len() {
            if !(self.is_done(c) || self.is_lost(c)) {
                all = false;
            }
        }
        all
    }

    /// Replicas in the view that are alive, reachable and have a working backend.
    fn healthy(&self) -> Vec<u32> {
        self.view
            .iter()
            .copied()
            .filter(|&r| {
                let rep = &self.replicas[r as usize];
                rep.alive && !rep.partitioned && rep.backend_dead.is_none()
            })
            .collect()
    }

    fn pick(&self, who: Who) -> Option<usize> {
        let h = self.healthy();
        // A fault never takes the last healthy member: then nobody could serve anything.
        if h.len() <= 1 {
            return None;
        }
        let r = match who {
            Who::Primary => self.view[0],
            Who::Member(x) => self.view[(x % self.view.len() as u64) as usize],
        };
        h.contains(&r).then_some(r as usize)
    }

    fn detect_later(&mut self, r: usize) {
        let at = self.now + DETECT;
        self.events.push((at, Event::Detect(r as u32)));
        self.events.sort_by_key(|e| e.0);
    }

    fn leave_view(&mut self, r: u32) {
        if self.view.contains(&r) {
            self.view.retain(|&x| x != r);
            self.replicas[r as usize].left_view = Some(self.now);
            self.new_view();
        }
    }

    fn faults(&mut self) {
        let now = self.now;
        while let Some(&(t, ev)) = self.events.first() {
            if t > now {
                break;
            }
            self.events.remove(0);
            match ev {
                Event::Crash(who) => {
                    let Some(r) = self.pick(who) else { continue };
                    let rep = &mut self.replicas[r];
                    rep.alive = false;
                    for h in &mut rep.conns {
                        *h = None;
                    }
                    self.log
                        .push(format!("{} ms: crash replica {r}", now.total_millis()));
                    self.detect_later(r);
                }
                Event::Partition(who, d) => {
                    let Some(r) = self.pick(who) else { continue };
                    self.replicas[r].partitioned = true;
                    self.partitioned_once = true;
                    self.log.push(format!(
                        "{} ms: partition replica {r} for {} ms",
                        now.total_millis(),
                        d.total_millis()
                    ));
                    self.detect_later(r);
                    self.events.push((now + d, Event::Heal(r as u32)));
                    self.events.sort_by_key(|e| e.0);
                }
                Event::Backend(who, how) => {
                    let Some(r) = self.pick(who) else { continue };
                    // Never the last member of an open connection with a working backend:
                    // then nobody could serve it (as for host crashes).
                    let last = (0..self.conns.len()).any(|c| {
                        !self.conns[c].done
                            && self.is_member(r, c)
                            && !(0..self.replicas.len()).any(|o| {
                                o != r
                                    && self.in_conn(o, c)
                                    && self.replicas[o].alive
                                    && self.replicas[o].backend_dead.is_none()
                            })
                    });
                    if last {
                        continue;
                    }
                    let rep = &mut self.replicas[r];
                    rep.backend_dead = Some(how);
                    for h in rep.conns.iter_mut().flatten() {
                        backend_fails(h, how, now);
                    }
                    self.log.push(format!(
                        "{} ms: backend of replica {r} fails: {how:?}",
                        now.total_millis()
                    ));
                    // Its host's health check is refused and withdraws the service: the
                    // redirector drops it from the view (its host lives on, fenced).
                    self.events
                        .push((now + Duration::from_millis(30), Event::Detect(r as u32)));
                    self.events.sort_by_key(|e| e.0);
                }
                Event::Detect(r) => {
                    let rep = &self.replicas[r as usize];
                    if !rep.alive || rep.partitioned || rep.backend_dead.is_some() {
                        self.leave_view(r);
                    }
                }
                Event::Heal(r) => {
                    let rep = &mut self.replicas[r as usize];
                    rep.partitioned = false;
                    self.log
                        .push(format!("{} ms: replica {r} heals", now.total_millis()));
                    // Its heartbeats come back: it joins the view again, at its end.
                    if rep.alive && rep.backend_dead.is_none() && !self.view.contains(&r) {
                        self.view.push(r);
                        self.new_view();
                    }
                }
                Event::Restart => {
                    let id = self.replicas.len();
                    self.log.push(format!(
                        "{} ms: a host restarts as replica {id}",
                        now.total_millis()
                    ));
                    self.add_replica();
                }
            }
        }
        if now >= self.next_refresh {
            self.next_refresh = now + VIEW_REFRESH;
            self.broadcast_view();
        }
    }

    fn next_time(&mut self) -> Instant {
        let now = self.now;
        let mut t = now + Duration::from_millis(200);
        if let Some(Reverse((at, _))) = self.net.peek() {
            t = t.min(Instant::from_micros(*at));
        }
        if let Some(x) = self.client_iface.poll_at(now, &self.client_sockets) {
            t = t.min(x);
        }
        for c in &self.conns {
            if !c.started {
                t = t.min(c.start);
            }
        }
        for r in &self.replicas {
            if !r.alive {
                continue;
            }
            for h in r.conns.iter().flatten() {
                if let Some(x) = h.next_at {
                    t = t.min(x);
                }
                if busy(h, self.total) {
                    t = t.min(now + Duration::from_micros(200));
                }
            }
        }
        if let Some(&(x, _)) = self.events.first() {
            t = t.min(x);
        }
        t = t.min(self.next_refresh);
        if self.total {
            t = t.min(self.order_resend_at);
            for r in self.replicas.iter().filter(|r| r.alive) {
                let Some(q) = r.seq.as_ref() else { continue };
                let at = if q.busy() {
                    Some(now + Duration::from_millis(1))
                } else {
                    q.wake_at().map(|w| {
                        let us = w.saturating_duration_since(self.book_base).as_micros() as i64;
                        Instant::from_micros(us)
                    })
                };
                if let Some(x) = at {
                    t = t.min(x);
                }
            }
        }
        if let Some(at) = self.book.poll_at() {
            let us = at.saturating_duration_since(self.book_base).as_micros() as i64;
            t = t.min(Instant::from_micros(us));
        }
        for r in self.replicas.iter().filter(|r| r.alive) {
            if let Some(at) = r.synacks.wake_at() {
                let us = at.saturating_duration_since(self.book_base).as_micros() as i64;
                t = t.min(Instant::from_micros(us));
            }
        }
        t.max(now + Duration::from_micros(50))
    }

    fn run(mut self) {
        // The client's retransmission timer backs off past a minute. In
        // FT_SEED=1796800000091391 its FIN went at 3, 7, 15, 31 and 63 s and was lost on the
        // way to the primary each time but the first (which came before the bytes under it,
        // and smoltcp dropped it); it would go again at 127 s. A limit of 120 s judged that a
        // hang; a kernel server behind that link would wait as long.
        let limit = Instant::from_secs(200);
        let mut steps = 0u64;
        while !self.done() {
            steps += 1;
            if self.now > limit || steps > 3_000_000 {
                let open: Vec<String> = (0..self.conns.len())
                    .filter(|&c| !self.conns[c].done && !self.is_lost(c))
                    .take(2)
                    .map(|c| self.conn_state(c))
                    .collect();
                self.fail(&format!(
                    "did not complete within 200 s of virtual time\n{}",
                    open.join("\n")
                ));
            }
            self.faults();
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
            for r in 0..self.replicas.len() {
                self.run_order(r);
                self.run_replica(r);
            }
            if self.now >= self.order_resend_at {
                self.order_resend_at = self.now + ORDER_RESEND_EVERY;
            }
            self.run_client();
            self.check();
            self.checked();
            if self.total {
                let granted: usize = self.replicas.iter().map(|r| r.chunks.len()).sum();
                if granted != self.chunks_checked {
                    self.check_chunk_sequences();
                    self.chunks_checked = granted;
                }
            }
            self.now = self.next_time();
        }
        self.check_total_order();
        if std::env::var("FT_SEED").is_ok() {
            if self.total {
                let chunks: Vec<usize> = self.replicas.iter().map(|r| r.chunks.len()).collect();
                println!("total order: chunks granted per replica {chunks:?}");
            }
            let lost = (0..self.conns.len()).filter(|&c| self.is_lost(c)).count();
            println!(
                "seed {} done at {} ms after {steps} steps: {} connections ({lost} lost with all their members)\n{}",
                self.seed,
                self.now.total_millis(),
                self.conns.len(),
                self.log.join("\n")
            );
        }
    }
}

/// The host's bridge for one connection: client bytes to the backend, its answers back, its
/// close after the client's FIN.
/// Whether the host's bridge has bytes to move for `h` (in total order, client bytes only as
/// far as granted).
fn busy(h: &HostConn, total: bool) -> bool {
    !h.pending.is_empty() || (h.ft.endpoint_ref().recv_queue() > 0 && (!total || h.credit > 0))
}

/// In total order the backend takes only the bytes the sequencer granted (`credit`).
/// Returns how many client bytes the backend took.
fn bridge(h: &mut HostConn, rate: usize, now: Instant, total: bool) -> usize {
    if h.reset_on_input && h.ft.endpoint_ref().recv_queue() > 0 {
        h.reset_on_input = false;
        h.ft.on_backend_failed(now);
    }
    let rate = if h.backend_dead { 0 } else { rate };
    let limit = if total { h.credit } else { usize::MAX };
    let input = &mut h.input;
    let pending = &mut h.pending;
    let taken = h.ft.endpoint().recv_into(|buf| {
        let n = buf.len().min(rate).min(limit);
        input.extend_from_slice(&buf[..n]);
        pending.extend(buf[..n].iter().map(|b| transform(*b)));
        n
    });
    if total {
        h.credit -= taken.min(h.credit);
    }
    if !pending.is_empty() {
        let wrote = h.ft.endpoint().send_from(|buf| {
            let n = buf.len().min(pending.len()).min(rate);
            for (i, b) in pending.drain(..n).enumerate() {
                buf[i] = b;
            }
            n
        });
        h.from_backend += wrote as u64;
    }
    // The client's FIN reached the backend (its read returned 0) and it said everything:
    // it closes too.
    if !h.backend_dead
        && !h.closed
        && h.pending.is_empty()
        && h.ft.state() == TcpState::CloseWait
        && h.ft.endpoint_ref().recv_queue() == 0
    {
        h.closed = true;
        h.ft.endpoint().close();
    }
    taken
}

fn backend_fails(h: &mut HostConn, how: BackendFault, now: Instant) {
    if h.backend_dead {
        return;
    }
    h.backend_dead = true;
    h.pending.clear();
    h.dirty = true;
    match how {
        BackendFault::Reset => h.ft.on_backend_failed(now),
        BackendFault::EarlyFin => {
            h.reset_on_input = true;
            h.ft.endpoint().close();
        }
    }
}

/// A host's sequencer for the service, as it starts (dataplane/total_order.rs, `sequencer_for`).
fn fresh_sequencer() -> Sequencer {
    let stall = FtConfig::default().stall_after.total_micros();
    Sequencer::new(ORDER_QUIET).with_stall(std::time::Duration::from_micros(stall))
}

fn run_seed(seed: u64, harness: Harness) {
    match harness {
        Harness::Classic => classic::run(seed),
        Harness::Cluster => Sim::new(seed, false).run(),
        Harness::ClusterTotal => Sim::new(seed, true).run(),
    }
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "panic".into())
}

#[test]
fn regression_seeds_stay_fixed() {
    let mut failures = Vec::new();
    for &(seed, harness) in REGRESSION_SEEDS {
        if let Err(e) = std::panic::catch_unwind(|| run_seed(seed, harness)) {
            failures.push(format!("{harness:?}: {}", panic_text(e)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} regression seeds failed; first:\n{}",
        failures.len(),
        failures[0]
    );
}

/// Replays `FT_SEED` if set (with `FT_CLASSIC=1`, in the single-connection harness), else
/// runs `FT_SEEDS` (default 1000) fresh seeds of `harness`.
fn run_fresh_seeds(harness: Harness) {
    if let Ok(s) = std::env::var("FT_SEED") {
        let seed: u64 = s.parse().expect("FT_SEED is a number");
        let harness = if std::env::var_os("FT_CLASSIC").is_some() {
            Harness::Classic
        } else if std::env::var_os("FT_TOTAL").is_some() {
            Harness::ClusterTotal
        } else {
            Harness::Cluster
        };
        run_seed(seed, harness);
        return;
    }
    // The cluster harness costs about 0.1 s a seed: 300 per CI run (about 30 s) explore a new
    // base every time; long runs go by hand (none of the last 100,000 failed, issue #12).
    let default = match harness {
        Harness::Classic => 1000,
        Harness::Cluster | Harness::ClusterTotal => 300,
    };
    let n: u64 = std::env::var("FT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    // A fresh base each run (printed), so CI explores new seeds over time. The harness is
    // the I/O shell here: reading the wall clock for the seed is its job.
    #[allow(clippy::disallowed_methods)]
    let now: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .wrapping_mul(1_000_003);
    // `FT_SEED_BASE=b` runs the same batch again (to compare a change on the same seeds).
    let base: u64 = std::env::var("FT_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now);
    println!(
        "{harness:?} sim: seeds {base}..{} (replay one with FT_SEED=n{})",
        base + n,
        if harness == Harness::Classic {
            " FT_CLASSIC=1"
        } else {
            ""
        }
    );
    let mut failures = Vec::new();
    for seed in base..base + n {
        #[allow(clippy::disallowed_methods)]
        let t = std::time::Instant::now();
        // A quarter of the cluster seeds run the service in total order.
        let harness = match harness {
            Harness::Cluster if seed % 4 == 0 => Harness::ClusterTotal,
            h => h,
        };
        if let Err(e) = std::panic::catch_unwind(|| run_seed(seed, harness)) {
            failures.push(panic_text(e));
        }
        if std::env::var_os("FT_TIMING").is_some() {
            println!("seed {seed}: {:?}", t.elapsed());
        }
    }
    let summary: Vec<&str> = failures
        .iter()
        .take(50)
        .filter_map(|f| f.lines().next())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {n} seeds failed:\n{}\nfirst in full:\n{}",
        failures.len(),
        summary.join("\n"),
        failures.first().map(String::as_str).unwrap_or("")
    );
}

/// One connection of about 100 KB, a primary and backups, loss, duplication, reordering,
/// crashes and backend faults; views delivered at once. Runs in CI with a fresh seed base.
#[test]
fn failover_is_transparent_under_loss_duplication_reordering_and_crashes() {
    run_fresh_seeds(Harness::Classic);
}

/// The cluster harness (20+ connections, per-replica epochs, lossy views and speaker notices,
/// partitions, half-close, new incarnations, total order in a quarter of the seeds) on
/// `FT_SEEDS` (default 300) fresh seeds, a new base each run: CI explores new seeds every
/// time. History (issue #12): 100,000 seeds from base 1796800000000000 had 25 failures;
/// 30,000 from 1797500000000000 had 4; after the fixes since, 100,000 seeds from base
/// 1798100000000000 (on 3f52738, 71 min on both cores) had 1, FT_SEED=1798100000023626,
/// fixed since (424d5e5); 100,000 seeds from base 1798400000000000 on 424d5e5 had none.
/// Every failure found is in `REGRESSION_SEEDS`.
#[test]
fn cluster_of_connections_keeps_every_invariant_under_faults() {
    run_fresh_seeds(Harness::Cluster);
}
