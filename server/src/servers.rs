//! Wires what each port serves to a listener (`meshlens_collector::listen`): bound with its TLS
//! and connection limits, stopping gracefully on the shared cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use meshlens_collector::body::{Admission, AdmissionLayer};
use meshlens_collector::listen::auth::IngestAuthLayer;
use meshlens_collector::listen::{
    Alpn, ConnectionLimits, Listener, Protocol, ResponseBody, Serves, TlsSource,
};
use meshlens_collector::metrics::Thread;
use meshlens_collector::otlp::grpc::{normalize_decode_errors, trace_service, ExportDeadline};
use meshlens_collector::policy::PolicyServer;
use meshlens_collector::{otlp, prom, zipkin, Metrics, Pipeline};
use meshlens_storage::Store;

use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::MapResponseLayer;

use crate::{Addrs, Config};

pub(crate) use crate::tasks::Set;

/// What the listeners serve.
pub struct Parts {
    pub pipeline: Pipeline,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub policy: Arc<PolicyServer>,
    pub ready: Arc<meshlens_storage::Readiness>,
    /// Asked before every export's body is read.
    pub memory: meshlens_collector::memory::MemoryLimiter,
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
        memory,
    } = parts;
    let listen = &config.listen;
    let mut ports = Ports::new(config, &metrics)?;
    let credentials = crate::auth::Credentials::load(&config.auth, &metrics)?;
    let ingest_auth = credentials
        .ingest
        .clone()
        .map(|tokens| IngestAuthLayer::new(tokens, metrics.clone()));
    let graph_cache = Arc::new(meshlens_web::GraphCache::new(pipeline.graph().topology()));
    // Rebuilds the snapshots clients ask for each second, so `/api/graph` answers from memory.
    let refresh = graph_cache.clone();
    crate::tasks::spawn_every(
        set,
        crate::tasks::Task::new(Thread::GraphSnapshots, &metrics),
        std::time::Duration::from_secs(1),
        cancel.clone(),
        move || refresh.refresh_due(),
    );
    let limit = config.ingest.max_message_bytes;
    let body = meshlens_collector::BodyLimits {
        max_bytes: limit,
        timeout: config.ingest.body_timeout,
        min_rate: config.ingest.body_min_rate,
        min_rate_grace: config.ingest.body_min_rate_grace,
    };
    // Each receiver has its own request permits: requests beyond them wait (unread) instead of
    // buffering in memory, and a flood on one protocol does not hold up the others.
    let permits = config.ingest.max_concurrent_requests.max(1);
    // Bodies are read whole before a permit is taken: a slow client holds only its connection
    // and the bytes it sent.
    let admission = AdmissionLayer(Admission::new(
        body,
        config.ingest.max_buffered_bytes,
        memory,
        metrics.clone(),
    ));
    let concurrency = || GlobalConcurrencyLimitLayer::new(permits);

    let grpc = ports.bind("otlp_grpc", listen.otlp_grpc, Protocol::Grpc)?;
    let otlp_grpc = grpc.local_addr();
    let routes = tonic::service::Routes::new(trace_service(pipeline.clone(), limit))
        .add_service(meshlens_collector::otlp::grpc::metrics_service(
            pipeline.clone(),
            limit,
        ))
        .prepare();
    // The deadline starts once a permit is held: waiting for one is not the client's doing.
    let grpc_service = tower::ServiceBuilder::new()
        .option_layer(ingest_auth.clone())
        .layer(AdmissionLayer(
            admission.0.with_max_bytes(limit + GRPC_FRAME_HEADER),
        ))
        .layer(concurrency())
        .layer(ExportDeadline::layer(
            config.ingest.body_timeout,
            metrics.clone(),
        ))
        .layer(MapResponseLayer::new({
            let metrics = metrics.clone();
            move |res| normalize_decode_errors(&metrics, res)
        }))
        .service(routes);
    spawn_listener(set, grpc, grpc_service, &cancel);

    // OTLP/HTTP and Prometheus remote write share the port, as OTLP receivers and Prometheus'
    // own receiver each answer on theirs.
    let http = otlp::http::router(pipeline.clone(), body)
        .layer(concurrency())
        .layer(admission.clone())
        .merge(prom::router(pipeline.clone(), &admission.0, permits));
    let http = match &ingest_auth {
        Some(auth) => http.layer(auth.clone()),
        None => http,
    };
    let http_listener = ports.bind("otlp_http", listen.otlp_http, Protocol::Http)?;
    let otlp_http = http_listener.local_addr();
    spawn_listener(set, http_listener, http, &cancel);

    let zipkin = zipkin::router(pipeline, body)
        .layer(concurrency())
        .layer(admission);
    let zipkin = match &ingest_auth {
        Some(auth) => zipkin.layer(auth.clone()),
        None => zipkin,
    };
    let zipkin_listener = ports.bind("zipkin", listen.zipkin, Protocol::Http)?;
    let zipkin_addr = zipkin_listener.local_addr();
    spawn_listener(set, zipkin_listener, zipkin, &cancel);

    let web_policy = policy.engine().clone();
    let reload_policy = {
        let policy = policy.clone();
        Arc::new(move || match policy.reload() {
            meshlens_policy::ReloadOutcome::Unchanged => "unchanged".to_string(),
            meshlens_policy::ReloadOutcome::Reloaded => "reloaded".to_string(),
            meshlens_policy::ReloadOutcome::Failed(e) => format!("refused: {e}"),
        })
    };
    let policy_listener = ports.bind("policy", listen.policy, Protocol::Grpc)?;
    let policy_addr = policy_listener.local_addr();
    let policy_done = meshlens_collector::policy::listener::serve_policy(
        policy_listener,
        config.policy.threads,
        policy,
        cancel.clone(),
    )
    .await
    .context("starting the policy listener")?;
    set.spawn(async move { policy_done.await.context("policy listener") });

    let web = meshlens_web::app(meshlens_web::WebState {
        store,
        registry: metrics.registry.clone(),
        exposition: {
            let (registry, large) = (metrics.registry.clone(), metrics.large.clone());
            Arc::new(move || Box::new(meshlens_collector::metrics::exposition(&registry, &large)))
        },
        ready,
        graph: graph_cache,
        policy: web_policy,
        reload_policy,
        auth: credentials.web_auth(
            &config.auth,
            config.tls.for_listener("web").ok().flatten().is_some(),
            listen.web.ip().is_loopback(),
        )?,
    });
    credentials.spawn_reloads(set, config.auth.reload_interval, &cancel);
    let web_listener = ports.bind("web", listen.web, Protocol::Http)?;
    let web_addr = web_listener.local_addr();
    spawn_listener(set, web_listener, web, &cancel);

    // Certificates are re-read when their files change: cert-manager and Istio rotate them in
    // place.
    let sources = ports.sources;
    if !sources.is_empty() {
        crate::tasks::spawn_every(
            set,
            crate::tasks::Task::new(Thread::TlsReload, &metrics),
            config
                .tls
                .reload_interval
                .max(std::time::Duration::from_millis(100)),
            cancel.clone(),
            move || {
                for source in &sources {
                    source.reload_if_changed();
                }
            },
        );
    }

    Ok(Addrs {
        otlp_grpc,
        otlp_http,
        zipkin: zipkin_addr,
        policy: policy_addr,
        web: web_addr,
    })
}

/// A gRPC message's frame header (compression flag and length) in the HTTP/2 body.
const GRPC_FRAME_HEADER: usize = 5;

/// What every listener is bound with: its TLS (read now, so a bad file fails the start) and the
/// connection limits.
struct Ports<'a> {
    config: &'a Config,
    metrics: &'a Metrics,
    limits: ConnectionLimits,
    sources: Vec<Arc<TlsSource>>,
}

impl<'a> Ports<'a> {
    fn new(config: &'a Config, metrics: &'a Metrics) -> anyhow::Result<Self> {
        Ok(Ports {
            config,
            metrics,
            limits: config.connections.limits(),
            sources: Vec::new(),
        })
    }

    fn bind(
        &mut self,
        name: &'static str,
        addr: SocketAddr,
        protocol: Protocol,
    ) -> anyhow::Result<Listener> {
        let tls = match self
            .config
            .tls
            .for_listener(name)
            .map_err(anyhow::Error::msg)?
        {
            Some(settings) => {
                let alpn = match protocol {
                    Protocol::Grpc => Alpn::H2,
                    Protocol::Http => Alpn::Http,
                };
                let source = TlsSource::load(name, settings, alpn, self.metrics.clone())
                    .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
                self.sources.push(source.clone());
                Some(source)
            }
            None => None,
        };
        Ok(Listener::bind(
            name,
            addr,
            protocol,
            tls,
            self.limits,
            self.metrics.clone(),
        )?)
    }
}

fn spawn_listener<S: Serves<B>, B: ResponseBody>(
    set: &mut Set,
    listener: Listener,
    service: S,
    cancel: &CancellationToken,
) {
    let name = listener.name();
    let cancel = cancel.clone();
    set.spawn(async move {
        listener
            .serve(service, cancel)
            .await
            .with_context(|| format!("{name} listener"))
    });
}
