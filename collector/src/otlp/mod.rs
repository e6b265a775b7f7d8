//! OTLP receivers: gRPC `TraceService/Export` and HTTP `POST /v1/traces`, sharing one conversion.

pub mod convert;
pub mod convert_metrics;
pub mod grpc;
pub mod http;
