//! HydraNet's authenticated datagram layer.
//!
//! Every byte that crosses the network between HydraNet daemons (the redirector's tunnel to
//! the host servers, heartbeats, and later the acknowledgement channel between replicas) is
//! one UDP datagram in the format of [`wire`]: a versioned header, a payload and a MAC keyed by
//! the cluster key ([`auth`]). Anything that does not parse, fails the MAC or replays a counter
//! is dropped and counted by the caller; nothing here panics on network input.
//!
//! The crate is sans-IO: it never opens a socket, reads a clock or draws from a global RNG.
#![warn(missing_docs)]

pub mod auth;
pub mod ids;
pub mod proto;
pub mod wire;

pub use auth::{ClusterKey, DropReason, KeyError, Opener, Receiver, ReplayWindow, Sealer};
pub use ids::{Epoch, Incarnation, ReplicaId, ServiceId};
pub use proto::{
    emit_digests, emit_exclusions, emit_order, emit_progress, parse_digests, parse_exclusions,
    parse_order, parse_progress, DigestEntry, ExclusionEntry, Heartbeat, Member, Mode, OrderEntry,
    OrderRepair, OrderRepairKind, OutputEnd, ProgressEntry, ServiceAd, View, DIGESTS_PER_DATAGRAM,
    EXCLUSIONS_PER_DATAGRAM, EXCLUSION_MEMBERS_MAX, ORDER_PER_DATAGRAM, PROGRESS_PER_DATAGRAM,
};
pub use wire::{Datagram, Header, MsgType, WireError};
