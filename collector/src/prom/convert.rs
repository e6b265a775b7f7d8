//! A remote write request to the pipeline's metric batches (the series' meaning is
//! `meshlens_topology::prom`'s).

use meshlens_topology::prom::{batches_from_series, PromSample, PromSeries};

use super::proto::WriteRequest;
use crate::pipeline::ConvertedMetrics;

pub fn convert_write(req: WriteRequest) -> ConvertedMetrics {
    let series = req.timeseries.into_iter().map(|ts| PromSeries {
        labels: ts.labels.into_iter().map(|l| (l.name, l.value)).collect(),
        samples: ts
            .samples
            .into_iter()
            .map(|s| PromSample {
                value: s.value,
                timestamp_ms: s.timestamp,
            })
            .collect(),
    });
    let from = batches_from_series(series);
    let mut out = ConvertedMetrics {
        points: from.batches.iter().map(|b| b.points.len() as u64).sum(),
        series: from.series,
        stale: from.stale,
        ..ConvertedMetrics::default()
    };
    for (problem, n) in &from.rejected {
        out.reject_for(problem.as_str(), *n, || {
            from.first_problem.clone().unwrap_or_default()
        });
    }
    out.batches = from.batches;
    out
}
