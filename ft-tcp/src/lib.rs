//! The per-connection TCP layer of a HydraNet host server.
//!
//! A host server terminates every client connection in its own userspace TCP endpoint
//! ([`Endpoint`], one small smoltcp interface and socket per connection, so the per-packet
//! cost does not grow with the number of connections) and finds the endpoint for an incoming
//! packet by its 4-tuple ([`FlowKey`], parsed by [`packet`]). The redirector uses the same
//! classification for its routing decision.
//!
//! Everything here is sans-IO: packets and `now` come in, packets go out into a `Vec`.
//! The FT replication layer (sequence translation, ACK gate, shadow queue) builds on this
//! seam: smoltcp's output passes through [`Endpoint`]'s device, where it can be rewritten
//! or suppressed.
#![warn(missing_docs)]

pub mod agreement;
pub mod clientlog;
pub mod endpoint;
pub mod ft;
pub mod packet;
pub mod plain;
pub mod rewrite;
pub mod rfc5961;
pub mod seq;
pub mod shadow;
pub mod speaker;
pub mod synack_retry;
pub mod syncookie;

pub use endpoint::{Endpoint, EndpointConfig, TcpState};
pub use ft::{
    AgreementStatus, DropReasons, FtConfig, FtConn, FtStats, OutputEnd, PeerId, Progress, Role,
};
pub use packet::{FlowKey, PacketError, TcpFlags, TcpMeta};
pub use plain::PlainConn;
pub use seq::SeqNumber;
