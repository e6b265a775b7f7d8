//! `GET /api/graph/history?node=ID|edge=ID&minutes=60`: one node's inbound calls or one edge's
//! calls per stored minute (the graph's per-minute history; the current minute is not stored
//! yet), for the charts of the topology's side panel and the service page.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::Json;
use meshlens_storage::EdgeMinute;
use meshlens_topology::graph::{build_snapshot, EdgeKey, HealthConfig, Stats, Summary, Window};
use serde::Serialize;

use crate::{WebError, WebState};

const MAX_MINUTES: i64 = 24 * 60;

/// What a history is of: a node's inbound calls, or an edge's calls (ids as `/api/graph` has them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    Node(String),
    Edge(String),
}

fn edge_id(k: &EdgeKey) -> String {
    format!(
        "{}->{}:{}",
        k.client.node.id(),
        k.server.node.id(),
        k.connection.as_str()
    )
}

/// The target's summary for each stored minute that has it, oldest first.
pub(crate) fn per_minute(
    rows: Vec<EdgeMinute>,
    target: &Target,
    health: &HealthConfig,
) -> Vec<(i64, Summary)> {
    let mut minutes: BTreeMap<i64, Vec<(EdgeKey, Stats)>> = BTreeMap::new();
    for r in rows {
        let keep = match target {
            Target::Node(id) => r.key.server.node.id() == *id,
            Target::Edge(id) => edge_id(&r.key) == *id,
        };
        if keep {
            minutes.entry(r.minute).or_default().push((r.key, r.stats));
        }
    }
    minutes
        .into_iter()
        .filter_map(|(m, edges)| {
            let snap = build_snapshot(edges.iter().map(|(k, s)| (k, s)), Window::M1, health);
            let summary = match target {
                Target::Node(id) => snap.nodes.into_iter().find(|n| n.key.id() == *id)?.inbound,
                Target::Edge(_) => snap.edges.into_iter().next()?.stats,
            };
            Some((m, summary))
        })
        .collect()
}

/// The stored minutes of the last `minutes` for `target`, as `per_minute` gives them, and the
/// range `[from, to)` they were read from (unix minutes).
pub(crate) async fn recent(
    st: &WebState,
    target: &Target,
    minutes: i64,
) -> Result<(Vec<(i64, Summary)>, (i64, i64)), WebError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 60) as i64)
        .unwrap_or(0);
    let (from, to) = (now - minutes, now);
    let rows = st.store.edge_minutes(from, to).await?;
    let health = st.graph.health();
    Ok((per_minute(rows, target, &health), (from, to)))
}

#[derive(Debug, Serialize)]
pub struct Point {
    /// Unix seconds of the minute's start.
    pub at: i64,
    pub requests: u64,
    pub failures: u64,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub from: i64,
    pub to: i64,
    pub minutes: Vec<Point>,
}

pub async fn get_history(
    State(st): State<WebState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<History>, WebError> {
    let mut target = None;
    let mut minutes = 60;
    for (k, v) in form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "node" if !v.is_empty() => target = Some(Target::Node(v.into_owned())),
            "edge" if !v.is_empty() => target = Some(Target::Edge(v.into_owned())),
            "minutes" => {
                minutes = v
                    .parse::<i64>()
                    .ok()
                    .filter(|m| (1..=MAX_MINUTES).contains(m))
                    .ok_or_else(|| {
                        WebError::BadRequest(format!("minutes: 1 to {MAX_MINUTES}, got {v:?}"))
                    })?
            }
            _ => {}
        }
    }
    let target =
        target.ok_or_else(|| WebError::BadRequest("node or edge (an id) is required".into()))?;
    let (points, (from, to)) = recent(&st, &target, minutes).await?;
    Ok(Json(History {
        from: from * 60,
        to: to * 60,
        minutes: points
            .into_iter()
            .map(|(m, s)| Point {
                at: m * 60,
                requests: s.counts.requests,
                failures: s.counts.failures,
                p95_ms: s.latency.map(|q| q.p95_ns / 1e6),
            })
            .collect(),
    }))
}
