//! What the relay tells the rest of the process about allocations: created, refreshed and
//! closed, each with the wall-clock time it left the data path. The history writer stores
//! them, and logs them off the data path ([`AllocationEvent::log`]).

use std::net::SocketAddr;
use std::time::Duration;

use callbox_core::time::UnixSecs;
use turn_proto::server::Event;

pub use turn_proto::server::{AllocId, CloseReason, Traffic, Transport};

/// One allocation event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationEvent {
    Created {
        id: AllocId,
        /// The USERNAME it authenticated with (a TURN REST username or a static user).
        username: String,
        client: SocketAddr,
        /// How the client reaches us.
        transport: Transport,
        relay: SocketAddr,
        lifetime: Duration,
        at: UnixSecs,
    },
    Refreshed {
        id: AllocId,
        lifetime: Duration,
        at: UnixSecs,
    },
    Closed {
        id: AllocId,
        reason: CloseReason,
        /// What it relayed over its life.
        traffic: Traffic,
        at: UnixSecs,
    },
}

impl AllocationEvent {
    /// The data path's event at `at`.
    pub(crate) fn new(event: Event, at: UnixSecs) -> Self {
        match event {
            Event::Created {
                id,
                username,
                client,
                transport,
                relay,
                lifetime,
            } => AllocationEvent::Created {
                id,
                username,
                client,
                transport,
                relay,
                lifetime,
                at,
            },
            Event::Refreshed { id, lifetime } => AllocationEvent::Refreshed { id, lifetime, at },
            Event::Closed { id, reason, traffic } => AllocationEvent::Closed {
                id,
                reason,
                traffic,
                at,
            },
        }
    }

    /// Logs the event (creations and closes at info, refreshes at debug). Called by the
    /// consumer, never on a worker thread: a slow log sink must not stall the relay.
    pub fn log(&self) {
        match self {
            AllocationEvent::Created {
                id,
                username,
                client,
                relay,
                lifetime,
                transport,
                ..
            } => {
                tracing::info!(alloc = id.0, %username, %client, transport = transport.as_str(), %relay, lifetime = lifetime.as_secs(), "allocation created")
            }
            AllocationEvent::Refreshed { id, lifetime, .. } => tracing::debug!(
                alloc = id.0,
                lifetime = lifetime.as_secs(),
                "allocation refreshed"
            ),
            AllocationEvent::Closed {
                id, reason, traffic, ..
            } => tracing::info!(
                alloc = id.0,
                reason = reason.as_str(),
                packets_to_peer = traffic.packets_to_peer,
                bytes_to_peer = traffic.bytes_to_peer,
                packets_to_client = traffic.packets_to_client,
                bytes_to_client = traffic.bytes_to_client,
                "allocation closed"
            ),
        }
    }
}
