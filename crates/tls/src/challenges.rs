//! The answers to ACME challenges while an order is open (RFC 8555 section 8): HTTP-01
//! key authorizations by token, and TLS-ALPN-01 certificates (RFC 8737) by name. The
//! ACME client puts them here before it tells the CA to validate and takes them away
//! when the order ends; the port-80 listener and the certificate resolver read them.
//!
//! Architecture invariant: only the process's own ACME client inserts, one entry per
//! configured name per order, so the maps stay as small as `tls.acme_domains`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::sign::CertifiedKey;

/// RFC 8737: the ALPN protocol of TLS-ALPN-01 validation connections.
pub const ALPN_ACME: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
pub struct AcmeChallenges {
    http01: Mutex<HashMap<String, String>>,
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeChallenges {
    /// Answers `GET /.well-known/acme-challenge/{token}` with `key_authorization`.
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        lock(&self.http01).insert(token.to_string(), key_authorization.to_string());
    }

    pub fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    pub fn remove_http01(&self, token: &str) {
        lock(&self.http01).remove(token);
    }

    /// Presents `cert` to TLS-ALPN-01 validation connections for `name` (SNI).
    pub fn set_tls_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        lock(&self.tls_alpn01).insert(name.to_ascii_lowercase(), cert);
    }

    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn01).get(&name.to_ascii_lowercase()).cloned()
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        lock(&self.tls_alpn01).remove(&name.to_ascii_lowercase());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
