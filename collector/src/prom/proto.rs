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

/// The series of a request the graph reads, each with its place in the request, and how many
/// series and samples were left aside undecoded.
pub struct Kept {
    pub series: Vec<(usize, meshlens_topology::prom::PromSeries)>,
    pub unread_series: u64,
    pub unread_samples: u64,
}

/// Why a body is not a `WriteRequest`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(&'static str);

/// The series of a `WriteRequest` that `keep` wants (by metric name), decoded from the wire
/// without a copy of the others: a scrape's remote write carries many series the graph does not
/// read, and decoding every label of those was most of the receiver's time. Returns the kept
/// series (and those without a name, which conversion refuses) with their places in the
/// request, and how many series and samples were left aside.
pub fn decode_kept(buf: &[u8], keep: impl Fn(&str) -> bool) -> Result<Kept, WireError> {
    // Sized for Prometheus' default request (2,000 samples), so it seldom grows.
    let mut kept = Vec::with_capacity(2048.min(buf.len() / 4));
    let mut index = 0;
    let (mut skipped_series, mut skipped_samples) = (0u64, 0u64);
    let mut r = Reader(buf);
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if field == 1 && wire == LEN {
            let series = r.bytes()?;
            match series_name(series)? {
                // A nameless series is decoded so that conversion refuses it by name.
                None => kept.push((index, decode_series(series)?)),
                Some(name) if keep(name) => kept.push((index, decode_series(series)?)),
                Some(_) => {
                    skipped_series += 1;
                    skipped_samples += count_samples(series)?;
                }
            }
            index += 1;
        } else {
            r.skip(wire)?;
        }
    }
    Ok(Kept {
        series: kept,
        unread_series: skipped_series,
        unread_samples: skipped_samples,
    })
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn varint(&mut self) -> Result<u64, WireError> {
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

    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError("field longer than the message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| WireError("length out of range"))?)
    }

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
    let mut r = Reader(buf);
    let mut n = 0;
    while !r.is_empty() {
        match r.key()? {
            (2, LEN) => {
                r.bytes()?;
                n += 1;
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(n)
}

fn decode_series(buf: &[u8]) -> Result<meshlens_topology::prom::PromSeries, WireError> {
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
            (2, LEN) => {
                let mut s = Reader(r.bytes()?);
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
                out.samples.push(sample);
            }
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
    fn the_wire_decoder_reads_what_prost_writes_and_skips_what_it_is_told() {
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
        let k = decode_kept(&buf, |n| n == "keep_me").unwrap();
        let (kept, skipped, samples) = (k.series, k.unread_series, k.unread_samples);
        assert_eq!(
            (kept.len(), skipped, samples),
            (3, 1, 3),
            "the nameless is kept"
        );
        let places: Vec<usize> = kept.iter().map(|k| k.0).collect();
        assert_eq!(
            places,
            [0, 2, 3],
            "places in the request, skipped ones counted"
        );
        let kept: Vec<_> = kept.into_iter().map(|k| k.1).collect();
        assert!(kept[2].labels.is_empty());
        assert_eq!(kept[0].labels[1], ("job".to_string(), "pods".to_string()));
        assert_eq!(kept[0].samples[1].value, 1.5);
        assert_eq!(kept[0].samples[1].timestamp_ms, 1_699_999_999_999);
        // Empty series reserve no more than they carry: 100,000 of them (2 bytes each).
        let empty = WriteRequest {
            timeseries: vec![TimeSeries::default(); 100_000],
        }
        .encode_to_vec();
        let kept = decode_kept(&empty, |_| true).unwrap().series;
        assert_eq!(kept.len(), 100_000);
        assert!(kept.iter().all(|k| k.1.labels.capacity() == 0));
        // Truncated bodies and wrong wire types are errors, never a panic.
        for cut in 1..buf.len() {
            let _ = decode_kept(&buf[..cut], |_| true);
        }
        assert!(decode_kept(&buf[..buf.len() - 1], |_| true).is_err());
        assert!(decode_kept(&[0x0b], |_| true).is_err(), "a group");
    }
}
