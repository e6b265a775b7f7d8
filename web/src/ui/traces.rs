//! `/traces`: the trace search form and its results, rendered on the server from the same
//! query the Jaeger API answers (`service`, `operation`, tags, durations, lookback, limit).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use meshlens_topology::Span;

use super::{nav, render, Nav};
use crate::api::parse_search;
use crate::auth::SignedIn;
use crate::{WebError, WebState};

const LOOKBACKS: &[(&str, &str)] = &[
    ("15m", "15 minutes"),
    ("1h", "hour"),
    ("6h", "6 hours"),
    ("24h", "day"),
    ("48h", "2 days"),
    ("168h", "week"),
    ("custom", "from–to (UTC)"),
];
const DEFAULT_LIMIT: usize = 20;

pub(crate) struct Choice {
    name: String,
    selected: bool,
}

pub(crate) struct Lookback {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Default)]
pub(crate) struct Form {
    service: String,
    operation: String,
    tagtext: String,
    min: String,
    max: String,
    lookback: String,
    limit: String,
    /// With lookback `custom`: the range, as `datetime-local` inputs give it, read as UTC.
    from: String,
    to: String,
}

pub(crate) struct ServiceCount {
    name: String,
    count: usize,
    color: usize,
}

pub(crate) struct TraceRow {
    id: String,
    short_id: String,
    root_service: String,
    root_name: String,
    duration: String,
    /// The bar's length, 0–100, against the longest trace found.
    bar: String,
    spans: usize,
    errors: usize,
    services: Vec<ServiceCount>,
    started: String,
}

#[derive(Template)]
#[template(path = "traces.html")]
struct TracesPage {
    nav: Nav,
    form: Form,
    services: Vec<Choice>,
    operations: Vec<Choice>,
    lookbacks: Vec<Lookback>,
    searched: bool,
    error: Option<String>,
    results: Vec<TraceRow>,
}

/// Tags as people type them, `key=value` separated by spaces (a value may be "quoted").
pub(crate) fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("tags: expected key=value, got {rest:?}"))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("tags: expected key=value, got {rest:?}"));
        }
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("tags: unclosed quote after {key}="))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.push((key.to_string(), value.to_string()));
        rest = next.trim_start();
    }
    Ok(out)
}

/// A colour class (0–11) per service name, stable across pages.
pub(crate) fn service_color(name: &str) -> usize {
    let h = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    (h % 12) as usize
}

pub(crate) fn format_duration_ns(ns: u64) -> String {
    match ns {
        n if n < 1_000 => format!("{n} ns"),
        n if n < 1_000_000 => format!("{:.1} µs", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.2} ms", n as f64 / 1e6),
        n => format!("{:.2} s", n as f64 / 1e9),
    }
}

fn row(spans: &[Span], longest: u64) -> Option<TraceRow> {
    let first = spans.first()?;
    let start = spans.iter().map(|s| s.start_ns).min()?;
    let end = spans.iter().map(|s| s.end_ns).max()?;
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    // The root: a span without a parent, else one whose parent is missing, else the earliest.
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_none())
        .or_else(|| {
            spans
                .iter()
                .find(|s| s.parent_span_id.is_some_and(|p| !ids.contains(&p)))
        })
        .unwrap_or(first);
    let mut services: BTreeMap<&str, usize> = BTreeMap::new();
    for s in spans {
        *services.entry(s.service()).or_default() += 1;
    }
    let id = first.trace_id.to_hex();
    let duration = end - start;
    Some(TraceRow {
        short_id: id.chars().take(7).collect(),
        id,
        root_service: root.service().to_string(),
        root_name: root.name.clone(),
        duration: format_duration_ns(duration),
        bar: format!(
            "{:.1}",
            (duration as f64 / longest.max(1) as f64 * 100.0).max(0.5)
        ),
        spans: spans.len(),
        errors: spans.iter().filter(|s| s.is_error()).count(),
        services: services
            .into_iter()
            .map(|(name, count)| ServiceCount {
                color: service_color(name),
                name: name.to_string(),
                count,
            })
            .collect(),
        started: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(start))
            .to_string(),
    })
}

pub(crate) async fn search(
    State(st): State<WebState>,
    who: SignedIn,
    RawQuery(raw): RawQuery,
) -> Response {
    let raw = raw.unwrap_or_default();
    let mut form = Form::default();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "service" => form.service = v,
            "operation" => form.operation = v,
            "tagtext" => form.tagtext = v,
            "minDuration" => form.min = v,
            "maxDuration" => form.max = v,
            "lookback" => form.lookback = v,
            "limit" => form.limit = v,
            "from" => form.from = v,
            "to" => form.to = v,
            _ => {}
        }
    }
    let searched = !raw.is_empty();
    if form.lookback.is_empty() {
        form.lookback = "1h".into();
    }
    if form.limit.is_empty() {
        form.limit = DEFAULT_LIMIT.to_string();
    }
    let names = match st.store.services().await {
        Ok(n) => n,
        Err(e) => return WebError::from(e).page(),
    };
    let mut operations = Vec::new();
    if !form.service.is_empty() {
        match st.store.operations(&form.service, None).await {
            Ok(ops) => operations = ops.into_iter().map(|o| o.name).collect(),
            Err(e) => return WebError::from(e).page(),
        }
        operations.dedup();
    }
    let mut error = None;
    let mut results = Vec::new();
    if searched {
        match find(&st, &form).await {
            Ok(rows) => results = rows,
            Err(WebError::BadRequest(m)) => error = Some(m),
            Err(e) => return e.page(),
        }
    }
    let page = TracesPage {
        nav: nav("/traces", who),
        services: names
            .into_iter()
            .map(|name| Choice {
                selected: name == form.service,
                name,
            })
            .collect(),
        operations: operations
            .into_iter()
            .map(|name| Choice {
                selected: name == form.operation,
                name,
            })
            .collect(),
        lookbacks: LOOKBACKS
            .iter()
            .map(|&(value, label)| Lookback {
                value,
                label,
                selected: value == form.lookback,
            })
            .collect(),
        searched,
        error,
        results,
        form,
    };
    let mut response = render(&page);
    if page.error.is_some() {
        *response.status_mut() = axum::http::StatusCode::BAD_REQUEST;
    }
    response
}

/// A `datetime-local` value (`2026-11-22T14:05`, seconds optional) read as UTC, in µs.
pub(crate) fn parse_local_utc(what: &str, v: &str) -> Result<i64, WebError> {
    let v = v.trim();
    let full = if v.len() == 16 {
        format!("{v}:00Z")
    } else {
        format!("{v}Z")
    };
    humantime::parse_rfc3339(&full)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_micros() as i64)
        .ok_or_else(|| WebError::BadRequest(format!("{what}: expected a date and time, got {v:?}")))
}

async fn find(st: &WebState, form: &Form) -> Result<Vec<TraceRow>, WebError> {
    let range = if form.lookback == "custom" {
        let from = parse_local_utc("from", &form.from)?;
        let to = parse_local_utc("to", &form.to)?;
        if to <= from {
            return Err(WebError::BadRequest("to must be after from".into()));
        }
        Some((from.to_string(), to.to_string()))
    } else {
        None
    };
    let raw = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("service", &form.service),
            ("operation", &form.operation),
            ("minDuration", &form.min),
            ("maxDuration", &form.max),
            ("limit", &form.limit),
        ] {
            query.append_pair(k, v);
        }
        match &range {
            Some((from, to)) => {
                query.append_pair("start", from);
                query.append_pair("end", to);
            }
            None => {
                query.append_pair("lookback", &form.lookback);
            }
        }
        query.finish()
    };
    let mut q = parse_search(&raw, now_us())?;
    q.tags = parse_tags(&form.tagtext).map_err(WebError::BadRequest)?;
    let traces = st.store.find_traces(&q).await?;
    let longest = traces
        .iter()
        .filter_map(|t| {
            let start = t.iter().map(|s| s.start_ns).min()?;
            Some(t.iter().map(|s| s.end_ns).max()? - start)
        })
        .max()
        .unwrap_or(1);
    Ok(traces.iter().filter_map(|t| row(t, longest)).collect())
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_read_like_jaeger_ui() {
        assert_eq!(
            parse_tags(r#"error=true  http.route="/orders/{id} x" a=b"#).unwrap(),
            [
                ("error".to_string(), "true".to_string()),
                ("http.route".to_string(), "/orders/{id} x".to_string()),
                ("a".to_string(), "b".to_string())
            ]
        );
        assert_eq!(parse_tags("  ").unwrap(), []);
        assert!(parse_tags("novalue").unwrap_err().contains("key=value"));
        assert!(parse_tags(r#"a="open"#).unwrap_err().contains("unclosed"));
    }

    #[test]
    fn custom_range_reads_datetime_local_as_utc() {
        assert_eq!(
            parse_local_utc("from", "2026-11-22T14:05").unwrap(),
            1_795_356_300_000_000
        );
        assert_eq!(
            parse_local_utc("to", "2026-11-22T14:05:30").unwrap(),
            1_795_356_330_000_000
        );
        assert!(parse_local_utc("from", "yesterday").is_err());
    }

    #[test]
    fn durations_and_colours() {
        assert_eq!(format_duration_ns(950), "950 ns");
        assert_eq!(format_duration_ns(1_500), "1.5 µs");
        assert_eq!(format_duration_ns(12_345_678), "12.35 ms");
        assert_eq!(format_duration_ns(2_500_000_000), "2.50 s");
        assert_eq!(service_color("work"), service_color("work"));
        assert!((0..12).contains(&service_color("anything")));
    }
}
