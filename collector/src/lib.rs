//! meshlens receivers (OTLP gRPC and HTTP, Zipkin v2, Prometheus remote write), the ingest pipeline in front of the store,
//! the feed from committed spans to the service graph, and the catalogue of meshlens' own metrics.
#![forbid(unsafe_code)]

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod listen;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod policy;
pub mod prom;
pub mod zipkin;

pub mod body;

pub use body::BodyLimits;
pub use error::IngestError;
pub use graph::{GraphConfig, GraphFeed};
pub use metrics::Metrics;
pub use pipeline::{Pipeline, PipelineConfig};

/// What a caught panic said, for its log line.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// The receivers' names, used as the `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    OtlpGrpc,
    OtlpHttp,
    Zipkin,
    PromRemoteWrite,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::OtlpGrpc,
        Protocol::OtlpHttp,
        Protocol::Zipkin,
        Protocol::PromRemoteWrite,
    ];

    /// Whether this receiver takes spans (and so counts them).
    pub fn carries_spans(self) -> bool {
        self != Protocol::PromRemoteWrite
    }

    /// Whether this receiver takes metric points.
    pub fn carries_metrics(self) -> bool {
        self != Protocol::Zipkin
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::OtlpGrpc => "otlp_grpc",
            Protocol::OtlpHttp => "otlp_http",
            Protocol::Zipkin => "zipkin",
            Protocol::PromRemoteWrite => "prom_remote_write",
        }
    }
}
