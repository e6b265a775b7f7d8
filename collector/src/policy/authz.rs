//! `envoy.service.auth.v3.Authorization/Check`: Envoy's `AttributeContext` in, an OK or denied
//! `CheckResponse` out. A denial is 403 with the reason as body; an exhausted quota is 429
//! with `x-ratelimit-*` and `retry-after` (a bare non-OK status would become 403 in Envoy); a
//! quota store that cannot answer, when failing closed, is 503 with `retry-after`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{address, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    attribute_context, check_response, CheckRequest, CheckResponse, DeniedHttpResponse,
    OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshlens_policy::authz::{spiffe_namespace, AuthzDecision, CheckAttributes, Verdict};
use tonic::{Request, Response, Status};

use super::{ratelimit_headers, PolicyServer};
use crate::metrics::{Decision, PolicyApi};

pub(super) const API: PolicyApi = PolicyApi::ExtAuthz;
/// Every decision a check ends in (the `decision` label).
pub(super) const DECISIONS: &[Decision] = &[
    Decision::Allow,
    Decision::Deny,
    Decision::RateLimited,
    Decision::Unavailable,
    Decision::Invalid,
];
/// google.rpc codes.
const PERMISSION_DENIED: i32 = 7;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAVAILABLE: i32 = 14;
/// Longest header value or path kept from a request; policies match on prefixes of these.
const MAX_VALUE: usize = 8 * 1024;
/// Most headers a check may carry (Envoy's default `max_request_headers_count` is 100).
pub const MAX_HEADERS: usize = 1024;
/// Most bytes of header names and values a check may carry (Envoy's default
/// `max_request_headers_kb` is 60 KiB; it can be raised to 8 MiB, past which no real request
/// goes through a mesh).
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// Longest service name or principal: they become graph names and policy keys (a DNS name is at
/// most 253 bytes).
pub const MAX_NAME_BYTES: usize = 256;

/// Refuses a check past the bounds above (INVALID_ARGUMENT): a request from a buggy or hostile
/// client is not matched, hashed or counted.
pub fn bounds(req: &CheckRequest) -> Result<(), String> {
    let Some(a) = req.attributes.as_ref() else {
        return Ok(());
    };
    let names = a
        .source
        .iter()
        .flat_map(|p| [&p.service, &p.principal])
        .chain(a.destination.iter().map(|p| &p.service))
        .chain(
            a.context_extensions
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "source_namespace" | "destination" | "destination_service"
                    )
                })
                .map(|(_, v)| v),
        )
        .chain(a.destination.iter().flat_map(|d| {
            ["app", "service"]
                .into_iter()
                .filter_map(|k| d.labels.get(k))
        }));
    for name in names {
        if name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "a service name or principal is over {MAX_NAME_BYTES} bytes"
            ));
        }
    }
    let Some(http) = a.request.as_ref().and_then(|r| r.http.as_ref()) else {
        return Ok(());
    };
    let raw = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
    let count = http.headers.len() + raw.len();
    if count > MAX_HEADERS {
        return Err(format!("{count} headers: at most {MAX_HEADERS} are taken"));
    }
    let bytes: usize = http
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        + raw
            .iter()
            .map(|h| h.key.len() + h.value.len() + h.raw_value.len())
            .sum::<usize>();
    if bytes > MAX_HEADER_BYTES {
        return Err(format!(
            "{bytes} bytes of headers: at most {MAX_HEADER_BYTES} are taken"
        ));
    }
    Ok(())
}

pub struct AuthzService {
    pub(super) server: Arc<PolicyServer>,
}

impl AuthzService {
    /// The service alone, to call in process (tests, `policy_bench`).
    pub fn new(server: Arc<PolicyServer>) -> Self {
        AuthzService { server }
    }

    pub fn server(server: Arc<PolicyServer>) -> AuthorizationServer<AuthzService> {
        AuthorizationServer::new(AuthzService::new(server))
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn peer_ip(peer: &attribute_context::Peer) -> Option<IpAddr> {
    match peer.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The call as the policy engine sees it. The destination is the route's
/// `context_extensions` (`destination` or `destination_service`), else the destination's
/// `app` or `service` label, else `destination.service`. The request's strings are taken, not
/// copied (a check is on every proxied request's path); what is left of it is freed by the
/// caller, after the decision.
pub fn attributes(req: &mut CheckRequest) -> CheckAttributes {
    let Some(a) = req.attributes.as_mut() else {
        return CheckAttributes::default();
    };
    let take = std::mem::take::<String>;
    let mut out = CheckAttributes::default();
    if let Some(src) = a.source.as_mut() {
        out.source_ip = peer_ip(src);
        out.source_service = non_empty(take(&mut src.service));
        out.source_principal = non_empty(take(&mut src.principal));
    }
    // One pass over the route's extensions (no hashing of the names looked for).
    let (mut namespace, mut destination, mut destination_service) = (None, None, None);
    for (k, v) in a.context_extensions.iter_mut() {
        let slot = match k.as_str() {
            "source_namespace" => &mut namespace,
            "destination" => &mut destination,
            "destination_service" => &mut destination_service,
            _ => continue,
        };
        *slot = non_empty(take(v));
    }
    out.source_namespace = namespace.or_else(|| {
        out.source_principal
            .as_deref()
            .and_then(spiffe_namespace)
            .map(str::to_string)
    });
    out.destination = destination.or(destination_service).or_else(|| {
        let d = a.destination.as_mut()?;
        ["app", "service"]
            .into_iter()
            .find_map(|k| d.labels.get_mut(k).map(take))
            .and_then(non_empty)
            .or_else(|| non_empty(take(&mut d.service)))
    });
    if let Some(http) = a.request.as_mut().and_then(|r| r.http.as_mut()) {
        out.method = take(&mut http.method);
        out.host = cut(take(&mut http.host));
        let mut path = take(&mut http.path);
        if let Some(end) = path.find(['?', '#']) {
            path.truncate(end);
        }
        out.path = cut(path);
        out.headers = http
            .headers
            .drain()
            .map(|(mut k, v)| {
                k.make_ascii_lowercase();
                (k, cut(v))
            })
            .collect();
        // With `encode_raw_headers`, headers come as a map of raw values instead.
        if let Some(map) = http.header_map.as_mut() {
            out.headers.extend(map.headers.drain(..).map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value
                } else {
                    String::from_utf8(h.raw_value)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
                };
                let mut k = h.key;
                k.make_ascii_lowercase();
                (k, cut(v))
            }));
        }
        if out.source_service.is_none() {
            out.source_service = out
                .header("x-envoy-downstream-service-cluster")
                .filter(|v| !v.is_empty())
                .map(str::to_string);
        }
    }
    out
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn denied(code: i32, http: u16, message: String, headers: Vec<HeaderValueOption>) -> CheckResponse {
    CheckResponse {
        status: Some(RpcStatus {
            code,
            message: message.clone(),
            details: Vec::new(),
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus { code: http.into() }),
                headers,
                body: message,
            },
        )),
        ..Default::default()
    }
}

/// The response Envoy needs for a decision.
pub fn response(d: &AuthzDecision) -> CheckResponse {
    match &d.verdict {
        Verdict::Allow { headers, .. } => {
            // The tightest quota, if any, is reported to the client.
            let tightest = d
                .quotas
                .iter()
                .min_by_key(|(_, _, u)| u.remaining)
                .map(|(_, rate, u)| ratelimit_headers(*rate, u));
            CheckResponse {
                status: Some(RpcStatus::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
                    response_headers_to_add: tightest
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| header(k, v))
                        .collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }
        }
        Verdict::Deny { reason, .. } => denied(PERMISSION_DENIED, 403, reason.clone(), Vec::new()),
        // Fail closed, but as a retryable answer: the request may pass once quotas count again.
        Verdict::Unavailable { reason } => denied(
            UNAVAILABLE,
            503,
            reason.clone(),
            vec![header("retry-after", "1")],
        ),
        Verdict::RateLimited { quota, rate, usage } => {
            let mut headers: Vec<_> = ratelimit_headers(*rate, usage)
                .into_iter()
                .map(|(k, v)| header(k, v))
                .collect();
            headers.push(header(
                "retry-after",
                usage.reset_ms.div_ceil(1000).max(1).to_string(),
            ));
            denied(
                RESOURCE_EXHAUSTED,
                429,
                format!("rate limited by quota {quota}"),
                headers,
            )
        }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let s = &self.server;
        let budget = super::budget(request.metadata());
        let mut request = request.into_inner();
        if let Err(e) = bounds(&request) {
            s.finish(&s.authz_metrics, Decision::Invalid, started);
            return Err(Status::invalid_argument(e));
        }
        let attrs = attributes(&mut request);
        let outcome = s.engine.authorize_within(&attrs, budget).await;
        if let Some(e) = &outcome.backend_error {
            s.backend_error(e);
        }
        let d = &outcome.decision;
        for (name, rate, usage) in &d.quotas {
            s.quota_hits(name, usage.split(1, rate.requests_per_unit), "over");
            if usage.cached {
                s.local_over_answer(API);
            }
        }
        for rule in &d.audited {
            s.metrics.policy_audits.with_label_values(&[rule]).inc();
        }
        let decision = match &d.verdict {
            Verdict::Allow { .. } => Decision::Allow,
            Verdict::Deny { rule, reason } => {
                s.denial(API, rule.as_deref().unwrap_or(reason));
                s.refused(
                    attrs.source_service.as_deref(),
                    attrs.destination.as_deref(),
                    false,
                );
                Decision::Deny
            }
            Verdict::RateLimited { quota, .. } => {
                s.denial(API, quota);
                s.refused(
                    attrs.source_service.as_deref(),
                    attrs.destination.as_deref(),
                    true,
                );
                Decision::RateLimited
            }
            Verdict::Unavailable { .. } => Decision::Unavailable,
        };
        let resp = response(d);
        s.finish(&s.authz_metrics, decision, started);
        Ok(Response::new(resp))
    }
}
