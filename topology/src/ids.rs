//! Trace and span identifiers, and the reasons a span is refused.

use std::fmt;

/// Why a span from the data plane is refused. Each reason is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidSpan {
    #[error("trace id must be 16 bytes and not all zero")]
    TraceId,
    #[error("span id must be 8 bytes and not all zero")]
    SpanId,
    #[error("parent span id must be empty or 8 bytes")]
    ParentSpanId,
    #[error("end time is before start time")]
    EndBeforeStart,
    #[error("start time is missing")]
    MissingStart,
    #[error("its trace is over the bytes a trace may hold (max_bytes_per_trace)")]
    TraceTooLarge,
}

impl InvalidSpan {
    pub const ALL: [InvalidSpan; 6] = [
        InvalidSpan::TraceId,
        InvalidSpan::SpanId,
        InvalidSpan::ParentSpanId,
        InvalidSpan::EndBeforeStart,
        InvalidSpan::MissingStart,
        InvalidSpan::TraceTooLarge,
    ];

    /// The metric label for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidSpan::TraceId => "invalid_trace_id",
            InvalidSpan::SpanId => "invalid_span_id",
            InvalidSpan::ParentSpanId => "invalid_parent_span_id",
            InvalidSpan::EndBeforeStart => "end_before_start",
            InvalidSpan::MissingStart => "missing_start_time",
            InvalidSpan::TraceTooLarge => "trace_too_large",
        }
    }
}

/// A 128-bit trace id that is never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId([u8; 16]);

/// A 64-bit span id that is never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId([u8; 8]);

impl TraceId {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidSpan> {
        let arr: [u8; 16] = bytes.try_into().map_err(|_| InvalidSpan::TraceId)?;
        if arr == [0; 16] {
            return Err(InvalidSpan::TraceId);
        }
        Ok(TraceId(arr))
    }

    /// Parses 32 hex digits, or 16 (a 64-bit Zipkin/B3 id, widened with leading zeros).
    pub fn from_hex(s: &str) -> Result<Self, InvalidSpan> {
        let mut buf = [0u8; 16];
        match s.len() {
            32 => decode_hex(s, &mut buf).ok_or(InvalidSpan::TraceId)?,
            16 => decode_hex(s, &mut buf[8..]).ok_or(InvalidSpan::TraceId)?,
            _ => return Err(InvalidSpan::TraceId),
        }
        Self::from_bytes(&buf)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl SpanId {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidSpan> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| InvalidSpan::SpanId)?;
        if arr == [0; 8] {
            return Err(InvalidSpan::SpanId);
        }
        Ok(SpanId(arr))
    }

    /// An empty (or all-zero) parent means "root span".
    pub fn parent_from_bytes(bytes: &[u8]) -> Result<Option<Self>, InvalidSpan> {
        if bytes.is_empty() || bytes.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        Self::from_bytes(bytes)
            .map(Some)
            .map_err(|_| InvalidSpan::ParentSpanId)
    }

    pub fn from_hex(s: &str) -> Result<Self, InvalidSpan> {
        let mut buf = [0u8; 8];
        if s.len() != 16 {
            return Err(InvalidSpan::SpanId);
        }
        decode_hex(s, &mut buf).ok_or(InvalidSpan::SpanId)?;
        Self::from_bytes(&buf)
    }

    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let bytes = s.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_rejects_zero_and_wrong_length() {
        assert_eq!(TraceId::from_bytes(&[0; 16]), Err(InvalidSpan::TraceId));
        assert_eq!(TraceId::from_bytes(&[1; 15]), Err(InvalidSpan::TraceId));
        assert!(TraceId::from_bytes(&[1; 16]).is_ok());
    }

    #[test]
    fn hex_round_trips_and_widens_64_bit_ids() {
        let id = TraceId::from_hex("5b8aa5a2d2c872e8321cf37308d69df2").unwrap();
        assert_eq!(id.to_hex(), "5b8aa5a2d2c872e8321cf37308d69df2");
        let short = TraceId::from_hex("321CF37308D69DF2").unwrap();
        assert_eq!(short.to_hex(), "0000000000000000321cf37308d69df2");
        assert!(TraceId::from_hex("zz8aa5a2d2c872e8321cf37308d69df2").is_err());
        assert!(SpanId::from_hex("0000000000000000").is_err());
    }

    #[test]
    fn parent_empty_or_zero_is_root() {
        assert_eq!(SpanId::parent_from_bytes(&[]), Ok(None));
        assert_eq!(SpanId::parent_from_bytes(&[0; 8]), Ok(None));
        assert_eq!(
            SpanId::parent_from_bytes(&[1; 4]),
            Err(InvalidSpan::ParentSpanId)
        );
    }
}
