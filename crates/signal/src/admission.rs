//! Admission of a WebSocket request: every check that can be made before the upgrade (so
//! a refusal is plain HTTP with a JSON body), in PROTOCOL.md's order.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::http::{HeaderMap, header};
use callbox_core::config::{Signal as SignalConfig, SignalAuth};
use serde_json::json;

use crate::SUBPROTOCOL;
use crate::auth::{Identity, jwt_identity};
use crate::error::{Refusal, RefusalCode};
use crate::role::AppState;

/// Whether a browser origin may call us: no Origin (not a browser), same origin as the
/// Host, or listed in `signal.allowed_origins` (or `*`).
pub(crate) fn origin_allowed(cfg: &SignalConfig, headers: &HeaderMap) -> Result<Option<String>, ()> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if cfg
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return Ok(Some(origin.to_string()));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
    if !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        return Ok(Some(origin.to_string()));
    }
    Err(())
}

/// What an admitted WebSocket request asked for.
pub(crate) struct Admission {
    pub(crate) room: String,
    pub(crate) identity: Identity,
    pub(crate) resume: Option<(String, u64)>,
}

/// Every check that can be made before the upgrade, in PROTOCOL.md's order.
pub(crate) async fn admit(
    app: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    addr: IpAddr,
    counting: bool,
) -> Result<Admission, Refusal> {
    let m = &app.metrics;
    let refuse = |r: Refusal| {
        m.reject(r.code.as_str());
        r
    };
    if app.draining.load(Ordering::Relaxed) {
        return Err(refuse(Refusal::new(
            RefusalCode::Draining,
            "this server is shutting down; try again",
        )));
    }
    app.refuse_banned(addr).map_err(refuse)?;
    let room = q.get("room").map(String::as_str).unwrap_or("");
    if !callbox_core::names::RoomId::is_valid(room) {
        return Err(refuse(Refusal::new(
            RefusalCode::BadRoom,
            format!("room must match {}", callbox_core::names::RoomId::pattern()),
        )));
    }
    origin_allowed(&app.cfg, headers)
        .map_err(|()| refuse(Refusal::new(RefusalCode::Origin, "this origin is not allowed")))?;
    if app.cfg.require_subprotocol {
        let offered = headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
        if !offered {
            return Err(refuse(Refusal::new(
                RefusalCode::Subprotocol,
                "the callbox.v1 subprotocol is required",
            )));
        }
    }
    let identity = match &app.cfg.auth {
        SignalAuth::Jwt => {
            let token = q
                .get("token")
                .map(String::as_str)
                .or_else(|| callbox_http::bearer(headers));
            let id = jwt_identity(&app.cfg, token).map_err(refuse)?;
            if let Some(rooms) = &id.rooms
                && !rooms.iter().any(|r| r == room)
            {
                return Err(refuse(Refusal::new(
                    RefusalCode::RoomNotAllowed,
                    "the token does not allow this room",
                )));
            }
            id
        }
        SignalAuth::Open => Identity {
            user: None,
            meta: json!({}),
            rooms: None,
        },
    };
    if counting && app.hub.address_conns(addr) >= app.cfg.max_connections_per_address {
        return Err(refuse(Refusal::new(
            RefusalCode::TooManyConnections,
            "too many connections from this address",
        )));
    }
    let resume = match q.get("resume") {
        None => None,
        Some(token) => {
            let last_seq = match q.get("last_seq") {
                None => 0,
                Some(s) => s.parse::<u64>().map_err(|_| {
                    refuse(Refusal::new(
                        RefusalCode::BadResume,
                        "last_seq must be an integer >= 0",
                    ))
                })?,
            };
            Some((token.clone(), last_seq))
        }
    };
    let resume_ref = resume.as_ref().map(|(t, n)| (t.as_str(), *n));
    match &app.shared {
        Some(shared) => shared
            .check(room, resume_ref)
            .await
            .map_err(|e| refuse(e.into()))?,
        None => app
            .hub
            .check(room, resume_ref, Instant::now())
            .map_err(|e| refuse(e.into()))?,
    }
    Ok(Admission {
        room: room.to_string(),
        identity,
        resume,
    })
}
