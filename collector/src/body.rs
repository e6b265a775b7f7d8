//! Reading untrusted HTTP bodies: a time limit, and a size limit before and after decompression.

use std::io::Read;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;

use crate::error::IngestError;

/// How much an HTTP receiver reads, and how long it waits for it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body, before and after decompression.
    pub max_bytes: usize,
    /// Longest wait for the whole body: a client that trickles bytes would otherwise hold one of
    /// the receivers' concurrency permits for as long as it likes.
    pub timeout: Duration,
    /// After `min_rate_grace`, a body must have arrived at this many bytes a second on average
    /// (0: no minimum).
    pub min_rate: u64,
    pub min_rate_grace: Duration,
}

/// Reads a body's frames into `out` within the size and time limits and the minimum rate;
/// `admit` is asked before `out` grows to each new length (a byte budget says no with an error).
async fn read_frames<B>(
    mut body: std::pin::Pin<&mut B>,
    limits: BodyLimits,
    out: &mut Vec<u8>,
    mut admit: impl FnMut(usize) -> Result<(), IngestError>,
) -> Result<(), IngestError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let limit = limits.max_bytes;
    let start = tokio::time::Instant::now();
    let timeout_at = start + limits.timeout;
    loop {
        // The rate's deadline moves on with every byte that arrives.
        let rate_at = (limits.min_rate > 0).then(|| {
            start
                + limits.min_rate_grace
                + Duration::from_secs_f64(out.len() as f64 / limits.min_rate as f64)
        });
        let until = rate_at.map_or(timeout_at, |r| r.min(timeout_at));
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Ok(frame) => frame,
            Err(_) if until == timeout_at => return Err(IngestError::BodyTimeout(limits.timeout)),
            Err(_) => return Err(IngestError::BodyTooSlow(limits.min_rate)),
        };
        let Some(frame) = frame else { return Ok(()) };
        let frame = frame.map_err(|e| IngestError::Malformed(format!("reading body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            admit(out.len() + data.len())?;
            out.extend_from_slice(data);
        }
    }
}

/// Reads a whole body (chunked or not) within the time limit, then gunzips it if asked; both
/// sizes are capped by `max_bytes`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<Bytes, IngestError> {
    let raw = read_raw(body, limits).await?;
    let limit = limits.max_bytes;
    match content_encoding(headers).as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => gunzip(&raw, limit),
        "snappy" => unsnappy(&raw, limit),
        other => Err(IngestError::UnsupportedEncoding(other.to_string())),
    }
}

/// The request's `Content-Encoding`, lowercased (`identity` when absent).
pub fn content_encoding(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase()
}

/// Reads a whole body as sent (chunked or not), within the time and size limits.
pub async fn read_raw(body: Body, limits: BodyLimits) -> Result<Bytes, IngestError> {
    let limit = limits.max_bytes;
    let read = tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limit));
    let raw = read
        .await
        .map_err(|_| IngestError::BodyTimeout(limits.timeout))?
        .map_err(|e| {
            if is_length_limit(&e) {
                IngestError::TooLarge { limit }
            } else {
                IngestError::Malformed(format!("reading body: {e}"))
            }
        })?;
    Ok(raw)
}

/// Decompresses a snappy block (remote write's encoding) whose stated length is at most `limit`.
pub fn unsnappy(data: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::new();
    unsnappy_into(data, limit, &mut out)?;
    Ok(Bytes::from(out))
}

/// Decompresses a snappy block into `out` (its memory reused), refusing one whose stated length
/// is over `limit` before decompressing it.
pub fn unsnappy_into(data: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), IngestError> {
    let len = snap::raw::decompress_len(data)
        .map_err(|e| IngestError::Malformed(format!("snappy: {e}")))?;
    if len > limit {
        return Err(IngestError::TooLarge { limit });
    }
    // A pooled buffer is written over, not zeroed first: only its new bytes are.
    out.truncate(len);
    out.resize(len, 0);
    let n = snap::raw::Decoder::new()
        .decompress(data, out)
        .map_err(|e| IngestError::Malformed(format!("snappy: {e}")))?;
    out.truncate(n);
    Ok(())
}

/// Buffers for decompressed bodies, kept between requests: a fresh buffer of a megabyte or two
/// per remote write request cost a third of the receiver's CPU in page faults (the kernel
/// zeroing each new huge page). At most `POOLED` are kept, none larger than the body limit.
pub struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// At most this many buffers wait in a pool, each of at most `POOLED_MAX_BYTES`, and together at
/// most `POOLED_TOTAL_BYTES`. Prometheus' requests (2,000 samples) decompress to a MiB or two,
/// and several wait for the graph at once; a larger body's buffer is freed after it.
const POOLED: usize = 32;
const POOLED_MAX_BYTES: usize = 8 << 20;
const POOLED_TOTAL_BYTES: usize = 64 << 20;

/// A buffer taken from a pool, given back when dropped.
pub struct Pooled<'a> {
    pub buf: Vec<u8>,
    pool: &'a BufferPool,
    limit: usize,
}

impl BufferPool {
    pub const fn new() -> Self {
        BufferPool {
            free: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A buffer from elsewhere, kept by the pool after it.
    pub fn adopt(&self, buf: Vec<u8>, limit: usize) -> Pooled<'_> {
        Pooled {
            buf,
            pool: self,
            limit,
        }
    }

    pub fn take(&self, limit: usize) -> Pooled<'_> {
        let buf = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        Pooled {
            buf,
            pool: self,
            limit,
        }
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= self.limit.min(POOLED_MAX_BYTES) {
            let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
            let held: usize = free.iter().map(Vec::capacity).sum();
            if free.len() < POOLED && held + buf.capacity() <= POOLED_TOTAL_BYTES {
                free.push(buf);
            }
        }
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Decompresses at most `limit` bytes: a small gzip bomb cannot grow past the limit in memory.
pub fn gunzip(data: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Malformed(format!("gzip: {e}")))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_pool_keeps_a_few_buffers_of_a_bounded_size() {
        let pool = BufferPool::new();
        let taken: Vec<_> = (0..POOLED + 2)
            .map(|_| {
                let mut p = pool.take(64 << 20);
                p.buf.reserve(1024);
                p
            })
            .collect();
        drop(taken);
        assert_eq!(pool.free.lock().unwrap().len(), POOLED);
        let mut big = pool.take(64 << 20);
        big.buf.reserve(POOLED_MAX_BYTES + 1);
        drop(big);
        let free = pool.free.lock().unwrap();
        assert_eq!(free.len(), POOLED - 1, "the big buffer was freed, not kept");
        assert!(free.iter().all(|b| b.capacity() <= POOLED_MAX_BYTES));
        drop(free);
        // Together they hold no more than the total.
        let pool = BufferPool::new();
        let taken: Vec<_> = (0..POOLED)
            .map(|_| {
                let mut p = pool.take(64 << 20);
                p.buf.reserve(POOLED_MAX_BYTES);
                p
            })
            .collect();
        drop(taken);
        let free = pool.free.lock().unwrap();
        let held: usize = free.iter().map(Vec::capacity).sum();
        assert!(held <= POOLED_TOTAL_BYTES && free.len() < POOLED, "{held}");
    }

    #[test]
    fn gunzip_caps_the_decompressed_size() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 1 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            gunzip(&bomb, 1000),
            Err(IngestError::TooLarge { limit: 1000 })
        ));
        assert_eq!(gunzip(&bomb, 2 << 20).unwrap().len(), 1 << 20);
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(IngestError::Malformed(_))
        ));
    }
}

/// How a receiver's bodies are admitted: read whole, at a minimum rate, within a shared budget of
/// bytes, *before* the request takes one of its receiver's permits. A slow client then holds a
/// connection and the few bytes it sent, never a permit the other clients wait for.
#[derive(Clone)]
pub struct Admission {
    pub limits: BodyLimits,
    /// Bytes of bodies being read or waiting for their receiver, across receivers.
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// Past its soft limit, no body is read: the export is refused at once (retryably).
    memory: crate::memory::MemoryLimiter,
    metrics: crate::Metrics,
}

/// Bytes of the budget a body holds, given back when it is done.
pub struct Reservation {
    held: usize,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    metrics: crate::Metrics,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.add_permits(self.held);
        self.metrics.ingest_buffered_bytes.sub(self.held as i64);
    }
}

impl Reservation {
    /// Takes `n` more bytes of the budget, or refuses (retryably) at once when it is spent.
    fn grow(&mut self, n: usize) -> Result<(), IngestError> {
        let permits = u32::try_from(n).map_err(|_| IngestError::Overloaded)?;
        self.budget
            .try_acquire_many(permits)
            .map_err(|_| IngestError::Overloaded)?
            .forget();
        self.held += n;
        self.metrics.ingest_buffered_bytes.add(n as i64);
        Ok(())
    }
}

impl Admission {
    pub fn new(
        limits: BodyLimits,
        budget_bytes: usize,
        memory: crate::memory::MemoryLimiter,
        metrics: crate::Metrics,
    ) -> Self {
        let budget = budget_bytes.clamp(limits.max_bytes, tokio::sync::Semaphore::MAX_PERMITS);
        Admission {
            limits,
            budget: std::sync::Arc::new(tokio::sync::Semaphore::new(budget)),
            memory,
            metrics,
        }
    }

    /// The same admission (and budget) with another size limit: a gRPC body carries each
    /// message's 5-byte frame header beside the message the limit is for.
    pub fn with_max_bytes(&self, max_bytes: usize) -> Self {
        let mut a = self.clone();
        a.limits.max_bytes = max_bytes;
        a
    }

    /// Reads a whole body into `out` (cleared first; a pooled buffer's memory is reused) within
    /// the size and time limits, the minimum rate and the budget; the reservation holds its
    /// bytes until dropped. Past the memory limiter's soft limit nothing is read.
    pub async fn read<B>(
        &self,
        headers: &HeaderMap,
        body: B,
        out: &mut Vec<u8>,
    ) -> Result<Reservation, IngestError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let mut body = std::pin::pin!(body);
        let refused = match self.read_into(headers, body.as_mut(), out).await {
            Ok(held) => return Ok(held),
            Err(e) => e,
        };
        let seen = out.len();
        out.clear();
        if matches!(
            refused,
            IngestError::Overloaded | IngestError::MemoryLimited
        ) {
            drain(body, self.limits, seen).await;
        }
        Err(refused)
    }

    async fn read_into<B>(
        &self,
        headers: &HeaderMap,
        body: std::pin::Pin<&mut B>,
        out: &mut Vec<u8>,
    ) -> Result<Reservation, IngestError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        self.memory.admit()?;
        let limit = self.limits.max_bytes;
        out.clear();
        let mut held = Reservation {
            held: 0,
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = declared {
            if n > limit {
                return Err(IngestError::TooLarge { limit });
            }
            // Bytes are taken from the budget as they arrive, never on a declared length alone:
            // a client that declares 4 MiB and sends nothing holds nothing.
            out.reserve(n.min(64 << 10));
        }
        read_frames(body, self.limits, out, |len| {
            let past = len.saturating_sub(held.held);
            if past > 0 {
                held.grow(past)?;
            }
            Ok(())
        })
        .await?;
        Ok(held)
    }
}

/// The longest a refused body is read on (and dropped) before the refusal is sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads and drops what is left of a body refused retryably (overload, memory), within its size
/// limit and at most [`DRAIN_TIMEOUT`], so that the client hears the refusal once it has sent its
/// request rather than in the middle of it. Answered mid-body, an HTTP/2 stream is reset (with
/// NO_ERROR) after the answer, and a client still sending may report the reset instead of the
/// answer (hyper's client then fails the call with "stream closed because of a broken pipe", not
/// the retryable status); an HTTP/1.1 connection is closed. Nothing is kept, so no memory is
/// taken; a client too slow for the timeout gets the refusal and the reset.
async fn drain<B>(mut body: std::pin::Pin<&mut B>, limits: BodyLimits, mut seen: usize)
where
    B: hyper::body::Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let until = tokio::time::Instant::now() + limits.timeout.min(DRAIN_TIMEOUT);
    while seen <= limits.max_bytes {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Reads each request's whole body ([`Admission::read`]) before calling the receiver behind it;
/// a body refused is answered here, as its receiver would answer it.
#[derive(Clone)]
pub struct AdmissionLayer(pub Admission);

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;
    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    admission: Admission,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Admitted<S>
where
    S: tower::Service<
            http::Request<Body>,
            Response = http::Response<RB>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
    RB: hyper::body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    /// Always ready: the receiver's permits are asked for once the body is in.
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        use tower::ServiceExt;
        let (inner, admission) = (self.inner.clone(), self.admission.clone());
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let mut buf = Vec::new();
            match admission.read(&parts.headers, body, &mut buf).await {
                Ok(held) => {
                    let req = http::Request::from_parts(parts, Body::from(buf));
                    let resp = inner.oneshot(req).await?;
                    drop(held);
                    Ok(resp.map(Body::new))
                }
                Err(e) => {
                    let req = http::Request::from_parts(parts, ());
                    Ok(crate::error::refuse(&req, e, &admission.metrics))
                }
            }
        })
    }
}
