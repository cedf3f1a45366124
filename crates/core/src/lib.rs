//! callbox's shared core: the configuration model, secrets, TURN REST credentials
//! (coturn-compatible), the peer address policy and the ICE server list builder.
//!
//! Architecture invariant: nothing here reads the RNG or the network, and no rule reads the
//! clock: callers pass `now` and random bytes in, so every rule can be tested on simulated
//! time. The one clock read is [`time::unix_now`], which the roles call at their edges.

pub mod config;
pub mod credentials;
pub mod http1;
pub mod ice;
pub mod jwt;
pub mod limit_key;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod private_file;
pub mod secret;
pub mod time;

pub use config::Config;
pub use credentials::{RestUsername, SecretSet};
pub use limit_key::limit_key;
pub use policy::{Cidr, Peer, PeerPolicy};
pub use secret::Secret;
