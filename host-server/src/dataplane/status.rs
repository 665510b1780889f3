//! What `status` shows: the per-connection snapshots the loop publishes for the admin API,
//! and the state the admin thread and the loop share.

use super::*;

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
    /// The FT layer's state, in ft mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ft: Option<FtStatus>,
}

/// The FT layer of one connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FtStatus {
    /// This replica's role for the connection.
    pub role: &'static str,
    /// The ACK last sent to the client (primary): every member holds the bytes before it.
    pub gate: Option<u32>,
    /// The client's latest ACK of our bytes.
    pub client_ack: Option<u32>,
    /// Unacknowledged output kept for failover and retransmission.
    pub shadow_bytes: usize,
    /// Each member's next expected client byte (node id, rcv_nxt).
    pub members: Vec<(u32, u32)>,
    /// Segments resent by the FT layer.
    pub retransmits: u64,
    /// Promotions of this replica for this connection.
    pub promotions: u64,
    /// Repair segments sent (as primary).
    pub repairs_sent: u64,
    /// Repair segments received.
    pub repairs_received: u64,
    /// Client bytes held for repair.
    pub repair_log_bytes: usize,
    /// Output agreement as this replica sees it.
    pub agreement: AgreementView,
}

/// Output agreement of one connection as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgreementView {
    /// Output blocks compared with the primary's.
    pub blocks_compared: u64,
    /// Blocks that differed.
    pub blocks_different: u64,
    /// Attestations: (member, bytes): this replica vouches that the member's output equals
    /// the primary's from the start of the stream up to that many bytes.
    pub attests: Vec<(u32, u64)>,
    /// (member, byte offset of the first 16 KiB block where its output differed).
    pub differs_from_byte: Vec<(u32, u64)>,
    /// Members not eligible to take this connection over: their output differs from the
    /// primary's in bytes the client has not acknowledged, or in length.
    pub divergent: Vec<u32>,
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
    /// The ft views this host holds: service, epoch, members (primary first).
    pub views: Mutex<Vec<(String, u64, Vec<u32>)>>,
    /// How many connections are in each TCP state (all of them, not only those listed).
    pub conn_states: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Services whose backend the health checker should probe now (a connection to it was
    /// refused or reset), and the signal that wakes it.
    pub health_now: (Mutex<Vec<SocketAddrV4>>, std::sync::Condvar),
    /// This host's life (the wall clock at start, in nanoseconds).
    pub incarnation: Incarnation,
    /// The redirector's life as last heard (0: not yet), named in heartbeats and in
    /// packets for clients.
    pub redirector_incarnation: std::sync::atomic::AtomicU64,
    /// Set by SIGTERM or SIGINT: the host drains and then exits (see `drain_timeout_s`).
    pub draining: std::sync::atomic::AtomicBool,
    /// Wakes the packet loop (set once the loop exists).
    pub waker: std::sync::OnceLock<mio::Waker>,
    /// Where runtime changes (`v_host`, `setportopt`) are kept for the next start.
    pub state_file: Option<std::path::PathBuf>,
}

impl Shared {
    /// Notes the redirector's life from one of its views or welcomes (the opener lets no
    /// older life through after a newer one).
    pub fn heard_redirector(&self, life: Incarnation) {
        self.redirector_incarnation
            .fetch_max(life.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The redirector `id` in the life last heard of, as a receiver.
    pub fn redirector(&self, id: ReplicaId) -> Receiver {
        Receiver::node(
            id,
            Incarnation(
                self.redirector_incarnation
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        )
    }

    /// Starts the drain and wakes the packet loop; `false` if it had started already.
    pub fn start_drain(&self) -> bool {
        let first = !self
            .draining
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.waker.get() {
            let _ = w.wake();
        }
        first
    }

    /// Whether the host drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the health checker to probe `service`'s backend now.
    pub fn poke_health(&self, service: SocketAddrV4) {
        // INVARIANT: no code panics while holding the lock.
        let mut q = self.health_now.0.lock().expect("health lock");
        if !q.contains(&service) {
            q.push(service);
        }
        self.health_now.1.notify_one();
    }

    /// Waits up to `timeout` for a poke; returns the services poked.
    pub fn wait_health(&self, timeout: Duration) -> Vec<SocketAddrV4> {
        // INVARIANT: no code panics while holding the lock.
        let q = self.health_now.0.lock().expect("health lock");
        let (mut q, _) = self
            .health_now
            .1
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .expect("health lock");
        std::mem::take(&mut *q)
    }
}

impl Dataplane {
    pub(super) fn snapshot(&mut self) {
        let list: Vec<ConnStatus> = self
            .conns
            .values()
            .take(SNAPSHOT_MAX)
            .map(|c| ConnStatus {
                client: c.key.client.to_string(),
                service: c.key.service.to_string(),
                state: c.tcp.ep_ref().state().to_string(),
                backend_connected: matches!(c.backend, Backend::Open { .. }),
                to_backend: c.tcp.ep_ref().recv_queue(),
                to_client: c.tcp.ep_ref().send_queue(),
                ft: match &c.tcp {
                    Tcp::Plain(_) => None,
                    Tcp::Ft(f) => Some(FtStatus {
                        role: match f.role() {
                            Role::Primary => "primary",
                            Role::Backup => "backup",
                        },
                        gate: f.gate().map(|g| g.0),
                        client_ack: f.client_ack().map(|a| a.0),
                        shadow_bytes: f.shadow_len(),
                        members: f
                            .member_progress()
                            .into_iter()
                            .map(|(id, r)| (id.map_or(self.me.0, |i| i), r.0))
                            .collect(),
                        retransmits: f.stats.retransmits,
                        promotions: f.stats.promotions,
                        repairs_sent: f.stats.repairs_sent,
                        repairs_received: f.stats.repairs_received,
                        repair_log_bytes: f.repair_log_len(),
                        agreement: {
                            let a = f.agreement();
                            AgreementView {
                                blocks_compared: a.compared,
                                blocks_different: a.mismatched,
                                attests: a.attested,
                                differs_from_byte: a.mismatch_at,
                                divergent: a.divergent,
                            }
                        },
                    }),
                },
            })
            .collect();
        self.shared
            .metrics
            .conns_lingering
            .set(self.lingering.len() as u64);
        let mut states = std::collections::BTreeMap::new();
        for c in self.conns.values() {
            *states
                .entry(c.tcp.ep_ref().state().to_string())
                .or_insert(0u64) += 1;
        }
        // INVARIANT: no code panics while holding the lock.
        *self.shared.conn_states.lock().expect("conn_states lock") = states;
        let divergent: usize = self
            .conns
            .values()
            .map(|c| match &c.tcp {
                Tcp::Ft(f) => f.agreement().divergent.len(),
                Tcp::Plain(_) => 0,
            })
            .sum();
        self.shared
            .metrics
            .ft
            .divergent_members
            .set(divergent as u64);
        // INVARIANT: no code panics while holding the lock.
        *self.shared.conns.lock().expect("conns lock") = list;
    }
}
