//! Prometheus remote write 1.0's messages (`prometheus/prompb/remote.proto` and `types.proto`),
//! written out for prost: the fields meshlens reads. Fields it does not declare (native
//! histograms, metadata) are skipped by the decoder.

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

impl WriteRequest {
    /// The request that carries `series` (a scrape's, for tests, benchmarks and seeds).
    pub fn of(series: &[meshlens_topology::prom::PromSeries]) -> WriteRequest {
        WriteRequest {
            timeseries: series
                .iter()
                .map(|s| TimeSeries {
                    labels: s
                        .labels
                        .iter()
                        .map(|(name, value)| Label {
                            name: name.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    samples: s
                        .samples
                        .iter()
                        .map(|p| Sample {
                            value: p.value,
                            timestamp: p.timestamp_ms,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Why a body is not a `WriteRequest`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(&'static str);

/// A series of a request the graph reads, by reference into the body: its place in the request,
/// an id for its labels (a seeded 128-bit hash of them as they came), its bytes, and where its
/// samples are in `Scan::samples`.
#[derive(Debug, Clone, PartialEq)]
pub struct WireSeries {
    pub index: usize,
    pub id: u128,
    pub at: std::ops::Range<usize>,
    pub samples: std::ops::Range<usize>,
}

/// The series of a request the graph reads (and those without a name, which conversion
/// refuses), their samples, and how many series and samples were left aside.
#[derive(Debug, Default)]
pub struct Scan {
    pub series: Vec<WireSeries>,
    pub samples: Vec<meshlens_topology::prom::PromSample>,
    pub unread_series: u64,
    pub unread_samples: u64,
}

/// Reads a `WriteRequest` without decoding its labels: each series' name is found, the series
/// `keep` does not want are counted and left aside, and the rest are named by a hash of their
/// labels' bytes (`seed` keeps clients from choosing colliding label sets). A series seen
/// before is then counted from its id and samples alone; no label is copied.
/// `out`'s vectors (an earlier scan's, cleared first) are reused.
pub fn scan(
    buf: &[u8],
    keep: impl Fn(&str) -> bool,
    seed: u64,
    mut out: Scan,
) -> Result<Scan, WireError> {
    out.series.clear();
    out.samples.clear();
    out.unread_series = 0;
    out.unread_samples = 0;
    let mut index = 0;
    let mut r = Reader(buf);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == LEN {
            let series = r.bytes()?;
            let start = series.as_ptr() as usize - buf.as_ptr() as usize;
            if series_name(series)?.is_some_and(|n| !keep(n)) {
                out.unread_series += 1;
                out.unread_samples += count_samples(series)?;
            } else {
                // A nameless series is kept so that conversion refuses it by name.
                let first = out.samples.len();
                let id = series_rest(series, seed, &mut out.samples)?;
                out.series.push(WireSeries {
                    index,
                    id,
                    at: start..start + series.len(),
                    samples: first..out.samples.len(),
                });
            }
            index += 1;
        } else {
            r.skip(wire)?;
        }
    }
    Ok(out)
}

/// The next field of a message at `at`: its number, its wire type, and where it ends, with a
/// fast path for what series are made of (length-delimited fields under 128 bytes).
#[inline(always)]
fn next_field(buf: &[u8], at: usize) -> Result<(u64, u8, usize), WireError> {
    if let (Some(&key), Some(&len)) = (buf.get(at), buf.get(at + 1)) {
        if key < 0x80 && key & 7 == LEN && len < 0x80 {
            let end = at + 2 + len as usize;
            if end > buf.len() {
                return Err(WireError("field longer than the message"));
            }
            return Ok((u64::from(key >> 3), LEN, end));
        }
    }
    let mut r = Reader(&buf[at..]);
    let (field, wire) = r.key()?;
    r.skip(wire)?;
    Ok((field, wire, buf.len() - r.0.len()))
}

/// A series' name (`__name__`, most often its first label: Prometheus sorts them).
fn series_name(buf: &[u8]) -> Result<Option<&str>, WireError> {
    let mut r = Reader(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, LEN) => {
                let (name, value) = label(r.bytes()?)?;
                if name == b"__name__" {
                    return text(value).map(Some);
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(None)
}

fn count_samples(buf: &[u8]) -> Result<u64, WireError> {
    let (mut at, mut n) = (0, 0);
    while at < buf.len() {
        let (field, wire, end) = next_field(buf, at)?;
        n += u64::from(field == 2 && wire == LEN);
        at = end;
    }
    Ok(n)
}

/// The id of a series' labels, and its samples (appended to `samples`).
fn series_rest(
    buf: &[u8],
    seed: u64,
    samples: &mut Vec<meshlens_topology::prom::PromSample>,
) -> Result<u128, WireError> {
    // The labels' bytes: one run in the series (as Prometheus writes them), or scattered.
    let mut run: Option<(usize, usize)> = None;
    let mut scattered = false;
    let mut at = 0;
    while at < buf.len() {
        let (field, wire, end) = next_field(buf, at)?;
        match (field, wire) {
            (1, LEN) => {
                run = match run {
                    None => Some((at, end)),
                    Some((s, e)) if e == at => Some((s, end)),
                    Some(other) => {
                        scattered = true;
                        Some(other)
                    }
                };
            }
            (2, LEN) => {
                // The field's contents: after its key and length.
                let mut r = Reader(&buf[at..end]);
                r.key()?;
                samples.push(sample(r.bytes()?)?);
            }
            _ => {}
        }
        at = end;
    }
    if !scattered {
        let (s, e) = run.unwrap_or((0, 0));
        return Ok(xxhash_rust::xxh3::xxh3_128_with_seed(&buf[s..e], seed));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(seed);
    let mut at = 0;
    while at < buf.len() {
        let (field, wire, end) = next_field(buf, at)?;
        if (field, wire) == (1, LEN) {
            h.update(&buf[at..end]);
        }
        at = end;
    }
    Ok(h.digest128())
}

fn sample(buf: &[u8]) -> Result<meshlens_topology::prom::PromSample, WireError> {
    let mut s = Reader(buf);
    let mut sample = meshlens_topology::prom::PromSample {
        value: 0.0,
        timestamp_ms: 0,
    };
    while !s.is_empty() {
        match s.key()? {
            (1, I64) => {
                let b: [u8; 8] = s.take(8)?.try_into().expect("8 bytes");
                sample.value = f64::from_le_bytes(b);
            }
            (2, VARINT) => sample.timestamp_ms = s.varint()? as i64,
            (_, wire) => s.skip(wire)?,
        }
    }
    Ok(sample)
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        // Most keys and lengths are one byte.
        if let Some((&b, rest)) = self.0.split_first() {
            if b < 0x80 {
                self.0 = rest;
                return Ok(u64::from(b));
            }
        }
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or(WireError("truncated varint"))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError("varint longer than 10 bytes"))
    }

    #[inline(always)]
    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError("field longer than the message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| WireError("length out of range"))?)
    }

    #[inline(always)]
    fn skip(&mut self, wire: u8) -> Result<(), WireError> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            _ => Err(WireError("unsupported wire type")),
        }
    }
}

fn text(b: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(b).map_err(|_| WireError("a label that is not UTF-8"))
}

/// A label's name and value, as slices of the wire.
fn label(buf: &[u8]) -> Result<(&[u8], &[u8]), WireError> {
    let (mut name, mut value): (&[u8], &[u8]) = (&[], &[]);
    let mut r = Reader(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, LEN) => name = r.bytes()?,
            (2, LEN) => value = r.bytes()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((name, value))
}

pub fn decode_series(buf: &[u8]) -> Result<meshlens_topology::prom::PromSeries, WireError> {
    let mut out = meshlens_topology::prom::PromSeries {
        // Istio's series carry about 40 labels of 20 bytes or more on the wire, one sample; sized
        // from the wire, so that a body of empty series cannot reserve more than it carries.
        labels: Vec::with_capacity((buf.len() / 16).min(48)),
        samples: Vec::with_capacity(1),
    };
    let mut r = Reader(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, LEN) => {
                let (name, value) = label(r.bytes()?)?;
                out.labels
                    .push((text(name)?.to_string(), text(value)?.to_string()));
            }
            (2, LEN) => out.samples.push(sample(r.bytes()?)?),
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_wire_scan_reads_what_prost_writes_and_skips_what_it_is_told() {
        let series = |name: &str, n: usize| TimeSeries {
            labels: vec![
                Label {
                    name: "__name__".into(),
                    value: name.into(),
                },
                Label {
                    name: "job".into(),
                    value: "pods".into(),
                },
            ],
            samples: (0..n)
                .map(|i| Sample {
                    value: i as f64 + 0.5,
                    timestamp: -(i as i64) + 1_700_000_000_000,
                })
                .collect(),
        };
        let buf = WriteRequest {
            timeseries: vec![
                series("keep_me", 2),
                series("not_me", 3),
                series("keep_me", 1),
                TimeSeries {
                    labels: vec![],
                    samples: vec![],
                },
            ],
        }
        .encode_to_vec();
        let seed = 7;
        let k = scan(&buf, |n| n == "keep_me", seed, Scan::default()).unwrap();
        assert_eq!(
            (k.series.len(), k.unread_series, k.unread_samples),
            (3, 1, 3),
            "the nameless is kept"
        );
        let places: Vec<usize> = k.series.iter().map(|s| s.index).collect();
        assert_eq!(
            places,
            [0, 2, 3],
            "places in the request, skipped ones counted"
        );
        assert_eq!(k.samples.len(), 3, "the kept series' samples only");
        assert_eq!(k.samples[k.series[0].samples.clone()][1].value, 1.5);
        assert_eq!(
            k.samples[k.series[0].samples.clone()][1].timestamp_ms,
            1_699_999_999_999
        );
        // The same labels give the same id whatever the samples; other labels another.
        assert_eq!(k.series[0].id, k.series[1].id);
        assert_ne!(k.series[0].id, k.series[2].id);
        assert_ne!(
            k.series[0].id,
            scan(&buf, |_| true, seed + 1, Scan::default())
                .unwrap()
                .series[0]
                .id,
            "the seed"
        );
        let decoded = decode_series(&buf[k.series[0].at.clone()]).unwrap();
        assert_eq!(decoded.labels[1], ("job".to_string(), "pods".to_string()));
        assert_eq!(decoded.samples.len(), 2);
        assert!(decode_series(&buf[k.series[2].at.clone()])
            .unwrap()
            .labels
            .is_empty());
        // Labels scattered between samples name the series as the same labels in one run do.
        let run = series("keep_me", 1);
        let mut scattered = Vec::new();
        prost::encoding::message::encode(1, &run.labels[0], &mut scattered);
        prost::encoding::message::encode(2, &run.samples[0], &mut scattered);
        prost::encoding::message::encode(1, &run.labels[1], &mut scattered);
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &scattered, &mut body);
        let s = scan(&body, |_| true, seed, Scan::default()).unwrap();
        assert_eq!(s.series.len(), 1);
        assert_eq!(s.samples.len(), 1);
        assert_eq!(
            decode_series(&body[s.series[0].at.clone()]).unwrap().labels,
            decoded.labels
        );
        // Empty series reserve no more than they carry: 100,000 of them (2 bytes each).
        let empty = WriteRequest {
            timeseries: vec![TimeSeries::default(); 100_000],
        }
        .encode_to_vec();
        let kept = scan(&empty, |_| true, seed, Scan::default()).unwrap();
        assert_eq!(kept.series.len(), 100_000);
        assert!(kept.samples.is_empty());
        assert!(decode_series(&[]).unwrap().labels.capacity() == 0);
        // Truncated bodies and wrong wire types are errors, never a panic.
        for cut in 1..buf.len() {
            let _ = scan(&buf[..cut], |_| true, seed, Scan::default());
        }
        assert!(scan(&buf[..buf.len() - 1], |_| true, seed, Scan::default()).is_err());
        assert!(
            scan(&[0x0b], |_| true, seed, Scan::default()).is_err(),
            "a group"
        );
    }
}
