//! Zipkin v2 JSON `POST /api/v2/spans`, answering 202 as Zipkin does.
//!
//! A batch whose spans are all invalid is refused with 400; otherwise the valid spans are stored,
//! the invalid ones counted, and the answer is 202 (Zipkin's API has no partial-success reply).

mod convert;

use crate::listen::auth::Tenant;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderMap, StatusCode};

use crate::body::{read_body, BodyLimits};
use crate::error::{ErrorBody, HttpIngestError, IngestError};
use crate::pipeline::{Converted, Pipeline};
use crate::Protocol;
use convert::{convert, ZipkinSpan};

#[derive(Clone)]
struct ZipkinState {
    pipeline: Pipeline,
    limits: BodyLimits,
}

/// A Zipkin v2 JSON body's spans: how many it had, and what they convert to.
pub fn convert_body(bytes: &[u8]) -> Result<(usize, Converted), IngestError> {
    let spans: Vec<ZipkinSpan> =
        serde_json::from_slice(bytes).map_err(|e| IngestError::Malformed(format!("json: {e}")))?;
    Ok((spans.len(), convert(spans)))
}

pub fn router(pipeline: Pipeline, limits: BodyLimits) -> Router {
    Router::new()
        .route("/api/v2/spans", post(spans))
        .with_state(ZipkinState { pipeline, limits })
}

async fn spans(
    State(st): State<ZipkinState>,
    tenant: Option<axum::Extension<Tenant>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = tenant.map(|axum::Extension(t)| t);
    match accept(&st, &headers, body, tenant.as_ref()).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => {
            st.pipeline.reject_request(Protocol::Zipkin, &e);
            HttpIngestError {
                error: e,
                body: ErrorBody::Text,
            }
            .into_response()
        }
    }
}

async fn accept(
    st: &ZipkinState,
    headers: &HeaderMap,
    body: Body,
    tenant: Option<&Tenant>,
) -> Result<(), IngestError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        // None given is refused too: a browser page may post without one and no preflight.
        .unwrap_or("");
    if !ct
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(IngestError::UnsupportedMediaType(ct.to_string()));
    }
    let bytes = read_body(headers, body, st.limits).await?;
    let (total, converted) = convert_body(&bytes)?;
    if total > 0 && converted.spans.is_empty() {
        let msg = converted.rejected.message();
        st.pipeline
            .ingest(Protocol::Zipkin, converted, tenant)
            .await?;
        return Err(IngestError::Malformed(msg));
    }
    st.pipeline
        .ingest(Protocol::Zipkin, converted, tenant)
        .await
        .map(|_| ())
}
