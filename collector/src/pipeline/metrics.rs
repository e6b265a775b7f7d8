//! The pipeline's path for proxies' metrics: they go to the graph thread, not to the store.

use crate::error::IngestError;
use crate::pipeline::{ConvertedMetrics, Pipeline};
use crate::Protocol;

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
        for (reason, n) in &converted.by_reason {
            m.ingest_rejected_metric_points
                .with_label_values(&[p, reason])
                .inc_by(*n);
        }
        if converted.series > 0 {
            m.ingest_metric_series
                .with_label_values(&[p])
                .inc_by(converted.series);
        }
        if converted.stale > 0 {
            m.ingest_stale_markers
                .with_label_values(&[p])
                .inc_by(converted.stale);
        }
        let mut converted = converted;
        let batches = std::mem::take(&mut converted.batches);
        let points = converted.points;
        let offered = match converted.wire.take() {
            Some(wire) => self.graph().offer_wire(wire),
            None => self.graph().offer_metrics(batches),
        };
        if let Err(e) = offered {
            m.ingest_rejected_metric_points
                .with_label_values(&[p, e.reason()])
                .inc_by(points);
            return Err(e);
        }
        m.ingest_metric_points
            .with_label_values(&[p])
            .inc_by(points);
        Ok(converted)
    }
}
