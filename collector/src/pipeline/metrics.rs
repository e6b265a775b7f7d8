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
