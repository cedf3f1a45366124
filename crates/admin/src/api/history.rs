//! `/admin/v1/history/...` and `/admin/v1/audit`: allocation and session history and the
//! audit log, in pages.

use axum::Json;
use axum::extract::State;
use callbox_core::time::UnixSecs;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::error::ApiError;
use crate::extract::Query;

const MAX_PAGE: u32 = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AllocationHistoryParams {
    /// Started at or after (unix seconds). Default: the beginning.
    from: Option<u64>,
    /// Started before (unix seconds). Default: no end.
    to: Option<u64>,
    /// Only allocations with this USERNAME (`<expiry>:<id>` or a static user's name).
    user: Option<String>,
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows to skip (`next_offset` of the previous page).
    offset: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SessionHistoryParams {
    /// Started at or after (unix seconds). Default: the beginning.
    from: Option<u64>,
    /// Started before (unix seconds). Default: no end.
    to: Option<u64>,
    /// Only sessions in this room.
    room: Option<String>,
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows to skip (`next_offset` of the previous page).
    offset: Option<u64>,
}

fn history_query(
    from: Option<u64>,
    to: Option<u64>,
    filter: Option<&String>,
    limit: Option<u32>,
    offset: Option<u64>,
) -> Result<callbox_store::HistoryQuery, ApiError> {
    let limit = page_limit(limit)?;
    let from = from.unwrap_or(0);
    let to = to.unwrap_or(UnixSecs::MAX);
    if from > to {
        return Err(ApiError::bad_request("bad-query", "from is after to"));
    }
    Ok(callbox_store::HistoryQuery {
        from,
        to,
        // An empty filter (`?user=`, as forms send it) means no filter.
        filter: filter.filter(|f| !f.is_empty()).cloned(),
        limit,
        offset: offset.unwrap_or(0).min(i64::MAX as u64),
    })
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(100) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request("bad-query", "limit must be 1-1000")),
    }
}

fn next_offset(offset: u64, limit: u32, got: usize) -> Option<u64> {
    (got as u64 == u64::from(limit)).then(|| offset.saturating_add(got as u64))
}

/// A finished or running allocation.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationRecordView {
    pub alloc_id: String,
    pub username: String,
    pub client: String,
    pub relay: String,
    /// The client's transport: `udp`, `tcp` or `tls`.
    pub transport: String,
    pub started_at: u64,
    /// Absent while the allocation runs (or when the process stopped without closing it).
    pub ended_at: Option<u64>,
    pub close_reason: Option<String>,
    pub packets_to_peer: i64,
    pub bytes_to_peer: i64,
    pub packets_to_client: i64,
    pub bytes_to_client: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationHistoryPage {
    pub items: Vec<AllocationRecordView>,
    /// Pass as `offset` for the next page; absent on the last page.
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/history/allocations", tag = "history", params(AllocationHistoryParams),
    responses((status = 200, description = "Allocations, newest first", body = AllocationHistoryPage)))]
pub(super) async fn allocation_history(
    State(app): AppState,
    Query(p): Query<AllocationHistoryParams>,
) -> Result<Json<AllocationHistoryPage>, ApiError> {
    let q = history_query(p.from, p.to, p.user.as_ref(), p.limit, p.offset)?;
    let (offset, limit) = (q.offset, q.limit);
    let rows = app.with_store(move |s| s.allocation_history_page(&q)).await?;
    Ok(Json(AllocationHistoryPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|r| AllocationRecordView {
                alloc_id: (r.alloc_id as u64).to_string(),
                username: r.username,
                client: r.client,
                relay: r.relay,
                transport: r.transport,
                started_at: r.started_at,
                ended_at: r.ended_at,
                close_reason: r.close_reason,
                packets_to_peer: r.packets_to_peer,
                bytes_to_peer: r.bytes_to_peer,
                packets_to_client: r.packets_to_client,
                bytes_to_client: r.bytes_to_client,
            })
            .collect(),
    }))
}

/// A finished signaling session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRecordView {
    pub room: String,
    pub peer_id: String,
    pub client: String,
    pub started_at: u64,
    pub ended_at: u64,
    /// `left`, `timeout`, `kicked` or `error`.
    pub close_reason: String,
    pub messages_in: i64,
    pub messages_out: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionHistoryPage {
    pub items: Vec<SessionRecordView>,
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/history/sessions", tag = "history", params(SessionHistoryParams),
    responses((status = 200, description = "Signaling sessions, newest first", body = SessionHistoryPage)))]
pub(super) async fn session_history(
    State(app): AppState,
    Query(p): Query<SessionHistoryParams>,
) -> Result<Json<SessionHistoryPage>, ApiError> {
    let q = history_query(p.from, p.to, p.room.as_ref(), p.limit, p.offset)?;
    let (offset, limit) = (q.offset, q.limit);
    let rows = app.with_store(move |s| s.session_history_page(&q)).await?;
    Ok(Json(SessionHistoryPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|r| SessionRecordView {
                room: r.room,
                peer_id: r.peer_id,
                client: r.client,
                started_at: r.started_at,
                ended_at: r.ended_at,
                close_reason: r.close_reason,
                messages_in: r.messages_in,
                messages_out: r.messages_out,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageParams {
    /// Rows per page, 1-1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    offset: Option<u64>,
}

/// One admin change.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    pub at: u64,
    /// `admin-api` or `cli`.
    pub actor: String,
    /// e.g. `secret.rotate`, `user.add`, `ban.remove`.
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    pub next_offset: Option<u64>,
}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "audit", params(PageParams),
    responses((status = 200, description = "Admin changes, newest first", body = AuditPage)))]
pub(super) async fn audit_log(
    State(app): AppState,
    Query(p): Query<PageParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(p.limit)?;
    let offset = p.offset.unwrap_or(0).min(i64::MAX as u64);
    let rows = app.with_store(move |s| s.audit_page(limit, offset)).await?;
    Ok(Json(AuditPage {
        next_offset: next_offset(offset, limit, rows.len()),
        items: rows
            .into_iter()
            .map(|a| AuditView {
                id: a.id,
                at: a.at,
                actor: a.actor,
                action: a.action,
                detail: a.detail,
            })
            .collect(),
    }))
}
