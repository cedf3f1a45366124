//! The ACME account: created once per directory and kept in the state directory
//! (`acme/account.json`, 0600), so renewals reuse it (CAs rate-limit new accounts).

use std::path::Path;

use anyhow::Context as _;
use instant_acme::{Account, AccountBuilder, AccountCredentials, NewAccount};
use serde::{Deserialize, Serialize};

use crate::AcmeSettings;
use callbox_core::private_file::write as write_private;

/// What `account.json` holds: the account for one directory URL.
#[derive(Serialize, Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

fn builder(settings: &AcmeSettings) -> anyhow::Result<AccountBuilder> {
    match &settings.ca_file {
        Some(ca) => {
            Account::builder_with_root(ca).with_context(|| format!("tls.acme_ca_file {}", ca.display()))
        }
        None => Account::builder().context("the system's TLS roots"),
    }
}

/// The stored account for `settings.directory`, or a new one (stored before use).
pub(crate) async fn load_or_create(settings: &AcmeSettings) -> anyhow::Result<Account> {
    let path = settings.dir.join("account.json");
    if let Some(stored) = read(&path)
        && stored.directory == settings.directory
    {
        return builder(settings)?
            .from_credentials(stored.credentials)
            .await
            .with_context(|| format!("the ACME account in {}", path.display()));
    }
    let contact: Vec<String> = settings.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(settings)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {}", settings.directory))?;
    let stored = Stored {
        directory: settings.directory.clone(),
        credentials,
    };
    write_private(&path, &serde_json::to_vec_pretty(&stored)?)?;
    tracing::info!(directory = %settings.directory, id = %account.id(), "ACME account created");
    Ok(account)
}

/// The stored account, if the file is there and reads; a damaged file is replaced.
fn read(path: &Path) -> Option<Stored> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the stored ACME account does not read; creating a new one");
            None
        }
    }
}
