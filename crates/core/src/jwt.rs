//! HS256 JSON Web Tokens (RFC 7519) as callbox accepts them: signature checked in constant
//! time, `alg` must be HS256 (no `none`, no key confusion), `exp` and `nbf` enforced when
//! present, with a small leeway for clock skew.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;

/// Longest token read; longer ones are refused as malformed before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT (expected three base64url parts)")]
    Malformed,
    #[error("only HS256 tokens are accepted")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("claim `{0}` has the wrong type")]
    Claim(&'static str),
}

fn b64(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)
}

/// Verifies `token` with `secret` at `now` (unix seconds) and returns its claims.
pub fn verify_hs256(token: &str, secret: &[u8], now: u64) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed);
    };
    let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Algorithm);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&b64(s)?).map_err(|_| JwtError::Signature)?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64(p)?).map_err(|_| JwtError::Malformed)?;
    match claims.get("exp") {
        None => {}
        Some(Value::Number(n)) => {
            let exp = n.as_f64().ok_or(JwtError::Claim("exp"))?;
            if exp + LEEWAY as f64 <= now as f64 {
                return Err(JwtError::Expired);
            }
        }
        Some(_) => return Err(JwtError::Claim("exp")),
    }
    match claims.get("nbf") {
        None => {}
        Some(Value::Number(n)) => {
            let nbf = n.as_f64().ok_or(JwtError::Claim("nbf"))?;
            if nbf > now.saturating_add(LEEWAY) as f64 {
                return Err(JwtError::NotYetValid);
            }
        }
        Some(_) => return Err(JwtError::Claim("nbf")),
    }
    Ok(claims)
}

/// Signs `claims` (tests, tools and the load generator use this).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = e.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = e.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let s = e.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn time_claims_at_the_end_of_time_do_not_overflow() {
        let t = sign_hs256(&json!({"nbf": 5, "exp": 10}), b"k");
        assert_eq!(verify_hs256(&t, b"k", u64::MAX), Err(JwtError::Expired));
        let t = sign_hs256(&json!({"nbf": 5}), b"k");
        assert!(verify_hs256(&t, b"k", u64::MAX).is_ok());
    }

    #[test]
    fn roundtrip_and_refusals() {
        let t = sign_hs256(&json!({"sub": "alice", "exp": 2000}), b"k");
        assert_eq!(verify_hs256(&t, b"k", 1000).unwrap()["sub"], "alice");
        assert_eq!(verify_hs256(&t, b"other", 1000), Err(JwtError::Signature));
        assert_eq!(verify_hs256(&t, b"k", 2100), Err(JwtError::Expired));
        let early = sign_hs256(&json!({"nbf": 5000}), b"k");
        assert_eq!(verify_hs256(&early, b"k", 1000), Err(JwtError::NotYetValid));
        let bad_exp = sign_hs256(&json!({"exp": "soon"}), b"k");
        assert_eq!(verify_hs256(&bad_exp, b"k", 1000), Err(JwtError::Claim("exp")));
        for junk in ["", "a.b", "a.b.c.d", "!!.??.**", &"a".repeat(9000)] {
            assert!(verify_hs256(junk, b"k", 0).is_err(), "{junk}");
        }
        // alg=none and other algorithms are refused even with an empty signature.
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none"}"#),
            e.encode(br#"{"sub":"x"}"#)
        );
        assert_eq!(verify_hs256(&none, b"k", 0), Err(JwtError::Algorithm));
        // RFC 7515 A.1's example token (HS256).
        let key = e
            .decode("AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow")
            .unwrap();
        let rfc = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(verify_hs256(rfc, &key, 1_300_000_000).unwrap()["iss"], "joe");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = verify_hs256(&s, b"k", 0);
        }
    }
}
