//! The certificate: read from PEM files (full chain and key), checked that the key signs
//! for the certificate, and swapped whole when the files change or on request (SIGHUP).
//! A file that does not load is logged and counted and the certificate in use stays: a
//! bad renewal never leaves a listener without one.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::challenges::{ALPN_ACME, AcmeChallenges};
use crate::metrics::CertMetrics;

/// Why a certificate or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no PEM certificate in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: bad PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the private key is not usable: {source}", path.display())]
    Key { path: PathBuf, source: rustls::Error },
    #[error("{}: the certificate does not parse: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
}

/// A loaded certificate chain with its key, and the DNS names and validity of its first
/// certificate.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub dns_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LoadedCert {
    /// Reads and checks `cert_path` (the chain, leaf first) and `key_path`.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem(cert_path, &cert_pem, key_path, &key_pem)
    }

    /// As [`LoadedCert::from_files`], from the files' bytes (paths name them in errors).
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: cert_path.to_path_buf(),
                message: e.to_string(),
            })?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_path_buf(),
            });
        };
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| TlsError::Certificate {
            path: cert_path.to_path_buf(),
            message: format!("{e:?}"),
        })?;
        let dns_names = parsed.valid_dns_names().map(str::to_string).collect();
        let (not_before, not_after) = validity(leaf).map_err(|message| TlsError::Certificate {
            path: cert_path.to_path_buf(),
            message,
        })?;
        let key_der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
                path: key_path.to_path_buf(),
            },
            e => TlsError::Pem {
                path: key_path.to_path_buf(),
                message: e.to_string(),
            },
        })?;
        let signing =
            rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| TlsError::Key {
                path: key_path.to_path_buf(),
                source,
            })?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(TlsError::Mismatch)?;
        Ok(Self {
            key: Arc::new(key),
            dns_names,
            not_before,
            not_after,
        })
    }
}

/// The leaf's notBefore and notAfter (webpki checks them but does not expose them).
fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        match u64::try_from(secs) {
            Ok(s) => SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s),
            Err(_) => SystemTime::UNIX_EPOCH,
        }
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// What tells a changed file from the one loaded: replaced files (certbot's symlinks,
/// an atomic rename) change the inode, rewritten ones the time or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// The certificate every TLS listener of the process presents. New handshakes get the
/// certificate in force when they start; live sessions keep the one they began with.
/// With ACME there may be none yet: handshakes then fail (counted) until it is issued,
/// except TLS-ALPN-01 validations, which get their challenge certificate.
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwapOption<LoadedCert>,
    challenges: Arc<AcmeChallenges>,
    /// The files as they were at the last load attempt, good or bad.
    seen: Mutex<(Option<Stamp>, Option<Stamp>)>,
    metrics: Arc<CertMetrics>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field(
                "dns_names",
                &self.current.load().as_ref().map(|c| c.dns_names.clone()),
            )
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the files; the process does not start with a certificate that does not load.
    /// Reload outcomes are counted in `registry` (`callbox_tls_certificate_reloads_total`).
    pub fn open(
        cert_path: &Path,
        key_path: &Path,
        registry: &callbox_core::metrics::MetricsRegistry,
    ) -> Result<Arc<Self>, TlsError> {
        let seen = (stamp(cert_path), stamp(key_path));
        let loaded = LoadedCert::from_files(cert_path, key_path)?;
        Ok(Self::with(cert_path, key_path, Some(loaded), seen, registry))
    }

    /// As [`CertStore::open`] for files that an ACME client writes: missing or unusable
    /// files leave the store empty (logged) until they load.
    pub fn open_or_empty(
        cert_path: &Path,
        key_path: &Path,
        registry: &callbox_core::metrics::MetricsRegistry,
    ) -> Arc<Self> {
        let seen = (stamp(cert_path), stamp(key_path));
        let loaded = match LoadedCert::from_files(cert_path, key_path) {
            Ok(l) => Some(l),
            Err(TlsError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(error = %e, "the stored certificate does not load; a new one is needed");
                None
            }
        };
        Self::with(cert_path, key_path, loaded, seen, registry)
    }

    fn with(
        cert_path: &Path,
        key_path: &Path,
        loaded: Option<LoadedCert>,
        seen: (Option<Stamp>, Option<Stamp>),
        registry: &callbox_core::metrics::MetricsRegistry,
    ) -> Arc<Self> {
        let current = ArcSwapOption::from_pointee(loaded);
        let metrics = CertMetrics::register(registry);
        let store = Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current,
            challenges: Arc::default(),
            seen: Mutex::new(seen),
            metrics,
        });
        store.metrics.set_in_force(store.current().as_deref());
        store
    }

    /// The certificate in force, if there is one.
    pub fn current(&self) -> Option<Arc<LoadedCert>> {
        self.current.load_full()
    }

    /// The first DNS name of the certificate in force (the host of `turns:` URLs).
    pub fn first_dns_name(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .and_then(|c| c.dns_names.first().cloned())
    }

    /// The ACME challenge answers this process presents.
    pub fn challenges(&self) -> &Arc<AcmeChallenges> {
        &self.challenges
    }

    /// The files the certificate is read from (and an ACME client writes).
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// Reads the files again and puts them in force if they load; otherwise the
    /// certificate in force stays and the error is returned (and counted).
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = (stamp(&self.cert_path), stamp(&self.key_path));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
        match LoadedCert::from_files(&self.cert_path, &self.key_path) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %self.cert_path.display(),
                    names = ?loaded.dns_names,
                    "TLS certificate loaded"
                );
                self.metrics.set_in_force(Some(&loaded));
                self.current.store(Some(Arc::new(loaded)));
                self.metrics.reloaded();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays");
                self.metrics.failed();
                Err(e)
            }
        }
    }

    /// Reloads if either file changed since the last attempt; `None` when neither did.
    /// Called on a timer: a renewal is picked up without a signal.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if *self.seen.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return None;
        }
        Some(self.reload())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737: a validation connection offers only acme-tls/1 and must get the
        // challenge certificate for its SNI, never the real one.
        if hello.alpn().is_some_and(|mut a| a.any(|p| p == ALPN_ACME)) {
            return self.challenges.tls_alpn01(hello.server_name()?);
        }
        self.current.load().as_ref().map(|c| Arc::clone(&c.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        fs::write(&c, cert).unwrap();
        fs::write(&k, key).unwrap();
        (c, k)
    }

    #[test]
    fn loads_a_chain_and_its_names() {
        let (cert, key) = cert_pair("turn.example.test");
        let got =
            LoadedCert::from_pem(Path::new("c"), cert.as_bytes(), Path::new("k"), key.as_bytes()).unwrap();
        assert_eq!(got.dns_names, ["turn.example.test"]);
        assert_eq!(got.key.cert.len(), 1);
    }

    #[test]
    fn bad_files_are_named_errors() {
        let (cert, key) = cert_pair("a.test");
        let (_, other_key) = cert_pair("b.test");
        let p = Path::new("x.pem");
        let err = |c: &str, k: &str| LoadedCert::from_pem(p, c.as_bytes(), p, k.as_bytes()).unwrap_err();
        assert!(matches!(err("", &key), TlsError::NoCertificate { .. }));
        assert!(matches!(err(&cert, ""), TlsError::NoKey { .. }));
        assert!(matches!(err(&cert, &other_key), TlsError::Mismatch(_)));
        let broken = cert.replace("MII", "!!!");
        assert!(matches!(
            err(&broken, &key),
            TlsError::Pem { .. } | TlsError::Certificate { .. }
        ));
        let garbage_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(err(garbage_der, &key), TlsError::Certificate { .. }));
        let e = LoadedCert::from_files(Path::new("/nonexistent/cert.pem"), p).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn a_bad_reload_keeps_the_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_pair("old.test");
        let (c, k) = write(dir.path(), &cert, &key);
        let registry = callbox_core::metrics::MetricsRegistry::new();
        let store = CertStore::open(&c, &k, &registry).unwrap();
        assert_eq!(
            store.reload_if_changed().map(|r| r.is_ok()),
            None,
            "nothing changed"
        );
        fs::write(&c, "not a certificate").unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Err(_))));
        assert_eq!(store.first_dns_name().as_deref(), Some("old.test"));
        assert!(
            store.reload_if_changed().is_none(),
            "a failed file is not retried until it changes"
        );
        let (cert, key) = cert_pair("new.test");
        write(dir.path(), &cert, &key);
        assert!(matches!(store.reload_if_changed(), Some(Ok(()))));
        assert_eq!(store.first_dns_name().as_deref(), Some("new.test"));
        let text = registry.encode();
        assert!(
            text.contains("callbox_tls_certificate_reloads_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("callbox_tls_certificate_reloads_total{result=\"ok\"} 1"),
            "{text}"
        );
    }
}
