//! `hydra-host`: a HydraNet host server.
//!
//! It hosts virtual hosts (service IP addresses, HydraNet's `v_host`), receives client
//! packets from the redirector through the authenticated tunnel, terminates each client
//! connection in its own userspace TCP endpoint ([`ft_tcp::Endpoint`]) under the service
//! address, and bridges it to the unmodified backend program on the loopback interface.
//!
//! ```text
//! redirector --UDP tunnel--> dataplane --> Endpoint (smoltcp) --> bridge --> backend 127.0.0.1
//!            <--------------         <--                     <--        <--
//! ```
//!
//! [`dataplane`] is the single-threaded packet loop, [`services`] the table the admin API
//! edits (vhosts and port options), [`config`] the TOML file, [`sys`] the one home of
//! `unsafe`.
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod order;
pub mod services;
pub mod sys;
