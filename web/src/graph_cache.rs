//! Live graph snapshots, built at most about once a second per window and shared by every
//! request: `/api/graph` is answered from memory, whatever the size of the mesh. A refresher
//! (`refresh_due`, run by the server each second) rebuilds the windows someone asked for lately,
//! so requests rarely wait for a build; the whole graph's JSON is kept ready as bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use meshlens_topology::graph::{GraphQuery, GraphSnapshot, Topology, Window};

use crate::api::graph_json;
use crate::WebError;

/// How old a snapshot may be and still be served.
const MAX_AGE: Duration = Duration::from_millis(1500);
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
    query: GraphQuery,
    json: Bytes,
    asked: Instant,
}

impl CachedGraph {
    fn filtered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Filtered>> {
        self.filtered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The JSON for a filtered query: made once per snapshot (or ahead, by the refresher, for
    /// queries asked lately), then reused.
    pub fn filtered_json(&self, query: &GraphQuery) -> Bytes {
        let key = format!("{query:?}");
        if let Some(f) = self.filtered().get_mut(&key) {
            f.asked = Instant::now();
            return f.json.clone();
        }
        let json = graph_json(&self.snapshot.filtered(query), self.built_at);
        let mut cache = self.filtered();
        if cache.len() < MAX_FILTERED {
            let query = query.clone();
            let asked = Instant::now();
            cache.insert(
                key,
                Filtered {
                    query,
                    json: json.clone(),
                    asked,
                },
            );
        }
        json
    }
}

#[derive(Default)]
struct Entry {
    graph: Option<Arc<CachedGraph>>,
    asked: Option<Instant>,
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

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Window, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of `window` no older than `MAX_AGE`, built now (off the async workers) if none is.
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
        let json = graph_json(&snapshot, built_at);
        // Filtered queries someone asked lately are answered ahead, so a polling UI with filters
        // is answered from memory too.
        let warm: Vec<(String, GraphQuery, Instant)> = self
            .entries()
            .get(&window)
            .and_then(|e| e.graph.clone())
            .map(|old| {
                old.filtered()
                    .iter()
                    .filter(|(_, f)| f.asked.elapsed() <= KEEP_WARM)
                    .map(|(k, f)| (k.clone(), f.query.clone(), f.asked))
                    .collect()
            })
            .unwrap_or_default();
        let filtered = warm
            .into_iter()
            .map(|(key, query, asked)| {
                let json = graph_json(&snapshot.filtered(&query), built_at);
                (key, Filtered { query, json, asked })
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
