//! The refusals the signal role answers over HTTP before any upgrade: a stable code each
//! (PROTOCOL.md sections 1 and 2), its status, and the `{"error":{"code","message"}}` body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::hub::JoinError;

/// The stable `code` of a refusal; each has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    BadRequest,
    BadRoom,
    BadResume,
    BadTtl,
    BadUsername,
    Banned,
    Draining,
    Origin,
    RateLimited,
    ResumeExpired,
    ResumeGap,
    RoomFull,
    RoomNotAllowed,
    Subprotocol,
    TooLarge,
    TooManyConnections,
    Unauthorized,
    /// The shared rooms' Redis does not answer (`signal.redis_url`).
    Unavailable,
}

impl RefusalCode {
    /// The code on the wire (and the `reason` label of `callbox_signal_rejects_total`).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalCode::BadRequest => "bad-request",
            RefusalCode::BadRoom => "bad-room",
            RefusalCode::BadResume => "bad-resume",
            RefusalCode::BadTtl => "bad-ttl",
            RefusalCode::BadUsername => "bad-username",
            RefusalCode::Banned => "banned",
            RefusalCode::Draining => "draining",
            RefusalCode::Origin => "origin",
            RefusalCode::RateLimited => "rate-limited",
            RefusalCode::ResumeExpired => "resume-expired",
            RefusalCode::ResumeGap => "resume-gap",
            RefusalCode::RoomFull => "room-full",
            RefusalCode::RoomNotAllowed => "room-not-allowed",
            RefusalCode::Subprotocol => "subprotocol",
            RefusalCode::TooLarge => "too-large",
            RefusalCode::TooManyConnections => "too-many-connections",
            RefusalCode::Unauthorized => "unauthorized",
            RefusalCode::Unavailable => "unavailable",
        }
    }

    /// The HTTP status it is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            RefusalCode::BadRequest
            | RefusalCode::BadRoom
            | RefusalCode::BadResume
            | RefusalCode::BadTtl
            | RefusalCode::BadUsername
            | RefusalCode::Subprotocol => StatusCode::BAD_REQUEST,
            RefusalCode::Unauthorized => StatusCode::UNAUTHORIZED,
            RefusalCode::Banned | RefusalCode::Origin | RefusalCode::RoomNotAllowed => StatusCode::FORBIDDEN,
            RefusalCode::RoomFull => StatusCode::CONFLICT,
            RefusalCode::ResumeExpired | RefusalCode::ResumeGap => StatusCode::GONE,
            RefusalCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RefusalCode::RateLimited | RefusalCode::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            RefusalCode::Draining | RefusalCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An HTTP refusal: status, stable code, message, as `{"error":{"code","message"}}`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<JoinError> for Refusal {
    fn from(e: JoinError) -> Self {
        Refusal::new(e.code(), e.message())
    }
}

impl From<crate::shared::SharedError> for Refusal {
    fn from(e: crate::shared::SharedError) -> Self {
        match e {
            crate::shared::SharedError::Join(e) => e.into(),
            crate::shared::SharedError::Unavailable => {
                let mut r = Refusal::new(
                    RefusalCode::Unavailable,
                    "signaling state is unreachable; try again shortly",
                );
                r.retry_after = Some(2);
                r
            }
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut r = (
            self.code.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&s.to_string()).expect("digits"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_errors_keep_their_status_and_code() {
        for (e, status, code) in [
            (JoinError::Full, 409, "room-full"),
            (JoinError::ResumeExpired, 410, "resume-expired"),
            (JoinError::ResumeGap, 410, "resume-gap"),
            (JoinError::BadResume, 400, "bad-resume"),
        ] {
            let r = Refusal::from(e);
            assert_eq!((r.code.status().as_u16(), r.code.as_str()), (status, code));
        }
    }
}
