//! Hosts to clients: datagrams received in runs (UDP GRO), opened and dispatched (return
//! packets, heartbeats, exclusion requests), the client packets written to the TUN through
//! its GRO table.

use super::*;

/// Writes the packets collected for clients; with offload, consecutive segments of one
/// connection go to the kernel as one super-segment (tun-rs's GRO table).
pub(super) fn write_tun(
    tun: &SyncDevice,
    gro: &mut GROTable,
    bufs: &mut [Vec<u8>],
    m: &RedirMetrics,
) {
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

pub(super) fn to_clients(tun: &SyncDevice, udp: &UdpSocket, opener: &mut Opener, shared: &Shared) {
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
pub(super) fn on_datagram<'a>(
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
pub(super) fn on_exclusions(
    shared: &Shared,
    udp: &UdpSocket,
    header: &Header,
    entries: &[ExclusionEntry],
) {
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
