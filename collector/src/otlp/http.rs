//! OTLP/HTTP `POST /v1/traces` and `POST /v1/metrics`: protobuf or JSON (the OTLP JSON mapping), gzip, chunked bodies.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http::{header, HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use crate::body::{read_body, BodyLimits};
use crate::error::{ErrorBody, HttpIngestError, IngestError};
use crate::listen::auth::Tenant;
use crate::otlp::convert::convert_traces;
use crate::otlp::convert_metrics::{convert_metrics, partial_success};
use crate::pipeline::Pipeline;
use crate::Protocol;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

#[derive(Clone)]
struct HttpState {
    pipeline: Pipeline,
    limits: BodyLimits,
}

/// The body encodings OTLP/HTTP allows; the answer uses the request's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    pub fn from_headers(headers: &HeaderMap) -> Result<Format, IngestError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
            "application/json" => Ok(Format::Json),
            _ => Err(IngestError::UnsupportedMediaType(ct.to_string())),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

pub fn router(pipeline: Pipeline, limits: BodyLimits) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(HttpState { pipeline, limits })
}

async fn traces(
    State(st): State<HttpState>,
    tenant: Option<axum::Extension<Tenant>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let format = Format::from_headers(&headers).unwrap_or(Format::Protobuf);
    let tenant = tenant.map(|axum::Extension(t)| t);
    match export(&st, &headers, body, tenant.as_ref()).await {
        Ok(resp) => encode(format, StatusCode::OK, &resp),
        Err(e) => {
            st.pipeline.reject_request(Protocol::OtlpHttp, &e);
            error_response(format, e)
        }
    }
}

/// `POST /v1/metrics`: proxies' metrics for the service graph, in the same encodings.
async fn metrics(State(st): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let format = Format::from_headers(&headers).unwrap_or(Format::Protobuf);
    let result = async {
        let format = Format::from_headers(&headers)?;
        let bytes = read_body(&headers, body, st.limits).await?;
        let request: ExportMetricsServiceRequest = decode_request(format, &bytes)?;
        st.pipeline
            .ingest_metrics(Protocol::OtlpHttp, convert_metrics(request))
    }
    .await;
    match result {
        Ok(done) => encode(
            format,
            StatusCode::OK,
            &ExportMetricsServiceResponse {
                partial_success: partial_success(&done),
            },
        ),
        Err(e) => {
            st.pipeline.reject_request(Protocol::OtlpHttp, &e);
            error_response(format, e)
        }
    }
}

async fn export(
    st: &HttpState,
    headers: &HeaderMap,
    body: Body,
    tenant: Option<&Tenant>,
) -> Result<ExportTraceServiceResponse, IngestError> {
    let format = Format::from_headers(headers)?;
    let bytes = read_body(headers, body, st.limits).await?;
    let request = decode_request(format, &bytes)?;
    let rejected = st
        .pipeline
        .ingest(Protocol::OtlpHttp, convert_traces(request), tenant)
        .await?;
    Ok(ExportTraceServiceResponse {
        partial_success: (rejected.count > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected.count as i64,
            error_message: rejected.message(),
        }),
    })
}

/// An OTLP request (traces or metrics) in either encoding.
pub fn decode_request<M: Message + Default + serde::de::DeserializeOwned>(
    format: Format,
    bytes: &[u8],
) -> Result<M, IngestError> {
    match format {
        Format::Protobuf => {
            M::decode(bytes).map_err(|e| IngestError::Malformed(format!("protobuf: {e}")))
        }
        Format::Json => {
            serde_json::from_slice(bytes).map_err(|e| IngestError::Malformed(format!("json: {e}")))
        }
    }
}

fn encode<M: Message + serde::Serialize>(format: Format, status: StatusCode, msg: &M) -> Response {
    let body = match format {
        Format::Protobuf => msg.encode_to_vec(),
        Format::Json => serde_json::to_vec(msg).unwrap_or_default(),
    };
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}

/// The OTLP/HTTP error answer: a `google.rpc.Status` in the request's encoding.
pub fn error_response(format: Format, error: IngestError) -> Response {
    let body = match format {
        Format::Protobuf => ErrorBody::OtlpProtobuf,
        Format::Json => ErrorBody::OtlpJson,
    };
    HttpIngestError { error, body }.into_response()
}
