//! TURN REST API credentials (draft-uberti-behave-turn-rest-00), as coturn's
//! `use-auth-secret` mints and checks them, and the RFC 8489 long-term key.
//!
//! username = `<expiry unix seconds>:<user id>`, password = `base64(HMAC-SHA1(secret, username))`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::secret::Secret;

type HmacSha1 = Hmac<Sha1>;

/// The RFC 8489 long-term credential key: `MD5(username ":" realm ":" password)`.
pub type LongTermKey = [u8; 16];

/// The parts of a TURN REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Unix seconds after which the credential may not create allocations.
    pub expiry: u64,
    /// The user id after the separator; empty when the username is only a timestamp
    /// (coturn accepts that form too).
    pub user: &'a str,
}

impl<'a> RestUsername<'a> {
    /// Parses `<digits>[:<user>]`. Anything else is not a REST username (it may be a
    /// static user's name).
    pub fn parse(username: &'a str) -> Option<Self> {
        let (stamp, user) = match username.split_once(':') {
            Some((stamp, user)) => (stamp, user),
            None => (username, ""),
        };
        if stamp.is_empty() || stamp.len() > 20 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Self {
            expiry: stamp.parse().ok()?,
            user,
        })
    }
}

/// `base64(HMAC-SHA1(secret, username))`, the REST password for `username`.
pub fn rest_password(secret: &Secret, username: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Mints a REST credential for `user` valid until `now + ttl` (unix seconds).
pub fn mint(secret: &Secret, user: &str, now: u64, ttl: u64) -> (String, String) {
    let username = format!("{}:{}", now.saturating_add(ttl), user);
    let password = rest_password(secret, &username);
    (username, password)
}

/// The long-term credential key of RFC 8489 section 9.2.2 (MD5 algorithm).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// True when `id` is a user id PROTOCOL.md accepts: 1-64 of `A-Za-z0-9_.@-`.
pub fn valid_user_id(id: &str) -> bool {
    // An API key's name becomes the user id of the credentials minted with it, so the two
    // share one rule (and one set of limits).
    crate::names::ApiKeyName::is_valid(id)
}

/// The active shared secrets, newest first: the newest signs, every one verifies, so a
/// secret can be rotated without dropping credentials minted with the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSet {
    secrets: Vec<Secret>,
}

impl SecretSet {
    /// `secrets` newest first; must not be empty.
    pub fn new(secrets: Vec<Secret>) -> Option<Self> {
        if secrets.is_empty() {
            None
        } else {
            Some(Self { secrets })
        }
    }

    /// The secret that signs new credentials.
    pub fn signing(&self) -> &Secret {
        &self.secrets[0]
    }

    pub fn all(&self) -> &[Secret] {
        &self.secrets
    }

    /// Long-term keys `username` would have under each active secret, newest first.
    /// The caller checks MESSAGE-INTEGRITY against each, in constant time.
    pub fn rest_keys<'s>(
        &'s self,
        username: &'s str,
        realm: &'s str,
    ) -> impl Iterator<Item = LongTermKey> + 's {
        self.secrets
            .iter()
            .map(move |s| long_term_key(username, realm, &rest_password(s, username)))
    }

    /// Checks a REST username/password pair the way a TURN server with these secrets
    /// would (used by tests and by tools; the relay verifies keys, not passwords).
    pub fn verify_password(&self, username: &str, password: &str, now: u64) -> bool {
        let Some(rest) = RestUsername::parse(username) else {
            return false;
        };
        if rest.expiry < now {
            return false;
        }
        let mut ok = subtle::Choice::from(0);
        for s in &self.secrets {
            let expected = rest_password(s, username);
            ok |= subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), password.as_bytes());
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn coturn_formula() {
        // Computed with: printf '%s' '1700000000:alice' | openssl dgst -binary -sha1 -hmac secret | base64
        let secret = Secret::new("secret");
        assert_eq!(
            rest_password(&secret, "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        let (u, p) = mint(&secret, "alice", 1_699_999_000, 1000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(p, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // Python: hashlib.md5("マトリックス:example.org:TheMatrIX".encode()).hexdigest()
        // (RFC 5769 2.4's user, after SASLprep); the STUN vector test in turn-proto checks
        // the MESSAGE-INTEGRITY made with this key.
        let key = long_term_key(
            "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}",
            "example.org",
            "TheMatrIX",
        );
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "e8ca7ad59d5eb0518e312911d2dab2a9");
    }

    #[test]
    fn parse_usernames() {
        assert_eq!(
            RestUsername::parse("12:bob"),
            Some(RestUsername {
                expiry: 12,
                user: "bob"
            })
        );
        assert_eq!(
            RestUsername::parse("12"),
            Some(RestUsername { expiry: 12, user: "" })
        );
        assert_eq!(
            RestUsername::parse("12:a:b"),
            Some(RestUsername {
                expiry: 12,
                user: "a:b"
            })
        );
        for bad in [
            "",
            ":bob",
            "bob",
            "12x:bob",
            "-1:bob",
            "99999999999999999999999:x",
        ] {
            assert_eq!(RestUsername::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rotation_and_expiry() {
        let old = Secret::new("old");
        let new = Secret::new("new");
        let set = SecretSet::new(vec![new.clone(), old.clone()]).unwrap();
        let (u, p) = mint(&old, "a", 100, 50);
        assert!(set.verify_password(&u, &p, 120));
        assert!(!set.verify_password(&u, &p, 151), "expired");
        assert!(!set.verify_password(&u, "forged", 120));
        let only_new = SecretSet::new(vec![new]).unwrap();
        assert!(!only_new.verify_password(&u, &p, 120), "retired secret");
        assert!(SecretSet::new(vec![]).is_none());
    }

    #[test]
    fn user_ids() {
        assert!(valid_user_id("alice@example.com"));
        assert!(valid_user_id(&"a".repeat(64)));
        assert!(!valid_user_id(&"a".repeat(65)));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a:b"));
        assert!(!valid_user_id("a b"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            let _ = RestUsername::parse(&s);
        }

        #[test]
        fn minted_credentials_verify(user in "[A-Za-z0-9_.@-]{1,64}", now in 0u64..4_000_000_000, ttl in 1u64..1_000_000) {
            let secret = Secret::new("s3cret");
            let (u, p) = mint(&secret, &user, now, ttl);
            let parsed = RestUsername::parse(&u).unwrap();
            prop_assert_eq!(parsed.expiry, now + ttl);
            prop_assert_eq!(parsed.user, user.as_str());
            let set = SecretSet::new(vec![secret]).unwrap();
            prop_assert!(set.verify_password(&u, &p, now));
        }
    }
}
