//! The admin API's request bodies (`POST /admin/v1/users`, `/api-keys`, `/bans`,
//! `/secrets`) and the validated names on arbitrary bytes: JSON into each body type, then
//! the handler's own checks. Must not panic; whatever passes keeps every rule of
//! `callbox_core::names`, and what is refused is refused as 400 with a code.

#![no_main]

use callbox_admin::{MAX_SPAN, NewApiKey, NewBan, NewUser, RotateSecret, ValidBan};
use callbox_core::RestUsername;
use callbox_core::names::{ApiKeyName, BanReason, RoomId, UserName, password, turn_secret};
use libfuzzer_sys::fuzz_target;

fn user_name_ok(s: &str) -> bool {
    (UserName::MIN_LEN..=UserName::MAX_LEN).contains(&s.len()) && RestUsername::parse(s).is_none()
}

fn class_ok(s: &str, min: usize, max: usize, extra: &str) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
}

fn api_key_name_ok(s: &str) -> bool {
    class_ok(s, ApiKeyName::MIN_LEN, ApiKeyName::MAX_LEN, ApiKeyName::EXTRA_CHARS)
}

fn room_ok(s: &str) -> bool {
    class_ok(s, RoomId::MIN_LEN, RoomId::MAX_LEN, RoomId::EXTRA_CHARS)
}

/// A refusal by a handler's checks is a 400 with one of the codes the document lists.
fn refused(e: &callbox_admin::ApiError) {
    assert_eq!(e.status, 400, "{e:?}");
    assert!(matches!(e.code, "invalid" | "bad-network"), "{e:?}");
    assert!(!e.message.is_empty());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = serde_json::from_slice::<NewUser>(data) {
        match b.validate() {
            Ok(name) => {
                assert_eq!(name.as_str(), b.name);
                assert!(user_name_ok(name.as_str()), "{name:?}");
                assert!(password::check(&b.password).is_ok());
                assert!((password::MIN_LEN..=password::MAX_LEN).contains(&b.password.len()));
            }
            Err(e) => {
                refused(&e);
                assert!(!user_name_ok(&b.name) || password::check(&b.password).is_err());
            }
        }
    }
    if let Ok(b) = serde_json::from_slice::<NewApiKey>(data) {
        match b.validate() {
            Ok(name) => {
                assert_eq!(name.as_str(), b.name);
                assert!(api_key_name_ok(name.as_str()), "{name:?}");
                assert!(callbox_core::credentials::valid_user_id(name.as_str()));
            }
            Err(e) => {
                refused(&e);
                assert!(!api_key_name_ok(&b.name));
            }
        }
    }
    if let Ok(b) = serde_json::from_slice::<NewBan>(data) {
        match b.validate() {
            Ok(ValidBan {
                network,
                reason,
                expires_in_seconds,
            }) => {
                assert_eq!(Ok(network), b.network.parse());
                assert_eq!(reason.as_str(), b.reason);
                assert!(reason.as_str().len() <= BanReason::MAX_LEN);
                assert!(expires_in_seconds.is_none_or(|s| (1..=MAX_SPAN).contains(&s)));
            }
            Err(e) => refused(&e),
        }
    }
    if let Ok(b) = serde_json::from_slice::<RotateSecret>(data) {
        if let Some(secret) = &b.secret {
            let ok = (turn_secret::MIN_LEN..=turn_secret::MAX_LEN).contains(&secret.len());
            assert_eq!(turn_secret::check(secret).is_ok(), ok);
        }
    }

    // The validated types' own serde: what deserializes keeps the rules and serializes
    // back to the same JSON string.
    if let Ok(n) = serde_json::from_slice::<UserName>(data) {
        assert!(user_name_ok(n.as_str()));
        let again: UserName = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(again, n);
    }
    if let Ok(n) = serde_json::from_slice::<ApiKeyName>(data) {
        assert!(api_key_name_ok(n.as_str()));
        assert_eq!(ApiKeyName::parse(n.as_str()), Ok(n));
    }
    if let Ok(r) = serde_json::from_slice::<BanReason>(data) {
        assert!(r.as_str().len() <= BanReason::MAX_LEN);
    }
    if let Ok(r) = serde_json::from_slice::<RoomId>(data) {
        assert!(room_ok(r.as_str()));
    }
    // And on the raw text, the parsers agree with the rules stated above.
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(UserName::is_valid(s), user_name_ok(s), "{s:?}");
        assert_eq!(ApiKeyName::is_valid(s), api_key_name_ok(s), "{s:?}");
        assert_eq!(RoomId::is_valid(s), room_ok(s), "{s:?}");
        assert_eq!(BanReason::is_valid(s), s.len() <= BanReason::MAX_LEN);
    }
});
