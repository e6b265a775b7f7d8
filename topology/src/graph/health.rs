//! Health of a node or edge from its error ratios, with Kiali's default thresholds.

use crate::graph::window::Counts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// No calls in the window.
    Idle,
    Healthy,
    Degraded,
    Failure,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Idle => "idle",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Failure => "failure",
        }
    }
}

/// Percentages at which a share of calls makes health degraded or failing. A degraded threshold
/// of 0 means "any at all".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub degraded_pct: f64,
    pub failure_pct: f64,
}

impl Threshold {
    fn judge(&self, part: u64, whole: u64) -> Health {
        let pct = 100.0 * part as f64 / whole as f64;
        if part > 0 && pct >= self.failure_pct {
            Health::Failure
        } else if part > 0 && pct >= self.degraded_pct {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }
}

/// Thresholds per class of error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Server errors: HTTP 5xx and calls failed with no HTTP or gRPC code (status ERROR).
    pub server_errors: Threshold,
    pub http_4xx: Threshold,
    pub grpc_errors: Threshold,
}

impl Default for HealthConfig {
    /// Kiali's defaults: 5xx degraded above 0%, failure at 10%; 4xx degraded at 10%, failure at
    /// 20%; gRPC non-OK degraded above 0%, failure at 10%.
    fn default() -> Self {
        HealthConfig {
            server_errors: Threshold {
                degraded_pct: 0.0,
                failure_pct: 10.0,
            },
            http_4xx: Threshold {
                degraded_pct: 10.0,
                failure_pct: 20.0,
            },
            grpc_errors: Threshold {
                degraded_pct: 0.0,
                failure_pct: 10.0,
            },
        }
    }
}

impl HealthConfig {
    pub fn judge(&self, c: &Counts) -> Health {
        let Counts {
            requests,
            failures,
            http_4xx,
            grpc_errors,
            ..
        } = *c;
        if requests == 0 {
            // A TCP edge has no requests; bytes or connections in the window are traffic (Kiali
            // has no error rate for TCP either).
            let tcp = [
                c.tcp_sent_bytes,
                c.tcp_received_bytes,
                c.tcp_opened,
                c.tcp_closed,
            ];
            return if tcp.iter().any(|n| *n > 0) {
                Health::Healthy
            } else {
                Health::Idle
            };
        }
        let server_errors = failures.saturating_sub(grpc_errors);
        [
            self.server_errors.judge(server_errors, requests),
            self.http_4xx.judge(http_4xx, requests),
            self.grpc_errors.judge(grpc_errors, requests),
        ]
        .into_iter()
        .max()
        .unwrap_or(Health::Healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(requests: u64, failures: u64, http_4xx: u64, grpc_errors: u64) -> Counts {
        Counts {
            requests,
            failures,
            http_4xx,
            grpc_errors,
            ..Counts::default()
        }
    }

    #[test]
    fn kiali_defaults() {
        let h = HealthConfig::default();
        assert_eq!(h.judge(&stats(0, 0, 0, 0)), Health::Idle);
        let tcp = Counts {
            tcp_received_bytes: 10,
            ..Counts::default()
        };
        assert_eq!(h.judge(&tcp), Health::Healthy, "TCP traffic is not idle");
        let huge = Counts {
            tcp_sent_bytes: u64::MAX,
            tcp_received_bytes: u64::MAX,
            ..Counts::default()
        };
        assert_eq!(h.judge(&huge), Health::Healthy, "no overflow");
        assert_eq!(h.judge(&stats(100, 0, 0, 0)), Health::Healthy);
        assert_eq!(h.judge(&stats(1000, 1, 0, 0)), Health::Degraded);
        assert_eq!(h.judge(&stats(100, 9, 0, 0)), Health::Degraded);
        assert_eq!(h.judge(&stats(100, 10, 0, 0)), Health::Failure);
        assert_eq!(h.judge(&stats(100, 0, 9, 0)), Health::Healthy);
        assert_eq!(h.judge(&stats(100, 0, 10, 0)), Health::Degraded);
        assert_eq!(h.judge(&stats(100, 0, 20, 0)), Health::Failure);
        assert_eq!(h.judge(&stats(100, 10, 0, 10)), Health::Failure);
        assert_eq!(h.judge(&stats(100, 5, 0, 5)), Health::Degraded);
    }
}
