//! Jaeger v1 query endpoints over the span store.

use axum::extract::{Path, RawQuery, State};
use axum::Json;
use meshlens_storage::TraceQuery;
use meshlens_topology::SpanKind;
use serde::Serialize;

use super::jaeger::{self, Envelope};
use crate::{WebError, WebState};

/// `GET /api/traces/{traceID}`. Grafana adds `start`/`end` (sometimes in ms); a lookup by id
/// needs neither, so they are ignored.
pub async fn by_id(
    State(st): State<WebState>,
    Path(trace_id): Path<String>,
) -> Result<Json<Envelope<Vec<jaeger::Trace>>>, WebError> {
    let id = jaeger::parse_trace_id(&trace_id)
        .ok_or_else(|| WebError::BadRequest(format!("malformed trace id {trace_id:?}")))?;
    let spans = st.store.trace(id).await?;
    if spans.is_empty() {
        return Err(WebError::NotFound("trace not found".into()));
    }
    Ok(Json(Envelope::new(vec![jaeger::trace(&spans)], 1)))
}

/// `GET /api/traces?service=&operation=&tags=&minDuration=&maxDuration=&start=&end=&limit=&lookback=`
pub async fn search(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<jaeger::Trace>>>, WebError> {
    let query = parse_search(raw.as_deref().unwrap_or(""), now_us())?;
    let traces = st.store.find_traces(&query).await?;
    let data: Vec<jaeger::Trace> = traces.iter().map(|t| jaeger::trace(t)).collect();
    let total = data.len();
    Ok(Json(Envelope::new(data, total)))
}

/// `GET /api/services?window=5m`: Jaeger's list of service names in `data` (what Jaeger clients and
/// Grafana read), and beside it, in `services`, each service's RED summary over the live window.
pub async fn services(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<super::graph::ServicesResponse>, WebError> {
    let query = super::graph::parse_query(raw.as_deref().unwrap_or(""))?;
    let names = st.store.services().await?;
    let total = names.len();
    let graph = st.graph.get(query.window).await?;
    Ok(Json(super::graph::ServicesResponse::new(
        Envelope::new(names, total),
        &graph.snapshot.filtered(&query),
    )))
}

/// `GET /api/services/{service}/operations`: the names only, as Jaeger's UI wants them.
pub async fn service_operations(
    State(st): State<WebState>,
    Path(service): Path<String>,
) -> Result<Json<Envelope<Vec<String>>>, WebError> {
    let mut names: Vec<String> = st
        .store
        .operations(&service, None)
        .await?
        .into_iter()
        .map(|o| o.name)
        .collect();
    names.dedup();
    let total = names.len();
    Ok(Json(Envelope::new(names, total)))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationDto {
    name: String,
    span_kind: &'static str,
}

/// `GET /api/operations?service=&spanKind=`
pub async fn operations(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Envelope<Vec<OperationDto>>>, WebError> {
    let mut service = None;
    let mut kind = None;
    for (k, v) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "service" => service = Some(v.into_owned()),
            "spanKind" if !v.is_empty() => {
                kind = Some(
                    SpanKind::parse(&v)
                        .ok_or_else(|| WebError::BadRequest(format!("unknown spanKind {v:?}")))?,
                )
            }
            _ => {}
        }
    }
    let service = service.ok_or_else(|| WebError::BadRequest("service is required".into()))?;
    let ops: Vec<OperationDto> = st
        .store
        .operations(&service, kind)
        .await?
        .into_iter()
        .map(|o| OperationDto {
            name: o.name,
            span_kind: match o.kind {
                SpanKind::Unspecified => "",
                k => k.as_str(),
            },
        })
        .collect();
    let total = ops.len();
    Ok(Json(Envelope::new(ops, total)))
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Jaeger's search parameters. Times are µs; durations are Go-style (`1.5s`, `100ms`, `1h30m`).
pub fn parse_search(raw: &str, now_us: i64) -> Result<TraceQuery, WebError> {
    let bad = |m: String| WebError::BadRequest(m);
    let mut q = TraceQuery::default();
    let mut start_us = None;
    let mut end_us = None;
    let mut lookback_us = None;
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let v = v.trim().to_string();
        if v.is_empty() {
            continue;
        }
        match k.as_ref() {
            "service" => q.service = Some(v),
            "operation" => q.operation = Some(v),
            "spanKind" => {
                q.span_kind = Some(
                    SpanKind::parse(&v).ok_or_else(|| bad(format!("unknown spanKind {v:?}")))?,
                )
            }
            "tags" => {
                let map: std::collections::BTreeMap<String, serde_json::Value> =
                    serde_json::from_str(&v)
                        .map_err(|e| bad(format!("tags must be a JSON object: {e}")))?;
                for (key, value) in map {
                    let text = match value {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    q.tags.push((key, text));
                }
            }
            "tag" => {
                let (key, value) = v
                    .split_once(':')
                    .ok_or_else(|| bad(format!("tag must be key:value, got {v:?}")))?;
                q.tags.push((key.to_string(), value.to_string()));
            }
            "minDuration" => {
                q.duration_min_ns = Some(
                    parse_go_duration(&v).ok_or_else(|| bad(format!("bad minDuration {v:?}")))?,
                )
            }
            "maxDuration" => {
                q.duration_max_ns = Some(
                    parse_go_duration(&v).ok_or_else(|| bad(format!("bad maxDuration {v:?}")))?,
                )
            }
            "start" => {
                start_us = Some(
                    v.parse::<i64>()
                        .map_err(|_| bad(format!("bad start {v:?}")))?,
                )
            }
            "end" => {
                end_us = Some(
                    v.parse::<i64>()
                        .map_err(|_| bad(format!("bad end {v:?}")))?,
                )
            }
            "limit" => q.limit = v.parse().map_err(|_| bad(format!("bad limit {v:?}")))?,
            "lookback" if v != "custom" => {
                lookback_us = Some(
                    parse_go_duration(&v).ok_or_else(|| bad(format!("bad lookback {v:?}")))?
                        / 1_000,
                )
            }
            _ => {}
        }
    }
    let end = end_us.unwrap_or(now_us);
    let start =
        start_us.unwrap_or_else(|| end.saturating_sub(lookback_us.unwrap_or(3_600_000_000)));
    q.start_min_ns = start.saturating_mul(1_000);
    q.start_max_ns = end.saturating_mul(1_000);
    Ok(q)
}

/// Go's `time.ParseDuration` subset: decimal numbers with ns, us, µs, ms, s, m, h, concatenated.
pub fn parse_go_duration(s: &str) -> Option<i64> {
    let mut total = 0f64;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    (total.is_finite() && total < i64::MAX as f64).then_some(total as i64)
}
