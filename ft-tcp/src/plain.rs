//! A redirect-mode connection: one [`Endpoint`] whose initial sequence number, as the client
//! sees it, is a SYN cookie ([`crate::syncookie`]).
//!
//! smoltcp picks its own ISN and cannot be told one, so the endpoint is made when the client's
//! handshake ACK arrives: the SYN is replayed into it, its SYN-ACK is swallowed (the cookie
//! SYN-ACK already went out), and from then on every outgoing sequence number is moved by
//! `delta = cookie - ISN_local` and every incoming ACK back by the same amount (RFC 1624
//! checksum update, as the FT layer does). SACK blocks from the client are left alone:
//! smoltcp 0.14 ignores received SACK blocks (`socket/tcp.rs`, `process`).

use smoltcp::time::Instant;

use crate::endpoint::{Endpoint, EndpointConfig};
use crate::packet::FlowKey;
use crate::rewrite;
use crate::seq::SeqNumber;

/// One client connection terminated in smoltcp, its sequence space moved to the cookie's.
pub struct PlainConn {
    ep: Endpoint,
    /// Client-visible ISN minus the endpoint's ISN.
    delta: u32,
    scratch: Vec<u8>,
    /// The highest sequence number sent and the last ACK sent, client space.
    sent: Option<(SeqNumber, SeqNumber)>,
    /// The last window field sent.
    sent_window: u16,
    key: FlowKey,
    /// The receive buffer: an upper bound of the window the client was given.
    rx_buffer: u32,
}

impl std::fmt::Debug for PlainConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainConn")
            .field("state", &self.ep.state())
            .finish()
    }
}

impl PlainConn {
    /// A connection whose client sent `syn` and was answered with the cookie `isn_s`; `None`
    /// when the local stack does not answer the SYN with a SYN-ACK (never for a SYN built by
    /// [`crate::syncookie::rebuild_syn`] to the endpoint's own service).
    pub fn accept(
        key: FlowKey,
        cfg: EndpointConfig,
        seed: u64,
        now: Instant,
        syn: &[u8],
        isn_s: SeqNumber,
    ) -> Option<PlainConn> {
        let mut ep = Endpoint::listen(key.service, cfg, seed, now);
        let mut out = Vec::new();
        ep.handle_packet(now, syn, &mut out);
        let local_isn = out
            .iter()
            .filter_map(|p| rewrite::parse(p))
            .find(|s| s.syn && s.ack_flag)?
            .seq;
        Some(PlainConn {
            ep,
            delta: isn_s.0.wrapping_sub(local_isn.0),
            scratch: Vec::new(),
            sent: None,
            sent_window: 0,
            key,
            rx_buffer: u32::try_from(cfg.rx_buffer).unwrap_or(u32::MAX),
        })
    }

    /// The local endpoint, for the backend bridge.
    pub fn endpoint(&mut self) -> &mut Endpoint {
        &mut self.ep
    }

    /// The local endpoint, read-only.
    pub fn endpoint_ref(&self) -> &Endpoint {
        &self.ep
    }

    /// Feeds one packet from the client (client sequence space); replies are appended to
    /// `out`, translated.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(seg) = rewrite::parse(packet) else {
            return;
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(packet);
        if seg.ack_flag {
            rewrite::set_ack(&mut self.scratch, &seg, seg.ack.minus(self.delta));
        }
        let from = out.len();
        self.ep.handle_packet(now, &self.scratch, out);
        self.translate(&mut out[from..]);
    }

    /// Runs the stack's timers and output; packets are appended to `out`, translated.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let from = out.len();
        self.ep.poll(now, out);
        self.translate(&mut out[from..]);
    }

    /// When [`PlainConn::poll`] must run next.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.ep.poll_at(now)
    }

    /// (our next sequence number, the client's next), client space, as last sent: what a
    /// closed connection's last ACK says.
    pub fn close_point(&self) -> Option<(SeqNumber, SeqNumber)> {
        self.sent
    }

    /// Where a client's RST must land to be taken (RFC 5961 §3.2): the last ACK sent, and
    /// the right edge of the largest window the client may have been given.
    pub fn rst_window(&self) -> Option<(Vec<SeqNumber>, SeqNumber)> {
        let (_, ack) = self.sent?;
        Some((vec![ack], ack.plus(self.rx_buffer)))
    }

    /// The challenge ACK answering a suspicious RST or SYN (RFC 5961 §3.2, §4.2).
    pub fn challenge_ack(&self) -> Option<Vec<u8>> {
        self.ack_to_client(0)
    }

    /// A TCP keep-alive probe (RFC 9293 §3.8.4): an ACK one below what we sent, which the
    /// client answers with an ACK.
    pub fn keepalive_probe(&self) -> Option<Vec<u8>> {
        self.ack_to_client(1)
    }

    fn ack_to_client(&self, back: u32) -> Option<Vec<u8>> {
        let (snd, ack) = self.sent?;
        Some(rewrite::build(
            self.key.service,
            self.key.client,
            snd.minus(back),
            ack,
            self.sent_window,
            &[],
            false,
        ))
    }

    fn translate(&mut self, packets: &mut [Vec<u8>]) {
        for p in packets {
            if let Some(seg) = rewrite::parse(p) {
                let seq = seg.seq.plus(self.delta);
                rewrite::set_seq(p, &seg, seq);
                if seg.ack_flag && !seg.rst {
                    let end = seq.plus(seg.seq_len());
                    let snd = self.sent.map_or(end, |(s, _)| s.max(end));
                    self.sent = Some((snd, seg.ack));
                    self.sent_window = seg.window;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syncookie::{self, CookieJar, SynOpts};
    use crate::TcpState;
    use etherparse::{PacketBuilder, TcpOptionElement};

    fn key() -> FlowKey {
        FlowKey {
            client: "198.18.0.2:40000".parse().unwrap(),
            service: "198.19.0.10:80".parse().unwrap(),
        }
    }

    fn client(seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64)
            .tcp(40000, 80, seq, 4000)
            .ack(ack)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn options(p: &[u8]) -> Vec<TcpOptionElement> {
        let ip = etherparse::Ipv4Slice::from_slice(p).unwrap();
        let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).unwrap();
        tcp.options_iterator().map(|o| o.unwrap()).collect()
    }

    #[test]
    fn cookie_synack_matches_what_smoltcp_would_send() {
        let cfg = EndpointConfig::default();
        for opts in [
            SynOpts {
                mss: 1460,
                wscale: Some(7),
                sack: true,
            },
            SynOpts {
                mss: 536,
                wscale: None,
                sack: false,
            },
        ] {
            let syn = syncookie::rebuild_syn(key(), SeqNumber(1000), opts);
            let mut ep = Endpoint::listen(key().service, cfg, 1, Instant::from_millis(0));
            let mut out = Vec::new();
            ep.handle_packet(Instant::from_millis(0), &syn, &mut out);
            let theirs = rewrite::parse(&out[0]).unwrap();
            let ours_p = syncookie::synack(
                key(),
                SeqNumber(1000),
                SeqNumber(5),
                opts,
                cfg.mtu,
                cfg.rx_buffer,
            );
            let ours = rewrite::parse(&ours_p).unwrap();
            assert_eq!(
                (ours.ack, ours.window, ours.mss, ours.wscale),
                (theirs.ack, theirs.window, theirs.mss, theirs.wscale),
                "{opts:?}"
            );
            let mut a = options(&ours_p);
            let mut b = options(&out[0]);
            let real = |o: &TcpOptionElement| !matches!(o, TcpOptionElement::Noop);
            a.retain(real);
            b.retain(real);
            assert_eq!(a, b, "{opts:?}");
        }
    }

    #[test]
    fn handshake_from_a_cookie_then_bytes_both_ways_in_cookie_space() {
        let jar = CookieJar::from_cluster_key(&[9; 32]);
        let opts = SynOpts {
            mss: 1460,
            wscale: Some(7),
            sack: true,
        };
        let isn_s = jar.isn(key(), SeqNumber(1000), opts, 1_800_000_000);
        // The ACK proves the cookie; the connection is built from it.
        let got = jar
            .check(key(), SeqNumber(1000), isn_s, 1_800_000_001)
            .unwrap();
        let syn = syncookie::rebuild_syn(key(), SeqNumber(1000), got);
        let t = Instant::from_millis(1);
        let mut c = PlainConn::accept(key(), EndpointConfig::default(), 3, t, &syn, isn_s).unwrap();
        let mut out = Vec::new();
        c.handle_packet(t, &client(1001, isn_s.0.wrapping_add(1), b"ping"), &mut out);
        assert_eq!(c.endpoint_ref().state(), TcpState::Established);
        let mut got = Vec::new();
        c.endpoint().recv_into(|b| {
            got.extend_from_slice(b);
            b.len()
        });
        assert_eq!(got, b"ping");
        c.endpoint().send_from(|b| {
            b[..4].copy_from_slice(b"pong");
            4
        });
        out.clear();
        c.poll(Instant::from_millis(2), &mut out);
        let seg = out
            .iter()
            .filter_map(|p| rewrite::parse(p))
            .find(|s| s.payload_len == 4)
            .unwrap();
        assert_eq!(seg.seq, isn_s.plus(1), "first byte right after the cookie");
        assert_eq!(seg.ack, SeqNumber(1005));
        // The client's ACK of pong, in cookie space, empties the send queue.
        c.handle_packet(
            Instant::from_millis(3),
            &client(1005, isn_s.0.wrapping_add(5), b""),
            &mut out,
        );
        assert_eq!(c.endpoint_ref().send_queue(), 0);
    }
}
