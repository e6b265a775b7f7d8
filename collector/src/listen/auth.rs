//! Ingest credentials: the bearer token OpenTelemetry exporters send (`authorization: Bearer
//! TOKEN`, an HTTP header or gRPC metadata), checked before a request takes a receiver's permit
//! or is read. Without a valid one: 401 (OTLP/HTTP as a `google.rpc.Status`, Zipkin and remote
//! write as text) or gRPC UNAUTHENTICATED. A token may name a tenant; it is put in the request's
//! extensions as [`Tenant`] and kept on the spans the request brings.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshlens_policy::credentials::TokenFile;
use tower::ServiceExt;

use crate::error::{refuse, IngestError};
use crate::Metrics;

/// The tenant an ingest token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

/// Ingest tokens: `TOKEN [TENANT]` lines.
pub type IngestTokens = TokenFile<Option<Arc<str>>>;

/// Reads a line's tenant: letters, digits, `.`, `_` and `-`, at most 64.
pub fn parse_tenant(field: Option<&str>) -> Result<Option<Arc<str>>, String> {
    match field {
        None => Ok(None),
        Some(t)
            if t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Ok(Some(t.into()))
        }
        Some(_) => Err("a tenant is at most 64 letters, digits, '.', '_' or '-'".to_string()),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header, if there is one.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Requires an ingest token on every request of the service it wraps.
#[derive(Clone)]
pub struct IngestAuthLayer {
    tokens: Arc<IngestTokens>,
    metrics: Metrics,
}

impl IngestAuthLayer {
    pub fn new(tokens: Arc<IngestTokens>, metrics: Metrics) -> Self {
        IngestAuthLayer { tokens, metrics }
    }
}

impl<S> tower::Layer<S> for IngestAuthLayer {
    type Service = IngestAuth<S>;
    fn layer(&self, inner: S) -> IngestAuth<S> {
        IngestAuth {
            inner,
            auth: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct IngestAuth<S> {
    inner: S,
    auth: IngestAuthLayer,
}

type BoxResponse =
    Pin<Box<dyn Future<Output = Result<axum::response::Response, Infallible>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for IngestAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxResponse;

    /// Always ready: the inner service (and its permits) is asked only once the caller is known.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> BoxResponse {
        let checked = bearer(req.headers()).map(|t| self.auth.tokens.check(t));
        let refusal = match checked {
            Some(Some((_, tenant))) => {
                if let Some(t) = tenant {
                    req.extensions_mut().insert(Tenant(t));
                }
                let inner = self.inner.clone();
                return Box::pin(async move {
                    let resp = inner.oneshot(req).await?;
                    Ok(resp.map(axum::body::Body::new))
                });
            }
            Some(None) => "the bearer token is not valid",
            None => "a bearer token is required (authorization: Bearer TOKEN)",
        };
        let resp = refuse(
            &req,
            IngestError::Unauthenticated(refusal),
            &self.auth.metrics,
        );
        Box::pin(std::future::ready(Ok(resp)))
    }
}
