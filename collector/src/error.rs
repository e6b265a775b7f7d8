//! Ingest errors and their one mapping to each transport.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue};
use prost::Message;
use tonic_types::{ErrorDetails, StatusExt};

/// How long an overloaded client is told to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a whole export request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("a batch of {spans} spans exceeds the queue of {capacity}; send smaller batches")]
    TooManySpans { spans: usize, capacity: usize },
    #[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("unsupported content encoding {0:?}; use gzip (snappy for remote write) or none")]
    UnsupportedEncoding(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the request body arrived slower than {0} bytes a second")]
    BodyTooSlow(u64),
    #[error("meshlens is overloaded; retry later")]
    Overloaded,
    #[error("meshlens is past its memory limit; retry later")]
    MemoryLimited,
    #[error("the store could not commit this export; retry later")]
    Store,
    #[error("the store refused the data of this export")]
    Unstorable,
    #[error("meshlens is shutting down; retry later")]
    ShuttingDown,
    #[error("{0}")]
    Unauthenticated(&'static str),
}

impl IngestError {
    /// Every `reason` label value, so their series can be exported at 0 from the start.
    pub const REASONS: &'static [&'static str] = &[
        "malformed",
        "too_large",
        "unsupported_media_type",
        "unsupported_encoding",
        "timeout",
        "too_slow",
        "overloaded",
        "memory_limit",
        "store_error",
        "unstorable",
        "shutting_down",
        "unauthenticated",
    ];

    /// The bounded `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Malformed(_) => "malformed",
            IngestError::TooLarge { .. } | IngestError::TooManySpans { .. } => "too_large",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::BodyTimeout(_) => "timeout",
            IngestError::BodyTooSlow(_) => "too_slow",
            IngestError::Overloaded => "overloaded",
            IngestError::MemoryLimited => "memory_limit",
            IngestError::Store => "store_error",
            IngestError::Unstorable => "unstorable",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Unauthenticated(_) => "unauthenticated",
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IngestError::Overloaded
                | IngestError::MemoryLimited
                | IngestError::Store
                | IngestError::ShuttingDown
                | IngestError::BodyTimeout(_)
                | IngestError::BodyTooSlow(_)
        )
    }

    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            IngestError::Malformed(_) => S::BAD_REQUEST,
            IngestError::TooLarge { .. } | IngestError::TooManySpans { .. } => S::PAYLOAD_TOO_LARGE,
            IngestError::UnsupportedMediaType(_) => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::UnsupportedEncoding(_) => S::UNSUPPORTED_MEDIA_TYPE,
            // 503 with Retry-After: OTLP clients retry it; a slow network should not lose data.
            IngestError::BodyTimeout(_) | IngestError::BodyTooSlow(_) => S::SERVICE_UNAVAILABLE,
            IngestError::Unstorable => S::BAD_REQUEST,
            IngestError::Overloaded => S::TOO_MANY_REQUESTS,
            IngestError::MemoryLimited | IngestError::Store | IngestError::ShuttingDown => {
                S::SERVICE_UNAVAILABLE
            }
            IngestError::Unauthenticated(_) => S::UNAUTHORIZED,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            IngestError::Malformed(_) => C::InvalidArgument,
            IngestError::TooLarge { .. } | IngestError::TooManySpans { .. } => C::ResourceExhausted,
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                C::InvalidArgument
            }
            IngestError::Overloaded
            | IngestError::MemoryLimited
            | IngestError::Store
            | IngestError::ShuttingDown => C::Unavailable,
            IngestError::BodyTimeout(_) | IngestError::BodyTooSlow(_) => C::DeadlineExceeded,
            IngestError::Unstorable => C::InvalidArgument,
            IngestError::Unauthenticated(_) => C::Unauthenticated,
        }
    }
}

/// Retryable errors carry RetryInfo, as the OTLP specification asks for throttling.
impl From<IngestError> for tonic::Status {
    fn from(e: IngestError) -> Self {
        let code = e.grpc_code();
        if e.is_retryable() {
            tonic::Status::with_error_details(
                code,
                e.to_string(),
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            )
        } else {
            tonic::Status::new(code, e.to_string())
        }
    }
}

/// How an HTTP receiver words its refusals: OTLP/HTTP answers a `google.rpc.Status` in the
/// request's own encoding; Zipkin and Prometheus remote write answer a line of text, which their
/// clients log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBody {
    Text,
    OtlpProtobuf,
    OtlpJson,
}

/// A refused HTTP export: the status for its error, the body its protocol expects, and
/// `Retry-After` when retrying helps (OTLP exporters and Prometheus both honour it).
#[derive(Debug)]
pub struct HttpIngestError {
    pub error: IngestError,
    pub body: ErrorBody,
}

impl IntoResponse for HttpIngestError {
    fn into_response(self) -> Response {
        let e = &self.error;
        let message = e.to_string();
        let (content_type, body) = match self.body {
            ErrorBody::Text => (
                "text/plain; charset=utf-8",
                format!("{message}\n").into_bytes(),
            ),
            ErrorBody::OtlpProtobuf => (
                "application/x-protobuf",
                tonic_types::Status {
                    code: e.grpc_code() as i32,
                    message,
                    details: Vec::new(),
                }
                .encode_to_vec(),
            ),
            ErrorBody::OtlpJson => (
                "application/json",
                serde_json::to_vec(&serde_json::json!({
                    "code": e.grpc_code() as i32,
                    "message": message,
                }))
                .unwrap_or_default(),
            ),
        };
        let mut resp = (
            e.http_status(),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response();
        if e.is_retryable() {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(RETRY_AFTER.as_secs()),
            );
        }
        if let IngestError::Unauthenticated(_) = e {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"meshlens\""),
            );
        }
        resp
    }
}

/// The receiver a request is for (its `protocol` label), from its content type and path, and the
/// error body that receiver answers with: for refusals made before the request reaches it (a
/// missing token, a body too slow or too large).
pub fn receiver_of<B>(req: &http::Request<B>) -> (crate::Protocol, ErrorBody) {
    use crate::Protocol;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let path = req.uri().path();
    if content_type.starts_with("application/grpc") {
        (Protocol::OtlpGrpc, ErrorBody::Text)
    } else if path.starts_with("/v1/") {
        let body = if content_type.starts_with("application/json") {
            ErrorBody::OtlpJson
        } else {
            ErrorBody::OtlpProtobuf
        };
        (Protocol::OtlpHttp, body)
    } else if path == "/api/v1/write" {
        (Protocol::PromRemoteWrite, ErrorBody::Text)
    } else {
        (Protocol::Zipkin, ErrorBody::Text)
    }
}

/// A refusal made in front of a receiver, counted as its refused request and worded as it
/// would word it (gRPC status, OTLP `Status`, or text).
pub fn refuse<B>(req: &http::Request<B>, error: IngestError, metrics: &crate::Metrics) -> Response {
    let (protocol, body) = receiver_of(req);
    metrics
        .ingest_rejected_requests
        .with_label_values(&[protocol.as_str(), error.reason()])
        .inc();
    if protocol == crate::Protocol::OtlpGrpc {
        tonic::Status::from(error)
            .into_http::<tonic::body::Body>()
            .map(axum::body::Body::new)
    } else {
        HttpIngestError { error, body }.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `REASONS` (the series exported at 0) names every reason an error can have.
    #[test]
    fn every_reason_is_listed() {
        let all = [
            IngestError::Malformed(String::new()),
            IngestError::TooLarge { limit: 1 },
            IngestError::TooManySpans {
                spans: 2,
                capacity: 1,
            },
            IngestError::UnsupportedMediaType(String::new()),
            IngestError::UnsupportedEncoding(String::new()),
            IngestError::BodyTimeout(Duration::ZERO),
            IngestError::BodyTooSlow(1),
            IngestError::Overloaded,
            IngestError::MemoryLimited,
            IngestError::Store,
            IngestError::Unstorable,
            IngestError::ShuttingDown,
            IngestError::Unauthenticated(""),
        ];
        for e in &all {
            assert!(IngestError::REASONS.contains(&e.reason()), "{}", e.reason());
        }
        let distinct: std::collections::HashSet<_> = all.iter().map(|e| e.reason()).collect();
        assert_eq!(distinct.len(), IngestError::REASONS.len());
    }
}
