//! Who is calling: HS256 JWTs (for the socket and the ICE endpoint) and API keys (the ICE
//! endpoint's `apikey` mode), configured or managed in the admin store.

use callbox_core::Secret;
use callbox_core::config::Signal as SignalConfig;
use callbox_core::credentials::valid_user_id;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{Refusal, RefusalCode};
use crate::role::AppState;

/// Who the caller is after auth: user id and `meta`, and the rooms a token limits it to.
pub(crate) struct Identity {
    pub(crate) user: Option<String>,
    pub(crate) meta: Value,
    pub(crate) rooms: Option<Vec<String>>,
}

pub(crate) fn jwt_identity(cfg: &SignalConfig, token: Option<&str>) -> Result<Identity, Refusal> {
    let Some(token) = token else {
        return Err(Refusal::new(RefusalCode::Unauthorized, "a token is required"));
    };
    let secret = cfg.jwt_secret.as_ref().map(Secret::expose).unwrap_or_default();
    let claims = callbox_core::jwt::verify_hs256(token, secret.as_bytes(), callbox_core::time::unix_now())
        .map_err(|e| Refusal::new(RefusalCode::Unauthorized, format!("bad token: {e}")))?;
    let user = match claims.get("sub") {
        Some(Value::String(s)) if valid_user_id(s) => Some(s.clone()),
        Some(_) => {
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                "`sub` must be a user id (1-64 of A-Za-z0-9_.@-)",
            ));
        }
        None => None,
    };
    let rooms = match claims.get("rooms") {
        None => None,
        Some(Value::Array(a)) => Some(a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Some(_) => {
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                "`rooms` must be an array of room ids",
            ));
        }
    };
    let meta = match claims.get("meta") {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => json!({}),
    };
    Ok(Identity { user, meta, rooms })
}

/// The name of a presented API key: a configured key (compared in constant time, every
/// one of them) or a store-managed one, looked up by its SHA-256 digest (the lookup's
/// timing can only tell about the digest, which says nothing useful about keys).
pub(crate) fn api_key_name(app: &AppState, presented: &str) -> Option<String> {
    let mut found = None;
    for k in &app.cfg.api_keys {
        let eq: bool = subtle::ConstantTimeEq::ct_eq(k.key.expose().as_bytes(), presented.as_bytes()).into();
        if eq && found.is_none() {
            found = Some(k.name.clone());
        }
    }
    found.or_else(|| {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        app.store_api_keys.load().get(&digest).cloned()
    })
}
