//! OTLP load generator: mesh-shaped trace batches, encoded before the clock starts, sent over
//! gRPC or HTTP with a fixed number in flight. Prints spans/s, export latency and, given the
//! server's pid, its CPU use and peak RSS.
#![forbid(unsafe_code)]

mod mesh;
use meshlens_loadgen::{parse_duration, proc_stats};
mod send;

use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "meshlens-loadgen")]
struct Args {
    /// grpc or http
    #[arg(long, default_value = "grpc")]
    protocol: send::Protocol,
    /// Host and port of the OTLP receiver (gRPC 4317, HTTP 4318).
    #[arg(long, default_value = "127.0.0.1:4317")]
    endpoint: String,
    #[command(flatten)]
    tls: meshlens_loadgen::tls::TlsArgs,
    /// Spans per export.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Exports in flight at once.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// How long to send, after the warm-up.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Sending before measuring starts.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Distinct services in the mesh.
    #[arg(long, default_value_t = 20)]
    services: usize,
    /// Share of failing calls.
    #[arg(long, default_value_t = 0.05)]
    error_rate: f64,
    /// Distinct pre-encoded batches to cycle through.
    #[arg(long, default_value_t = 256)]
    distinct: usize,
    /// Most exports per second in all (0: as fast as the server acknowledges).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Server process to measure (CPU seconds and peak RSS).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label printed with the result line.
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let batches = mesh::encoded_batches(args.distinct, args.batch, args.services, args.error_rate);
    let sender = send::Sender::connect(args.protocol, &args.endpoint, &args.tls).await?;

    // Warm up, then measure.
    let pace =
        (args.rate > 0.0).then(|| Duration::from_secs_f64(args.in_flight as f64 / args.rate));
    send::run(&sender, &batches, args.in_flight, args.warmup, pace).await;
    let cpu0 = args.server_pid.and_then(proc_stats::cpu_seconds);
    let steal0 = proc_stats::host_steal_seconds();
    let started = Instant::now();
    let result = send::run(&sender, &batches, args.in_flight, args.duration, pace).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = args.server_pid.and_then(proc_stats::cpu_seconds);
    let steal1 = proc_stats::host_steal_seconds();

    let spans = result.ok_exports * args.batch as u64;
    let mut lat = result.latencies_us;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{label}protocol={:?} batch={} in_flight={} seconds={elapsed:.1} spans_per_s={:.0} exports_ok={} exports_rejected={} exports_failed={} p50_ms={:.2} p99_ms={:.2}{}{}{}",
        args.protocol,
        args.batch,
        args.in_flight,
        spans as f64 / elapsed,
        result.ok_exports,
        result.rejected_exports,
        result.failed_exports,
        pct(0.50) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        match (cpu0, cpu1) {
            (Some(a), Some(b)) => format!(" server_cpu_cores={:.2}", (b - a) / elapsed),
            _ => String::new(),
        },
        args.server_pid
            .and_then(proc_stats::peak_rss_mb)
            .map(|m| format!(" server_peak_rss_mb={m:.0}"))
            .unwrap_or_default(),
        // The machine is a VM: time the hypervisor ran other guests instead (summed over CPUs).
        proc_stats::host_steal_field(steal0, steal1),
        label = if args.label.is_empty() { String::new() } else { format!("{} ", args.label) },
    );
    Ok(())
}
