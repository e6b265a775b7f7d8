//! `meshlens-rwgen`: Prometheus remote write load of Istio's standard metrics, as Prometheus
//! sends it after scraping a mesh's sidecars, to meshlens or to any remote write receiver
//! (Prometheus itself, with `--web.enable-remote-write-receiver`).
//!
//! The mesh: `--workloads` services, each called by three others; every call is reported by the
//! destination's and the source's sidecar, with two response codes; each of those series sets has
//! `istio_requests_total` and the duration, request size and response size histograms (Istio's
//! 20 buckets, `_sum`, `_count`), with the labels Istio and a Kubernetes scrape config give them:
//! 804 series a workload. Two modes:
//! - `--rounds N`: N scrapes of the whole mesh, 15 s apart in sample time, encoded first, then
//!   sent as fast as the receiver takes them (`--in-flight` requests at once): samples a second.
//! - `--interval 15s --duration 60s`: one scrape every interval in real time, as Prometheus
//!   would: the receiver's CPU and memory for that mesh.
//!
//! Each mode prints one result line with the receiver's CPU (from `--server-pid`). A receiver
//! may answer before it has taken all in (meshlens' graph takes series off a queue): with
//! `--server-pid`, a measure ends only when the server is idle again, and the interval mode
//! starts its measure only when the baseline scrape's work is done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use meshlens_loadgen::parse_duration;
use meshlens_loadgen::proc_stats::{
    cpu_seconds, host_steal_field, host_steal_seconds, peak_rss_mb,
};
use prost::Message;

#[derive(Parser)]
struct Args {
    /// The receiver's URL, e.g. http://127.0.0.1:4318/api/v1/write.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 30)]
    workloads: usize,
    /// Send this many scrapes as fast as they are taken.
    #[arg(long)]
    rounds: Option<usize>,
    /// Or send one scrape every interval, for `--duration`.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    duration: Duration,
    /// Samples per request (Prometheus' `max_samples_per_send`).
    #[arg(long, default_value_t = 2000)]
    samples_per_request: usize,
    /// Requests in flight (Prometheus' shards).
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "receiver")]
    label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

const BUCKETS: [&str; 20] = [
    "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000",
    "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf",
];

/// One series: its labels (sorted, as Prometheus sends them) and how its value grows a scrape.
struct Series {
    labels: Vec<Label>,
    per_scrape: f64,
}

fn mesh(workloads: usize) -> Vec<Series> {
    let mut out = Vec::new();
    for w in 0..workloads {
        for c in 1..=3 {
            let caller = (w + workloads - c) % workloads;
            for reporter in ["destination", "source"] {
                for (code, calls) in [("200", 150.0), ("503", 3.0)] {
                    edge_series(&mut out, caller, w, reporter, code, calls);
                }
            }
        }
    }
    out
}

fn edge_series(
    out: &mut Vec<Series>,
    from: usize,
    to: usize,
    reporter: &str,
    code: &str,
    calls: f64,
) {
    let ns = |i: usize| format!("ns-{}", i / 50);
    let svc = |i: usize| format!("svc-{i}");
    let (me, pod_of) = if reporter == "destination" {
        (to, to)
    } else {
        (from, from)
    };
    let base: Vec<(&str, String)> = vec![
        ("app", svc(me)),
        (
            "connection_security_policy",
            if reporter == "destination" {
                "mutual_tls"
            } else {
                "unknown"
            }
            .into(),
        ),
        ("destination_app", svc(to)),
        ("destination_canonical_revision", "v1".into()),
        ("destination_canonical_service", svc(to)),
        ("destination_cluster", "Kubernetes".into()),
        (
            "destination_principal",
            format!("spiffe://cluster.local/ns/{}/sa/{}", ns(to), svc(to)),
        ),
        (
            "destination_service",
            format!("{}.{}.svc.cluster.local", svc(to), ns(to)),
        ),
        ("destination_service_name", svc(to)),
        ("destination_service_namespace", ns(to)),
        ("destination_version", "v1".into()),
        ("destination_workload", format!("{}-v1", svc(to))),
        ("destination_workload_namespace", ns(to)),
        (
            "instance",
            format!(
                "10.{}.{}.{}:15020",
                pod_of / 65536,
                (pod_of / 256) % 256,
                pod_of % 256
            ),
        ),
        ("job", "kubernetes-pods".into()),
        ("namespace", ns(me)),
        ("pod", format!("{}-v1-7c8f8b9f4d-x2lqk", svc(me))),
        ("pod_template_hash", "7c8f8b9f4d".into()),
        ("reporter", reporter.into()),
        ("request_protocol", "http".into()),
        ("response_code", code.into()),
        ("response_flags", "-".into()),
        ("security_istio_io_tlsMode", "istio".into()),
        ("service_istio_io_canonical_name", svc(me)),
        ("service_istio_io_canonical_revision", "v1".into()),
        ("source_app", svc(from)),
        ("source_canonical_revision", "v1".into()),
        ("source_canonical_service", svc(from)),
        ("source_cluster", "Kubernetes".into()),
        (
            "source_principal",
            format!("spiffe://cluster.local/ns/{}/sa/{}", ns(from), svc(from)),
        ),
        ("source_version", "v1".into()),
        ("source_workload", format!("{}-v1", svc(from))),
        ("source_workload_namespace", ns(from)),
        ("version", "v1".into()),
    ];
    let make = |name: &str, le: Option<&str>, per_scrape: f64| {
        let mut labels: Vec<Label> = base
            .iter()
            .map(|(k, v)| Label {
                name: k.to_string(),
                value: v.clone(),
            })
            .collect();
        labels.push(Label {
            name: "__name__".into(),
            value: name.into(),
        });
        if let Some(le) = le {
            labels.push(Label {
                name: "le".into(),
                value: le.into(),
            });
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        Series { labels, per_scrape }
    };
    out.push(make("istio_requests_total", None, calls));
    for (hist, mean) in [
        ("istio_request_duration_milliseconds", 12.0),
        ("istio_request_bytes", 400.0),
        ("istio_response_bytes", 2000.0),
    ] {
        for (i, le) in BUCKETS.iter().enumerate() {
            // Cumulative: a bucket around the mean and above holds every call.
            let share = if i >= 5 { 1.0 } else { 0.2 * i as f64 };
            out.push(make(&format!("{hist}_bucket"), Some(le), calls * share));
        }
        out.push(make(&format!("{hist}_sum"), None, calls * mean));
        out.push(make(&format!("{hist}_count"), None, calls));
    }
}

/// One scrape of the whole mesh at `timestamp`, as snappy-compressed requests.
fn scrape(series: &[Series], round: u64, timestamp: i64, per_request: usize) -> Vec<Vec<u8>> {
    series
        .chunks(per_request.max(1))
        .map(|chunk| {
            let req = WriteRequest {
                timeseries: chunk
                    .iter()
                    .map(|s| TimeSeries {
                        labels: s.labels.clone(),
                        samples: vec![Sample {
                            value: 1000.0 + s.per_scrape * round as f64,
                            timestamp,
                        }],
                    })
                    .collect(),
            };
            snap::raw::Encoder::new()
                .compress_vec(&req.encode_to_vec())
                .expect("snappy")
        })
        .collect()
}

async fn send_all(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<Vec<u8>>,
    in_flight: usize,
    failures: &AtomicU64,
    retries: &AtomicU64,
) -> anyhow::Result<()> {
    let queue = Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (queue, client, url) = (queue.clone(), client.clone(), url.to_string());
        tasks.push(async move {
            loop {
                let Some(body) = queue.lock().unwrap().next() else {
                    return Ok::<u64, anyhow::Error>(0);
                };
                let body = bytes::Bytes::from(body);
                // As Prometheus does: a 5xx or a 429 is retried, from 30 ms doubling to 5 s.
                let mut backoff = Duration::from_millis(30);
                for attempt in 0.. {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .header("content-encoding", "snappy")
                        .header("x-prometheus-remote-write-version", "0.1.0")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = r.status();
                    if status.is_success() {
                        break;
                    }
                    let text = r.text().await.unwrap_or_default();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !retryable || attempt >= 100 {
                        bail!("{status}: {}", text.trim());
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        });
    }
    for r in futures::future::join_all(tasks).await {
        if let Err(e) = r {
            failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("request failed: {e:#}");
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The end of a result line: failed and retried requests, the server's peak RSS, host steal.
fn outcome(
    failures: &AtomicU64,
    retries: &AtomicU64,
    server_pid: Option<u32>,
    steal0: Option<f64>,
) -> String {
    format!(
        "failed requests {}, retried {}, peak rss {}{}",
        failures.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        server_pid
            .and_then(peak_rss_mb)
            .map_or("?".into(), |m| format!("{m:.0} MB")),
        host_steal_field(steal0, host_steal_seconds()),
    )
}

/// Waits until the server is idle (at most one clock tick of CPU in 300 ms), for at most 60 s.
async fn settle(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cpu_seconds(pid);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = cpu_seconds(pid);
        if let (Some(a), Some(b)) = (last, now) {
            if b - a <= 0.011 {
                return;
            }
        }
        last = now;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let series = mesh(args.workloads);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.in_flight)
        .build()
        .context("http client")?;
    let failures = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let cpu = || args.server_pid.and_then(cpu_seconds);
    if let Some(rounds) = args.rounds {
        // Sample times 15 s apart, ending now, so a TSDB takes them in order.
        let start = now_ms() - rounds as i64 * 15_000;
        let bodies: Vec<Vec<Vec<u8>>> = (0..rounds)
            .map(|r| {
                scrape(
                    &series,
                    r as u64,
                    start + r as i64 * 15_000,
                    args.samples_per_request,
                )
            })
            .collect();
        let bytes: usize = bodies.iter().flatten().map(Vec::len).sum();
        let (cpu0, steal0, t0) = (cpu(), host_steal_seconds(), Instant::now());
        for round in bodies {
            send_all(
                &client,
                &args.url,
                round,
                args.in_flight,
                &failures,
                &retries,
            )
            .await?;
        }
        // Done when the server is: a receiver may answer before it has taken all in.
        settle(args.server_pid).await;
        let secs = t0.elapsed().as_secs_f64();
        let samples = (series.len() * rounds) as f64;
        let cpu_used = cpu().zip(cpu0).map(|(b, a)| b - a);
        println!(
            "{}: max rate, {} workloads, {} series, {rounds} scrapes: {:.0} samples/s, server cpu {} ({}), {:.1} MB sent snappy, {}",
            args.label,
            args.workloads,
            series.len(),
            samples / secs,
            cpu_used.map_or("?".into(), |c| format!("{c:.2} s")),
            cpu_used.map_or("?".into(), |c| format!("{:.2} µs/sample", c * 1e6 / samples)),
            bytes as f64 / 1e6,
            outcome(&failures, &retries, args.server_pid, steal0),
        );
    } else {
        let interval = args.interval.unwrap_or(Duration::from_secs(15));
        let scrapes = (args.duration.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        // The first scrape is every series' baseline: the measure starts after it.
        send_all(
            &client,
            &args.url,
            scrape(&series, 0, now_ms(), args.samples_per_request),
            args.in_flight,
            &failures,
            &retries,
        )
        .await?;
        // The baseline's work done (a receiver may answer before it has taken all in), the
        // measure covers each later scrape's whole work, over the time the scrapes stand for.
        settle(args.server_pid).await;
        let (cpu0, steal0, t0) = (cpu(), host_steal_seconds(), Instant::now());
        for round in 1..=scrapes {
            let due = t0 + interval * round as u32;
            tokio::time::sleep_until(due.into()).await;
            let bodies = scrape(&series, round, now_ms(), args.samples_per_request);
            send_all(
                &client,
                &args.url,
                bodies,
                args.in_flight,
                &failures,
                &retries,
            )
            .await?;
        }
        settle(args.server_pid).await;
        let secs = (interval * scrapes as u32).as_secs_f64();
        let cpu_used = cpu().zip(cpu0).map(|(b, a)| b - a);
        println!(
            "{}: every {:?}, {} workloads, {} series ({:.0} samples/s), {scrapes} scrapes: server cpu {} of a core, {}",
            args.label,
            interval,
            args.workloads,
            series.len(),
            series.len() as f64 / interval.as_secs_f64(),
            cpu_used.map_or("?".into(), |c| format!("{:.2}%", c * 100.0 / secs)),
            outcome(&failures, &retries, args.server_pid, steal0),
        );
    }
    if failures.load(Ordering::Relaxed) > 0 {
        bail!("some requests failed");
    }
    Ok(())
}
