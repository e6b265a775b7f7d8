//! Live graph snapshots, built at most about once a second per window and shared by every
//! request: `/api/graph` is answered from memory, whatever the size of the mesh. A refresher
//! (`refresh_due`, run by the server each second) rebuilds the windows someone asked for lately,
//! so requests rarely wait for a build; the whole graph's JSON is kept ready as bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use meshlens_topology::graph::{GraphQuery, GraphSnapshot, NodeKind, Topology, Window};

use crate::api::graph_json;
use crate::WebError;

/// How old a snapshot may be and still be served. The refresher rebuilds watched windows each
/// second; on a busy machine a round can take longer, and a request should not pay for a build
/// then (measured: a polled query's p99 went from 0.1 to 50 ms when this was 1.5 s). Only a
/// snapshot older than this (the refresher stopped, or the window was not watched) is rebuilt
/// on the request's behalf.
const MAX_AGE: Duration = Duration::from_secs(10);
/// How long a window stays refreshed after someone last asked for it.
const KEEP_WARM: Duration = Duration::from_secs(120);

/// Filtered answers kept per snapshot (a UI polls with the same filters).
const MAX_FILTERED: usize = 32;

/// One built snapshot: the whole graph of a window and its JSON.
pub struct CachedGraph {
    pub snapshot: GraphSnapshot,
    pub json: Bytes,
    pub built_at: SystemTime,
    built: Instant,
    /// Filtered queries answered from this snapshot: their JSON, and when last asked.
    filtered: Mutex<HashMap<String, Filtered>>,
}

struct Filtered {
    json: Bytes,
}

impl CachedGraph {
    fn filtered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Filtered>> {
        self.filtered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The JSON for a filtered query: made once per snapshot (or ahead, by the refresher, for
    /// queries asked lately), then reused.
    fn filtered_json(&self, query: &GraphQuery) -> Bytes {
        let key = format!("{query:?}");
        if let Some(f) = self.filtered().get(&key) {
            return f.json.clone();
        }
        let json = graph_json(&self.snapshot.filtered(query), self.built_at);
        let mut cache = self.filtered();
        if cache.len() < MAX_FILTERED {
            cache.insert(key, Filtered { json: json.clone() });
        }
        json
    }
}

#[derive(Default)]
struct Entry {
    graph: Option<Arc<CachedGraph>>,
    asked: Option<Instant>,
    /// Filtered queries asked of this window, and when last: the refresher answers them ahead.
    /// Kept here, not in a snapshot, so a query asked while a rebuild runs is not missed by it.
    filters: HashMap<String, (GraphQuery, Instant)>,
}

pub struct GraphCache {
    topology: Arc<Mutex<Topology>>,
    entries: Mutex<HashMap<Window, Entry>>,
}

impl Default for GraphCache {
    fn default() -> Self {
        GraphCache::new(Arc::new(Mutex::new(Topology::default())))
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl GraphCache {
    pub fn new(topology: Arc<Mutex<Topology>>) -> Self {
        GraphCache {
            topology,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The engine the snapshots are taken from.
    pub fn topology(&self) -> &Arc<Mutex<Topology>> {
        &self.topology
    }

    /// The health thresholds the engine judges with (for graphs rebuilt from history).
    pub fn health(&self) -> meshlens_topology::graph::HealthConfig {
        *self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .health()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Window, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest snapshot of `window` if it is no older than `MAX_AGE`, else one built now (off
    /// the async workers).
    pub async fn get(self: &Arc<Self>, window: Window) -> Result<Arc<CachedGraph>, WebError> {
        let fresh = {
            let mut entries = self.entries();
            let e = entries.entry(window).or_default();
            e.asked = Some(Instant::now());
            e.graph.clone().filter(|g| g.built.elapsed() <= MAX_AGE)
        };
        if let Some(g) = fresh {
            return Ok(g);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.rebuild(window))
            .await
            .map_err(|e| WebError::Internal(e.to_string()))
    }

    fn rebuild(&self, window: Window) -> Arc<CachedGraph> {
        let snapshot = self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .whole(window, now_ns());
        let built_at = SystemTime::now();
        // Waypoints are drawn only when asked for (as in Kiali), so the whole graph leaves them out.
        let json = if snapshot
            .nodes
            .iter()
            .any(|n| n.key.kind == NodeKind::Waypoint)
        {
            graph_json(&snapshot.filtered(&GraphQuery::whole(window)), built_at)
        } else {
            graph_json(&snapshot, built_at)
        };
        // Filtered queries someone asked lately are answered ahead, so a polling UI with filters
        // is answered from memory too.
        let warm: Vec<(String, GraphQuery)> = {
            let mut entries = self.entries();
            let e = entries.entry(window).or_default();
            e.filters
                .retain(|_, (_, asked)| asked.elapsed() <= KEEP_WARM);
            e.filters
                .iter()
                .map(|(k, (q, _))| (k.clone(), q.clone()))
                .collect()
        };
        let filtered = warm
            .into_iter()
            .map(|(key, query)| {
                let json = graph_json(&snapshot.filtered(&query), built_at);
                (key, Filtered { json })
            })
            .collect();
        let graph = Arc::new(CachedGraph {
            snapshot,
            json,
            built_at,
            built: Instant::now(),
            filtered: Mutex::new(filtered),
        });
        self.entries().entry(window).or_default().graph = Some(graph.clone());
        graph
    }

    /// The answer to a filtered query from `graph` (a snapshot of `window`), noting the query so
    /// the refresher answers it ahead from the next snapshots.
    pub fn filtered_json(&self, window: Window, graph: &CachedGraph, query: &GraphQuery) -> Bytes {
        {
            let mut entries = self.entries();
            let filters = &mut entries.entry(window).or_default().filters;
            let key = format!("{query:?}");
            if filters.len() < MAX_FILTERED || filters.contains_key(&key) {
                filters.insert(key, (query.clone(), Instant::now()));
            }
        }
        graph.filtered_json(query)
    }

    /// Rebuilds every window asked for within `KEEP_WARM`; forgets the others. Blocking: call it
    /// from a blocking thread about once a second.
    pub fn refresh_due(&self) {
        let due: Vec<Window> = {
            let mut entries = self.entries();
            entries.retain(|_, e| e.asked.is_some_and(|t| t.elapsed() <= KEEP_WARM));
            entries.keys().copied().collect()
        };
        for w in due {
            self.rebuild(w);
        }
    }
}
