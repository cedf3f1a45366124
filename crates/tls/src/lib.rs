//! TLS for every role: one certificate, loaded from PEM files and replaced without a
//! restart, behind the rustls server configurations of the TURN/TLS listener, the HTTPS
//! listener and the one TLS port that serves both.
//!
//! rustls is the TLS stack (no OpenSSL, nothing to link); `ring` its crypto provider
//! because it builds with the C compiler every machine has (aws-lc-rs wants cmake).
//! The TLS state machine is sans-IO (`rustls::ServerConnection`), so the TURN workers
//! drive it in their own poll loops, and a connection whose first bytes turn out to be
//! STUN can move from the HTTP acceptor to a TURN worker with its TLS state.

mod certs;
mod challenges;
mod handshakes;
mod metrics;
mod server_config;
mod sniff;

pub use certs::{CertStore, LoadedCert, TlsError};
pub use challenges::{ALPN_ACME, AcmeChallenges};
pub use handshakes::{HandshakeLimit, HandshakeSlot};
pub use metrics::TlsMetrics;
pub use rustls;
pub use server_config::{ALPN_H2, ALPN_HTTP1, ALPN_STUN, Alpn, server_config};
pub use sniff::{SNIFF_BYTES, Sniff, sniff};
