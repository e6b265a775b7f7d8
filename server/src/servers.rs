//! Binds and serves every listener, each stopping gracefully on the shared cancellation token.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use meshlens_collector::otlp::grpc::{normalize_decode_errors, trace_service, ExportDeadline};
use meshlens_collector::policy::PolicyServer;
use meshlens_collector::{otlp, prom, zipkin, Metrics, Pipeline};
use meshlens_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::MapResponseLayer;

use crate::{Addrs, Config};

pub(crate) type Set = JoinSet<anyhow::Result<()>>;

/// What the listeners serve.
pub struct Parts {
    pub pipeline: Pipeline,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub policy: Arc<PolicyServer>,
    pub ready: Arc<AtomicBool>,
}

pub async fn spawn_all(
    config: &Config,
    set: &mut Set,
    parts: Parts,
    cancel: CancellationToken,
) -> anyhow::Result<Addrs> {
    let Parts {
        pipeline,
        store,
        metrics,
        policy,
        ready,
    } = parts;
    let listen = &config.listen;
    let graph_cache = Arc::new(meshlens_web::GraphCache::new(pipeline.graph().topology()));
    // Rebuilds the snapshots clients ask for each second, so `/api/graph` answers from memory.
    let refresh = graph_cache.clone();
    crate::spawn_every(
        set,
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move || refresh.refresh_due(),
    );
    let limit = config.ingest.max_message_bytes;
    let body = meshlens_collector::BodyLimits {
        max_bytes: limit,
        timeout: config.ingest.body_timeout,
    };
    // One limit across receivers: requests beyond it wait (unread) instead of buffering in memory.
    let concurrency =
        GlobalConcurrencyLimitLayer::new(config.ingest.max_concurrent_requests.max(1));

    let grpc = bind(listen.otlp_grpc, "otlp_grpc").await?;
    let otlp_grpc = grpc.local_addr()?;
    let svc = trace_service(pipeline.clone(), limit);
    let metrics_svc = meshlens_collector::otlp::grpc::metrics_service(pipeline.clone(), limit);
    // The deadline starts once a permit is held: waiting for one is not the client's doing.
    let layer = tower::ServiceBuilder::new()
        .layer(concurrency.clone())
        .layer(ExportDeadline::layer(
            config.ingest.body_timeout,
            metrics.clone(),
        ))
        .layer(MapResponseLayer::new({
            let metrics = metrics.clone();
            move |res| normalize_decode_errors(&metrics, res)
        }));
    let c = cancel.clone();
    set.spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(svc)
            .add_service(metrics_svc)
            .serve_with_incoming_shutdown(no_delay(grpc), c.cancelled_owned())
            .await
            .context("otlp grpc server")
    });

    // OTLP/HTTP and Prometheus remote write share the port, as OTLP receivers and Prometheus'
    // own receiver each answer on theirs.
    let http = otlp::http::router(pipeline.clone(), body)
        .merge(prom::router(pipeline.clone(), body))
        .layer(concurrency.clone());
    let otlp_http = serve_http(set, listen.otlp_http, "otlp_http", http, &cancel).await?;

    let zipkin = zipkin::router(pipeline, body).layer(concurrency);
    let zipkin = serve_http(set, listen.zipkin, "zipkin", zipkin, &cancel).await?;

    let web_policy = policy.engine().clone();
    let policy = crate::policy_listener::serve_policy(
        set,
        listen.policy,
        config.policy.threads,
        policy,
        &cancel,
    )
    .await?;

    let web = meshlens_web::app(meshlens_web::WebState {
        store,
        registry: metrics.registry.clone(),
        ready,
        graph: graph_cache,
        policy: web_policy,
    });
    let web = serve_http(set, listen.web, "web", web, &cancel).await?;

    Ok(Addrs {
        otlp_grpc,
        otlp_http,
        zipkin,
        policy,
        web,
    })
}

/// Accepted connections with Nagle's algorithm off. With it on, a response smaller than a packet
/// waits for the peer's delayed ACK (about 40 ms on Linux): measured, every export took ≥ 52 ms and
/// one client connection could not pass about 67,000 spans/s.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

async fn bind(addr: SocketAddr, name: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {name} listener on {addr}"))
}

async fn serve_http(
    set: &mut Set,
    addr: SocketAddr,
    name: &'static str,
    router: axum::Router,
    cancel: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(addr, name).await?;
    let local = listener.local_addr()?;
    let c = cancel.clone();
    set.spawn(async move {
        axum::serve(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            router,
        )
        .with_graceful_shutdown(c.cancelled_owned())
        .await
        .with_context(|| format!("{name} server"))
    });
    Ok(local)
}
