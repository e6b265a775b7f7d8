//! OTLP metrics (`MetricsService/Export` over gRPC, `POST /v1/metrics` over HTTP): proxies'
//! metrics for the service graph. They are converted to the domain's metric points and handed to
//! the graph thread; they are not stored (the graph's per-minute history will keep what they add).

use std::sync::Arc;

use meshlens_topology::{MetricBatch, MetricPoint, PointValue, Resource};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Metric, NumberDataPoint,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::error::IngestError;
use crate::otlp::convert::attributes;
use crate::pipeline::Pipeline;
use crate::Protocol;

/// OTLP's AggregationTemporality: 1 is DELTA (2 is CUMULATIVE).
const DELTA: i32 = 1;

/// The points of a request, and how many were refused with the first reason.
#[derive(Debug, Default)]
pub struct ConvertedMetrics {
    pub batches: Vec<MetricBatch>,
    pub points: u64,
    pub rejected: u64,
    pub first_problem: Option<String>,
}

impl ConvertedMetrics {
    fn reject(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.rejected += n;
        if self.first_problem.is_none() {
            self.first_problem = Some(why());
        }
    }

    pub fn partial_success(&self) -> Option<ExportMetricsPartialSuccess> {
        (self.rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: self.rejected as i64,
            error_message: format!(
                "{} data points rejected; first: {}",
                self.rejected,
                self.first_problem.as_deref().unwrap_or("")
            ),
        })
    }
}

pub fn convert_metrics(req: ExportMetricsServiceRequest) -> ConvertedMetrics {
    let mut out = ConvertedMetrics::default();
    for rm in req.resource_metrics {
        let resource = Arc::new(Resource::new(
            rm.resource
                .map(|r| attributes(r.attributes))
                .unwrap_or_default(),
        ));
        let mut points = Vec::new();
        for metric in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
            convert_metric(metric, &mut points, &mut out);
        }
        out.points += points.len() as u64;
        if !points.is_empty() {
            out.batches.push(MetricBatch { resource, points });
        }
    }
    out
}

fn convert_metric(metric: Metric, points: &mut Vec<MetricPoint>, out: &mut ConvertedMetrics) {
    let name = metric.name;
    let Some(data) = metric.data else {
        return;
    };
    if name.is_empty() {
        let n = match &data {
            Data::Sum(s) => s.data_points.len(),
            Data::Gauge(g) => g.data_points.len(),
            Data::Histogram(h) => h.data_points.len(),
            _ => 0,
        };
        out.reject(n as u64, || "a metric without a name".into());
        return;
    }
    match data {
        Data::Sum(sum) => {
            let (monotonic, delta) = (sum.is_monotonic, sum.aggregation_temporality == DELTA);
            numbers(&name, sum.data_points, points, out, |value| {
                PointValue::Sum {
                    value,
                    monotonic,
                    delta,
                }
            });
        }
        Data::Gauge(g) => numbers(&name, g.data_points, points, out, PointValue::Gauge),
        Data::Histogram(h) => {
            for p in h.data_points {
                if !p.bucket_counts.is_empty()
                    && p.bucket_counts.len() != p.explicit_bounds.len() + 1
                {
                    out.reject(1, || {
                        format!(
                            "{name}: {} bucket counts for {} bounds",
                            p.bucket_counts.len(),
                            p.explicit_bounds.len()
                        )
                    });
                    continue;
                }
                points.push(MetricPoint {
                    name: name.clone(),
                    attributes: attributes(p.attributes),
                    value: PointValue::Histogram {
                        count: p.count,
                        sum: p.sum.unwrap_or(0.0),
                        bounds: p.explicit_bounds,
                        counts: p.bucket_counts,
                        delta: h.aggregation_temporality == DELTA,
                    },
                });
            }
        }
        // Valid OTLP that the graph does not read: accepted and left aside.
        Data::ExponentialHistogram(_) | Data::Summary(_) => {}
    }
}

/// Sum and gauge points: a number each (refused without one), made into `value`.
fn numbers(
    name: &str,
    data_points: Vec<NumberDataPoint>,
    points: &mut Vec<MetricPoint>,
    out: &mut ConvertedMetrics,
    value: impl Fn(f64) -> PointValue,
) {
    for p in data_points {
        let number = match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => {
                out.reject(1, || format!("{name}: a data point without a value"));
                continue;
            }
        };
        points.push(MetricPoint {
            name: name.to_string(),
            attributes: attributes(p.attributes),
            value: value(number),
        });
    }
}

impl Pipeline {
    /// Hands converted metrics to the graph and counts them. A full graph queue refuses the
    /// export with a retryable error: metrics have no other buffer.
    pub fn ingest_metrics(
        &self,
        protocol: Protocol,
        converted: ConvertedMetrics,
    ) -> Result<ConvertedMetrics, IngestError> {
        let p = protocol.as_str();
        let m = self.metrics();
        if converted.rejected > 0 {
            m.ingest_rejected_metric_points
                .with_label_values(&[p, "invalid"])
                .inc_by(converted.rejected);
        }
        let ConvertedMetrics {
            batches,
            points,
            rejected,
            first_problem,
        } = converted;
        if let Err(e) = self.graph().offer_metrics(batches) {
            m.ingest_rejected_metric_points
                .with_label_values(&[p, e.reason()])
                .inc_by(points);
            return Err(e);
        }
        m.ingest_metric_points
            .with_label_values(&[p])
            .inc_by(points);
        Ok(ConvertedMetrics {
            batches: Vec::new(),
            points,
            rejected,
            first_problem,
        })
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
                partial_success: done.partial_success(),
            })),
            Err(e) => {
                self.pipeline.reject_request(Protocol::OtlpGrpc, &e);
                Err(e.into())
            }
        }
    }
}
