//! HTTP listeners under limits, shared by the signal, admin and turn roles.
//!
//! A plain accept loop hands every connection to hyper with no limit at all: a client
//! that opens connections and never finishes its request head holds a descriptor each
//! until the process runs out, and then nothing else (the relay's sockets, the store, a
//! health check) can open one. Here every accepted connection is counted, from accept to
//! close (WebSocket connections included, since the count travels with the socket):
//!
//! - per client address, an IPv6 client by its prefix ([`callbox_core::limit_key()`]);
//! - per listener, in total;
//!
//! and a connection past either cap gets a short canned answer (429 or 503, written
//! without waiting) and is closed at once. A request head must arrive whole within the
//! header timeout, between keep-alive requests too (slowloris).
//!
//! Architecture invariant: the table of per-address counts holds an entry only while the
//! address has connections, so it is bounded by the listener's cap.

mod bearer;
mod counted;
mod limits;
mod metrics;
mod redirect;
mod serve;
mod tls;

pub use bearer::bearer;
pub use limits::{ConnectionLimits, Limits, Permit, Refusal};
pub use metrics::ListenerMetrics;
pub use redirect::{port80_router, redirect_host};
pub use serve::serve;
pub use tls::{StunHandoff, TlsHandoff, TlsServe, serve_tls};
