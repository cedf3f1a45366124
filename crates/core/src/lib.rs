//! callbox's shared core: the configuration model, secrets, TURN REST credentials
//! (coturn-compatible), the peer address policy and the ICE server list builder.
//!
//! Architecture invariant: nothing here reads the clock, the RNG or the network; callers
//! pass `now` and random bytes in, so every rule can be tested on simulated time.

pub mod config;
pub mod credentials;
pub mod http1;
pub mod ice;
pub mod jwt;
pub mod limit_key;
pub mod policy;
pub mod secret;

pub use config::Config;
pub use credentials::{RestUsername, SecretSet};
pub use limit_key::limit_key;
pub use policy::{Cidr, Peer, PeerPolicy};
pub use secret::Secret;
