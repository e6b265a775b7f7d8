//! meshlens' web listener: the web UI (`ui`), the JSON API (Jaeger v1 shapes for traces, the
//! service graph), `/metrics`, `/healthz` and `/readyz`. Only this crate renders JSON or HTML for people.
#![forbid(unsafe_code)]

mod api;
pub mod auth;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod graph_cache;
mod ui;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use meshlens_storage::Store;

pub use error::WebError;
pub use graph_cache::GraphCache;

/// What the handlers share.
#[derive(Clone)]
pub struct WebState {
    pub store: Arc<Store>,
    /// meshlens' own metrics.
    pub registry: prometheus::Registry,
    /// Everything `/metrics` shows, in text exposition chunks made as they are read (meshlens'
    /// own metrics, then each large family: the product metrics).
    pub exposition: Arc<dyn Fn() -> Exposition + Send + Sync>,
    /// Started, and the store taking commits; `/readyz` answers 503 with the reason otherwise.
    pub ready: Arc<meshlens_storage::Readiness>,
    /// Snapshots of the live service graph (fed by the ingest pipeline).
    pub graph: Arc<GraphCache>,
    /// The policy engine, for `/api/policy`.
    pub policy: Arc<meshlens_policy::PolicyEngine>,
    /// Checks the policy files now; returns `unchanged`, `reloaded` or the refusal.
    pub reload_policy: Arc<dyn Fn() -> String + Send + Sync>,
    /// Who may read what.
    pub auth: Arc<auth::WebAuth>,
}

/// The whole web router; tests call it in-process with `oneshot`.
pub fn app(state: WebState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api::router())
        .merge(ui::router())
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::guard,
        ))
        .layer(axum::middleware::map_response(ui::security_headers))
        .with_state(state)
}

async fn readyz(State(st): State<WebState>) -> impl IntoResponse {
    match st.ready.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Chunks of a text exposition, each encoded when it is read.
pub type Exposition = Box<dyn Iterator<Item = Vec<u8>> + Send>;

/// Streamed a chunk at a time: a scrape of tens of thousands of product series never holds them
/// all decoded, nor the whole text.
async fn metrics(State(st): State<WebState>) -> impl IntoResponse {
    let chunks = futures::stream::iter((st.exposition)().map(Ok::<_, std::convert::Infallible>));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        axum::body::Body::from_stream(chunks),
    )
}

#[cfg(test)]
mod tests;
