//! `/v1/ice-servers` (PROTOCOL.md section 1): the ICE server list with fresh TURN REST
//! credentials, its auth modes (open and rate limited, API key, JWT), parameters from the
//! query, a JSON body or a form, and CORS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callbox_core::SecretSet;
use callbox_core::config::IceAuth;
use callbox_core::credentials::valid_user_id;
use callbox_core::ice;
use serde_json::Value;

use crate::admission::origin_allowed;
use crate::auth::{api_key_name, jwt_identity};
use crate::error::{Refusal, RefusalCode};
use crate::role::AppState;

/// Where ICE server lists come from: URLs, secrets, lifetimes.
#[derive(Debug)]
pub struct IceSource {
    /// Swapped whole when the cluster's TURN nodes change
    /// ([`crate::SignalControl::set_ice_urls`]).
    pub urls: ArcSwap<IceUrls>,
    /// Swapped whole when the secrets rotate ([`crate::SignalControl::set_ice_secrets`]).
    pub secrets: ArcSwap<SecretSet>,
    pub default_ttl: u64,
    pub max_ttl: u64,
}

/// The STUN and TURN URLs ICE lists are made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceUrls {
    pub stun: Vec<String>,
    pub turn: Vec<String>,
}

impl IceSource {
    pub fn build(&self, user: &str, ttl: u64) -> ice::IceServers {
        let secrets = self.secrets.load();
        let urls = self.urls.load();
        ice::build_from_urls(
            &urls.stun,
            &urls.turn,
            &secrets,
            user,
            callbox_core::time::unix_now(),
            ttl,
        )
    }
}

pub(crate) fn cors_headers(app: &AppState, headers: &HeaderMap, r: &mut Response) {
    if let Ok(Some(origin)) = origin_allowed(&app.cfg, headers) {
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("null")),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Link"),
        );
    }
}

pub(crate) async fn preflight(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if origin_allowed(&app.cfg, &headers).is_err() {
        return Refusal::new(RefusalCode::Origin, "this origin is not allowed").into_response();
    }
    cors_headers(&app, &headers, &mut r);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, X-Api-Key, Content-Type"),
    );
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    r
}

pub(crate) async fn ice_servers_get(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let params: HashMap<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    ice_servers(&app, peer, &headers, params)
}

pub(crate) async fn ice_servers_post(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let mut params: HashMap<String, Value> = q.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match body_params(content_type, &body) {
        Ok(body) => params.extend(body),
        Err(r) => return r.into_response(),
    }
    ice_servers(&app, peer, &headers, params)
}

/// The largest POST body `/v1/ice-servers` reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The parameters in a POST body: a JSON object (by content type, or a body that starts
/// with `{`), else `application/x-www-form-urlencoded` pairs (later pairs win). An empty
/// body has none.
pub fn body_params(content_type: &str, body: &[u8]) -> Result<Vec<(String, Value)>, Refusal> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Refusal::new(
            RefusalCode::TooLarge,
            "the body is limited to 16 KiB",
        ));
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if content_type.starts_with("application/json") || body.first() == Some(&b'{') {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m.into_iter().collect()),
            _ => Err(Refusal::new(
                RefusalCode::BadRequest,
                "the body must be a JSON object or a form",
            )),
        };
    }
    // Invalid UTF-8 in a form decodes lossily, as browsers' own form parsing does.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| Refusal::new(RefusalCode::BadRequest, format!("bad form: {e}")))?;
    Ok(pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
}

fn param_str<'a>(params: &'a HashMap<String, Value>, k: &str) -> Option<&'a str> {
    params.get(k).and_then(Value::as_str)
}

fn ice_servers(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: HashMap<String, Value>,
) -> Response {
    let ip = callbox_core::policy::canonical(peer.ip());
    let mut resp = ice_servers_inner(app, ip, headers, &params).unwrap_or_else(|r| {
        app.metrics.reject(r.code.as_str());
        r.into_response()
    });
    cors_headers(app, headers, &mut resp);
    resp
}

fn ice_servers_inner(
    app: &AppState,
    ip: IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, Value>,
) -> Result<Response, Refusal> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(Refusal::new(
            RefusalCode::Draining,
            "this server is shutting down",
        ));
    }
    app.refuse_banned(ip)?;
    if origin_allowed(&app.cfg, headers).is_err() {
        return Err(Refusal::new(RefusalCode::Origin, "this origin is not allowed"));
    }
    if let Some(service) = param_str(params, "service")
        && service != "turn"
    {
        return Err(Refusal::new(RefusalCode::BadRequest, "service must be `turn`"));
    }
    // Who is asking decides the default user id.
    let default_user = match app.cfg.ice_auth {
        IceAuth::Open => {
            if let Err(secs) = app.http_limiter.hit(
                callbox_core::limit_key(ip, app.cfg.ipv6_prefix_len),
                Instant::now(),
            ) {
                let mut r = Refusal::new(RefusalCode::RateLimited, "too many requests from this address");
                r.retry_after = Some(secs);
                return Err(r);
            }
            None
        }
        IceAuth::ApiKey => {
            let presented = headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .or_else(|| callbox_http::bearer(headers))
                .or_else(|| param_str(params, "key"))
                .or_else(|| param_str(params, "api"))
                .ok_or_else(|| Refusal::new(RefusalCode::Unauthorized, "an API key is required"))?;
            Some(
                api_key_name(app, presented)
                    .ok_or_else(|| Refusal::new(RefusalCode::Unauthorized, "unknown API key"))?,
            )
        }
        IceAuth::Jwt => {
            jwt_identity(
                &app.cfg,
                callbox_http::bearer(headers).or_else(|| param_str(params, "token")),
            )?
            .user
        }
    };
    let user = match params.get("username") {
        None => default_user.unwrap_or_else(|| format!("anon-{:08x}", rand::random::<u32>())),
        Some(Value::String(u)) if valid_user_id(u) => u.clone(),
        Some(_) => {
            return Err(Refusal::new(
                RefusalCode::BadUsername,
                "username must be 1-64 of A-Za-z0-9_.@-",
            ));
        }
    };
    let ttl = match params.get("ttl") {
        None => app.ice.default_ttl,
        // An integer too large for u64 arrives as a float: whole and positive, it clamps.
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => v,
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => f as u64,
            _ => {
                return Err(Refusal::new(
                    RefusalCode::BadTtl,
                    "ttl must be a whole number of seconds",
                ));
            }
        },
        // A string of digits of any length: one too large for u64 is past the maximum
        // anyway, so it clamps like any other large number.
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(_) => {
            return Err(Refusal::new(
                RefusalCode::BadTtl,
                "ttl must be a whole number of seconds",
            ));
        }
    }
    .clamp(1, app.ice.max_ttl);
    let list = app.ice.build(&user, ttl);
    app.metrics.ice_requests.fetch_add(1, Ordering::Relaxed);
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&list).expect("serializes"),
    )
        .into_response();
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for s in &list.ice_servers {
        for url in &s.urls {
            let link = match (&s.username, &s.credential) {
                (Some(u), Some(c)) => format!(
                    "<{url}>; rel=\"ice-server\"; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                ),
                _ => format!("<{url}>; rel=\"ice-server\""),
            };
            if let Ok(v) = HeaderValue::from_str(&link) {
                h.append(header::LINK, v);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent_and_keep_bad_escapes() {
        let p = body_params(
            "application/x-www-form-urlencoded",
            b"username=a+b%40c&ttl=60&x=%zz&flag",
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("username".into(), Value::String("a b@c".into())),
                ("ttl".into(), Value::String("60".into())),
                ("x".into(), Value::String("%zz".into())),
                ("flag".into(), Value::String(String::new())),
            ]
        );
        let lossy = body_params("", b"u=%ff").unwrap();
        assert_eq!(lossy[0].1, Value::String("\u{fffd}".into()));
    }

    #[test]
    fn json_bodies_must_be_objects_and_bodies_are_bounded() {
        assert_eq!(
            body_params("application/json", br#"{"ttl":5}"#).unwrap()[0].1,
            Value::from(5)
        );
        for bad in [&b"[1]"[..], b"{", b"\"null\""] {
            let e = body_params("application/json", bad).unwrap_err();
            assert_eq!(e.code, RefusalCode::BadRequest);
        }
        assert!(body_params("", b"").unwrap().is_empty());
        let big = vec![b'a'; MAX_BODY_BYTES + 1];
        assert_eq!(body_params("", &big).unwrap_err().code, RefusalCode::TooLarge);
    }
}
