//! First start: the store in the state directory, the TURN secret seeded into it, and the
//! admin token.

use std::sync::Arc;

use anyhow::Context as _;
use callbox_core::{Secret, SecretSet};

use crate::history::SharedStore;
use crate::settings::Loaded;
use crate::state;

/// The store's file in the state directory.
pub const STORE_FILE: &str = "callbox.db";

/// The secrets of `auth.secrets`, if the configuration sets any.
pub fn config_secrets(loaded: &Loaded) -> Option<SecretSet> {
    SecretSet::new(loaded.config.auth.secrets.clone())
}

/// The secret generated into the state directory on first start: it seeds the store, and
/// serves alone when the store cannot be opened.
pub fn file_secret(loaded: &Loaded) -> anyhow::Result<SecretSet> {
    SecretSet::new(vec![state::shared_secret(&loaded.state_dir)?]).context("no shared secret")
}

/// The active secrets for commands that run without the roles (`callbox credentials`):
/// the configuration's, else the store's, else the generated file.
pub fn secrets(loaded: &Loaded) -> anyhow::Result<SecretSet> {
    if let Some(c) = config_secrets(loaded) {
        return Ok(c);
    }
    let path = loaded.state_dir.join(STORE_FILE);
    if path.exists()
        && let Ok(store) = callbox_store::Store::open(&path)
        && let Ok(list) = store.active_secrets(callbox_core::time::unix_now())
        && let Some(set) = SecretSet::new(list.into_iter().map(|s| Secret::new(s.secret)).collect())
    {
        return Ok(set);
    }
    file_secret(loaded)
}

/// Seeds the store with the generated secret when it holds none (first start, or a
/// store created before secrets lived there), so rotation through admin starts from the
/// secret already in use.
pub fn seed_secrets(loaded: &Loaded, store: &mut callbox_store::Store) -> anyhow::Result<()> {
    if config_secrets(loaded).is_some() || !store.active_secrets(callbox_core::time::unix_now())?.is_empty() {
        return Ok(());
    }
    let secret = state::shared_secret(&loaded.state_dir)?;
    store.rotate_secret(secret.expose(), 0, callbox_core::time::unix_now(), "bootstrap")?;
    tracing::info!("TURN secret moved into the store (rotate it with `callbox admin secrets rotate`)");
    Ok(())
}

/// The store in the state directory. When it cannot be opened the relay and signaling
/// still start (on the configured or generated secret), without history or admin: a
/// read-only or full disk never keeps calls from working.
pub fn open_store(loaded: &Loaded) -> Option<SharedStore> {
    let path = loaded.state_dir.join(STORE_FILE);
    if let Err(e) = std::fs::create_dir_all(&loaded.state_dir) {
        tracing::warn!(error = %e, "state directory unavailable; running without the store");
        return None;
    }
    match callbox_store::Store::open(&path) {
        Ok(s) => Some(Arc::new(std::sync::Mutex::new(s))),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "store unavailable; running without history and admin");
            None
        }
    }
}

/// The admin token file in the state directory.
pub const TOKEN_FILE: &str = "admin-token";

/// Makes a new admin token: its digest goes to the store, the token itself to
/// `STATE_DIR/admin-token` (mode 0600, written to a temporary name and renamed).
pub fn write_new_token(
    store: &callbox_store::Store,
    state_dir: &std::path::Path,
    actor: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let token = callbox_admin::new_token();
    let path = state_dir.join(TOKEN_FILE);
    // The digest is stored first: a crash before the file is written leaves the old file
    // (no longer valid) and the way in is another rotation; never a working token that
    // the store does not know.
    store.set_admin_token(
        callbox_admin::token_digest(&token),
        callbox_core::time::unix_now(),
        actor,
    )?;
    state::write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(path)
}

/// A token is made on first start; later starts keep the stored one.
pub fn ensure_admin_token(store: &SharedStore, state_dir: &std::path::Path) -> anyhow::Result<()> {
    let s = store.lock().unwrap_or_else(|e| e.into_inner());
    if s.admin_token()?.is_some() {
        if !state_dir.join(TOKEN_FILE).exists() {
            tracing::warn!(
                "the admin token file is missing; make a new one with `callbox admin token rotate`"
            );
        }
        return Ok(());
    }
    let path = write_new_token(&s, state_dir, "bootstrap")?;
    tracing::info!(path = %path.display(), "admin token generated");
    Ok(())
}
