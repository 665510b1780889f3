//! `hydra-redirector`: the HydraNet redirector.
//!
//! The kernel of the redirector's machine routes the service prefix into a TUN device. The
//! redirector reads each client packet, decides which host server gets it ([`table`], the
//! redirection table built from host heartbeats) and sends it through the authenticated UDP
//! tunnel. Packets from host servers come back through the tunnel, are verified (MAC, replay
//! window, and the flow's pinned host), and are written to the TUN for the kernel to route
//! to the client.
//!
//! [`table`] is the pure routing decision (time passed in), [`flows`] its bounded table of
//! pinned connections; [`dataplane`] the threads around the TUN device and the UDP socket.
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod flows;
pub mod table;
