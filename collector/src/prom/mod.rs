//! Prometheus remote write 1.0 `POST /api/v1/write` (on the OTLP/HTTP listener): a
//! snappy-compressed protobuf `WriteRequest`, answered 204. Proxies' series go to the graph as
//! OTLP metrics do. A bad request is answered 400 with a message (Prometheus drops it and does
//! not retry); series refused inside a good request are counted and named in a 400 after the
//! good ones are in, as Prometheus' own receiver does. Overload is 503 with `Retry-After`, which
//! Prometheus retries (it retries a 429 only when told to).

mod convert;
pub mod proto;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderMap, StatusCode};

use crate::body::{content_encoding, gunzip, unsnappy_into, Admission, BufferPool};
use crate::error::{ErrorBody, HttpIngestError, IngestError};
use crate::pipeline::Pipeline;
use crate::Protocol;
pub(crate) use convert::fuzz_write;
pub use convert::{convert_write, CheckedLabels, WireBatch};
use std::sync::Arc;

/// A remote write request may be this many times `max_message_bytes` (32 MiB after
/// decompression at the default): Prometheus sends up to `max_samples_per_send` samples a
/// request, with every label of every series written out.
pub const SIZE_FACTOR: usize = 8;

/// Decompressed bodies' buffers, and the bodies' as they came, reused between requests.
static BUFFERS: BufferPool = BufferPool::new();
static RAW: BufferPool = BufferPool::new();

#[derive(Clone)]
struct WriteState {
    pipeline: Pipeline,
    admission: Admission,
    permits: Arc<tokio::sync::Semaphore>,
    checked: Arc<CheckedLabels>,
}

/// The receiver: bodies are read whole through `admission` (the shared byte budget, the minimum
/// rate) into pooled buffers, and only then wait for one of `permits` to be decoded, as the
/// other receivers' are ([`crate::body::AdmissionLayer`]); a slow writer holds no permit.
pub fn router(pipeline: Pipeline, admission: &Admission, permits: usize) -> Router {
    let max_bytes = admission.limits.max_bytes.saturating_mul(SIZE_FACTOR);
    Router::new()
        .route("/api/v1/write", post(write))
        .with_state(WriteState {
            pipeline,
            admission: admission.with_max_bytes(max_bytes),
            permits: Arc::new(tokio::sync::Semaphore::new(permits.max(1))),
            checked: Arc::default(),
        })
}

async fn write(State(st): State<WriteState>, headers: HeaderMap, body: Body) -> Response {
    match accept(&st, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            st.pipeline.reject_request(Protocol::PromRemoteWrite, &e);
            let overloaded = matches!(e, IngestError::Overloaded);
            let mut resp = HttpIngestError {
                error: e,
                body: ErrorBody::Text,
            }
            .into_response();
            if overloaded {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }
    }
}

async fn accept(st: &WriteState, headers: &HeaderMap, body: Body) -> Result<(), IngestError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // None given is refused too: a browser page may post without one and no preflight.
        .unwrap_or("");
    let mut parts = ct.split(';').map(|p| p.trim().to_ascii_lowercase());
    let proto_ok = parts.clone().skip(1).all(|p| {
        p.strip_prefix("proto=")
            .is_none_or(|v| v == "prometheus.writerequest")
    });
    if parts.next().as_deref() != Some("application/x-protobuf") || !proto_ok {
        return Err(IngestError::UnsupportedMediaType(format!(
            "{ct}; remote write 1.0 (application/x-protobuf, prometheus.WriteRequest) only"
        )));
    }
    let max = st.admission.limits.max_bytes;
    let mut raw = RAW.take(max);
    let held = st.admission.read(headers, body, &mut raw.buf).await?;
    let _permit = st
        .permits
        .acquire()
        .await
        .map_err(|_| IngestError::Overloaded)?;
    let body = match content_encoding(headers).as_str() {
        "snappy" => {
            let mut buf = BUFFERS.take(max);
            unsnappy_into(&raw.buf, max, &mut buf.buf)?;
            buf
        }
        // Not what Prometheus sends, but other writers (and the OTLP receivers) take gzip.
        "gzip" | "x-gzip" => BUFFERS.adopt(Vec::from(gunzip(&raw.buf, max)?), max),
        "" | "identity" => BUFFERS.adopt(std::mem::take(&mut raw.buf), max),
        other => return Err(IngestError::UnsupportedEncoding(other.to_string())),
    };
    drop(raw);
    drop(held);
    let converted = convert_write(body, &st.checked)
        .map_err(|e| IngestError::Malformed(format!("protobuf: {e}")))?;
    st.pipeline
        .metrics()
        .ingest_checked_label_sets
        .set(st.checked.len() as i64);
    let done = st
        .pipeline
        .ingest_metrics(Protocol::PromRemoteWrite, converted)?;
    if done.rejected > 0 {
        return Err(IngestError::Malformed(done.message()));
    }
    Ok(())
}
