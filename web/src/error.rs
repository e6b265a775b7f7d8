//! Web errors and their one mapping to a response: Jaeger's `{data, errors}` envelope.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("store: {0}")]
    Store(#[from] meshlens_storage::StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl WebError {
    /// The status and the message a client may see; internals are logged, never echoed.
    pub fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            WebError::Store(e @ meshlens_storage::StoreError::RangeTooWide { .. }) => {
                (StatusCode::BAD_REQUEST, e.to_string())
            }
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            WebError::Store(
                e @ (meshlens_storage::StoreError::Busy
                | meshlens_storage::StoreError::SearchTimeout(_)),
            ) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            WebError::Store(e) => {
                tracing::error!(error = %e, "store read failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
            WebError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_string(),
                )
            }
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let body = json!({
            "data": null,
            "total": 0,
            "limit": 0,
            "offset": 0,
            "errors": [{"code": status.as_u16(), "msg": message}],
        });
        (status, Json(body)).into_response()
    }
}
