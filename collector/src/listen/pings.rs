//! Keepalive enforcement: an HTTP/2 peer may ping, but not flood. The connection's bytes are read
//! through [`PingPolice`], which follows the HTTP/2 frame headers (it never buffers or changes
//! a byte) and counts the peer's PINGs as gRPC servers do: a PING that comes sooner than
//! `min_time` after the previous one, with no new request (HEADERS) between them, is a strike;
//! past [`MAX_STRIKES`] the connection is closed, as grpc-go's keepalive enforcement policy
//! (which the OTel Collector exposes) and its `too_many_pings` do. A connection that is not
//! HTTP/2 (no client preface) is passed through untouched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Strikes forgiven; the next one closes the connection (grpc-go's `maxPingStrikes`).
pub const MAX_STRIKES: u32 = 2;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

enum State {
    /// Matching the client preface; this many bytes of it seen.
    Preface(usize),
    /// Reading a frame header; this much of it seen.
    Header([u8; FRAME_HEADER], usize),
    /// Skipping a frame's payload; this much is left.
    Payload(usize),
    /// Not HTTP/2, or already refused: nothing to follow.
    Off,
}

/// The counting itself, apart from the I/O (tested alone).
struct Policy {
    min_time: Duration,
    last_ping: Option<Instant>,
    request_since: bool,
    strikes: u32,
}

impl Policy {
    /// A PING came; false when it is one strike too many.
    fn ping(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last_ping {
            if !self.request_since && now.duration_since(last) < self.min_time {
                self.strikes += 1;
            }
        }
        self.last_ping = Some(now);
        self.request_since = false;
        self.strikes <= MAX_STRIKES
    }

    fn request(&mut self) {
        self.request_since = true;
        self.strikes = 0;
    }
}

/// A connection's stream, read through the ping count. Once the peer has pinged too often,
/// reads fail and `tripped` is set (the listener counts the close by it).
pub struct PingPolice<IO> {
    inner: IO,
    state: State,
    policy: Policy,
    tripped: Arc<AtomicBool>,
}

impl<IO> PingPolice<IO> {
    /// `min_time` zero: no enforcement (the bytes are not even followed).
    pub fn new(inner: IO, min_time: Duration, tripped: Arc<AtomicBool>) -> Self {
        PingPolice {
            inner,
            state: if min_time.is_zero() {
                State::Off
            } else {
                State::Preface(0)
            },
            policy: Policy {
                min_time,
                last_ping: None,
                request_since: false,
                strikes: 0,
            },
            tripped,
        }
    }

    /// Follows `data` through the frames; false when a PING was one too many.
    fn follow(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return true,
                State::Preface(seen) => {
                    let n = (PREFACE.len() - *seen).min(data.len());
                    if data[..n] != PREFACE[*seen..*seen + n] {
                        self.state = State::Off;
                        return true;
                    }
                    *seen += n;
                    data = &data[n..];
                    if *seen == PREFACE.len() {
                        self.state = State::Header([0; FRAME_HEADER], 0);
                    }
                }
                State::Header(header, seen) => {
                    let n = (FRAME_HEADER - *seen).min(data.len());
                    header[*seen..*seen + n].copy_from_slice(&data[..n]);
                    *seen += n;
                    data = &data[n..];
                    if *seen < FRAME_HEADER {
                        continue;
                    }
                    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                    let (kind, flags) = (header[3], header[4]);
                    if kind == HEADERS {
                        self.policy.request();
                    } else if kind == PING && flags & ACK == 0 && !self.policy.ping(Instant::now())
                    {
                        self.state = State::Off;
                        return false;
                    }
                    self.state = if len == 0 {
                        State::Header([0; FRAME_HEADER], 0)
                    } else {
                        State::Payload(len)
                    };
                }
                State::Payload(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Header([0; FRAME_HEADER], 0);
                    }
                }
            }
        }
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PingPolice<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(Err(too_many_pings()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            if !this.follow(&buf.filled()[before..]) {
                this.tripped.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(too_many_pings()));
            }
        }
        polled
    }
}

fn too_many_pings() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "too many pings")
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PingPolice<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    fn police(min_time: Duration) -> PingPolice<tokio::io::Empty> {
        PingPolice::new(tokio::io::empty(), min_time, Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn pings_sooner_than_min_time_without_requests_are_struck_out() {
        let mut p = police(Duration::from_secs(10));
        let ping = frame(PING, 0, &[0; 8]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        bytes.extend(&ping);
        // Fed one byte at a time: frames split anywhere are followed.
        for b in &bytes {
            assert!(p.follow(std::slice::from_ref(b)));
        }
        for _ in 0..MAX_STRIKES {
            assert!(p.follow(&ping), "strikes under the limit are forgiven");
        }
        // ACKs (answers to the server's own pings) are not counted.
        assert!(p.follow(&frame(PING, ACK, &[0; 8])));
        assert!(!p.follow(&ping), "the third strike closes");
    }

    #[tokio::test(start_paused = true)]
    async fn spaced_pings_and_pings_between_requests_are_fine() {
        let mut p = police(Duration::from_secs(10));
        assert!(p.follow(PREFACE));
        let ping = frame(PING, 0, &[0; 8]);
        for _ in 0..20 {
            assert!(p.follow(&ping));
            tokio::time::advance(Duration::from_secs(11)).await;
        }
        for _ in 0..20 {
            assert!(p.follow(&frame(HEADERS, 0x4, &[0x82; 30])));
            assert!(p.follow(&ping));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn http1_and_disabled_enforcement_pass_through() {
        let ping = frame(PING, 0, &[0; 8]);
        let mut h1 = police(Duration::from_secs(10));
        assert!(h1.follow(b"POST /v1/traces HTTP/1.1\r\n"));
        let mut off = police(Duration::ZERO);
        assert!(off.follow(PREFACE));
        for _ in 0..10 {
            assert!(h1.follow(&ping));
            assert!(off.follow(&ping));
        }
    }
}
