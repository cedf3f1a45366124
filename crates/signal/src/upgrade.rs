//! The WebSocket endpoint: admission, the upgrade, and one connection's join (or resume)
//! and run to its end; `/v1/signal/validate` answers the same checks without upgrading.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::SUBPROTOCOL;
use crate::admission::{Admission, admit};
use crate::conn::{self, ConnContext, ConnOutbox};
use crate::error::{Refusal, RefusalCode};
use crate::role::AppState;
use crate::shared::SharedError;

pub(crate) async fn signal_validate(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ip = callbox_core::policy::canonical(peer.ip());
    if let Err(secs) = app.http_limiter.hit(
        callbox_core::limit_key(ip, app.cfg.ipv6_prefix_len),
        Instant::now(),
    ) {
        app.metrics.reject(RefusalCode::RateLimited.as_str());
        let mut r = Refusal::new(RefusalCode::RateLimited, "too many requests");
        r.retry_after = Some(secs);
        return r.into_response();
    }
    match admit(&app, &headers, &q, ip, true).await {
        Ok(_) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"ok":true}"#,
        )
            .into_response(),
        Err(r) => r.into_response(),
    }
}

pub(crate) async fn signal_ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ip = callbox_core::policy::canonical(peer.ip());
    let admission = match admit(&app, &headers, &q, ip, true).await {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if !app.hub.connect_address(ip, app.cfg.max_connections_per_address) {
        app.metrics.reject(RefusalCode::TooManyConnections.as_str());
        return Refusal::new(
            RefusalCode::TooManyConnections,
            "too many connections from this address",
        )
        .into_response();
    }
    let mut reservation = None;
    if admission.resume.is_none() {
        let reserved = match &app.shared {
            Some(s) => s
                .reserve(&admission.room)
                .await
                .map(|id| reservation = Some(id))
                .map_err(Refusal::from),
            None => app.hub.reserve(&admission.room).map_err(Refusal::from),
        };
        if let Err(r) = reserved {
            app.hub.disconnect_address(ip);
            app.metrics.reject(r.code.as_str());
            return r.into_response();
        }
    }
    let limit = app.cfg.max_message_bytes;
    let fail_app = Arc::clone(&app);
    let fail_room = admission.room.clone();
    let reserved = admission.resume.is_none();
    let fail_reservation = reservation.clone();
    let setup = Box::new(Setup {
        admission,
        reservation,
    });
    // Small buffers: an idle connection should cost a few KiB, not tungstenite's default
    // 128 KiB read buffer (it grows for large messages, up to the message limit).
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(256)
        // Frames are collected up to 16 KiB and written with one system call when the
        // connection task flushes (after draining its queue).
        .write_buffer_size(16 * 1024)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(move |_| {
            if reserved {
                match (&fail_app.shared, fail_reservation) {
                    (Some(s), Some(id)) => {
                        let s = Arc::clone(s);
                        tokio::spawn(async move { s.unreserve(&fail_room, &id).await });
                    }
                    _ => fail_app.hub.unreserve(&fail_room),
                }
            }
            fail_app.hub.disconnect_address(ip);
        })
        // The connection's future itself, not an async block around it: a block would keep
        // its captures (the socket, the admission) beside the future for the whole
        // connection, half a kilobyte on every idle one. The captures themselves are small
        // (the setup is boxed): axum keeps this closure's slot for the connection's life.
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            run_connection(app, setup, ip, sink, stream)
        })
}

/// Joins or resumes the room for a new connection: its `welcome` (and backlog) queued on
/// `outbox`.
#[allow(clippy::too_many_arguments)] // the admission taken apart, and the connection's outbox
async fn enter(
    app: &AppState,
    room: &str,
    user: Option<&str>,
    meta: serde_json::Value,
    resume: Option<(String, u64)>,
    reservation: Option<String>,
    ip: IpAddr,
    outbox: &Arc<ConnOutbox>,
) -> Result<crate::hub::Joined, SharedError> {
    let ttl = app.ice.default_ttl;
    match resume {
        Some((token, last_seq)) => {
            // The user id of a resumed peer's credentials: the token's, or its peer id.
            let list = app.ice.build(user.unwrap_or("anon"), ttl);
            let ice = (&serde_json::to_value(&list.ice_servers).expect("serializes"), ttl);
            match &app.shared {
                Some(s) => s.resume(room, &token, last_seq, ip, outbox.clone(), ice).await,
                None => app
                    .hub
                    .resume(room, &token, last_seq, ip, outbox.clone(), ice, Instant::now())
                    .map_err(SharedError::Join),
            }
        }
        None => {
            let user = user.map_or_else(|| format!("anon-{:08x}", rand::random::<u32>()), str::to_string);
            let list = app.ice.build(&user, ttl);
            let ice = (&serde_json::to_value(&list.ice_servers).expect("serializes"), ttl);
            match &app.shared {
                Some(s) => {
                    let id = reservation.unwrap_or_default();
                    s.join(room, meta, ip, outbox.clone(), ice, &id).await
                }
                None => Ok(app.hub.join(room, meta, ip, outbox.clone(), ice)),
            }
        }
    }
}

/// What an admitted upgrade carries into its connection's task, in one box: a task's
/// future keeps a slot for each of its arguments for its whole life (moved out or not), so
/// every idle connection would otherwise carry the admission's bytes.
pub(crate) struct Setup {
    pub(crate) admission: Admission,
    pub(crate) reservation: Option<String>,
}

/// Joins (or resumes) and drives one connection to its end.
pub(crate) async fn run_connection<S, R, E>(
    app: Arc<AppState>,
    setup: Box<Setup>,
    ip: IpAddr,
    sink: S,
    stream: R,
) where
    S: futures_util::Sink<axum::extract::ws::Message> + Unpin,
    R: futures_util::Stream<Item = Result<axum::extract::ws::Message, E>> + Unpin,
    E: std::fmt::Display,
{
    app.metrics.connections.fetch_add(1, Ordering::Relaxed);
    // Boxed: the join's (or resume's) state is gone before the connection runs.
    match Box::pin(prepare(&app, setup, ip)).await {
        Ok(ctx) => conn::drive(sink, stream, ctx).await,
        Err(e) => {
            // The resume became invalid between the check and the upgrade (or the shared
            // rooms' Redis stopped answering).
            let (code, message) = match e {
                SharedError::Join(e) => (e.code().as_str(), e.message()),
                SharedError::Unavailable => ("unavailable", "signaling state is unreachable; try again"),
            };
            let mut sink = sink;
            let _ = futures_util::SinkExt::send(
                &mut sink,
                axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: crate::protocol::CloseCode::ResumeRefused.code(),
                    reason: format!("{code}: {message}").into(),
                })),
            )
            .await;
        }
    }
    app.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    app.hub.disconnect_address(ip);
}

/// Joins or resumes, then builds what the connection runs with.
async fn prepare(app: &Arc<AppState>, setup: Box<Setup>, ip: IpAddr) -> Result<ConnContext, SharedError> {
    let outbox = ConnOutbox::new(app.cfg.send_buffer_bytes, Arc::clone(&app.metrics));
    let ttl = app.ice.default_ttl;
    let Setup {
        admission: Admission {
            room,
            identity,
            resume,
        },
        reservation,
    } = *setup;
    let j = enter(
        app,
        &room,
        identity.user.as_deref(),
        identity.meta,
        resume,
        reservation,
        ip,
        &outbox,
    )
    .await?;
    tracing::info!(room = %room, peer = %j.peer_id, resumed = j.resumed, "peer connected");
    // A ban stored after this request's admission check but before its join: the ban's
    // sweep may have missed the peer, but this load sees the new list.
    if app.is_banned(ip) {
        match &app.shared {
            Some(s) => {
                s.kick_peer(&room, &j.peer_id).await;
            }
            None => {
                app.hub.kick_peer(&room, &j.peer_id);
            }
        }
    }
    let ice_app = Arc::clone(app);
    let user = identity.user.unwrap_or_else(|| j.peer_id.clone());
    let ice = Arc::new(move || {
        let list = ice_app.ice.build(&user, ttl);
        (serde_json::to_value(&list.ice_servers).expect("serializes"), ttl)
    });
    Ok(ConnContext {
        hub: Arc::clone(&app.hub),
        shared: app.shared.clone(),
        epoch: j.epoch,
        room,
        peer_id: j.peer_id,
        conn: j.conn,
        addr: ip,
        outbox,
        heartbeat: Duration::from_millis(app.cfg.heartbeat_ms),
        max_message: app.cfg.max_message_bytes,
        ice,
        ice_ttl: ttl,
    })
}
