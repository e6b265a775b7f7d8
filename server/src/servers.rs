//! Binds and serves every listener, each stopping gracefully on the shared cancellation token.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use meshlens_collector::otlp::grpc::{normalize_decode_errors, trace_service, ExportDeadline};
use meshlens_collector::policy::PolicyServer;
use meshlens_collector::{otlp, zipkin, Metrics, Pipeline};
use meshlens_storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::MapResponseLayer;

use crate::{Addrs, Config};

type Set = JoinSet<anyhow::Result<()>>;

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
    let metrics_svc = meshlens_collector::otlp::metrics::metrics_service(pipeline.clone(), limit);
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

    let http = otlp::http::router(pipeline.clone(), body).layer(concurrency.clone());
    let otlp_http = serve_http(set, listen.otlp_http, "otlp_http", http, &cancel).await?;

    let zipkin = zipkin::router(pipeline, body).layer(concurrency);
    let zipkin = serve_http(set, listen.zipkin, "zipkin", zipkin, &cancel).await?;

    let web_policy = policy.engine().clone();
    let policy = serve_policy(set, listen.policy, config.policy.threads, policy, &cancel).await?;

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

/// The policy listener: ext_authz Check, rate limit ShouldRateLimit and gRPC health (the
/// server, and each API by its service name).
///
/// It runs on a runtime of its own (threads named `meshlens-policy`): a check is on the path of
/// every request a proxy forwards, so decoding a burst of spans or rendering a page on the main
/// runtime must not queue it. Measured: ext_authz p99 at 5,000 checks/s beside 20,000 spans/s of
/// OTLP ingest was 4.8 ms on the shared runtime.
async fn serve_policy(
    set: &mut Set,
    addr: SocketAddr,
    threads: usize,
    policy: Arc<PolicyServer>,
    cancel: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    // Bound here so that a taken port fails the start, as every other listener does.
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the policy listener on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let c = cancel.clone();
    // The runtime is made, run and dropped on this thread: dropped in an async context, it would
    // panic.
    std::thread::Builder::new()
        .name("meshlens-policy".into())
        .spawn(move || {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("meshlens-policy")
                .enable_all()
                .build();
            let runtime = match built {
                Ok(r) => {
                    let _ = started_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let result = runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                let (reporter, health) = tonic_health::server::health_reporter();
                for service in [
                    "",
                    "envoy.service.auth.v3.Authorization",
                    "envoy.service.ratelimit.v3.RateLimitService",
                ] {
                    reporter
                        .set_service_status(service, tonic_health::ServingStatus::Serving)
                        .await;
                }
                let (authz, ratelimit) = (policy.authorization(), policy.rate_limit());
                // The reporter must outlive the server, or health watches end early.
                let _reporter = reporter;
                tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(authz)
                    .add_service(ratelimit)
                    .serve_with_incoming_shutdown(no_delay(listener), c.cancelled_owned())
                    .await
                    .context("policy server")
            });
            drop(runtime);
            let _ = done_tx.send(result);
        })
        .context("starting the policy thread")?;
    started_rx
        .await
        .context("the policy thread ended at its start")?
        .context("starting the policy runtime")?;
    set.spawn(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the policy thread ended without a result")))
    });
    Ok(local)
}
