//! Sending pre-encoded exports: gRPC through a pass-through codec, HTTP as a body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    Http,
}

pub enum Sender {
    Grpc(Channel),
    Http(reqwest::Client, String),
}

impl Sender {
    pub async fn connect(
        protocol: Protocol,
        endpoint: &str,
        tls: &meshlens_loadgen::tls::TlsArgs,
    ) -> anyhow::Result<Sender> {
        let scheme = tls.scheme();
        let pems = tls.pems()?;
        Ok(match protocol {
            Protocol::Grpc => {
                let mut channel = Channel::from_shared(format!("{scheme}://{endpoint}"))?;
                if let Some(meshlens_loadgen::tls::Pems { ca, identity }) = pems {
                    let mut config = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name(tls.tls_server_name.clone());
                    if let Some((cert, key)) = identity {
                        config = config.identity(tonic::transport::Identity::from_pem(cert, key));
                    }
                    channel = channel.tls_config(config)?;
                }
                Sender::Grpc(channel.connect().await?)
            }
            Protocol::Http => {
                let mut client = reqwest::Client::builder().pool_max_idle_per_host(64);
                if let Some(p) = pems {
                    client = client.add_root_certificate(reqwest::Certificate::from_pem(&p.ca)?);
                }
                Sender::Http(client.build()?, format!("{scheme}://{endpoint}/v1/traces"))
            }
        })
    }

    /// Ok(true) acknowledged, Ok(false) refused as overloaded (retryable), Err otherwise.
    async fn send(&self, body: Bytes) -> Result<bool, String> {
        match self {
            Sender::Grpc(channel) => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.map_err(|e| e.to_string())?;
                let path = http::uri::PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                );
                match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(_) => Ok(true),
                    Err(s) if s.code() == tonic::Code::Unavailable => Ok(false),
                    Err(s) => Err(s.to_string()),
                }
            }
            Sender::Http(client, url) => {
                let r = client
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status().as_u16() {
                    200 => Ok(true),
                    429 | 503 => Ok(false),
                    other => Err(format!("HTTP {other}")),
                }
            }
        }
    }
}

#[derive(Default)]
pub struct RunResult {
    pub ok_exports: u64,
    pub rejected_exports: u64,
    pub failed_exports: u64,
    pub latencies_us: Vec<u32>,
}

/// Keeps `in_flight` exports going until `duration` has passed; with `pace`, each worker starts
/// one export per `pace` at most.
pub async fn run(
    sender: &Sender,
    batches: &[Bytes],
    in_flight: usize,
    duration: Duration,
    pace: Option<Duration>,
) -> RunResult {
    let deadline = Instant::now() + duration;
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..in_flight).map(|_| {
        let next = next.clone();
        async move {
            let mut r = RunResult::default();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % batches.len();
                if let Some(p) = pace {
                    tokio::time::sleep(p).await;
                }
                let t = Instant::now();
                match sender.send(batches[i].clone()).await {
                    Ok(true) => {
                        r.ok_exports += 1;
                        r.latencies_us
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(false) => {
                        r.rejected_exports += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        if r.failed_exports == 0 {
                            eprintln!("export failed: {e}");
                        }
                        r.failed_exports += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            r
        }
    });
    let mut total = RunResult::default();
    for r in futures::future::join_all(workers).await {
        total.ok_exports += r.ok_exports;
        total.rejected_exports += r.rejected_exports;
        total.failed_exports += r.failed_exports;
        total.latencies_us.extend(r.latencies_us);
    }
    total
}

/// Sends bytes that are already a protobuf message; decodes nothing of the (tiny) answer.
#[derive(Clone, Copy)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}
