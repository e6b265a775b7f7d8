//! Every port is served the same way: bind, TLS (optional, re-read when its files change),
//! connection limits, the caller's address and certificate identity on each request, and
//! graceful shutdown. The HTTP listeners (OTLP/HTTP with remote write, Zipkin, web) offer
//! HTTP/1.1 and HTTP/2; the gRPC ones (OTLP/gRPC, policy) HTTP/2 alone.
//!
//! A connection costs the server nothing it has not bounded:
//! - at most [`ConnectionLimits::max_connections`] are open per listener; more are closed at
//!   once (counted), so a flood of idle sockets cannot take the descriptors a real client needs;
//! - the TLS handshake must end within its timeout, and the first request's headers must have
//!   arrived within the header timeout of the connection's start (HTTP/1 requests after it too),
//!   so a slow client cannot hold a connection with a trickle of bytes;
//! - a connection with no request in flight for the idle timeout is closed (the server's own
//!   HTTP/2 pings do not keep it open);
//! - a connection older than the maximum age is asked to finish (GOAWAY) and closed after a grace
//!   period, so clients reconnect and spread over replicas;
//! - HTTP/2 streams per connection are capped, and the server pings an idle peer;
//! - a peer that pings too often is closed ([`pings`]).
//!
//! Handshakes run on the connection's own task: a slow one never holds up `accept`.

pub mod auth;
pub mod pings;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use tls::{Alpn, ClientIdentity, TlsSettings, TlsSource, TlsVersion};

use crate::metrics::{ConnectionEnd, ConnectionRefusal, Named};
use crate::Metrics;

/// How long calls in flight may take to end once shutdown starts (a health Watch never ends on
/// its own).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long an idle connection, asked to finish, has to say goodbye.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// Limits every listener applies to its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections per listener; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for an HTTP/1 request's headers, from the connection's start or the previous
    /// response.
    pub header_read_timeout: Duration,
    /// A connection that reads and writes nothing this long is closed.
    pub idle_timeout: Duration,
    /// Connections older than this are asked to finish (GOAWAY); zero: no limit.
    pub max_connection_age: Duration,
    /// How long a connection asked to finish by its age has for its calls in flight.
    pub max_connection_age_grace: Duration,
    /// HTTP/2 streams at once on one connection.
    pub max_concurrent_streams: u32,
    /// The server pings an HTTP/2 peer this long idle, and closes the connection if the answer
    /// takes longer than the same again; zero: no pings.
    pub keepalive_interval: Duration,
    /// An HTTP/2 peer's PINGs may come this often without a request between them; more often,
    /// more than [`pings::MAX_STRIKES`] times, and the connection is closed. Zero: no limit.
    pub keepalive_min_time: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(30),
            max_concurrent_streams: 256,
            keepalive_interval: Duration::from_secs(60),
            keepalive_min_time: Duration::from_secs(10),
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 only (gRPC).
    Grpc,
    /// HTTP/1.1 and HTTP/2.
    Http,
}

/// Who is calling: put in every request's extensions by the listener.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's names (mTLS listeners only).
    pub identity: Option<Arc<ClientIdentity>>,
}

/// What a listener serves: a tower service of HTTP requests, cloned for each connection (an
/// axum `Router`, tonic's routes behind layers, the policy listener's dispatch).
pub trait Serves<B>:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> Serves<B> for S where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body a listener can send.
pub trait ResponseBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> ResponseBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// A bound port, not yet serving.
pub struct Listener {
    name: &'static str,
    tcp: std::net::TcpListener,
    local: SocketAddr,
    protocol: Protocol,
    tls: Option<Arc<TlsSource>>,
    limits: ConnectionLimits,
    metrics: Metrics,
}

impl Listener {
    /// Binds `addr` now, so that a taken port fails the start. `serve` may then run on any
    /// runtime.
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        protocol: Protocol,
        tls: Option<Arc<TlsSource>>,
        limits: ConnectionLimits,
        metrics: Metrics,
    ) -> std::io::Result<Listener> {
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("binding the {name} listener on {addr}: {e}"),
            )
        })?;
        tcp.set_nonblocking(true)?;
        let local = tcp.local_addr()?;
        metrics.listener_open_connections.at(Named(name)).set(0);
        metrics
            .listener_refused_connections
            .start(|reason| (Named(name), reason));
        metrics
            .listener_closed_connections
            .start(|reason| (Named(name), reason));
        Ok(Listener {
            name,
            tcp,
            local,
            protocol,
            tls,
            limits,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Serves `service` on every accepted connection until `cancel`; then stops accepting, asks
    /// each connection to finish and waits for their calls in flight, at most
    /// [`SHUTDOWN_GRACE`].
    pub async fn serve<S, B>(self, service: S, cancel: CancellationToken) -> std::io::Result<()>
    where
        S: Serves<B>,
        B: ResponseBody,
    {
        let listener = TcpListener::from_std(self.tcp)?;
        let shared = Arc::new(Shared {
            name: self.name,
            builder: builder(self.protocol, &self.limits),
            tls: self.tls,
            limits: self.limits,
            metrics: self.metrics,
            service,
        });
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let tracker = TaskTracker::new();
        loop {
            let (tcp, addr) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, say: wait instead of spinning on the error.
                        tracing::warn!(listener = self.name, error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                shared.refused(ConnectionRefusal::Limit);
                continue;
            };
            // With Nagle's algorithm on, a response smaller than a packet waits for the peer's
            // delayed ACK (about 40 ms on Linux).
            let _ = tcp.set_nodelay(true);
            let shared = shared.clone();
            let stop = cancel.clone();
            tracker.spawn(async move {
                let open = shared
                    .metrics
                    .listener_open_connections
                    .at(Named(shared.name));
                open.inc();
                shared.connection(tcp, addr, stop).await;
                open.dec();
                drop(slot);
            });
        }
        // The port closes now: new clients are refused instead of left waiting.
        drop(listener);
        tracker.close();
        tracker.wait().await;
        Ok(())
    }
}

fn builder(protocol: Protocol, limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    if protocol == Protocol::Grpc {
        b = b.http2_only();
    }
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let keepalive = (!limits.keepalive_interval.is_zero()).then_some(limits.keepalive_interval);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(limits.keepalive_interval.max(Duration::from_secs(1)));
    b
}

struct Shared<S> {
    name: &'static str,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<Arc<TlsSource>>,
    limits: ConnectionLimits,
    metrics: Metrics,
    service: S,
}

impl<S> Shared<S> {
    fn refused(&self, reason: ConnectionRefusal) {
        self.metrics
            .listener_refused_connections
            .at((Named(self.name), reason))
            .inc();
    }

    async fn connection<B>(&self, tcp: TcpStream, addr: SocketAddr, stop: CancellationToken)
    where
        S: Serves<B>,
        B: ResponseBody,
    {
        let (io, identity) = match &self.tls {
            None => (Either::Left(tcp), None),
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let handshake =
                    tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp));
                let shaken = tokio::select! {
                    shaken = handshake => shaken,
                    _ = stop.cancelled() => return,
                };
                match shaken {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| ClientIdentity::from_cert(cert))
                            .map(Arc::new);
                        if !tls.allows(identity.as_deref()) {
                            self.refused(ConnectionRefusal::Identity);
                            tracing::debug!(
                                listener = self.name,
                                %addr,
                                identity = identity.as_deref().and_then(ClientIdentity::name),
                                "client identity not allowed"
                            );
                            return;
                        }
                        (Either::Right(stream), identity)
                    }
                    Ok(Err(e)) => {
                        self.refused(ConnectionRefusal::Tls);
                        tracing::debug!(listener = self.name, %addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        self.refused(ConnectionRefusal::HandshakeTimeout);
                        return;
                    }
                }
            }
        };
        let peer = Peer {
            addr,
            tls: self.tls.is_some(),
            identity,
        };
        let activity = Arc::new(Activity::new());
        let service = WithPeer {
            inner: self.service.clone(),
            peer,
            activity: activity.clone(),
        };
        let pinged_out = Arc::new(AtomicBool::new(false));
        let io = pings::PingPolice::new(io, self.limits.keepalive_min_time, pinged_out.clone());
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let age = tokio::time::sleep(jittered(self.limits.max_connection_age, addr));
        tokio::pin!(age);
        let idle = self.limits.idle_timeout;
        let tick = idle.min(self.limits.header_read_timeout) / 4;
        let mut check = tokio::time::interval(tick.max(Duration::from_millis(100)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if pinged_out.load(Ordering::Relaxed) {
                        self.metrics
                            .listener_closed_connections
                            .at((Named(self.name), ConnectionEnd::TooManyPings))
                            .inc();
                        tracing::debug!(listener = self.name, %addr, "closed: too many pings");
                    } else if let Err(e) = ended {
                        tracing::debug!(listener = self.name, %addr, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => break None,
                _ = &mut age => break Some(ConnectionEnd::MaxAge),
                _ = check.tick() => {
                    // A connection must start a request soon after it opens (slow or absent
                    // headers), and is idle when none is in flight, whatever pings it answers.
                    if !activity.started() && activity.since_start() >= self.limits.header_read_timeout {
                        break Some(ConnectionEnd::NoRequest);
                    }
                    if !idle.is_zero() && activity.in_flight() == 0 && activity.quiet_for() >= idle {
                        break Some(ConnectionEnd::Idle);
                    }
                },
            }
        };
        let grace = match reason {
            Some(reason) => {
                self.metrics
                    .listener_closed_connections
                    .at((Named(self.name), reason))
                    .inc();
                match reason {
                    // Nothing in flight: nothing to wait for but the client's goodbye.
                    ConnectionEnd::NoRequest => Duration::ZERO,
                    ConnectionEnd::Idle => IDLE_GRACE,
                    _ => self.limits.max_connection_age_grace,
                }
            }
            None => SHUTDOWN_GRACE.min(self.limits.max_connection_age_grace),
        };
        if grace.is_zero() {
            return;
        }
        conn.as_mut().graceful_shutdown();
        // A shutdown during an age or idle grace period shortens it to the shutdown's.
        let finished = tokio::select! {
            done = tokio::time::timeout(grace, conn.as_mut()) => done.is_ok(),
            _ = stop.cancelled(), if reason.is_some() => {
                tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.is_ok()
            }
        };
        if !finished {
            tracing::debug!(listener = self.name, %addr, "calls still open after the grace period, closed");
        }
    }
}

/// The inner service, called with the caller's [`Peer`] in the request's extensions, each call
/// counted as in flight until its response body ends.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Peer,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for WithPeer<S>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone,
{
    type Response = http::Response<Counted<B>>;
    type Error = Infallible;
    type Future = CountedCall<tower::util::Oneshot<S, http::Request<Incoming>>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        // The address as axum names it, for routers that know no other.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer.addr));
        CountedCall {
            call: Box::pin(tower::util::Oneshot::new(self.inner.clone(), req)),
            guard: Some(InFlight::begin(&self.activity)),
        }
    }
}

/// A connection's requests: how many are in flight, and when the last one ended (read only while
/// none is in flight, so the clock is read once per busy spell, not twice per request).
struct Activity {
    start: tokio::time::Instant,
    in_flight: AtomicUsize,
    started: AtomicBool,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn since_start(&self) -> Duration {
        self.start.elapsed()
    }

    /// Time since the connection's last request ended (or since it opened).
    fn quiet_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One request in flight, until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        if !activity.started() {
            activity.started.store(true, Ordering::Relaxed);
        }
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.touch();
        }
    }
}

/// A call whose response body carries its [`InFlight`] on.
pub struct CountedCall<F> {
    call: Pin<Box<F>>,
    guard: Option<InFlight>,
}

impl<F, B> std::future::Future for CountedCall<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, Infallible>>,
{
    type Output = Result<http::Response<Counted<B>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.call.as_mut().poll(cx) {
            Poll::Ready(Ok(resp)) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(resp.map(|body| Counted {
                    body: Box::pin(body),
                    _guard: guard,
                })))
            }
            Poll::Ready(Err(e)) => match e {},
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that keeps its request counted in flight until it ends (a health Watch, a
/// long download).
pub struct Counted<B> {
    body: Pin<Box<B>>,
    _guard: Option<InFlight>,
}

impl<B: hyper::body::Body> hyper::body::Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's maximum age, spread by up to ±10% (by its address) so that connections opened
/// together are not all asked to reconnect at once; zero: practically never.
fn jittered(age: Duration, addr: SocketAddr) -> Duration {
    if age.is_zero() {
        return Duration::from_secs(100 * 365 * 86_400);
    }
    let h = (u64::from(addr.port()) ^ u64::from(addr.ip().to_canonical().is_loopback()))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 59; // 0..=31
    let percent = 90 + (h * 20 / 31);
    age * percent as u32 / 100
}
