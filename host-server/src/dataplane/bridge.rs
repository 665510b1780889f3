//! The bridge between a client connection and its backend socket: the connect, bytes both
//! ways with backpressure, half-close and reset (the rules are in the `dataplane` module doc).

use super::*;

/// The backend side of a connection's bridge.
///
/// ```text
///   Connecting --connected--> Open { eof, fin_sent } --eof && fin_sent--> Finished
///       |                       |
///       +-- refused, reset, ----+--> Aborted (the client is reset too, if it is not yet)
///           client reset, idle
/// ```
pub(super) enum Backend {
    /// The non-blocking connect is under way.
    /// The connect under way, and when it began.
    Connecting(TcpStream, Instant),
    /// Connected; `eof`: the backend closed its side (a FIN went to the client);
    /// `fin_sent`: the client's FIN was passed on (`shutdown(Write)`).
    Open {
        stream: TcpStream,
        eof: bool,
        fin_sent: bool,
    },
    /// Both directions closed in order; the socket is gone.
    Finished,
    /// Closed with a reset, or never connected; the socket is gone.
    Aborted,
}

impl Backend {
    /// Moves to `next` (Finished or Aborted), handing back the socket to close.
    pub(super) fn end(&mut self, next: Backend) -> Option<TcpStream> {
        match std::mem::replace(self, next) {
            Backend::Connecting(s, _) | Backend::Open { stream: s, .. } => Some(s),
            Backend::Finished | Backend::Aborted => None,
        }
    }
}

/// Ends the backend side with a reset (if it still has a socket) and stops polling it.
pub(super) fn reset_backend(registry: &mio::Registry, backend: &mut Backend) {
    if let Some(mut s) = backend.end(Backend::Aborted) {
        abort_backend(&s);
        let _ = registry.deregister(&mut s);
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

/// Moves bytes across one connection's bridge: the backend's connect, bytes both ways with
/// backpressure, half-close both ways. Returns (reset the client, reset the backend).
pub(super) fn bridge(
    c: &mut Conn,
    sequencers: &mut HashMap<SocketAddrV4, Sequencer>,
    m: &HostMetrics,
) -> (bool, bool) {
    if let Backend::Connecting(s, began) = &c.backend {
        if c.writable {
            match (s.take_error(), s.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    m.backend_connect.observe(began.elapsed());
                    if let Some(stream) = c.backend.end(Backend::Aborted) {
                        c.backend = Backend::Open {
                            stream,
                            eof: false,
                            fin_sent: false,
                        };
                    }
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => c.writable = false,
                _ => {
                    m.backend_connect_failures.inc();
                    tracing::warn!(client = %c.key.client, "backend refused the connection; resetting the client");
                    return (true, true);
                }
            }
        }
    }
    let closed = c.tcp.ep_ref().state() == TcpState::Closed;
    let Backend::Open {
        stream: s,
        eof,
        fin_sent,
    } = &mut c.backend
    else {
        return match c.backend {
            // Never connected (the connect failed at once): reset the client.
            Backend::Aborted => (!closed, false),
            // The client went away while the connect was under way.
            Backend::Connecting(..) => (false, closed),
            Backend::Finished | Backend::Open { .. } => (false, false),
        };
    };
    // Backend -> client, only into free send-buffer space (backpressure).
    while c.readable && !*eof && c.tcp.ep().may_send() && c.tcp.ep().send_space() > 0 {
        let mut res = Ok(0);
        c.tcp.ep().send_from(|buf| {
            res = s.read(buf);
            *res.as_ref().unwrap_or(&0)
        });
        match res {
            Ok(0) => {
                *eof = true;
                c.tcp.ep().close();
            }
            Ok(n) => {
                c.from_backend += n as u64;
                c.last_active = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                m.backend_resets.inc();
                return (true, true);
            }
        }
    }
    // Client -> backend, as fast as the backend takes it (in total order, only the bytes
    // the service's sequencer granted).
    while c.writable && !*fin_sent && c.tcp.ep().recv_queue() > 0 && (!c.total || c.credit > 0) {
        let mut res = Ok(0);
        let limit = if c.total { c.credit } else { usize::MAX };
        c.tcp.ep().recv_into(|buf| {
            let n = buf.len().min(limit);
            res = s.write(&buf[..n]);
            *res.as_ref().unwrap_or(&0)
        });
        match res {
            Ok(n) if c.total => {
                c.credit -= n.min(c.credit);
                if let Some(q) = sequencers.get_mut(&c.key.service) {
                    q.on_delivered(c.key, n, Instant::now());
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                m.backend_resets.inc();
                return (true, true);
            }
        }
    }
    // Client half-close -> backend half-close, once everything was delivered.
    let state = c.tcp.ep().state();
    if !*fin_sent
        && c.tcp.ep().recv_queue() == 0
        && !c.tcp.ep().may_recv()
        && !matches!(
            state,
            TcpState::Listen | TcpState::SynReceived | TcpState::Closed
        )
    {
        let _ = s.shutdown(Shutdown::Write);
        *fin_sent = true;
    }
    if state == TcpState::Closed && !(*fin_sent && *eof) {
        // The client reset the connection: reset the backend's too.
        m.client_resets.inc();
        return (false, true);
    }
    (false, false)
}
