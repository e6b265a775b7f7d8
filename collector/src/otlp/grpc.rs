//! OTLP/gRPC `TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::otlp::convert::convert_traces;
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
        let converted = convert_traces(request.into_inner());
        let rejected = match self.pipeline.ingest(Protocol::OtlpGrpc, converted).await {
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

/// tonic answers an over-limit message with OUT_OF_RANGE; gRPC servers conventionally say
/// RESOURCE_EXHAUSTED, which is what OTLP clients expect and do not retry.
pub fn too_large_is_resource_exhausted<B>(mut res: http::Response<B>) -> http::Response<B> {
    let headers = res.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    res
}
