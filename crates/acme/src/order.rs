//! One ACME order (RFC 8555 section 7.4): authorizations answered by the chosen challenge,
//! a new key and CSR, the chain downloaded. The challenge answers are in place only
//! while the order runs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callbox_tls::AcmeChallenges;
use callbox_tls::rustls::sign::CertifiedKey;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use crate::{AcmeSettings, Challenge};

/// A certificate chain (leaf first) and its private key, both PEM.
#[derive(Debug)]
pub(crate) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What to take away when the order ends, however it ends.
struct Answers<'a> {
    challenges: &'a AcmeChallenges,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_http01(t);
        }
        for n in &self.names {
            self.challenges.remove_tls_alpn01(n);
        }
    }
}

/// Orders a certificate for `settings.domains` and waits for it.
pub(crate) async fn order(
    account: &Account,
    settings: &AcmeSettings,
    challenges: &AcmeChallenges,
) -> anyhow::Result<Issued> {
    let ids: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("creating the order")?;
    let mut answers = Answers {
        challenges,
        tokens: Vec::new(),
        names: Vec::new(),
    };
    let kind = match settings.challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("fetching an authorization")?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => bail!("authorization for {} is {other:?}", authz.identifier()),
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(kind.clone())
            .with_context(|| format!("the CA offers no {kind:?} challenge for {name}"))?;
        let key_auth = challenge.key_authorization();
        match settings.challenge {
            Challenge::Http01 => {
                challenges.set_http01(&challenge.token, key_auth.as_str());
                answers.tokens.push(challenge.token.clone());
            }
            Challenge::TlsAlpn01 => {
                challenges.set_tls_alpn01(&name, alpn_certificate(&name, key_auth.digest().as_ref())?);
                answers.names.push(name.clone());
            }
        }
        challenge
            .set_ready()
            .await
            .with_context(|| format!("asking the CA to validate {name}"))?;
    }
    let polls = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(settings.order_timeout);
    let status = order.poll_ready(&polls).await.context("waiting for validation")?;
    if status != OrderStatus::Ready {
        bail!("the order is {status:?}: {}", problems(&mut order).await);
    }
    let key_pem = order.finalize().await.context("finalizing the order")?;
    let chain_pem = order
        .poll_certificate(&polls)
        .await
        .context("downloading the certificate")?;
    drop(answers);
    Ok(Issued { chain_pem, key_pem })
}

/// What the CA said about each failed challenge, for the log line.
async fn problems(order: &mut instant_acme::Order) -> String {
    let mut out = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    out.push(format!("{name}: {e}"));
                }
            }
        }
    }
    match out.is_empty() {
        true => "no reason given".into(),
        false => out.join("; "),
    }
}

/// RFC 8737 section 3: a self-signed certificate for `name` carrying the SHA-256 of the
/// key authorization in the critical acmeIdentifier extension. Built straight into a
/// rustls key (webpki would refuse its unknown critical extension, rightly, for any
/// other use).
fn alpn_certificate(name: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let der = callbox_tls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = callbox_tls::rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}
