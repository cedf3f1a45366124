//! JSON errors with a stable `code`, the same shape the signal role uses:
//! `{"error":{"code":"...","message":"..."}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callbox_core::names::FieldError;
use callbox_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `rate-limited`, `not-found`,
    /// `bad-request`, `bad-json`, `invalid-body`, `bad-query`, `bad-path`, `too-large`,
    /// `unsupported-media-type`, `exists`, `invalid`, `secrets-in-config`,
    /// `role-not-running`, `store-unavailable`, `internal`.
    pub code: String,
    /// For people: what was wrong.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", format!("{what} not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn role_not_running(role: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "role-not-running",
            format!("the {role} role does not run in this process"),
        )
    }
}

/// A value that breaks its field's rules: 400 `invalid`, the message naming the field.
impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::bad_request("invalid", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Exists(what) => {
                Self::new(StatusCode::CONFLICT, "exists", format!("{what} already exists"))
            }
            StoreError::Invalid(what) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid", format!("invalid {what}"))
            }
            StoreError::Sqlite(_) | StoreError::TooNew { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "the store cannot be reached right now; nothing was changed",
            )
            .retry_after(1),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}
