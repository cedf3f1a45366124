//! The call page and the browser client, embedded in the binary and served with their
//! content types, revalidation by ETag, and a Content-Security-Policy that allows nothing
//! from other origins.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// `(path, content type, body)` of every embedded file.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../assets/index.html"),
    ),
    (
        "/callbox.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/callbox.js"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
];

/// The page's policy: scripts, styles and connections (fetch and WebSocket) only to this
/// origin; media from the camera and peers; no frames, plugins or foreign forms.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn etag(body: &str) -> String {
    // FNV-1a: a stable content fingerprint, not a security boundary.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let tag = etag(body);
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    // Revalidate every time (cheap with the ETag), so an upgrade is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if content_type.starts_with("text/html") {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            "permissions-policy",
            HeaderValue::from_static("camera=(self), microphone=(self), display-capture=()"),
        );
    }
    r
}

/// Routes for the embedded files.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for &(path, content_type, body) in FILES {
        router = router.route(
            path,
            get(move |headers: HeaderMap| async move { serve(&headers, content_type, body) }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_loads_nothing_from_elsewhere() {
        for &(path, _, body) in FILES {
            for foreign in ["http://", "https://", "//cdn", "<script>", "onclick=", "style=\""] {
                assert!(!body.contains(foreign), "{path} contains {foreign}");
            }
        }
        assert_eq!(etag("a"), etag("a"));
        assert_ne!(etag("a"), etag("b"));
    }
}
