//! The redirector's counters for `/metrics`, and how they and the flow table are rendered.

use super::*;

/// Counters the admin API exposes at `/metrics`.
#[derive(Debug, Default)]
pub struct RedirMetrics {
    /// For each view change that dropped silent members: how long the newest had been silent.
    pub view_change: control::metrics::Histogram,
    /// For each crash of an ft primary: the gap in the service's client-bound packets.
    pub failover_pause: control::metrics::Histogram,
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
    pub(super) fn sent_one(&self, r: std::io::Result<usize>) -> bool {
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
    pub(super) fn on_drop(&self, reason: DropReason) {
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
        e.histogram(
            "hydra_view_change_seconds",
            "Failure detection: for each ft view change that dropped silent members, how long \
             the newest of them had been silent (the detector timeout plus a round)",
            &self.view_change,
        );
        e.histogram(
            "hydra_failover_pause_seconds",
            "For each crash of an ft service's primary: the gap in the service's client-bound \
             packets across the view change (gaps of 1 s or more, an idle service, not counted)",
            &self.failover_pause,
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
