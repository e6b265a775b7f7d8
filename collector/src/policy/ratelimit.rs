//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, answered as
//! envoyproxy/ratelimit answers: `overall_code`, and per descriptor its code, the limit that
//! applied, what remains and when the window resets, from which Envoy writes the
//! `x-ratelimit-*` headers itself.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit, Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use meshlens_policy::ratelimit::{self as rl, RateLimitDecision};
use meshlens_policy::Unit;
use tonic::{Request, Response, Status};

use super::PolicyServer;
use crate::metrics::{Decision, PolicyApi};

pub(super) const API: PolicyApi = PolicyApi::Ratelimit;
/// Every decision a call ends in (the `decision` label).
pub(super) const DECISIONS: &[Decision] = &[Decision::Ok, Decision::OverLimit, Decision::Invalid];

pub struct RlsService {
    pub(super) server: Arc<PolicyServer>,
}

impl RlsService {
    /// The service alone, to call in process (tests, `policy_bench`).
    pub fn new(server: Arc<PolicyServer>) -> Self {
        RlsService { server }
    }

    pub fn server(server: Arc<PolicyServer>) -> RateLimitServiceServer<RlsService> {
        RateLimitServiceServer::new(RlsService::new(server))
    }
}

/// `envoy.type.v3.RateLimitUnit` (a request's limit override).
fn unit_of_request(v: i32) -> Option<Unit> {
    Some(match v {
        1 => Unit::Second,
        2 => Unit::Minute,
        3 => Unit::Hour,
        4 => Unit::Day,
        5 => Unit::Month,
        6 => Unit::Year,
        7 => Unit::Week,
        _ => return None,
    })
}

/// `RateLimitResponse.RateLimit.Unit`.
fn unit_of_response(u: Unit) -> rate_limit::Unit {
    match u {
        Unit::Second => rate_limit::Unit::Second,
        Unit::Minute => rate_limit::Unit::Minute,
        Unit::Hour => rate_limit::Unit::Hour,
        Unit::Day => rate_limit::Unit::Day,
        Unit::Week => rate_limit::Unit::Week,
        Unit::Month => rate_limit::Unit::Month,
        Unit::Year => rate_limit::Unit::Year,
    }
}

/// Envoy's request as the engine's; malformed ones are refused with the reason.
pub fn request(req: RateLimitRequest) -> Result<rl::RateLimitRequest, Status> {
    let mut descriptors = Vec::with_capacity(req.descriptors.len());
    for d in req.descriptors {
        let limit_override = match d.limit {
            None => None,
            Some(l) => Some((
                l.requests_per_unit,
                unit_of_request(l.unit).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "descriptor limit override has an unknown unit ({})",
                        l.unit
                    ))
                })?,
            )),
        };
        descriptors.push(rl::RequestDescriptor {
            entries: d.entries.into_iter().map(|e| (e.key, e.value)).collect(),
            limit_override,
            hits_addend: d.hits_addend.map(|h| h.value),
        });
    }
    let out = rl::RateLimitRequest {
        domain: req.domain,
        descriptors,
        hits_addend: req.hits_addend,
    };
    out.validate().map_err(Status::invalid_argument)?;
    Ok(out)
}

pub fn response(d: &RateLimitDecision) -> RateLimitResponse {
    let code = |over: bool| if over { Code::OverLimit } else { Code::Ok } as i32;
    RateLimitResponse {
        overall_code: code(d.over_limit),
        statuses: d
            .statuses
            .iter()
            .map(|s| {
                let current = s.limit.as_ref().filter(|l| !l.unlimited);
                DescriptorStatus {
                    code: code(s.over_limit),
                    current_limit: current.map(|l| RateLimit {
                        name: l.name.clone().unwrap_or_default(),
                        requests_per_unit: l.rate.requests_per_unit,
                        unit: unit_of_response(l.rate.unit) as i32,
                    }),
                    limit_remaining: s.remaining,
                    duration_until_reset: current.map(|_| PbDuration {
                        seconds: s.reset_ms.div_ceil(1000) as i64,
                        nanos: 0,
                    }),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RateLimitService for RlsService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let started = Instant::now();
        let s = &self.server;
        let budget = super::budget(request.metadata());
        let req = match self::request(request.into_inner()) {
            Ok(r) => r,
            Err(status) => {
                s.finish(&s.ratelimit_metrics, Decision::Invalid, started);
                return Err(status);
            }
        };
        let outcome = s.engine.rate_limit_within(&req, budget).await;
        if let Some(e) = &outcome.backend_error {
            s.backend_error(e);
        }
        let d = &outcome.decision;
        for (status, desc) in d.statuses.iter().zip(&req.descriptors) {
            let Some(limit) = status.limit.as_ref().filter(|l| !l.unlimited) else {
                continue;
            };
            let key = limit.metric_key(&req.domain, &desc.entries);
            let global_shadow = s.engine.settings().shadow_mode;
            let outcome = if status.over_limit && !global_shadow {
                s.denial(API, &key);
                "over"
            } else {
                // Not refused: any hits over the limit were let through by shadow mode (the
                // limit's or the service's).
                "shadow_over"
            };
            s.quota_hits(&key, status.hits, outcome);
            if status.cached {
                s.local_over_answer(API);
            }
        }
        if d.over_limit && d.statuses.iter().any(|s| s.over_limit && s.limit.is_some()) {
            // Refused (not let through by shadow mode), by a limit (not a failing backend): one
            // refused request between the services Envoy's `source_cluster` and
            // `destination_cluster` actions name, in whichever descriptors carry them.
            let entry = |k: &str| {
                req.entry(k)
                    .map(meshlens_topology::graph::service_of_cluster)
            };
            let (source, destination) = (entry("source_cluster"), entry("destination_cluster"));
            s.refused(source.as_deref(), destination.as_deref(), true);
        }
        let resp = response(d);
        s.finish(
            &s.ratelimit_metrics,
            if d.over_limit {
                Decision::OverLimit
            } else {
                Decision::Ok
            },
            started,
        );
        Ok(Response::new(resp))
    }
}
