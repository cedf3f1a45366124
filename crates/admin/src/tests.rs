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
