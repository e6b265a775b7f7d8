//! OTLP/gRPC `TraceService/Export` and `MetricsService/Export`.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::error::IngestError;
use crate::listen::auth::Tenant;
use crate::metrics::Metrics;
use crate::otlp::convert::convert_traces;
use crate::otlp::convert_metrics::{convert_metrics, partial_success};
use crate::pipeline::Pipeline;
use crate::Protocol;

pub struct OtlpGrpc {
    pipeline: Pipeline,
}

/// The gRPC service, accepting gzip and refusing messages over `max_message_bytes`.
pub fn trace_service(pipeline: Pipeline, max_message_bytes: usize) -> TraceServiceServer<OtlpGrpc> {
    TraceServiceServer::new(OtlpGrpc { pipeline })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes)
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let tenant = request.extensions().get::<Tenant>().cloned();
        let converted = convert_traces(request.into_inner());
        let ingested = self
            .pipeline
            .ingest(Protocol::OtlpGrpc, converted, tenant.as_ref())
            .await;
        let rejected = match ingested {
            Ok(r) => r,
            Err(e) => {
                self.pipeline.reject_request(Protocol::OtlpGrpc, &e);
                return Err(e.into());
            }
        };
        let partial_success = (rejected.count > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected.count as i64,
            error_message: rejected.message(),
        });
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

pub struct OtlpMetricsGrpc {
    pipeline: Pipeline,
}

/// The gRPC service, accepting gzip and refusing messages over `max_message_bytes`.
pub fn metrics_service(
    pipeline: Pipeline,
    max_message_bytes: usize,
) -> MetricsServiceServer<OtlpMetricsGrpc> {
    MetricsServiceServer::new(OtlpMetricsGrpc { pipeline })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message_bytes)
}

#[tonic::async_trait]
impl MetricsService for OtlpMetricsGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let converted = convert_metrics(request.into_inner());
        match self.pipeline.ingest_metrics(Protocol::OtlpGrpc, converted) {
            Ok(done) => Ok(Response::new(ExportMetricsServiceResponse {
                partial_success: partial_success(&done),
            })),
            Err(e) => {
                self.pipeline.reject_request(Protocol::OtlpGrpc, &e);
                Err(e.into())
            }
        }
    }
}

/// tonic answers an over-limit message with OUT_OF_RANGE and undecodable bytes with INTERNAL.
/// Clients expect RESOURCE_EXHAUSTED and INVALID_ARGUMENT (neither retried), so the status is
/// rewritten here, and the refusal counted.
pub fn normalize_decode_errors<B>(
    metrics: &crate::Metrics,
    mut res: http::Response<B>,
) -> http::Response<B> {
    let headers = res.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (new_code, reason) = match code {
        "11" if message.contains("too%20large") || message.contains("too large") => {
            ("8", "too_large")
        }
        "13" if message.contains("decode") => ("3", "malformed"),
        _ => return res,
    };
    metrics
        .ingest_rejected_requests
        .with_label_values(&[Protocol::OtlpGrpc.as_str(), reason])
        .inc();
    headers.insert("grpc-status", http::HeaderValue::from_static(new_code));
    res
}

/// Bounds a whole gRPC export in time, like `BodyLimits::timeout` bounds an HTTP body: a stream
/// that sends its headers and then trickles or stops would otherwise hold one of the receivers'
/// concurrency permits forever. It answers DEADLINE_EXCEEDED with RetryInfo (clients retry it).
#[derive(Clone)]
pub struct ExportDeadline<S> {
    inner: S,
    timeout: Duration,
    metrics: Metrics,
}

impl<S> ExportDeadline<S> {
    pub fn layer(
        timeout: Duration,
        metrics: Metrics,
    ) -> impl tower::Layer<S, Service = Self> + Clone {
        tower::layer::layer_fn(move |inner| ExportDeadline {
            inner,
            timeout,
            metrics: metrics.clone(),
        })
    }
}

impl<S, B> tower::Service<http::Request<B>> for ExportDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let call = self.inner.call(req);
        let timeout = self.timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => {
                    let e = IngestError::BodyTimeout(timeout);
                    metrics
                        .ingest_rejected_requests
                        .with_label_values(&[Protocol::OtlpGrpc.as_str(), e.reason()])
                        .inc();
                    Ok(Status::from(e).into_http())
                }
            }
        })
    }
}
