//! The signal role: WebSocket rooms (PROTOCOL.md section 2), the ICE server endpoint
//! (section 1) and health and metrics (section 4), over axum.
//!
//! Shape: [`hub::Hub`] is the room state machine (no sockets); [`conn::drive`] runs one
//! connection over any `Sink`/`Stream`; this module holds the HTTP surface: admission
//! checks made before the upgrade (so refusals are plain HTTP with a JSON body), the ICE
//! endpoint and its auth modes, CORS and draining.
//!
//! Admin hooks (the admin role drives them from its store): [`AppState::set_bans`],
//! [`AppState::set_api_keys`], [`AppState::take_session_events`], and on the hub
//! [`Hub::rooms`], [`Hub::kick_peer`] and [`Hub::close_room`].

mod admission;
mod auth;
pub mod conn;
mod error;
pub mod hub;
mod ice_endpoint;
mod limits;
pub mod metrics;
pub mod page;
pub mod protocol;
mod rate;
mod role;
pub mod shared;
mod upgrade;

pub use crate::error::{Refusal, RefusalCode};
pub use crate::hub::{Hub, PeerInfo, RoomInfo, SessionRecord};
pub use crate::ice_endpoint::{IceSource, IceUrls, MAX_BODY_BYTES, body_params};
pub use crate::limits::HttpLimiter;
pub use crate::role::{AppState, SignalControl, SignalRole, TlsListener, router, state};

/// Capacity of the session history channel: minutes of churn at a busy edge, while a
/// bounded queue keeps a stalled (or absent) consumer from growing memory without end.
pub const SESSION_EVENTS_CAPACITY: usize = 65_536;

/// The subprotocol selected when offered.
pub const SUBPROTOCOL: &str = "callbox.v1";

#[cfg(test)]
mod tests;
