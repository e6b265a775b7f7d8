//! `/service/{name}`: one service. Its RED now and per minute over the last hour (SVG charts
//! from the stored per-minute history), its versions, callers and callees, and its operations.

use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use meshlens_topology::graph::{NodeKey, NodeKind, Summary};
use meshlens_topology::SpanKind;

use super::{
    nav, red_of, render, version_rows, window_links, window_param, Nav, Red, VersionRow, WindowLink,
};
use crate::api::history::{self, Target};
use crate::auth::SignedIn;
use crate::{WebError, WebState};

/// Minutes of history the charts show.
const HISTORY_MINUTES: i64 = 60;
const CHART_W: f64 = 360.0;
const CHART_H: f64 = 100.0;

pub(crate) struct Chart {
    id: &'static str,
    title: &'static str,
    max_label: String,
    width: f64,
    height: f64,
    points: String,
    dots: Vec<Dot>,
    from: String,
    to: String,
}

pub(crate) struct Dot {
    x: String,
    y: String,
}

pub(crate) struct Peer {
    name: String,
    href: String,
    kind: &'static str,
    is_service: bool,
    health: &'static str,
    red: Red,
}

pub(crate) struct Operation {
    name: String,
    kind: &'static str,
}

#[derive(Template)]
#[template(path = "service.html")]
struct ServicePage {
    nav: Nav,
    name: String,
    namespace: String,
    health: &'static str,
    windows: Vec<WindowLink>,
    window: &'static str,
    red: Red,
    charts: Vec<Chart>,
    versions: Vec<VersionRow>,
    upstreams: Vec<Peer>,
    downstreams: Vec<Peer>,
    operations: Vec<Operation>,
}

/// One series' points in chart coordinates; `None` values are left out. The top 4% is kept
/// free so the highest point's dot shows whole.
fn scale(values: &[(i64, Option<f64>)], from: i64, to: i64, max: f64) -> Vec<(f64, f64)> {
    let span = (to - from).max(1) as f64;
    values
        .iter()
        .filter_map(|(m, v)| {
            let v = (*v)?;
            let x = (m - from) as f64 / span * CHART_W;
            let y = CHART_H
                - if max > 0.0 {
                    v / max * CHART_H * 0.96
                } else {
                    0.0
                };
            Some((x, y))
        })
        .collect()
}

fn chart(
    id: &'static str,
    title: &'static str,
    values: &[(i64, Option<f64>)],
    (from, to): (i64, i64),
    label: impl Fn(f64) -> String,
) -> Chart {
    let max = values.iter().filter_map(|(_, v)| *v).fold(0.0, f64::max);
    let points = scale(values, from, to - 1, max);
    let minute = |m: i64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(m as u64 * 60))
            .to_string()
    };
    Chart {
        id,
        title,
        max_label: label(max),
        width: CHART_W,
        height: CHART_H,
        points: points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        dots: points
            .iter()
            .map(|(x, y)| Dot {
                x: format!("{x:.1}"),
                y: format!("{y:.1}"),
            })
            .collect(),
        from: minute(from),
        to: minute(to),
    }
}

pub(crate) async fn page(
    State(st): State<WebState>,
    who: SignedIn,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    render_page(st, who, name, raw).await
}

/// `/service?name=`: the same page, for the names that cannot be a path segment (`.`, `..`).
pub(crate) async fn page_by_query(
    State(st): State<WebState>,
    who: SignedIn,
    RawQuery(raw): RawQuery,
) -> Response {
    let name = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    match name {
        Some(name) => render_page(st, who, name, raw).await,
        None => WebError::BadRequest("name: missing".into()).page(),
    }
}

async fn render_page(st: WebState, who: SignedIn, name: String, raw: Option<String>) -> Response {
    let window = match window_param(raw.as_deref()) {
        Ok(w) => w,
        Err(e) => return e.page(),
    };
    let namespace = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, v)| k == "namespace" && !v.is_empty())
        .map(|(_, v)| v.into_owned());
    let graph = match st.graph.get(window).await {
        Ok(g) => g,
        Err(e) => return e.page(),
    };
    let snapshot = &graph.snapshot;
    let is_it = |k: &meshlens_topology::graph::NodeKey| {
        k.kind == NodeKind::Service
            && *k.name == *name
            && (namespace.is_none() || k.namespace.as_deref() == namespace.as_deref())
    };
    let node = snapshot.nodes.iter().find(|n| is_it(&n.key));
    let operations = match st.store.operations(&name, None).await {
        Ok(ops) => ops,
        Err(e) => return WebError::from(e).page(),
    };
    if node.is_none() && operations.is_empty() {
        return WebError::NotFound(format!(
            "no service {name:?} on the graph in the last {} or among the stored spans",
            window.as_str()
        ))
        .page();
    }
    let node_id = node.map_or_else(
        || NodeKey::service(namespace.as_deref(), &name).id(),
        |n| n.key.id(),
    );
    let (history, (from, to)) =
        match history::recent(&st, &Target::Node(node_id), HISTORY_MINUTES).await {
            Ok(h) => h,
            Err(e) => return e.page(),
        };
    let charts = if history.is_empty() {
        Vec::new()
    } else {
        let series = |f: &dyn Fn(&Summary) -> Option<f64>| -> Vec<(i64, Option<f64>)> {
            history.iter().map(|(m, s)| (*m, f(s))).collect()
        };
        vec![
            chart(
                "rps",
                "Requests/s",
                &series(&|s| Some(s.counts.requests as f64 / 60.0)),
                (from, to),
                |v| format!("{v:.2}"),
            ),
            chart(
                "errors",
                "Error ratio",
                &series(&|s| {
                    (s.counts.requests > 0)
                        .then(|| s.counts.failures as f64 / s.counts.requests as f64)
                }),
                (from, to),
                |v| format!("{:.1}%", v * 100.0),
            ),
            chart(
                "p95",
                "p95 latency",
                &series(&|s| s.latency.map(|q| q.p95_ns / 1e6)),
                (from, to),
                |v| format!("{v:.1} ms"),
            ),
        ]
    };
    let peer = |k: &meshlens_topology::graph::NodeKey, s: &Summary, h: &'static str| Peer {
        name: k.name.to_string(),
        href: super::service_href(&k.name, ""),
        kind: k.kind.as_str(),
        is_service: k.kind == NodeKind::Service,
        health: h,
        red: red_of(s, window),
    };
    let upstreams = snapshot
        .edges
        .iter()
        .filter(|e| is_it(&e.server))
        .map(|e| peer(&e.client, &e.stats, e.health.as_str()))
        .collect();
    let downstreams = snapshot
        .edges
        .iter()
        .filter(|e| is_it(&e.client))
        .map(|e| peer(&e.server, &e.stats, e.health.as_str()))
        .collect();
    let empty = Summary::default();
    let inbound = node.map_or(&empty, |n| &n.inbound);
    render(&ServicePage {
        nav: nav("", who),
        namespace: node
            .and_then(|n| n.key.namespace.as_deref())
            .unwrap_or("")
            .to_string(),
        health: node.map_or("idle", |n| n.health.as_str()),
        windows: window_links(window),
        window: window.as_str(),
        red: red_of(inbound, window),
        charts,
        versions: node.map(|n| version_rows(n, window)).unwrap_or_default(),
        upstreams,
        downstreams,
        operations: operations
            .into_iter()
            .map(|o| Operation {
                name: o.name,
                kind: match o.kind {
                    SpanKind::Unspecified => "",
                    k => k.as_str(),
                },
            })
            .collect(),
        name,
    })
}
