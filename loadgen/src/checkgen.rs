//! Policy check load generator: Envoy's ext_authz `Check` or `ShouldRateLimit` calls over one
//! HTTP/2 connection (as one Envoy sends them), pre-encoded, on a plain HTTP/2 client. Closed loop (`--rate 0`: a fixed number in
//! flight, as fast as answered) or open loop at a fixed rate, where latency counts from when each
//! call was due, so a stall is not hidden. Prints checks/s and latency percentiles, and, given
//! meshlens' web address, the server-side decision time from its own histogram. To tell where a
//! slow call's time went, an open loop also prints how late the client itself sent calls, how
//! many separate stalls there were (calls over 5 ms, grouped into 10 ms periods), and the
//! hypervisor's steal time over the run.

use meshlens_loadgen::proc_stats;

use meshlens_loadgen::requests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use prost::Message;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Api {
    Ratelimit,
    Authz,
}

#[derive(Debug, Parser)]
#[command(name = "meshlens-checkgen")]
struct Args {
    /// Which Check API.
    #[arg(long, default_value = "ratelimit")]
    api: Api,
    #[command(flatten)]
    tls: meshlens_loadgen::tls::TlsArgs,
    /// meshlens' policy listener.
    #[arg(long, default_value = "127.0.0.1:9091")]
    endpoint: String,
    /// Calls per second (0: closed loop, `--in-flight` at once).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Calls in flight at once in a closed loop.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// HTTP/2 connections, calls spread over them in turn (Envoy opens one per worker thread).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to measure, in seconds, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// Distinct users (descriptor values, quota keys).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// ext_authz: send what a sidecar Envoy sends (its request headers, ids, addresses, time),
    /// 545 bytes encoded against the default request's 139 (four headers).
    #[arg(long)]
    envoy_request: bool,
    /// HTTP method of the ext_authz requests.
    #[arg(long, default_value = "GET")]
    method: String,
    /// HTTP path of the ext_authz requests.
    #[arg(long, default_value = "/api/orders")]
    path: String,
    /// Rate limit domain to ask about.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// meshlens' web listener, to read the server-side decision time from /metrics.
    #[arg(long)]
    web: Option<String>,
    /// Server process to measure (CPU).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "")]
    label: String,
    /// Open loop: list each stall on stderr (when, how many slow calls, the slowest, whether the
    /// client sent late), to tell periodic work from noise.
    #[arg(long)]
    list_stalls: bool,
}

impl Args {
    fn check_shape(&self) -> requests::CheckShape<'_> {
        requests::CheckShape {
            method: &self.method,
            path: &self.path,
            envoy: self.envoy_request,
        }
    }
}

/// A gRPC client on one HTTP/2 connection, with every request encoded before the clock starts:
/// lighter than a tonic `Channel` (no buffer task between caller and connection), as a proxy
/// is, so less of the shared CPU goes to the load generator.
#[derive(Clone)]
struct Client {
    /// One per connection; call `i` goes on connection `i % len`.
    sends: Arc<[h2::client::SendRequest<Bytes>]>,
    uri: http::Uri,
    /// Length-prefixed request messages, one per key.
    bodies: Arc<Vec<Bytes>>,
}

impl Client {
    async fn connect(args: &Args) -> anyhow::Result<Client> {
        let mut sends = Vec::new();
        let tls = args.tls.client_config(&[b"h2"])?;
        // h2 closes a connection that buffers many small DATA frames unread (a flood guard);
        // under open-loop load on two shared cores, answers can wait that long for this
        // process's turn on a CPU. The budget is the guard's, raised for a benchmark client.
        let mut builder = h2::client::Builder::new();
        builder.data_frame_budget(64 << 20);
        for _ in 0..args.connections.max(1) {
            let tcp = tokio::net::TcpStream::connect(&args.endpoint).await?;
            tcp.set_nodelay(true)?;
            let send = match &tls {
                None => {
                    let (send, connection) = builder.handshake(tcp).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    send
                }
                Some(config) => {
                    let stream = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(args.tls.server_name()?, tcp)
                        .await?;
                    let (send, connection) = builder.handshake(stream).await?;
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    send
                }
            };
            sends.push(send);
        }
        let path = match args.api {
            Api::Ratelimit => "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            Api::Authz => "/envoy.service.auth.v3.Authorization/Check",
        };
        let bodies = (0..args.keys.max(1))
            .map(|i| {
                let message = match args.api {
                    Api::Ratelimit => requests::rls_request(&args.domain, i).encode_to_vec(),
                    Api::Authz => requests::check_request(&args.check_shape(), i).encode_to_vec(),
                };
                let mut framed = Vec::with_capacity(message.len() + 5);
                framed.push(0);
                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                framed.extend_from_slice(&message);
                Bytes::from(framed)
            })
            .collect();
        Ok(Client {
            sends: sends.into(),
            uri: format!("{}://{}{path}", args.tls.scheme(), args.endpoint).parse()?,
            bodies: Arc::new(bodies),
        })
    }

    /// One call; true if answered with gRPC status OK (whatever the decision). The first
    /// failure is printed, so a failing run says why.
    async fn call(&mut self, i: usize) -> bool {
        match self.try_call(i).await {
            Ok(ok) => ok,
            Err(e) => {
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("meshlens-checkgen: first failed call: {e}"));
                false
            }
        }
    }

    async fn try_call(&mut self, i: usize) -> Result<bool, h2::Error> {
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request");
        let mut send = self.sends[i % self.sends.len()].clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(self.bodies[i % self.bodies.len()].clone(), true)?;
        let mut body = response.await?.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?;
        Ok(trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s == "0"))
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u64>,
    /// Open loop: per call, when it was due (µs from the start) and how late the client sent it.
    sent_late_us: Vec<(u64, u64)>,
}

/// Latency from which a call counts as stalled.
const STALL_US: u64 = 5_000;

async fn closed_loop(client: &Client, args: &Arc<Args>, seconds: f64) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for w in 0..args.in_flight {
        let (mut client, args, tally) = (client.clone(), args.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut local = Tally::default();
            let mut i = w;
            while Instant::now() < end {
                let t = Instant::now();
                if client.call(i).await {
                    local.ok += 1;
                    local.latencies_us.push(t.elapsed().as_micros() as u64);
                } else {
                    local.failed += 1;
                }
                i += args.in_flight;
            }
            let mut all = tally.lock().await;
            all.ok += local.ok;
            all.failed += local.failed;
            all.latencies_us.extend(local.latencies_us);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(tally)
        .map(|m| m.into_inner())
        .unwrap_or_default()
}

/// A sleep to the microsecond on the runtime's own thread: a `timerfd` the runtime's poller
/// watches. tokio's timers tick in whole milliseconds, which would bunch calls and add up to a
/// millisecond of lateness; a separate pacing thread would cost a thread wake-up and a hand-off
/// per call, CPU taken from the server on the shared cores.
struct Pacer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Pacer {
    fn new() -> std::io::Result<Pacer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the `OwnedFd` is a valid, open descriptor that the `AsyncFd` owns until it is
        // dropped, and its `as_raw_fd` always returns that descriptor.
        #[allow(unsafe_code)]
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }?;
        Ok(Pacer { fd })
    }

    /// Returns at `due` or just after; at once if it has passed.
    async fn sleep_until(&self, due: Instant) -> std::io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let it_value = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let spec = Itimerspec {
                it_interval: zero,
                it_value,
            };
            timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            let mut ready = self.fd.readable().await?;
            // Reading the expiry count disarms the readiness; a spurious wake-up re-arms.
            let mut expirations = [0u8; 8];
            let _ = ready.try_io(|fd| Ok(rustix::io::read(fd, &mut expirations)?));
        }
    }
}

/// Calls due at a fixed rate, on the runtime's one thread; each call is started when due, and
/// its latency counts from then.
async fn open_loop(client: &Client, args: &Arc<Args>, seconds: f64) -> std::io::Result<Tally> {
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let total = (args.rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let pacer = Pacer::new()?;
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..total {
        let offset = interval.mul_f64(i as f64);
        let due = start + offset;
        pacer.sleep_until(due).await?;
        let (mut client, tally) = (client.clone(), tally.clone());
        tasks.spawn(async move {
            let late = due.elapsed();
            let ok = client.call(i).await;
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                t.ok += 1;
                t.latencies_us.push(due.elapsed().as_micros() as u64);
                t.sent_late_us
                    .push((offset.as_micros() as u64, late.as_micros() as u64));
            } else {
                t.failed += 1;
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    Ok(std::mem::take(&mut *t))
}

/// Calls over `STALL_US` within one 10 ms period (by when they were due).
#[derive(Debug, Default, PartialEq)]
struct Stall {
    calls: u32,
    worst_us: u64,
    /// The client itself sent one of them over `STALL_US` late.
    client_late: bool,
}

/// An open loop's stalls by the start of their period, in ms from the start of the run.
fn stalls(t: &Tally) -> std::collections::BTreeMap<u64, Stall> {
    let mut stalls = std::collections::BTreeMap::<u64, Stall>::new();
    for ((offset, late), latency) in t.sent_late_us.iter().zip(&t.latencies_us) {
        if *latency > STALL_US {
            let s = stalls.entry(offset / 10_000 * 10).or_default();
            s.calls += 1;
            s.worst_us = s.worst_us.max(*latency);
            s.client_late |= *late > STALL_US;
        }
    }
    stalls
}

/// Where an open loop's slow calls came from: the client's own lateness in sending (p99, p99.9), the
/// number of stalls (10 ms periods, by when calls were due, holding a call slower than 5 ms) and
/// of those in which the client itself had sent a call over 5 ms late, and the host's steal time.
fn open_loop_diagnosis(t: &Tally, steal: String, list_stalls: bool) -> String {
    let mut late: Vec<u64> = t.sent_late_us.iter().map(|(_, l)| *l).collect();
    late.sort_unstable();
    let late_at = |q: f64| {
        late.get((late.len() as f64 * q) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let stalls = stalls(t);
    let client_side = stalls.values().filter(|s| s.client_late).count();
    if list_stalls {
        for (at_ms, s) in &stalls {
            eprintln!(
                "stall at_ms={at_ms} slow_calls={} worst_ms={:.1} client_late={}",
                s.calls,
                s.worst_us as f64 / 1000.0,
                s.client_late
            );
        }
    }
    format!(
        " client_send_late_p99_ms={:.3} client_send_late_p999_ms={:.3} stalls={} stalls_client_late={client_side}{}",
        late_at(0.99),
        late_at(0.999),
        stalls.len(),
        steal
    )
}

/// The p-quantile of the server's `meshlens_policy_check_duration_seconds` histogram (the
/// upper bound of the bucket that holds it), in microseconds.
async fn server_quantile(web: &str, api: &str, q: f64) -> Option<f64> {
    let text = reqwest::get(format!("http://{web}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = "meshlens_policy_check_duration_seconds_bucket{";
    let want = format!("api=\"{api}\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(&want))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let target = total * q;
    buckets
        .iter()
        .find(|(_, c)| *c >= target)
        .map(|(le, _)| le * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let client = Client::connect(&args).await?;
    let run = |seconds: f64| {
        let (client, args) = (client.clone(), args.clone());
        async move {
            if args.rate > 0.0 {
                open_loop(&client, &args, seconds).await
            } else {
                Ok(closed_loop(&client, &args, seconds).await)
            }
        }
    };
    run(args.warmup_seconds).await?;
    let cpu0 = args.server_pid.and_then(proc_stats::cpu_seconds);
    let own0 = proc_stats::cpu_seconds(std::process::id());
    let steal0 = proc_stats::host_steal_seconds();
    let started = Instant::now();
    let mut t = run(args.seconds).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = args.server_pid.and_then(proc_stats::cpu_seconds);
    let own1 = proc_stats::cpu_seconds(std::process::id());
    let steal1 = proc_stats::host_steal_seconds();
    let steal = proc_stats::host_steal_field(steal0, steal1);
    let diagnosis = if args.rate > 0.0 {
        open_loop_diagnosis(&t, steal, args.list_stalls)
    } else {
        steal
    };
    t.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &t.latencies_us;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let api = match args.api {
        Api::Ratelimit => "ratelimit",
        Api::Authz => "ext_authz",
    };
    let server = match &args.web {
        Some(web) => match server_quantile(web, api, 0.99).await {
            Some(us) => format!(" server_decision_p99_us<={us:.1}"),
            None => String::new(),
        },
        None => String::new(),
    };
    let rss = args
        .server_pid
        .and_then(proc_stats::peak_rss_mb)
        .map(|m| format!(" server_peak_rss_mb={m:.0}"))
        .unwrap_or_default();
    println!(
        "{label}api={api} mode={} seconds={elapsed:.1} checks_per_s={:.0} ok={} failed={} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}{}{}{server}{rss}{diagnosis}",
        if args.rate > 0.0 { format!("rate:{}", args.rate) } else { format!("closed:{}", args.in_flight) },
        t.ok as f64 / elapsed,
        t.ok,
        t.failed,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        match (cpu0, cpu1) {
            (Some(a), Some(b)) => format!(" server_cpu_cores={:.2}", (b - a) / elapsed),
            _ => String::new(),
        },
        match (own0, own1) {
            (Some(a), Some(b)) => format!(" client_cpu_cores={:.2}", (b - a) / elapsed),
            _ => String::new(),
        },
        label = if args.label.is_empty() { String::new() } else { format!("{} ", args.label) },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--envoy-request` adds what a sidecar sends to the default request, which it keeps.
    #[test]
    fn the_envoy_request_carries_a_sidecars_attributes() {
        let check = |args: &[&str]| {
            let args = Args::parse_from(args);
            requests::check_request(&args.check_shape(), 7)
        };
        let plain = check(&["checkgen"]);
        let envoy = check(&["checkgen", "--envoy-request"]);
        let a = envoy.attributes.as_ref().unwrap();
        let http = a.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.headers.len(), 12);
        assert_eq!(http.headers["x-user"], "u7");
        assert_eq!(
            http.headers["x-envoy-downstream-service-cluster"],
            "ingress"
        );
        assert!(a.source.as_ref().unwrap().address.is_some());
        assert!(a.destination.as_ref().unwrap().address.is_some());
        let (p, e) = (plain.encoded_len(), envoy.encoded_len());
        eprintln!("encoded: default {p} bytes, --envoy-request {e} bytes");
        assert!(e > 2 * p, "{e} against {p}");
    }

    /// `--connections N` opens N HTTP/2 connections to the endpoint (calls go on them in turn).
    #[tokio::test(flavor = "current_thread")]
    async fn connections_opens_that_many() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let args = Args::parse_from(["checkgen", "--endpoint", &addr, "--connections", "3"]);
        let accept = async {
            let mut open = Vec::new();
            while open.len() < 4 {
                match tokio::time::timeout(Duration::from_millis(500), listener.accept()).await {
                    Ok(conn) => open.push(conn.unwrap().0),
                    Err(_) => break, // no more connections come
                }
            }
            open
        };
        let (client, open) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(Client::connect(&args), accept)
        })
        .await
        .expect("connected in time");
        assert_eq!(client.unwrap().sends.len(), 3);
        assert_eq!(open.len(), 3);
    }

    /// The pacer wakes at each due time, never before it, including dues closer together than
    /// tokio's millisecond timer and dues already past; a lost timer would hang, so the whole
    /// run is bounded.
    #[tokio::test(flavor = "current_thread")]
    async fn pacer_wakes_at_each_due_time_and_never_before() {
        let pacer = Pacer::new().unwrap();
        let start = Instant::now();
        let run = async {
            for i in 0..50u32 {
                let due = start + Duration::from_micros(150) * i;
                pacer.sleep_until(due).await.unwrap();
                assert!(Instant::now() >= due, "woke before call {i} was due");
            }
            // A due time long past returns at once.
            pacer.sleep_until(start).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the pacer woke for every due time");
    }

    #[test]
    fn stalls_are_grouped_by_period_and_client_lateness_is_told_apart() {
        let mut t = Tally::default();
        // (due µs from start, sent late µs, latency µs)
        let calls = [
            (0, 10, 200),
            (1_000, 6_000, 7_000), // a stall the client caused (sent 6 ms late)
            (2_000, 100, 6_500),   // same 10 ms period
            (25_000, 50, 9_000),   // a second stall, server side
            (26_000, 50, 300),
            (100_000, 20, 4_999), // under the threshold
        ];
        for (due, late, latency) in calls {
            t.ok += 1;
            t.latencies_us.push(latency);
            t.sent_late_us.push((due, late));
        }
        let d = open_loop_diagnosis(
            &t,
            proc_stats::host_steal_field(Some(1.5), Some(1.52)),
            false,
        );
        assert!(d.contains(" stalls=2 "), "{d}");
        let listed: Vec<_> = stalls(&t).into_iter().collect();
        let stall = |calls, worst_us, client_late| Stall {
            calls,
            worst_us,
            client_late,
        };
        assert_eq!(
            listed,
            [(0, stall(2, 7_000, true)), (20, stall(1, 9_000, false))]
        );
        assert!(d.contains(" stalls_client_late=1"), "{d}");
        assert!(d.contains(" client_send_late_p999_ms=6.000"), "{d}");
        assert!(d.ends_with(" host_steal_ms=20"), "{d}");
    }

    /// The steal column is read from /proc/stat (a VM's hypervisor fills it; elsewhere it is 0).
    #[cfg(target_os = "linux")]
    #[test]
    fn host_steal_is_read() {
        let (a, b) = (
            proc_stats::host_steal_seconds(),
            proc_stats::host_steal_seconds(),
        );
        assert!(a.is_some_and(|s| s >= 0.0), "{a:?}");
        assert!(proc_stats::host_steal_field(a, b).starts_with(" host_steal_ms="));
        assert_eq!(proc_stats::host_steal_field(None, b), "");
    }
}
