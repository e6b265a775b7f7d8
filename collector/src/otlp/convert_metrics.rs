//! OTLP metrics to the domain's metric points: proxies' metrics for the service graph (the gRPC
//! service is in `grpc.rs`, the HTTP handler in `http.rs`, the way to the graph in the pipeline).

use std::sync::Arc;

use meshlens_topology::{MetricBatch, MetricPoint, PointValue, Resource};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest,
};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, Metric, NumberDataPoint,
};

use crate::otlp::convert::attributes;
use crate::pipeline::ConvertedMetrics;

/// OTLP's AggregationTemporality: 1 is DELTA (2 is CUMULATIVE).
const DELTA: i32 = 1;

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
                    time_ns: p.time_unix_nano,
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
            time_ns: p.time_unix_nano,
        });
    }
}

/// OTLP's partial success for a metrics export, when points were refused.
pub fn partial_success(converted: &ConvertedMetrics) -> Option<ExportMetricsPartialSuccess> {
    (converted.rejected > 0).then(|| ExportMetricsPartialSuccess {
        rejected_data_points: converted.rejected as i64,
        error_message: converted.message(),
    })
}
