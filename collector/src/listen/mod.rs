//! Every port is served the same way: bind, TLS (optional, re-read when its files change),
//! connection limits, the caller's address and certificate identity on each request, and
//! graceful shutdown. The HTTP listeners (OTLP/HTTP with remote write, Zipkin, web) offer
//! HTTP/1.1 and HTTP/2; the gRPC ones (OTLP/gRPC, policy) HTTP/2 alone.
//!
//! A connection costs the server nothing it has not bounded:
//! - at most [`ConnectionLimits::max_connections`] are open per listener; more are closed at
//!   once (counted), so a flood of idle sockets cannot take the descriptors a real client needs;
//! - the TLS handshake and an HTTP/1 request's headers must arrive within their timeouts, wherever
//!   the client is, so a slow client cannot hold a connection open with a trickle of bytes;
//! - a connection that has read and written nothing for the idle timeout is closed;
//! - a connection older than the maximum age is asked to finish (GOAWAY) and closed after a grace
//!   period, so clients reconnect and spread over replicas;
//! - HTTP/2 streams per connection are capped, and the server pings an idle peer.
//!
//! Handshakes run on the connection's own task: a slow one never holds up `accept`.

pub mod auth;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use tls::{Alpn, ClientIdentity, TlsSettings, TlsSource, TlsVersion};

use crate::Metrics;

/// How long calls in flight may take to end once shutdown starts (a health Watch never ends on
/// its own).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
        metrics
            .listener_open_connections
            .with_label_values(&[name])
            .set(0);
        for reason in ["limit", "tls", "handshake_timeout"] {
            metrics
                .listener_refused_connections
                .with_label_values(&[name, reason])
                .inc_by(0);
        }
        for reason in ["idle", "max_age"] {
            metrics
                .listener_closed_connections
                .with_label_values(&[name, reason])
                .inc_by(0);
        }
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
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
                shared.refused("limit");
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
                    .with_label_values(&[shared.name]);
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
    fn refused(&self, reason: &str) {
        self.metrics
            .listener_refused_connections
            .with_label_values(&[self.name, reason])
            .inc();
    }

    async fn connection<B>(&self, tcp: TcpStream, addr: SocketAddr, stop: CancellationToken)
    where
        S: tower::Service<
                http::Request<Incoming>,
                Response = http::Response<B>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (io, identity) = match &self.tls {
            None => (Either::Left(tcp), None),
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                match tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| ClientIdentity::from_cert(cert))
                            .map(Arc::new);
                        (Either::Right(stream), identity)
                    }
                    Ok(Err(e)) => {
                        self.refused("tls");
                        tracing::debug!(listener = self.name, %addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        self.refused("handshake_timeout");
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
        let io = Tracked {
            io,
            activity: activity.clone(),
        };
        let service = WithPeer {
            inner: self.service.clone(),
            peer,
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let age = self.limits.max_connection_age;
        let age = tokio::time::sleep(if age.is_zero() {
            Duration::from_secs(100 * 365 * 86_400)
        } else {
            age
        });
        tokio::pin!(age);
        let idle = self.limits.idle_timeout;
        let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(listener = self.name, %addr, error = %e, "connection ended");
                    }
                    return;
                }
                _ = stop.cancelled() => break None,
                _ = &mut age => break Some("max_age"),
                _ = check.tick() => if !idle.is_zero() && activity.idle_for() >= idle {
                    break Some("idle");
                },
            }
        };
        let grace = match reason {
            Some(reason) => {
                self.metrics
                    .listener_closed_connections
                    .with_label_values(&[self.name, reason])
                    .inc();
                self.limits.max_connection_age_grace
            }
            None => SHUTDOWN_GRACE.min(self.limits.max_connection_age_grace),
        };
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(grace, conn).await.is_err() {
            tracing::debug!(listener = self.name, %addr, "calls still open after the grace period, closed");
        }
    }
}

/// The inner service, called with the caller's [`Peer`] in the request's extensions.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: Peer,
}

impl<S, B> hyper::service::Service<http::Request<Incoming>> for WithPeer<S>
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone,
{
    type Response = http::Response<B>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<S, http::Request<Incoming>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        // The address as axum names it, for routers that know no other.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer.addr));
        tower::util::Oneshot::new(self.inner.clone(), req)
    }
}

/// When a connection last read or wrote, in milliseconds since it began.
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection's stream, noting each read or write that moved bytes.
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
