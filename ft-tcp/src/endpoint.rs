//! One client connection's userspace TCP endpoint: a smoltcp interface with one socket.
//!
//! One interface per connection keeps the per-packet cost independent of the number of
//! connections (smoltcp scans every socket of an interface for every packet) and removes the
//! listen-backlog problem (smoltcp's listening socket takes exactly one connection): the host
//! server makes a new endpoint, listening, when a SYN for a new 4-tuple arrives.
//!
//! Call order, for each event on the connection:
//! 1. [`Endpoint::handle_packet`] for each packet from the client, or
//!    [`Endpoint::send_from`]/[`Endpoint::recv_into`]/[`Endpoint::close`] for the bridge,
//! 2. [`Endpoint::poll`], which appends the packets to send to `out`,
//! 3. [`Endpoint::poll_at`] to learn when to call [`Endpoint::poll`] again.

use std::net::SocketAddrV4;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};

pub use smoltcp::socket::tcp::State as TcpState;

/// Tunables every replica of a service must share (MSS and window scale derive from them).
#[derive(Debug, Clone, Copy)]
pub struct EndpointConfig {
    /// The largest IP packet the endpoint sends; the tunnel adds 100 bytes around it.
    pub mtu: usize,
    /// Receive buffer bytes (sets the advertised window and its scale).
    pub rx_buffer: usize,
    /// Send buffer bytes: at least the bandwidth-delay product.
    pub tx_buffer: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            mtu: 1400,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
        }
    }
}

/// The device seam: at most one received packet in, any number of packets out.
struct Wire<'a> {
    rx: Option<&'a [u8]>,
    out: &'a mut Vec<Vec<u8>>,
    mtu: usize,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for Wire<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _ts: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let pkt = self.rx.take()?;
        Some((Rx(pkt), Tx(self.out)))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// One client connection terminated in smoltcp under the service address.
pub struct Endpoint {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    mtu: usize,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("state", &self.state())
            .finish()
    }
}

impl Endpoint {
    /// A new endpoint listening on `service`, ready for the connection's SYN.
    ///
    /// `seed` seeds smoltcp's PRNG (initial sequence number, ephemeral choices).
    pub fn listen(service: SocketAddrV4, cfg: EndpointConfig, seed: u64, now: Instant) -> Self {
        let mut out = Vec::new();
        let mut wire = Wire {
            rx: None,
            out: &mut out,
            mtu: cfg.mtu,
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut wire, now);
        iface.update_ip_addrs(|addrs| {
            // INVARIANT: a fresh interface has room for one address.
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(*service.ip()), 32))
                .expect("fresh interface has room for one address");
        });
        // Replies go back to clients anywhere: a default route. On a point-to-point medium
        // the gateway is never resolved, only needed for the route to exist.
        // INVARIANT: a fresh route table has room for one route.
        iface
            .routes_mut()
            .add_default_ipv4_route(*service.ip())
            .expect("fresh route table has room for one route");
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; cfg.rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; cfg.tx_buffer]),
        );
        socket.set_nagle_enabled(false);
        // INVARIANT: the port is non-zero (services are validated at configuration) and the
        // socket is fresh, the only two ways listen fails.
        socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*service.ip())),
                port: service.port(),
            })
            .expect("fresh socket listens on a non-zero port");
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Endpoint {
            iface,
            sockets,
            handle,
            mtu: cfg.mtu,
        }
    }

    fn socket(&self) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket>(self.handle)
    }

    fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// Feeds one packet from the client and runs the stack; replies are appended to `out`.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8], out: &mut Vec<Vec<u8>>) {
        let mut wire = Wire {
            rx: Some(packet),
            out,
            mtu: self.mtu,
        };
        self.iface.poll(now, &mut wire, &mut self.sockets);
    }

    /// Runs the stack's timers and output; packets are appended to `out`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let mut wire = Wire {
            rx: None,
            out,
            mtu: self.mtu,
        };
        self.iface.poll(now, &mut wire, &mut self.sockets);
    }

    /// When [`Endpoint::poll`] must run next (None: only on new input).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// Hands received client bytes to `f`, which returns how many it took.
    pub fn recv_into(&mut self, f: impl FnOnce(&[u8]) -> usize) -> usize {
        self.socket_mut()
            .recv(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    /// Lets `f` fill free send-buffer space with bytes for the client; returns bytes queued.
    pub fn send_from(&mut self, f: impl FnOnce(&mut [u8]) -> usize) -> usize {
        self.socket_mut()
            .send(|buf| {
                let n = f(buf).min(buf.len());
                (n, n)
            })
            .unwrap_or(0)
    }

    /// Free bytes in the send buffer.
    pub fn send_space(&self) -> usize {
        let s = self.socket();
        s.send_capacity() - s.send_queue()
    }

    /// Bytes received from the client and not yet taken.
    pub fn recv_queue(&self) -> usize {
        self.socket().recv_queue()
    }

    /// Bytes queued for the client and not yet acknowledged.
    pub fn send_queue(&self) -> usize {
        self.socket().send_queue()
    }

    /// Whether the stack may still queue bytes for the client (our side not closed).
    pub fn may_send(&self) -> bool {
        self.socket().may_send()
    }

    /// Whether the client may still send (it has not sent FIN) or received bytes remain.
    pub fn may_recv(&self) -> bool {
        self.socket().may_recv()
    }

    /// The RFC 9293 state.
    pub fn state(&self) -> TcpState {
        self.socket().state()
    }

    /// Sends FIN after everything queued.
    pub fn close(&mut self) {
        self.socket_mut().close();
    }

    /// Sends RST and forgets the connection.
    pub fn abort(&mut self) {
        self.socket_mut().abort();
    }

    /// Holds (true) or releases (false) the SYN-ACK: the primary holds it until its backups
    /// have the connection.
    pub fn pause_synack(&mut self, pause: bool) {
        self.socket_mut().pause_synack(pause);
    }

    /// The largest delay smoltcp waits before acknowledging (None: immediately).
    pub fn set_ack_delay(&mut self, d: Option<Duration>) {
        self.socket_mut().set_ack_delay(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TcpMeta;
    use etherparse::PacketBuilder;

    const SERVICE: &str = "198.19.0.10:80";

    fn client_segment(seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
        let mut b =
            PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 10], 64).tcp(40000, 80, seq, 65535);
        if syn {
            b = b.syn();
        }
        if let Some(a) = ack {
            b = b.ack(a);
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn seq_ack(pkt: &[u8]) -> (u32, u32) {
        let ip = etherparse::Ipv4Slice::from_slice(pkt).unwrap();
        let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).unwrap();
        (tcp.sequence_number(), tcp.acknowledgment_number())
    }

    #[test]
    fn endpoint_completes_handshake_and_exchanges_bytes() {
        let mut ep = Endpoint::listen(
            SERVICE.parse().unwrap(),
            EndpointConfig::default(),
            1,
            Instant::from_millis(0),
        );
        let mut out = Vec::new();
        ep.handle_packet(
            Instant::from_millis(1),
            &client_segment(1000, None, true, b""),
            &mut out,
        );
        assert_eq!(out.len(), 1, "one SYN-ACK");
        let synack = TcpMeta::parse(&out[0]).unwrap();
        assert!(synack.flags.syn && synack.flags.ack);
        let (isn, ack) = seq_ack(&out[0]);
        assert_eq!(ack, 1001);
        out.clear();
        ep.handle_packet(
            Instant::from_millis(2),
            &client_segment(1001, Some(isn.wrapping_add(1)), false, b"ping"),
            &mut out,
        );
        assert_eq!(ep.state(), TcpState::Established);
        let mut got = Vec::new();
        ep.recv_into(|b| {
            got.extend_from_slice(b);
            b.len()
        });
        assert_eq!(got, b"ping");
        ep.send_from(|b| {
            b[..4].copy_from_slice(b"pong");
            4
        });
        out.clear();
        ep.poll(Instant::from_millis(3), &mut out);
        let data: Vec<_> = out
            .iter()
            .map(|p| TcpMeta::parse(p).unwrap())
            .filter(|m| m.payload_len > 0)
            .collect();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].payload_len, 4);
        assert!(out.iter().all(|p| p.len() <= 1400));
    }
}
