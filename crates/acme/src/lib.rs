//! Certificates by ACME (RFC 8555) for the names in `tls.acme_domains`, with
//! `instant-acme` as the protocol client.
//!
//! The certificate lives in the state directory (`acme/cert.pem`, `acme/key.pem`, 0600)
//! and is put in force through the process's [`CertStore`], which every TLS listener
//! reads at each handshake: issuing and renewing need no restart, and other processes
//! on the same state directory pick the files up when they change. Challenges are
//! answered by this process: HTTP-01 on the port-80 listener, TLS-ALPN-01 (RFC 8737) on
//! the one TLS port, both reading [`callbox_tls::AcmeChallenges`].
//!
//! A failed order is logged with the CA's reason, counted, and retried with backoff;
//! the certificate in force (if any) stays, and plain listeners never depended on it.

mod account;
mod metrics;
mod order;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use callbox_core::metrics::MetricsRegistry;
use callbox_tls::CertStore;

use crate::metrics::AcmeMetrics;
pub use crate::schedule::{Backoff, renew_at};

/// The challenge this process answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

/// What the ACME client needs (from `tls.acme_*` and the state directory).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    pub ca_file: Option<PathBuf>,
    pub challenge: Challenge,
    pub renew_remaining_percent: u8,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub order_timeout: Duration,
    /// `<state dir>/acme`: the account and the certificate.
    pub dir: PathBuf,
}

impl AcmeSettings {
    /// Where the certificate chain and its key are kept.
    pub fn cert_paths(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        (dir.join("cert.pem"), dir.join("key.pem"))
    }
}

/// The longest single sleep: the schedule is looked at again at least this often, so a
/// stepped clock or a suspended VM does not sleep past a renewal.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Runs the ACME client until the task is dropped: orders a certificate now when there
/// is none (or it does not cover every configured name), then before each expiry.
pub fn spawn(
    settings: AcmeSettings,
    certs: Arc<CertStore>,
    registry: &MetricsRegistry,
) -> tokio::task::JoinHandle<()> {
    let metrics = AcmeMetrics::register(registry);
    tokio::spawn(run(settings, certs, metrics))
}

async fn run(settings: AcmeSettings, certs: Arc<CertStore>, metrics: Arc<AcmeMetrics>) {
    if let Err(e) = callbox_core::private_file::create_dir(&settings.dir) {
        tracing::error!(
            error = format!("{e:#}"),
            "ACME cannot keep its state; no certificate will be ordered"
        );
        return;
    }
    let mut backoff = Backoff::new(settings.retry_min, settings.retry_max);
    let mut account = None;
    loop {
        let due = due(&settings, &certs);
        metrics.next_attempt(due);
        if let Ok(wait) = due.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait.min(MAX_SLEEP)).await;
            continue;
        }
        let attempt = tokio::time::timeout(settings.order_timeout, attempt(&settings, &certs, &mut account));
        let outcome = match attempt.await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "the order did not finish within tls.acme_order_timeout_ms ({} ms)",
                settings.order_timeout.as_millis()
            )),
        };
        match outcome {
            Ok(()) => {
                metrics.issued();
                backoff.succeeded();
                let cert = certs.current();
                tracing::info!(
                    names = ?settings.domains,
                    not_after = ?cert.as_ref().map(|c| humantime::format_rfc3339_seconds(c.not_after)),
                    "ACME certificate issued and in force"
                );
            }
            Err(e) => {
                metrics.failed();
                // A stored account the CA no longer knows is created afresh next time.
                account = None;
                let wait = backoff.failed(rand::random());
                metrics.next_attempt(SystemTime::now() + wait);
                tracing::error!(
                    names = ?settings.domains,
                    directory = %settings.directory,
                    error = format!("{e:#}"),
                    retry_in_s = wait.as_secs(),
                    "ACME certificate not obtained; the certificate in force (if any) stays"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// When the next order is due: now without a certificate covering every name, else at
/// the renewal point of the one in force.
fn due(settings: &AcmeSettings, certs: &CertStore) -> SystemTime {
    let now = SystemTime::now();
    let Some(cert) = certs.current() else {
        return now;
    };
    let covers = settings
        .domains
        .iter()
        .all(|d| cert.dns_names.iter().any(|n| n.eq_ignore_ascii_case(d)));
    if !covers {
        return now;
    }
    renew_at(
        cert.not_before,
        cert.not_after,
        settings.renew_remaining_percent,
        rand::random(),
    )
}

/// One order, its files written and put in force.
async fn attempt(
    settings: &AcmeSettings,
    certs: &CertStore,
    account: &mut Option<instant_acme::Account>,
) -> anyhow::Result<()> {
    let acct = match account.take() {
        Some(a) => a,
        None => account::load_or_create(settings).await?,
    };
    let issued = order::order(&acct, settings, certs.challenges()).await;
    *account = Some(acct);
    let issued = issued?;
    let (cert_path, key_path) = certs.paths();
    // Checked before it replaces anything: a chain that does not load is the CA's error,
    // and the certificate in force stays.
    callbox_tls::LoadedCert::from_pem(
        cert_path,
        issued.chain_pem.as_bytes(),
        key_path,
        issued.key_pem.as_bytes(),
    )
    .context("the issued certificate")?;
    callbox_core::private_file::write(key_path, issued.key_pem.as_bytes())?;
    callbox_core::private_file::write(cert_path, issued.chain_pem.as_bytes())?;
    certs.reload().context("loading the issued certificate")?;
    Ok(())
}
