use std::collections::HashMap;

use meshlens_topology::testing::{resource, SpanBuilder};
use meshlens_topology::{AttrValue, SpanKind};

use super::*;
use crate::encode::encode_batch;

fn rows() -> Vec<SpanRow> {
    let fe = resource("frontend", Some("v1"));
    let db = resource("db", None);
    let mut spans = Vec::new();
    for t in 0..30u64 {
        let start = 1_700_000_000_000_000_000 + t * 7_000_000;
        spans.push(
            SpanBuilder::new(t + 1, t * 10 + 1, "frontend", "GET /", start)
                .resource(fe.clone())
                .kind(SpanKind::Server)
                .duration_ns(5_000_000 + t)
                .attr("http.response.status_code", 200i64)
                .attr("url.path", format!("/items/{t}"))
                .attr("ok", t % 2 == 0)
                .build(),
        );
        let mut child = SpanBuilder::new(t + 1, t * 10 + 2, "db", "SELECT", start + 10)
            .resource(db.clone())
            .kind(SpanKind::Client)
            .parent(t * 10 + 1)
            .duration_ns(1000)
            .build();
        child
            .attributes
            .0
            .push(("weird \"key\"\n".into(), AttrValue::Double(0.5)));
        if t % 3 == 0 {
            // A parent outside the block.
            child.parent_span_id = Some(meshlens_topology::testing::span_id(999_999));
            child = SpanBuilder::new(t + 1, t * 10 + 3, "db", "SELECT", start)
                .resource(db.clone())
                .parent(999_999)
                .error("boom")
                .build();
        }
        spans.push(child);
    }
    let batch = encode_batch(&spans);
    let mut rows: Vec<SpanRow> = batch.spans.iter().cloned().collect();
    rows.sort_by_key(|r| crate::trace_runs::row_order(&r.trace_id));
    rows
}

fn encoded(rows: &[SpanRow]) -> EncodedBlock {
    let refs: Vec<&SpanRow> = rows.iter().collect();
    encode(&refs, &HashMap::new(), None)
}

/// Every field of every span comes back as the row form the decoder reads.
#[test]
fn spans_round_trip_through_a_block() {
    let rows = rows();
    let block = Block::decode(&encoded(&rows).data).unwrap();
    assert_eq!(block.len(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        let raw = block.raw_span(i);
        assert_eq!(raw.trace_id, r.trace_id.to_vec());
        assert_eq!(raw.span_id, r.span_id.to_vec());
        assert_eq!(raw.parent_span_id, r.parent_span_id.map(|p| p.to_vec()));
        assert_eq!(raw.name, r.name);
        assert_eq!(raw.kind, r.kind);
        assert_eq!(raw.start_ns, r.start_ns);
        assert_eq!(raw.duration_ns, r.duration_ns);
        assert_eq!(raw.status_code, r.status_code);
        assert_eq!(raw.resource_id, r.resource_id);
        assert_eq!(raw.attributes, r.attributes_json());
        assert_eq!(raw.extra, r.extra);
        assert_eq!(block.error[i], r.is_error);
        assert_eq!(block.strings.get(block.service[i]), r.service);
        // The JSON is the JSON the row store kept.
        serde_json::from_str::<serde_json::Value>(&raw.attributes).unwrap();
    }
    let wanted = [rows[5].trace_id];
    let of: Vec<RawSpan> = block.spans_of(&wanted).collect();
    assert_eq!(
        of.len(),
        rows.iter()
            .filter(|r| r.trace_id == rows[5].trace_id)
            .count()
    );
}

/// The summary rules out what no span has, and never what one has.
#[test]
fn the_summary_rules_out_only_what_is_absent() {
    let rows = rows();
    let s = Summary::decode(&encoded(&rows).summary).unwrap();
    assert!(s.may_have(summary::service_term("frontend")));
    assert!(s.may_have(summary::operation_term("db", "SELECT")));
    assert!(s.may_have(summary::tag_term("url.path", "/items/7")));
    assert!(s.may_have(summary::tag_term("http.response.status_code", "200")));
    assert!(s.may_have(summary::tag_term("ok", "true")));
    assert!(s.may_have(summary::tag_term("weird \"key\"\n", "0.5")));
    assert_eq!(s.errors, 10);
    assert_eq!(s.max_duration, 5_000_029);
    let absent = (0..1000)
        .filter(|i| s.may_have(summary::tag_term("url.path", &format!("/nope/{i}"))))
        .count();
    assert!(
        absent < 50,
        "{absent} of 1000 absent terms passed the filter"
    );
    assert!(!s.may_have(summary::service_term("checkout")) || absent > 0);
}

/// Each service's summary holds its own spans' terms and times, without the other services'.
#[test]
fn each_service_has_a_summary_of_its_own_spans() {
    let rows = rows();
    let block = encoded(&rows);
    let names: Vec<&str> = block.services.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names.len(), 2);
    for part in &block.services {
        let mine: Vec<&SpanRow> = rows.iter().filter(|r| r.service == part.service).collect();
        assert_eq!(
            part.min_start,
            mine.iter().map(|r| r.start_ns).min().unwrap()
        );
        assert_eq!(
            part.max_start,
            mine.iter().map(|r| r.start_ns).max().unwrap()
        );
        let s = Summary::decode(&part.summary).unwrap();
        let has_path = s.may_have(summary::tag_term("url.path", "/items/7"));
        let has_select = s.may_have(summary::operation_term("db", "SELECT"));
        match part.service.as_str() {
            "frontend" => {
                assert!(has_path && !has_select);
                assert_eq!(s.errors, 0);
            }
            "db" => {
                assert!(has_select && !has_path);
                assert_eq!(s.errors, 10);
                assert_eq!(s.max_duration, 1_000_000);
            }
            other => panic!("{other}"),
        }
    }
}

/// Damaged data is an error, never a panic: every truncation and every single-byte change.
#[test]
fn damaged_blocks_are_errors() {
    let rows = rows();
    let data = encoded(&rows).data;
    let raw = decompress(&data).unwrap();
    for cut in 0..raw.len() {
        assert!(
            Block::decode(&compress(&raw[..cut])).is_err(),
            "cut at {cut}"
        );
    }
    for at in 0..raw.len() {
        let mut bad = raw.clone();
        bad[at] ^= 0x5a;
        // Either refused or decoded into something consistent; never a panic.
        if let Ok(b) = Block::decode(&compress(&bad)) {
            for i in 0..b.len() {
                let _ = b.raw_span(i);
            }
        }
    }
    assert!(Block::decode(&[]).is_err());
    assert!(Block::decode(&[9, 1, 2]).is_err());
    assert!(Summary::decode(&[]).is_err());
}

/// The mesh's spans take a fraction of what the rows took.
#[test]
fn a_block_is_small() {
    let rows = rows();
    let block = encoded(&rows);
    let row_bytes: usize = rows
        .iter()
        .map(|r| 16 + 8 + 8 + r.service.len() + r.name.len() + 30 + r.attributes_json().len())
        .sum();
    assert!(
        block.data.len() * 3 < row_bytes,
        "{} bytes of block against {row_bytes} of rows",
        block.data.len()
    );
}
