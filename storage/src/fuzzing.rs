//! Entry points for the fuzz targets (`fuzz/`): stored rows decoded as reads decode them. A row
//! comes from the database, but a damaged file or a row from another version must give
//! `StoreError::Corrupt`, never a panic. Not an API: nothing else calls these.

/// The input's fields, split at 0xFF bytes (never in UTF-8 text), the missing ones empty.
fn fields<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&data[..0]; N];
    for (slot, field) in out.iter_mut().zip(data.split(|b| *b == 0xFF)) {
        *slot = field;
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A decimal number (0 when it is not one).
fn int(b: &[u8]) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// A `spans` row and its resource's attributes.
pub fn stored_span(data: &[u8]) {
    let [trace_id, span_id, parent, name, numbers, attributes, extra, resource] = fields(data);
    let resources = crate::decode::resources(vec![crate::decode::RawResource {
        id: 1,
        attributes: text(resource),
    }])
    .unwrap_or_default();
    // kind, start, duration, status code and resource id, comma-separated.
    let numbers: Vec<i64> = numbers.split(|b| *b == b',').map(int).collect();
    let n = |i: usize| numbers.get(i).copied().unwrap_or(0);
    let raw = crate::decode::RawSpan {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: (!parent.is_empty()).then(|| parent.to_vec()),
        name: text(name),
        kind: n(0) as i16,
        start_ns: n(1),
        duration_ns: n(2),
        status_code: n(3) as i16,
        resource_id: n(4) & 1,
        attributes: text(attributes),
        extra: (!extra.is_empty()).then(|| text(extra)),
    };
    let _ = crate::decode::span(raw, &resources);
}

/// A block's columns (decompressed, as `block::decompress` gives them) and, read as one, a
/// block summary: every span of a block that decodes is decoded as reads decode it.
pub fn span_block(data: &[u8]) {
    let _ = crate::block::Summary::decode(data);
    if let Ok(block) = crate::block::Block::decode_raw(data) {
        let resources = std::collections::HashMap::new();
        for i in 0..block.len() {
            let _ = crate::decode::span(block.raw_span(i), &resources);
            let _ = block.attributes(i).count();
        }
    }
}

/// Seeds for `span_block`: `spans` as one block's columns, and its summary.
pub fn span_block_seeds(spans: &[meshlens_topology::Span]) -> Vec<Vec<u8>> {
    let batch = crate::encode_batch(spans);
    let mut rows: Vec<&crate::encode::SpanRow> = batch.spans.iter().collect();
    rows.sort_by_key(|r| crate::trace_runs::row_order(&r.trace_id));
    let block = crate::block::encode(&rows, &std::collections::HashMap::new(), None);
    vec![
        crate::block::decompress(&block.data).unwrap_or_default(),
        block.summary,
    ]
}

/// An `edge_minutes` row.
pub fn edge_minute(data: &[u8]) {
    let [minute, edge, counts, metric_counts, policy_counts, server, client, metric] = fields(data);
    let _ = crate::rollup::decode((
        int(minute),
        text(edge),
        text(counts),
        text(metric_counts),
        text(policy_counts),
        server.to_vec(),
        client.to_vec(),
        metric.to_vec(),
    ));
}

/// Seeds for `stored_span`: `spans` as the writer stores them, a row each.
pub fn stored_span_seeds(spans: &[meshlens_topology::Span]) -> Vec<Vec<u8>> {
    let batch = crate::encode_batch(spans);
    batch
        .spans
        .iter()
        .map(|row| {
            let resource = batch.resources.iter().find(|r| r.id == row.resource_id);
            let numbers = format!(
                "{},{},{},{},1",
                row.kind, row.start_ns, row.duration_ns, row.status_code
            );
            let attributes = row.attributes_json();
            let fields: [&[u8]; 8] = [
                &row.trace_id,
                &row.span_id,
                row.parent_span_id.as_ref().map_or(&[][..], |p| &p[..]),
                row.name.as_bytes(),
                numbers.as_bytes(),
                attributes.as_bytes(),
                row.extra.as_deref().unwrap_or("").as_bytes(),
                resource.map_or(&b"{}"[..], |r| r.attributes.as_bytes()),
            ];
            fields.join(&0xFF)
        })
        .collect()
}

/// A seed for `edge_minute`: `m` as stored.
pub fn edge_minute_seed(m: &crate::EdgeMinute) -> Vec<u8> {
    let (minute, edge, counts, metric_counts, policy_counts, server, client, metric) =
        crate::rollup::encode(m);
    let minute = minute.to_string();
    let fields: [&[u8]; 8] = [
        minute.as_bytes(),
        edge.as_bytes(),
        counts.as_bytes(),
        metric_counts.as_bytes(),
        policy_counts.as_bytes(),
        &server,
        &client,
        &metric,
    ];
    fields.join(&0xFF)
}
