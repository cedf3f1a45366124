//! The `Authorization: Bearer` credential, one parser for every role.

use axum::http::{HeaderMap, header};

/// The token of an `Authorization: Bearer <token>` header, trimmed. The scheme is matched
/// without regard to case (RFC 9110 section 11.1); a header that is not UTF-8, has another
/// scheme or no token gives `None`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn scheme_in_any_case_and_token_trimmed() {
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("BEARER abc")), Some("abc"));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_none() {
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer")), None);
        assert_eq!(bearer(&with("Bearer   ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
