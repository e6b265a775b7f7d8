//! Prometheus series (remote write's `TimeSeries`, a scrape's samples) to the metric point model:
//! one batch per scrape target (`job`, `instance`), whose identity comes from the target labels
//! Istio's and the usual Kubernetes scrape configs keep (`service_istio_io_canonical_name`,
//! `app`, `version`, `namespace`, `pod`). Classic histogram buckets (`<name>_bucket{le}`) become
//! bucket points of `<name>`. Envoy's own Prometheus stats (`envoy_cluster_…`) are named as its
//! OpenTelemetry stat sink names them, so the graph reads both alike.

use std::collections::HashMap;
use std::sync::Arc;

use crate::attr::Attributes;
use crate::graph::reads_metric;
use crate::metric::{MetricBatch, MetricPoint, PointValue};
use crate::resource::Resource;

/// One series: its labels (`__name__` among them) and samples in time order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromSeries {
    pub labels: Vec<(String, String)>,
    pub samples: Vec<PromSample>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromSample {
    pub value: f64,
    /// Milliseconds since the epoch, as Prometheus keeps them.
    pub timestamp_ms: i64,
}

/// Why a series' samples were refused (the bounded `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesProblem {
    NoName,
    DuplicateLabel,
    BadBucketBound,
    BadTimestamp,
}

impl SeriesProblem {
    pub const ALL: [SeriesProblem; 4] = [
        SeriesProblem::NoName,
        SeriesProblem::DuplicateLabel,
        SeriesProblem::BadBucketBound,
        SeriesProblem::BadTimestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SeriesProblem::NoName => "no_name",
            SeriesProblem::DuplicateLabel => "duplicate_label",
            SeriesProblem::BadBucketBound => "bad_bucket_bound",
            SeriesProblem::BadTimestamp => "bad_timestamp",
        }
    }
}

impl std::fmt::Display for SeriesProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SeriesProblem::NoName => "a series without a __name__ label",
            SeriesProblem::DuplicateLabel => "a series with a label name twice",
            SeriesProblem::BadBucketBound => "a _bucket series whose le is not a number",
            SeriesProblem::BadTimestamp => "a sample with a negative timestamp",
        })
    }
}

/// The batches of some series, and an account of what was in them.
#[derive(Debug, Default)]
pub struct FromSeries {
    pub batches: Vec<MetricBatch>,
    /// Series and samples received; of the samples, staleness markers (NaN) among them.
    pub series: u64,
    pub samples: u64,
    pub stale: u64,
    /// Samples of series the graph does not read, left aside unconverted.
    pub unread: u64,
    /// Samples refused, by problem, and the first problem with its place.
    pub rejected: Vec<(SeriesProblem, u64)>,
    pub first_problem: Option<String>,
    /// For series converted with ids (`batches_from_keyed`): each batch's points' series ids,
    /// and the ids of the series the graph does not read.
    pub ids: Vec<Vec<u128>>,
    pub unread_ids: Vec<u128>,
}

impl FromSeries {
    pub fn rejected_samples(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    fn reject(&mut self, problem: SeriesProblem, n: u64, at: usize) {
        match self.rejected.iter_mut().find(|(p, _)| *p == problem) {
            Some((_, count)) => *count += n,
            None => self.rejected.push((problem, n)),
        }
        if self.first_problem.is_none() {
            self.first_problem = Some(format!("timeseries[{at}]: {problem}"));
        }
    }
}

/// Target labels that name the proxy (the resource), first match wins.
const SERVICE: &[&str] = &[
    "service_istio_io_canonical_name",
    "app_kubernetes_io_name",
    "app",
    "job",
];
const VERSION: &[&str] = &[
    "service_istio_io_canonical_revision",
    "app_kubernetes_io_version",
    "version",
];
const NAMESPACE: &[&str] = &["namespace", "kubernetes_namespace", "k8s_namespace"];
const INSTANCE: &[&str] = &["pod", "kubernetes_pod_name", "pod_name", "instance"];

/// The workload a scrape target's labels name, `(namespace, name)`, when a series carries them.
pub(crate) fn scrape_target(a: &Attributes) -> Option<(Option<&str>, &str)> {
    let first = |keys: &[&str]| {
        keys.iter()
            .filter_map(|k| a.get_str(k))
            .find(|v| !v.is_empty() && *v != "unknown")
    };
    // `job` names the scrape job, not the workload.
    let name = first(&SERVICE[..SERVICE.len() - 1])?;
    Some((first(NAMESPACE), name))
}

/// Converts series to one batch per scrape target. Each series is checked alone: a bad one is
/// refused and counted, and the rest go on.
pub fn batches_from_series(series: impl IntoIterator<Item = PromSeries>) -> FromSeries {
    batches_from_indexed(series.into_iter().enumerate())
}

/// The same, for series that come with their places in the request (a receiver that left some
/// aside), which problems are reported at.
pub fn batches_from_indexed(series: impl IntoIterator<Item = (usize, PromSeries)>) -> FromSeries {
    convert(series.into_iter().map(|(i, s)| (i, None, s)))
}

/// The same, for series named by an id (a receiver's hash of their labels as they came): the
/// batches' points come with their series' ids (`FromSeries::ids`), so that the graph can count
/// the series' later samples by id alone.
pub fn batches_from_keyed(
    series: impl IntoIterator<Item = (usize, u128, PromSeries)>,
) -> FromSeries {
    convert(series.into_iter().map(|(i, id, s)| (i, Some(id), s)))
}

/// Whether a series is one conversion takes: a name, no label twice, no negative timestamp, and
/// a number for a bucket's `le`. Receivers that count known series by id check new ones with it.
pub fn check_series(s: &PromSeries) -> Result<(), SeriesProblem> {
    let label = |k: &str| {
        s.labels
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let Some(name) = label("__name__").filter(|n| !n.is_empty()) else {
        return Err(SeriesProblem::NoName);
    };
    // Prometheus sends labels sorted by name: then no sort is needed to find a repeat.
    let sorted = s.labels.windows(2).all(|w| w[0].0 < w[1].0);
    if !sorted {
        let mut names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(SeriesProblem::DuplicateLabel);
        }
    }
    if s.samples.iter().any(|x| x.timestamp_ms < 0) {
        return Err(SeriesProblem::BadTimestamp);
    }
    if name.ends_with("_bucket") && label("le").is_some_and(|le| parse_le(le).is_none()) {
        return Err(SeriesProblem::BadBucketBound);
    }
    Ok(())
}

fn convert(series: impl Iterator<Item = (usize, Option<u128>, PromSeries)>) -> FromSeries {
    let mut out = FromSeries::default();
    let mut targets: HashMap<(String, String), usize> = HashMap::new();
    for (i, id, s) in series {
        out.series += 1;
        let n = s.samples.len() as u64;
        out.samples += n;
        if let Err(problem) = check_series(&s) {
            out.reject(problem, n, i);
            continue;
        }
        let label = |k: &str| {
            s.labels
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        let name = label("__name__").unwrap_or_default();
        let (name, le) = match name.strip_suffix("_bucket").zip(label("le")) {
            // Checked above: a bucket's bound is a number.
            Some((base, le)) => (base.to_string(), parse_le(le)),
            None => (name.to_string(), None),
        };
        let (name, envoy) = envoy_name(&name);
        if !reads_metric(&name, le.is_some()) {
            out.unread += n;
            out.unread_ids.extend(id);
            continue;
        }
        let target = (
            label("job").unwrap_or("").to_string(),
            label("instance").unwrap_or("").to_string(),
        );
        let batch = *targets.entry(target).or_insert_with(|| {
            out.batches.push(MetricBatch {
                resource: Arc::new(resource_of(&s.labels)),
                points: Vec::with_capacity(256),
            });
            if id.is_some() {
                out.ids.push(Vec::with_capacity(256));
            }
            out.batches.len() - 1
        });
        let mut attributes = Attributes(Vec::with_capacity(s.labels.len()));
        for (k, v) in s.labels {
            if k == "__name__" || (le.is_some() && k == "le") {
                continue;
            }
            let key = match (envoy, k.as_str()) {
                (true, "envoy_cluster_name") => "envoy.cluster_name".to_string(),
                (true, "envoy_response_code_class") => "envoy.response_code_class".to_string(),
                _ => k,
            };
            attributes.push(key, v);
        }
        let last = s.samples.len().saturating_sub(1);
        for (j, sample) in s.samples.iter().enumerate() {
            if sample.value.is_nan() {
                out.stale += 1;
            }
            let value = match le {
                Some(le) => PointValue::Bucket {
                    le,
                    value: sample.value,
                },
                None => PointValue::Sum {
                    value: sample.value,
                    monotonic: true,
                    delta: false,
                },
            };
            // The last sample (most often the only one) takes the attributes themselves.
            let attributes = if j == last {
                std::mem::take(&mut attributes)
            } else {
                attributes.clone()
            };
            out.batches[batch].points.push(MetricPoint {
                name: name.clone(),
                attributes,
                value,
                time_ns: (sample.timestamp_ms as u64).saturating_mul(1_000_000),
            });
            if let Some(id) = id {
                out.ids[batch].push(id);
            }
        }
    }
    out
}

/// Whether the graph may read a series of this metric name, before its labels are looked at:
/// receivers use it to leave the other series undecoded. (A `_bucket` name is read as a bucket
/// of its histogram, or as itself where it has no `le`; either way counts.)
pub fn series_read(name: &str) -> bool {
    // Without a copy of the name when it is not Envoy's: this runs for every series.
    let read = |n: &str, bucket: bool| match n.starts_with("envoy_cluster_") {
        true => reads_metric(&envoy_name(n).0, bucket),
        false => reads_metric(n, bucket),
    };
    read(name, false)
        || name
            .strip_suffix("_bucket")
            .is_some_and(|base| read(base, true))
}

/// `le` as Prometheus writes it (`0.5`, `1.0`, `1e+06`, `+Inf`).
pub fn parse_le(le: &str) -> Option<f64> {
    let v: f64 = match le.trim() {
        "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
        other => other.parse().ok()?,
    };
    (!v.is_nan() && v >= 0.0).then_some(v)
}

/// The target's identity, from the labels Prometheus keeps for it.
fn resource_of(labels: &[(String, String)]) -> Resource {
    let first = |keys: &[&str]| {
        keys.iter().find_map(|k| {
            labels
                .iter()
                .find(|(name, v)| name == k && !v.is_empty() && v != "unknown")
                .map(|(_, v)| v.as_str())
        })
    };
    let mut a = Attributes::new();
    for (attr, keys) in [
        ("service.name", SERVICE),
        ("service.version", VERSION),
        ("k8s.namespace.name", NAMESPACE),
        ("service.instance.id", INSTANCE),
    ] {
        if let Some(v) = first(keys) {
            a.push(attr, v);
        }
    }
    Resource::new(a)
}

/// Envoy's Prometheus stat names back to its own: `envoy_cluster_upstream_rq_xx` is
/// `cluster.upstream_rq_xx`. A cluster name with dots loses its tail to the metric name
/// (`envoy_cluster_shop_svc_cluster_local_upstream_rq_xx`, as with the stat sink); Kubernetes
/// host names have no underscores, so that tail reads back with dots.
fn envoy_name(name: &str) -> (String, bool) {
    const STATS: &[(&str, &str)] = &[
        ("upstream_rq_xx", "upstream_rq_xx"),
        ("upstream_rq_time", "upstream_rq_time"),
        ("upstream_rq_retry", "upstream_rq_retry"),
        (
            "upstream_rq_pending_overflow",
            "upstream_rq_pending_overflow",
        ),
        ("upstream_rq_retry_overflow", "upstream_rq_retry_overflow"),
        (
            "outlier_detection_ejections_enforced_total",
            "outlier_detection.ejections_enforced_total",
        ),
    ];
    let Some(rest) = name.strip_prefix("envoy_cluster_") else {
        return (name.to_string(), false);
    };
    for (prom, stat) in STATS {
        if rest == *prom {
            return (format!("cluster.{stat}"), true);
        }
        if let Some(middle) = rest.strip_suffix(prom).and_then(|m| m.strip_suffix('_')) {
            return (format!("cluster.{}.{stat}", middle.replace('_', ".")), true);
        }
    }
    (name.to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], samples: &[(f64, i64)]) -> PromSeries {
        PromSeries {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples: samples
                .iter()
                .map(|(value, timestamp_ms)| PromSample {
                    value: *value,
                    timestamp_ms: *timestamp_ms,
                })
                .collect(),
        }
    }

    #[test]
    fn series_group_by_target_and_bad_ones_are_refused_alone() {
        let target = [
            ("job", "kubernetes-pods"),
            ("instance", "10.0.0.1:15020"),
            ("service_istio_io_canonical_name", "reviews"),
            ("service_istio_io_canonical_revision", "v2"),
            ("namespace", "bookinfo"),
            ("pod", "reviews-v2-abc"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut l = target.to_vec();
            l.extend_from_slice(extra);
            l
        };
        let out = batches_from_series([
            series(
                &with(&[("__name__", "istio_requests_total")]),
                &[(5.0, 1000), (f64::NAN, 2000)],
            ),
            series(
                &with(&[
                    ("__name__", "istio_request_duration_milliseconds_bucket"),
                    ("le", "+Inf"),
                ]),
                &[(3.0, 1000)],
            ),
            series(&with(&[]), &[(1.0, 1000)]),
            series(
                &with(&[("__name__", "x_bucket"), ("le", "soon")]),
                &[(1.0, 1000)],
            ),
            series(
                &[("__name__", "up"), ("job", "other"), ("instance", "b")],
                &[(1.0, -5)],
            ),
        ]);
        assert_eq!((out.series, out.samples, out.stale), (5, 6, 1));
        assert_eq!(out.rejected_samples(), 3);
        assert_eq!(
            out.first_problem.as_deref(),
            Some("timeseries[2]: a series without a __name__ label")
        );
        assert_eq!(
            out.batches.len(),
            1,
            "one target; the refused ones left out"
        );
        let b = &out.batches[0];
        assert_eq!(b.resource.service.name, "reviews");
        assert_eq!(b.resource.service.version.as_deref(), Some("v2"));
        assert_eq!(b.resource.service.namespace.as_deref(), Some("bookinfo"));
        assert_eq!(b.points.len(), 3);
        assert_eq!(b.points[0].time_ns, 1_000_000_000);
        assert_eq!(b.points[2].name, "istio_request_duration_milliseconds");
        assert_eq!(
            b.points[2].value,
            PointValue::Bucket {
                le: f64::INFINITY,
                value: 3.0
            }
        );
        assert!(b.points[2].attributes.get_str("le").is_none());
    }

    #[test]
    fn envoy_prometheus_names_read_as_the_stat_sink_names() {
        assert_eq!(
            envoy_name("envoy_cluster_upstream_rq_xx"),
            ("cluster.upstream_rq_xx".to_string(), true)
        );
        assert_eq!(
            envoy_name("envoy_cluster_shop_svc_cluster_local_upstream_rq_time").0,
            "cluster.shop.svc.cluster.local.upstream_rq_time"
        );
        assert_eq!(
            envoy_name("envoy_cluster_outlier_detection_ejections_enforced_total").0,
            "cluster.outlier_detection.ejections_enforced_total"
        );
        assert!(!envoy_name("istio_requests_total").1);
    }
}
