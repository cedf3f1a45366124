use super::*;

#[test]
fn the_document_lists_every_route_with_its_errors() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/admin/v1/status",
        "/admin/v1/allocations",
        "/admin/v1/allocations/{id}",
        "/admin/v1/rooms",
        "/admin/v1/rooms/{room}",
        "/admin/v1/rooms/{room}/peers/{peer_id}",
        "/admin/v1/secrets",
        "/admin/v1/users",
        "/admin/v1/users/{name}",
        "/admin/v1/api-keys",
        "/admin/v1/api-keys/{name}",
        "/admin/v1/bans",
        "/admin/v1/bans/{id}",
        "/admin/v1/history/allocations",
        "/admin/v1/history/sessions",
        "/admin/v1/audit",
        "/admin/v1/config",
    ] {
        let item = paths.get(p).unwrap_or_else(|| panic!("{p} missing"));
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {p} does not document 401"
            );
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["token"]["scheme"], "bearer");
}

#[test]
fn tokens_are_random_and_compared_as_digests() {
    let a = new_token();
    let b = new_token();
    assert_ne!(a, b);
    assert!(a.starts_with("cbx_") && a.len() == 68);
    assert_eq!(token_digest(&a), token_digest(&a));
    assert_ne!(token_digest(&a), token_digest(&b));
}

/// The document's limits are the ones the handlers enforce: both come from
/// `callbox_core::names`.
#[test]
fn the_documented_limits_are_the_enforced_ones() {
    use callbox_core::names::{ApiKeyName, BanReason, UserName, password, turn_secret};
    use serde_json::json;

    let doc = serde_json::to_value(openapi()).unwrap();
    let field = |schema: &str, name: &str| doc["components"]["schemas"][schema]["properties"][name].clone();
    let user = field("NewUser", "name");
    assert_eq!(user["minLength"], json!(UserName::MIN_LEN));
    assert_eq!(user["maxLength"], json!(UserName::MAX_LEN));
    assert_eq!(user["pattern"], json!(UserName::SCHEMA_PATTERN));
    let pw = field("NewUser", "password");
    assert_eq!(pw["minLength"], json!(password::MIN_LEN));
    assert_eq!(pw["maxLength"], json!(password::MAX_LEN));
    assert_eq!(
        field("NewApiKey", "name")["pattern"],
        json!(ApiKeyName::pattern())
    );
    assert_eq!(field("NewBan", "reason")["maxLength"], json!(BanReason::MAX_LEN));
    let secret = field("RotateSecret", "secret");
    assert_eq!(secret["minLength"], json!(turn_secret::MIN_LEN));
    assert_eq!(secret["maxLength"], json!(turn_secret::MAX_LEN));
    assert_eq!(secret["type"], json!(["string", "null"]));
    // Which fields a request must carry did not change with the generated schemas.
    assert_eq!(
        doc["components"]["schemas"]["NewUser"]["required"],
        json!(["name", "password"])
    );
    assert_eq!(
        doc["components"]["schemas"]["NewBan"]["required"],
        json!(["network"])
    );
    assert!(doc["components"]["schemas"]["RotateSecret"]["required"].is_null());

    // The values at the limits: the longest accepted, one more refused.
    let body = |name: String, password: String| NewUser { name, password };
    assert!(
        body("u".repeat(UserName::MAX_LEN), "p".repeat(password::MAX_LEN))
            .validate()
            .is_ok()
    );
    assert!(
        body("u".repeat(UserName::MAX_LEN + 1), "p".into())
            .validate()
            .is_err()
    );
    assert!(
        body("u".into(), "p".repeat(password::MAX_LEN + 1))
            .validate()
            .is_err()
    );
}

/// Limits are documented for people in docs/admin.md from the same consts.
#[test]
fn docs_admin_md_states_the_limits() {
    use callbox_core::names::{ApiKeyName, BanReason, RoomId, UserName, password, turn_secret};

    let md = include_str!("../../../docs/admin.md");
    for line in [
        format!(
            "| user name | {}-{} bytes |",
            UserName::MIN_LEN,
            UserName::MAX_LEN
        ),
        format!("| password | {}-{} bytes |", password::MIN_LEN, password::MAX_LEN),
        format!("| API key name | `{}` |", ApiKeyName::pattern()),
        format!("| ban reason | at most {} bytes |", BanReason::MAX_LEN),
        format!(
            "| TURN secret | {}-{} bytes |",
            turn_secret::MIN_LEN,
            turn_secret::MAX_LEN
        ),
        format!("| room | `{}` |", RoomId::pattern()),
    ] {
        assert!(md.contains(&line), "docs/admin.md lacks `{line}`");
    }
}
