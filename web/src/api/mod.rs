//! The JSON API. Jaeger v1 query shapes live in `jaeger`; the service graph in `graph`.

pub(crate) mod dependencies;
pub(crate) mod graph;
pub(crate) mod history;
mod jaeger;
pub(crate) mod policy;
pub(crate) mod traces;

use axum::routing::get;
use axum::Router;

use crate::WebState;

pub fn router() -> Router<WebState> {
    Router::new()
        .route("/api/traces", get(traces::search))
        .route("/api/traces/{trace_id}", get(traces::by_id))
        .route("/api/services", get(traces::services))
        .route(
            "/api/services/{service}/operations",
            get(traces::service_operations),
        )
        .route("/api/operations", get(traces::operations))
        .route("/api/dependencies", get(dependencies::dependencies))
        .route("/api/graph", get(graph::get_graph))
        .route("/api/graph/history", get(history::get_history))
        .route("/api/policy", get(policy::get_policy))
        .route("/api/policy/reload", axum::routing::post(policy::reload))
}

pub use graph::graph_json;
pub(crate) use jaeger::parse_trace_id;
pub(crate) use traces::parse_search;

#[cfg(test)]
pub use traces::parse_search as parse_search_for_tests;
