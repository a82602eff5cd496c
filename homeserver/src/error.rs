//! The one place where errors become HTTP responses.
//!
//! Handlers return [`Error`]. A [`Error::Matrix`] carries what the client is told: a status, an
//! errcode and a short message (plus extra fields such as `retry_after_ms`, or the whole
//! user-interactive-auth body). Everything else is [`Error::Internal`]: its cause is logged and
//! the client sees only `500 M_UNKNOWN`.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Map, Value};

/// A client-facing Matrix error.
#[derive(Debug, Clone)]
pub struct MatrixError {
    pub status: StatusCode,
    /// The full JSON body: `errcode` and `error`, plus any extra fields.
    pub body: Map<String, Value>,
}

/// What a handler can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{status}: {body:?}", status = .0.status, body = .0.body)]
    Matrix(MatrixError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: StatusCode, errcode: &str, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("errcode".into(), Value::String(errcode.to_owned()));
        body.insert("error".into(), Value::String(message.into()));
        Error::Matrix(MatrixError { status, body })
    }

    /// A body sent as is (user-interactive auth answers 401 with its own shape).
    pub fn with_body(status: StatusCode, body: Map<String, Value>) -> Self {
        Error::Matrix(MatrixError { status, body })
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Error::Internal(cause.to_string())
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }
    pub fn missing_token() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "Missing access token",
        )
    }
    /// An access token that expired (it came with a refresh token): `soft_logout` tells the
    /// client to refresh rather than log in again.
    pub fn expired_token() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Access token has expired",
        );
        if let Error::Matrix(m) = &mut e {
            m.body.insert("soft_logout".into(), Value::Bool(true));
        }
        e
    }

    pub fn unknown_token() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
            "Unknown or expired access token",
        );
        if let Error::Matrix(m) = &mut e {
            m.body.insert("soft_logout".into(), Value::Bool(false));
        }
        e
    }
    /// 401 `M_UNAUTHORIZED`: a request from another server that does not authenticate.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
    }
    pub fn unrecognized(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "M_UNRECOGNIZED", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests",
        );
        if let Error::Matrix(m) = &mut e {
            m.body
                .insert("retry_after_ms".into(), json!(retry_after_ms));
        }
        e
    }
    pub fn user_in_use() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "M_USER_IN_USE",
            "User ID already taken",
        )
    }
    pub fn invalid_username(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", message)
    }
    pub fn unknown(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, "M_UNKNOWN", message)
    }
}

impl From<myelin_storage::Error> for Error {
    fn from(e: myelin_storage::Error) -> Self {
        Error::Internal(format!("storage: {e}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Matrix(MatrixError { status, body }) => {
                if status.is_server_error() {
                    tracing::warn!(%status, ?body, "request failed");
                }
                (status, Json(Value::Object(body))).into_response()
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                let body = json!({"errcode": "M_UNKNOWN", "error": "Internal server error"});
                (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
            }
        }
    }
}
