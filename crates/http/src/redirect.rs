//! Plain HTTP (port 80): ACME HTTP-01 answers (RFC 8555 section 8.3) and, for every
//! other request, a redirect to the same host and path over https.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callbox_tls::AcmeChallenges;

#[derive(Clone)]
struct Port80 {
    challenges: Arc<AcmeChallenges>,
    /// The https port redirects name (none in the URL when it is 443).
    https_port: u16,
}

/// The port-80 service: challenges from `challenges`, redirects to `https_port`.
pub fn port80_router(challenges: Arc<AcmeChallenges>, https_port: u16) -> Router {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .fallback(redirect)
        .with_state(Port80 {
            challenges,
            https_port,
        })
}

async fn challenge(State(s): State<Port80>, Path(token): Path<String>) -> Response {
    match s.challenges.http01(&token) {
        Some(key_auth) => ([(header::CONTENT_TYPE, "text/plain")], key_auth).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn redirect(State(s): State<Port80>, headers: HeaderMap, uri: Uri) -> Response {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(redirect_host)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "a Host header naming this server is required\n",
        )
            .into_response();
    };
    let port = match s.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{path}");
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response()
}

/// The host part of a Host header, if it is a DNS name, an IPv4 address or a bracketed
/// IPv6 address (nothing else goes into a Location header).
pub fn redirect_host(value: &str) -> Option<&str> {
    let host = match value.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            let inner = &rest[..end];
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            &value[..end + 2]
        }
        None => value.split(':').next()?,
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'-';
    let ok = host.starts_with('[') || (!host.is_empty() && host.len() <= 253 && host.bytes().all(plain));
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_names_and_addresses_reach_the_location() {
        assert_eq!(redirect_host("callbox.example.com"), Some("callbox.example.com"));
        assert_eq!(
            redirect_host("callbox.example.com:80"),
            Some("callbox.example.com")
        );
        assert_eq!(redirect_host("192.0.2.7:8080"), Some("192.0.2.7"));
        assert_eq!(redirect_host("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        for bad in ["", "a b", "evil.test/path", "[zz]", "[::1", "a@b", "x\"y"] {
            assert_eq!(redirect_host(bad), None, "{bad}");
        }
    }
}
