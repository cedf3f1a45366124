//! The rustls server configurations: one certificate resolver, the ALPN names each
//! listener offers.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::CertStore;

/// RFC 7443: STUN and TURN over TLS.
pub const ALPN_STUN: &[u8] = b"stun.turn";
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The protocol the client and server agreed on by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Stun,
    H2,
    Http1,
    /// An ACME TLS-ALPN-01 validation: it ends with the handshake.
    Acme,
    /// The client sent no ALPN (or one we do not offer was not agreed).
    None,
}

impl Alpn {
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        match conn.alpn_protocol() {
            Some(ALPN_STUN) => Alpn::Stun,
            Some(ALPN_H2) => Alpn::H2,
            Some(ALPN_HTTP1) => Alpn::Http1,
            Some(crate::ALPN_ACME) => Alpn::Acme,
            _ => Alpn::None,
        }
    }
}

/// A server configuration presenting the certificate in force in `certs` at each
/// handshake and offering `alpn` (in order of preference). TLS 1.2 and 1.3; no client
/// certificates; no 0-RTT data.
pub fn server_config(certs: Arc<CertStore>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    // ring has no post-quantum key exchange (hence the deprecation); aws-lc-rs has, but
    // needs cmake to build, which a fresh machine lacks. Classical X25519 and P-256 it is.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
