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
}

/// Reads a whole body (chunked or not) within the time limit, then gunzips it if asked; both
/// sizes are capped by `max_bytes`.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> Result<Bytes, IngestError> {
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
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => gunzip(&raw, limit),
        "snappy" => unsnappy(&raw, limit),
        other => Err(IngestError::UnsupportedEncoding(other.to_string())),
    }
}

/// Decompresses a snappy block (remote write's encoding) whose stated length is at most `limit`.
pub fn unsnappy(data: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let len = snap::raw::decompress_len(data)
        .map_err(|e| IngestError::Malformed(format!("snappy: {e}")))?;
    if len > limit {
        return Err(IngestError::TooLarge { limit });
    }
    snap::raw::Decoder::new()
        .decompress_vec(data)
        .map(Bytes::from)
        .map_err(|e| IngestError::Malformed(format!("snappy: {e}")))
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
