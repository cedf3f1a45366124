//! OpenAPI schemas of the validated request fields, built from the limits in
//! `callbox_core::names` so the document states exactly what the handlers enforce.
//! Lengths are bytes in the code and characters in JSON Schema: they agree for ASCII, and
//! a multi-byte value within the document's `maxLength` can still get 400 `invalid`.

use callbox_core::names::{ApiKeyName, BanReason, UserName, password, turn_secret};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};

fn string(description: String) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

pub(super) fn user_name() -> impl Into<RefOr<Schema>> {
    string(format!(
        "{}-{} bytes, not of the REST form `<digits>:...`.",
        UserName::MIN_LEN,
        UserName::MAX_LEN
    ))
    .min_length(Some(UserName::MIN_LEN))
    .max_length(Some(UserName::MAX_LEN))
    .pattern(Some(UserName::SCHEMA_PATTERN))
}

pub(super) fn password() -> impl Into<RefOr<Schema>> {
    string(format!(
        "{}-{} bytes; only the RFC 8489 long-term key derived from it is kept.",
        password::MIN_LEN,
        password::MAX_LEN
    ))
    .min_length(Some(password::MIN_LEN))
    .max_length(Some(password::MAX_LEN))
}

pub(super) fn api_key_name() -> impl Into<RefOr<Schema>> {
    string(format!(
        "{}-{} bytes of `A-Za-z0-9{}`. Becomes the user id of the credentials minted with the key.",
        ApiKeyName::MIN_LEN,
        ApiKeyName::MAX_LEN,
        ApiKeyName::EXTRA_CHARS
    ))
    .pattern(Some(ApiKeyName::pattern()))
}

pub(super) fn ban_reason() -> impl Into<RefOr<Schema>> {
    string(format!("At most {} bytes.", BanReason::MAX_LEN)).max_length(Some(BanReason::MAX_LEN))
}

/// Optional: absent or null means "generate one".
pub(super) fn turn_secret() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .description(Some(format!(
            "The new secret ({}-{} bytes); generated when absent. Give one to share it with \
             another TURN server (e.g. coturn's `static-auth-secret`).",
            turn_secret::MIN_LEN,
            turn_secret::MAX_LEN
        )))
        .min_length(Some(turn_secret::MIN_LEN))
        .max_length(Some(turn_secret::MAX_LEN))
}
