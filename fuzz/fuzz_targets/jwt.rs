//! `jwt::verify_hs256` (the token of `/v1/signal` and `/v1/ice-servers` in `jwt` modes) on
//! arbitrary text, and tokens signed over arbitrary claims.

#![no_main]

use callbox_core::jwt::{JwtError, LEEWAY, MAX_TOKEN_BYTES, sign_hs256, verify_hs256};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &[u8] = b"fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for now in [0, 1_795_000_000, u64::MAX] {
        if let Ok(claims) = verify_hs256(s, SECRET, now) {
            // Accepted: it carried our signature, and its time claims hold at `now` (checked
            // where f64, which the claims are compared in, holds the seconds exactly).
            let exact = |v: u64| v < 1 << 52;
            if let Some(exp) = claims.get("exp").and_then(Value::as_u64)
                && exact(exp)
                && exact(now)
            {
                assert!(now < exp + LEEWAY, "{s:?}");
            }
            if let Some(nbf) = claims.get("nbf").and_then(Value::as_u64)
                && exact(nbf)
                && exact(now)
            {
                assert!(nbf <= now + LEEWAY, "{s:?}");
            }
            assert_eq!(verify_hs256(s, b"another-secret", now), Err(JwtError::Signature));
        }
    }
    // Claims from the input: signed by us, they verify unless their time claims refuse.
    if let Ok(claims @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
        let token = sign_hs256(&claims, SECRET);
        match verify_hs256(&token, SECRET, 1_795_000_000) {
            Ok(got) => assert!(same(&Value::Object(got.clone()), &claims), "{got:?} for {s:?}"),
            // Tokens past the size cap are refused unread.
            Err(JwtError::Malformed) if token.len() > MAX_TOKEN_BYTES => {}
            Err(e) => assert!(
                matches!(e, JwtError::Expired | JwtError::NotYetValid | JwtError::Claim(_)),
                "{e:?} for {s:?}"
            ),
        }
    }
});

/// Equal, with floats allowed to differ in the last bits: serde_json's parser (without its
/// `float_roundtrip` feature) may read a printed float back one ulp off.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 1e-12
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
