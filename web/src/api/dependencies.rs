//! `GET /api/dependencies?endTs=&lookback=`: Jaeger's service dependency list, from the stored
//! per-minute history of the service graph (whole minutes; the current minute is not stored yet).

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::Json;
use meshlens_topology::graph::Window;
use serde::Serialize;

use super::jaeger::Envelope;
use crate::{WebError, WebState};

/// Jaeger's default lookback: a day.
const DEFAULT_LOOKBACK_MS: i64 = 86_400_000;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
}

/// `endTs` and `lookback`, in ms (now and a day when not given).
pub(crate) fn parse_params(raw: &str, now_ms: i64) -> Result<(i64, i64), WebError> {
    let mut end_ms = now_ms;
    let mut lookback_ms = DEFAULT_LOOKBACK_MS;
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let number = |what: &str| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| WebError::BadRequest(format!("{what}: not a number of ms: {v:?}")))
        };
        match k.as_ref() {
            "endTs" if !v.is_empty() => end_ms = number("endTs")?,
            "lookback" if !v.is_empty() => lookback_ms = number("lookback")?,
            _ => {}
        }
    }
    Ok((end_ms, lookback_ms))
}

pub async fn dependencies(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<Dependency>>>, WebError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let (end_ms, lookback_ms) = parse_params(raw.as_deref().unwrap_or(""), now_ms)?;
    // Minutes that ended within (end - lookback, end].
    let to = end_ms.div_euclid(60_000);
    let from = (end_ms - lookback_ms).div_euclid(60_000);
    let snapshot = super::graph::history_snapshot(&st, from, to, Window::H1).await?;
    let mut calls: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in &snapshot.edges {
        *calls
            .entry((e.client.name.to_string(), e.server.name.to_string()))
            .or_default() += e.stats.counts.requests;
    }
    let data: Vec<Dependency> = calls
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((parent, child), call_count)| Dependency {
            parent,
            child,
            call_count,
        })
        .collect();
    let total = data.len();
    Ok(Json(Envelope::new(data, total)))
}
