//! Validated names and texts that operators and clients hand to callbox: static TURN user
//! names, API key names, ban reasons and signaling room ids (and the password and TURN
//! secret limits, which have no type because they are never kept as given).
//!
//! Each limit is a const here and nowhere else: the admin API's checks and its OpenAPI
//! document, the store, signaling and the docs all read these. Lengths are in bytes (what
//! the wire and SQLite hold); a value of one of these types always satisfies its rules,
//! so code holding one need not check again.

use std::fmt;

/// A value that breaks its field's rules. Names the field, so an answer can say which
/// one was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct FieldError {
    /// The field, as a person calls it (`user name`, `API key name`, ...).
    pub field: &'static str,
    /// What is wrong with the value.
    pub problem: String,
}

impl FieldError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// `Err` unless `len` is in `min..=max` (bytes).
fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), FieldError> {
    if (min..=max).contains(&len) {
        return Ok(());
    }
    let problem = if min == 0 {
        format!("at most {max} bytes")
    } else {
        format!("{min}-{max} bytes")
    };
    Err(FieldError::new(field, problem))
}

/// `Err` unless every byte is ASCII alphanumeric or one of `extra`.
fn check_chars(field: &'static str, s: &str, extra: &str) -> Result<(), FieldError> {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b))
    {
        return Ok(());
    }
    Err(FieldError::new(field, format!("only A-Za-z0-9 and `{extra}`")))
}

/// `^[A-Za-z0-9<extra>]{min,max}$`. `extra` ends with `-` where it has one, so the dash
/// is literal inside the class.
fn class_pattern(extra: &str, min: usize, max: usize) -> String {
    format!("^[A-Za-z0-9{extra}]{{{min},{max}}}$")
}

/// The parts every validated string type shares: construction only through `parse`,
/// read access, display, and serde that validates on the way in.
macro_rules! validated_string {
    ($name:ident) => {
        impl $name {
            /// The value, valid by construction.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The value as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }

            /// Whether `s` would parse.
            pub fn is_valid(s: &str) -> bool {
                Self::check(s).is_ok()
            }

            /// `s` when it keeps the rules, else an error naming the field.
            pub fn parse(s: impl Into<String>) -> Result<Self, FieldError> {
                let s = s.into();
                Self::check(&s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(s: String) -> Result<Self, FieldError> {
                Self::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = FieldError;
            fn try_from(s: &str) -> Result<Self, FieldError> {
                Self::parse(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, FieldError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The name of a static TURN user (long-term credentials): 1-255 bytes, and not of the
/// REST form `<digits>[:...]`, which the relay reads as a REST credential instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    pub const FIELD: &'static str = "user name";
    pub const MIN_LEN: usize = 1;
    /// What fits a STUN USERNAME with room to spare (it holds 513 bytes).
    pub const MAX_LEN: usize = 255;
    /// What the OpenAPI document advertises: a name not starting with a digit or `:` is
    /// never of the REST form. Stricter than [`UserName::parse`] (which accepts e.g.
    /// `1abc`), so every value the document allows is accepted.
    pub const SCHEMA_PATTERN: &'static str = "^[^0-9:]";

    fn check(s: &str) -> Result<(), FieldError> {
        check_len(Self::FIELD, s.len(), Self::MIN_LEN, Self::MAX_LEN)?;
        if crate::RestUsername::parse(s).is_some() {
            return Err(FieldError::new(
                Self::FIELD,
                "the REST form `<digits>:...` is reserved for REST credentials",
            ));
        }
        Ok(())
    }
}

validated_string!(UserName);

/// The name of an API key for `/v1/ice-servers`. It becomes the user id of the
/// credentials minted with the key, so it follows the REST user id rules:
/// 1-64 bytes of `A-Za-z0-9` and `_.@-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    pub const FIELD: &'static str = "API key name";
    pub const MIN_LEN: usize = 1;
    pub const MAX_LEN: usize = 64;
    /// Allowed besides ASCII letters and digits.
    pub const EXTRA_CHARS: &'static str = "_.@-";

    /// `^[A-Za-z0-9_.@-]{1,64}$`, for documents and messages.
    pub fn pattern() -> String {
        class_pattern(Self::EXTRA_CHARS, Self::MIN_LEN, Self::MAX_LEN)
    }

    fn check(s: &str) -> Result<(), FieldError> {
        check_len(Self::FIELD, s.len(), Self::MIN_LEN, Self::MAX_LEN)?;
        check_chars(Self::FIELD, s, Self::EXTRA_CHARS)
    }
}

validated_string!(ApiKeyName);

/// Why an address or network is banned: free text of at most 1024 bytes, possibly empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BanReason(String);

impl BanReason {
    pub const FIELD: &'static str = "ban reason";
    pub const MAX_LEN: usize = 1024;

    fn check(s: &str) -> Result<(), FieldError> {
        check_len(Self::FIELD, s.len(), 0, Self::MAX_LEN)
    }
}

validated_string!(BanReason);

/// A signaling room id: 1-64 bytes of `A-Za-z0-9` and `_.:-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    pub const FIELD: &'static str = "room";
    pub const MIN_LEN: usize = 1;
    pub const MAX_LEN: usize = 64;
    /// Allowed besides ASCII letters and digits.
    pub const EXTRA_CHARS: &'static str = "_.:-";

    /// `^[A-Za-z0-9_.:-]{1,64}$`, for documents and messages.
    pub fn pattern() -> String {
        class_pattern(Self::EXTRA_CHARS, Self::MIN_LEN, Self::MAX_LEN)
    }

    fn check(s: &str) -> Result<(), FieldError> {
        check_len(Self::FIELD, s.len(), Self::MIN_LEN, Self::MAX_LEN)?;
        check_chars(Self::FIELD, s, Self::EXTRA_CHARS)
    }
}

validated_string!(RoomId);

/// A static user's password: 1-256 bytes. It has no type: only the long-term key derived
/// from it is kept.
pub mod password {
    use super::{FieldError, check_len};

    pub const FIELD: &str = "password";
    pub const MIN_LEN: usize = 1;
    pub const MAX_LEN: usize = 256;

    /// `Err` unless `password` keeps the length limits.
    pub fn check(password: &str) -> Result<(), FieldError> {
        check_len(FIELD, password.len(), MIN_LEN, MAX_LEN)
    }
}

/// A TURN REST shared secret given by an operator: 16-1024 bytes (short secrets make
/// HMACs guessable; the upper bound keeps requests and rows small).
pub mod turn_secret {
    use super::{FieldError, check_len};

    pub const FIELD: &str = "secret";
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 1024;

    /// `Err` unless `secret` keeps the length limits.
    pub fn check(secret: &str) -> Result<(), FieldError> {
        check_len(FIELD, secret.len(), MIN_LEN, MAX_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert!(UserName::parse("bob").is_ok());
        assert!(UserName::parse("1abc").is_ok(), "not all digits: not REST");
        assert!(UserName::parse("x".repeat(UserName::MAX_LEN)).is_ok());
        for bad in ["", "123", "123:x", "1:x"] {
            let e = UserName::parse(bad).unwrap_err();
            assert_eq!(e.field, "user name", "{bad}");
        }
        assert!(UserName::parse("x".repeat(UserName::MAX_LEN + 1)).is_err());
        assert_eq!(
            UserName::parse("").unwrap_err().to_string(),
            "invalid user name: 1-255 bytes"
        );
    }

    #[test]
    fn api_key_names_follow_the_user_id_rule() {
        assert_eq!(ApiKeyName::pattern(), "^[A-Za-z0-9_.@-]{1,64}$");
        for ok in ["janus", "alice@example.com", "a-b_c.d", &"a".repeat(64)] {
            assert!(ApiKeyName::parse(ok).is_ok(), "{ok}");
            assert!(crate::credentials::valid_user_id(ok), "{ok}");
        }
        for bad in ["", "no spaces", "a:b", &"a".repeat(65), "é"] {
            assert!(ApiKeyName::parse(bad).is_err(), "{bad}");
            assert!(!crate::credentials::valid_user_id(bad), "{bad}");
        }
        assert_eq!(ApiKeyName::parse("a b").unwrap_err().field, "API key name");
    }

    #[test]
    fn ban_reasons() {
        assert_eq!(BanReason::parse("").unwrap(), BanReason::default());
        assert!(BanReason::parse("é".repeat(512)).is_ok(), "1024 bytes");
        let e = BanReason::parse("x".repeat(1025)).unwrap_err();
        assert_eq!(e.to_string(), "invalid ban reason: at most 1024 bytes");
    }

    #[test]
    fn room_ids() {
        assert_eq!(RoomId::pattern(), "^[A-Za-z0-9_.:-]{1,64}$");
        for ok in ["r", "room-1", "a:b.c_d", &"r".repeat(64)] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "bad room", "a/b", "a@b", &"r".repeat(65)] {
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_and_secrets() {
        assert!(password::check("p").is_ok());
        assert!(password::check(&"p".repeat(256)).is_ok());
        assert!(password::check("").is_err());
        assert!(password::check(&"p".repeat(257)).is_err());
        assert!(turn_secret::check(&"s".repeat(16)).is_ok());
        assert!(turn_secret::check("short").is_err());
        assert!(turn_secret::check(&"s".repeat(1025)).is_err());
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let name: UserName = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(name.as_str(), "bob");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"bob\"");
        let e = serde_json::from_str::<UserName>("\"1:x\"").unwrap_err();
        assert!(e.to_string().contains("invalid user name"), "{e}");
        assert!(serde_json::from_str::<RoomId>("\"bad room\"").is_err());
        assert!(serde_json::from_str::<ApiKeyName>("5").is_err());
        let r: BanReason = serde_json::from_str("\"abuse\"").unwrap();
        assert_eq!(r.to_string(), "abuse");
    }
}

/// Whether `s` is a DNS host name a public CA could issue for: dot-separated labels of
/// 1-63 letters, digits and hyphens (not at a label's ends), 253 characters at most,
/// the last label not all digits (so never an IPv4 address), no wildcard.
pub fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod dns_name_tests {
    use super::valid_dns_name;

    #[test]
    fn host_names_pass_and_the_rest_does_not() {
        for ok in [
            "callbox.example.com",
            "a.test",
            "xn--bcher-kva.example",
            "host",
            "a-b.c.",
        ] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        let long = format!("{}.test", "a".repeat(64));
        for bad in [
            "",
            "*.example.com",
            "192.0.2.1",
            "-a.test",
            "a-.test",
            "a..test",
            "a_b.test",
            &long,
            "a b.test",
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
