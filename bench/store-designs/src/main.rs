//! Two designs of the span store side by side on the same spans: meshlens' compressed blocks in
//! SQLite (the store as built), and Parquet files as Tempo keeps them (spans sorted by trace id,
//! row groups of 131,072 spans, one file per million spans, ZSTD level 3 or Snappy; attributes as
//! JSON text, resources stored apart as in the blocks). Prints bytes per span, the write rate and
//! the time to find a trace by id (1,000 lookups: the blocks through the trace index, Parquet
//! through each file's row-group statistics of the sorted trace ids).
//! `cargo run --release --manifest-path bench/store-designs/Cargo.toml [SPANS]` (default 10,000,000)
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int32Array, Int64Array,
    RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use meshlens_storage::{encode_batch, Store, StoreConfig};
use meshlens_topology::testing::MeshTraces;
use meshlens_topology::{AttrValue, Span};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;

const PER_COMMIT: usize = 4_096;
const PER_FILE: usize = 1_000_000;
const ROW_GROUP: usize = 131_072;
const HOUR_NS: u64 = 3_600_000_000_000;

fn value_json(v: &AttrValue) -> serde_json::Value {
    match v {
        AttrValue::Str(s) => s.clone().into(),
        AttrValue::Bool(b) => (*b).into(),
        AttrValue::Int(i) => (*i).into(),
        AttrValue::Double(d) => (*d).into(),
        _ => serde_json::Value::Null,
    }
}

fn attributes_json(s: &Span) -> String {
    let map: serde_json::Map<String, serde_json::Value> = s
        .attributes
        .iter()
        .map(|(k, v)| (k.to_string(), value_json(v)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        Field::new("service", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Int32, false),
        Field::new("start_ns", DataType::Int64, false),
        Field::new("duration_ns", DataType::Int64, false),
        Field::new("status", DataType::Int32, false),
        Field::new("attributes", DataType::Utf8, false),
    ]))
}

/// One Parquet file of these spans, sorted by trace id. Returns its bytes.
fn write_parquet(path: &std::path::Path, mut spans: Vec<Span>, compression: Compression) -> u64 {
    spans.sort_by_key(|s| (*s.trace_id.as_bytes(), s.start_ns));
    let mut trace = FixedSizeBinaryBuilder::with_capacity(spans.len(), 16);
    let mut span = FixedSizeBinaryBuilder::with_capacity(spans.len(), 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(spans.len(), 8);
    for s in &spans {
        trace.append_value(s.trace_id.as_bytes()).unwrap();
        span.append_value(s.span_id.as_bytes()).unwrap();
        match s.parent_span_id {
            Some(p) => parent.append_value(p.as_bytes()).unwrap(),
            None => parent.append_null(),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(trace.finish()),
        Arc::new(span.finish()),
        Arc::new(parent.finish()),
        Arc::new(StringArray::from_iter_values(
            spans.iter().map(|s| s.service().to_string()),
        )),
        Arc::new(StringArray::from_iter_values(
            spans.iter().map(|s| s.name.clone()),
        )),
        Arc::new(Int32Array::from_iter_values(
            spans.iter().map(|s| s.kind.to_otlp()),
        )),
        Arc::new(Int64Array::from_iter_values(
            spans.iter().map(|s| s.start_ns as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            spans.iter().map(|s| s.duration_ns() as i64),
        )),
        Arc::new(Int32Array::from_iter_values(
            spans.iter().map(|s| s.status.code.to_otlp()),
        )),
        Arc::new(StringArray::from_iter_values(
            spans.iter().map(attributes_json),
        )),
    ];
    let batch = RecordBatch::try_new(schema(), columns).unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_size(ROW_GROUP)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// The spans of a trace in Parquet files: only row groups whose trace id range holds it are read.
fn parquet_lookup(files: &[std::path::PathBuf], id: &[u8; 16]) -> usize {
    let mut found = 0;
    for path in files {
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
        let groups: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(0).statistics() {
                Some(Statistics::FixedLenByteArray(s)) => {
                    s.min_bytes_opt().is_some_and(|m| m <= &id[..])
                        && s.max_bytes_opt().is_some_and(|m| m >= &id[..])
                }
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            continue;
        }
        for batch in builder.with_row_groups(groups).build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<FixedSizeBinaryArray>()
                .unwrap();
            found += (0..ids.len()).filter(|i| ids.value(*i) == &id[..]).count();
        }
    }
    found
}

fn percentiles(mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p) as usize).min(ms.len() - 1)];
    format!("p50_ms={:.2} p99_ms={:.2}", q(0.5), q(0.99))
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::env::temp_dir().join("store-designs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // The same spans for every design: generated once, in commits.
    let mut mesh = MeshTraces::new(20, now - HOUR_NS, HOUR_NS as f64 / total as f64);
    let mut commits: Vec<Vec<Span>> = Vec::new();
    let mut n = 0;
    while n < total {
        let mut c = Vec::with_capacity(PER_COMMIT + 8);
        while c.len() < PER_COMMIT {
            c.extend(mesh.next_trace());
        }
        n += c.len();
        commits.push(c);
    }
    let traces = mesh.traces();
    println!(
        "# {} spans, {traces} traces, {} cores",
        n,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // Design A: blocks in SQLite.
    let store = Store::connect(&StoreConfig {
        url: format!("sqlite://{}", dir.join("blocks.db").display()),
        ..StoreConfig::default()
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let started = Instant::now();
    for c in &commits {
        store.write(&[&encode_batch(c)]).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    store.settle_trace_index().await.unwrap();
    store.checkpoint().await.unwrap();
    let bytes = store.size_bytes().await.unwrap();
    let mut lat = Vec::new();
    for i in 0..1_000u64 {
        let t = i.wrapping_mul(7_919_777) % traces;
        let s = Instant::now();
        assert!(!store
            .trace(MeshTraces::trace_id(t))
            .await
            .unwrap()
            .is_empty());
        lat.push(s.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "design=blocks-sqlite bytes_per_span={:.1} write_spans_per_s={:.0} by_id {}",
        bytes as f64 / n as f64,
        n as f64 / secs,
        percentiles(lat)
    );
    store.close().await;

    // Design B: Parquet files.
    for (label, compression) in [
        (
            "parquet-zstd3",
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        ),
        ("parquet-snappy", Compression::SNAPPY),
    ] {
        let started = Instant::now();
        let mut files = Vec::new();
        let mut bytes = 0;
        let mut pending: Vec<Span> = Vec::new();
        for c in &commits {
            pending.extend(c.iter().cloned());
            if pending.len() >= PER_FILE {
                let path = dir.join(format!("{label}-{}.parquet", files.len()));
                bytes += write_parquet(&path, std::mem::take(&mut pending), compression);
                files.push(path);
            }
        }
        if !pending.is_empty() {
            let path = dir.join(format!("{label}-{}.parquet", files.len()));
            bytes += write_parquet(&path, pending, compression);
            files.push(path);
        }
        let secs = started.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        for i in 0..1_000u64 {
            let t = i.wrapping_mul(7_919_777) % traces;
            let s = Instant::now();
            assert!(parquet_lookup(&files, MeshTraces::trace_id(t).as_bytes()) > 0);
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "design={label} files={} bytes_per_span={:.1} write_spans_per_s={:.0} by_id {}",
            files.len(),
            bytes as f64 / n as f64,
            n as f64 / secs,
            percentiles(lat)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
