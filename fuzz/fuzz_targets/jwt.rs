//! `jwt::verify_hs256` (the token of `/v1/signal` and `/v1/ice-servers` in `jwt` modes) on
//! arbitrary text, and tokens signed over arbitrary claims.

#![no_main]

use callbox_core::jwt::{JwtError, LEEWAY, sign_hs256, verify_hs256};
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
            Ok(got) => assert_eq!(Value::Object(got), claims),
            Err(e) => assert!(
                matches!(e, JwtError::Expired | JwtError::NotYetValid | JwtError::Claim(_)),
                "{e:?} for {s:?}"
            ),
        }
    }
});
