//! A remote write request to the pipeline's metric batches (the series' meaning is
//! `meshlens_topology::prom`'s).

use meshlens_topology::prom::{batches_from_indexed, series_read};

use super::proto::{decode_kept, WireError};
use crate::pipeline::ConvertedMetrics;

/// Decodes a `WriteRequest` body, leaving undecoded the series the graph does not read (they are
/// taken and counted all the same), and converts the rest.
pub fn convert_write(body: &[u8]) -> Result<ConvertedMetrics, WireError> {
    let kept = decode_kept(body, series_read)?;
    let (unread_series, unread_samples) = (kept.unread_series, kept.unread_samples);
    let from = batches_from_indexed(kept.series);
    let mut out = ConvertedMetrics {
        // Samples of series the graph does not read are taken too, and counted with the rest.
        points: from
            .batches
            .iter()
            .map(|b| b.points.len() as u64)
            .sum::<u64>()
            + from.unread
            + unread_samples,
        series: from.series + unread_series,
        stale: from.stale,
        ..ConvertedMetrics::default()
    };
    for (problem, n) in &from.rejected {
        out.reject_for(problem.as_str(), *n, || {
            from.first_problem.clone().unwrap_or_default()
        });
    }
    out.batches = from.batches;
    Ok(out)
}
