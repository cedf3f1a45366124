//! A sans-IO STUN/TURN server (RFC 8489, RFC 8656).
//!
//! Architecture invariant: no sockets, no clock, no RNG here. The IO driver (crate
//! `callbox-turn`) hands in datagrams with their source and the current time and carries
//! out what comes back; tests drive the same code on simulated time.

pub mod framing;
pub mod nonce;
pub mod relay_ports;
pub mod server;
pub mod source_limit;
pub mod stun;

pub use relay_ports::RelayPorts;
pub use server::{AllocId, AllocationInfo, ClientAction, Command, Event, PeerAction, Server, ServerConfig};
