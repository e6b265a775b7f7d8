use bytes::Bytes;
use meshlens_topology::{AttrValue, InvalidSpan, SpanKind, StatusCode};
use proptest::prelude::*;

use super::*;
use crate::otlp::http::{decode_request, Format};
use crate::pipeline::Rejected;

fn fixture(name: &str) -> Bytes {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(path).unwrap())
}

#[test]
fn sdk_json_fixture_converts_every_field() {
    let req = decode_request(Format::Json, &fixture("sdk_two_spans.json")).unwrap();
    let c = convert_traces(req);
    assert_eq!(c.rejected, Rejected::default());
    assert_eq!(c.spans.len(), 2);
    let client = c.spans.iter().find(|s| s.kind == SpanKind::Client).unwrap();
    let server = c.spans.iter().find(|s| s.kind == SpanKind::Server).unwrap();
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, Some(server.span_id));
    assert_eq!(server.parent_span_id, None);
    let id = &server.resource.service;
    assert_eq!(id.name, "frontend");
    assert_eq!(id.namespace.as_deref(), Some("shop"));
    assert_eq!(id.version.as_deref(), Some("v1"));
    assert!(id.instance_id.is_some());
    assert_eq!(server.scope.name, "fixture");
    assert_eq!(server.scope.version, "1.0");
    // Current and older semantic-convention names alike; Envoy-style string values too.
    assert_eq!(server.http_status(), Some(200));
    assert_eq!(client.http_status(), Some(503));
    assert_eq!(
        server.attributes.get("sampled"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(
        server.attributes.get("ratio"),
        Some(&AttrValue::Double(0.5))
    );
    assert_eq!(
        server.attributes.get("tags"),
        Some(&AttrValue::Array(vec!["a".into(), "b".into()]))
    );
    assert_eq!(server.events[0].name, "cart loaded");
    assert_eq!(
        server.events[0].attributes.get("items"),
        Some(&AttrValue::Int(3))
    );
    assert_eq!(client.status.code, StatusCode::Error);
    assert_eq!(client.status.message, "upstream 503");
    assert!(client.is_error());
    assert_eq!(client.links.len(), 1);
    assert_eq!(client.links[0].span_id, server.span_id);
    assert!(server.end_ns > server.start_ns);
}

#[test]
fn protobuf_and_json_forms_convert_alike() {
    let req = decode_request(Format::Json, &fixture("sdk_two_spans.json")).unwrap();
    let bytes = Bytes::from(prost::Message::encode_to_vec(&req));
    let from_proto = convert_traces(decode_request(Format::Protobuf, &bytes).unwrap());
    let from_json = convert_traces(req);
    assert_eq!(from_proto.spans, from_json.spans);
}

#[test]
fn invalid_spans_are_dropped_and_counted_beside_good_ones() {
    let good = r#"{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"051581bf3cb55c13","name":"ok","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#;
    let cases = [
        (
            r#"{"traceId":"5b8aa5a2","spanId":"051581bf3cb55c13","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#,
            InvalidSpan::TraceId,
        ),
        (
            r#"{"traceId":"00000000000000000000000000000000","spanId":"051581bf3cb55c13","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#,
            InvalidSpan::TraceId,
        ),
        (
            r#"{"traceId":"","spanId":"051581bf3cb55c13","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#,
            InvalidSpan::TraceId,
        ),
        (
            r#"{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"0515","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#,
            InvalidSpan::SpanId,
        ),
        (
            r#"{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"051581bf3cb55c13","parentSpanId":"01","startTimeUnixNano":"10","endTimeUnixNano":"20"}"#,
            InvalidSpan::ParentSpanId,
        ),
        (
            r#"{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"051581bf3cb55c13","startTimeUnixNano":"30","endTimeUnixNano":"20"}"#,
            InvalidSpan::EndBeforeStart,
        ),
        (
            r#"{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"051581bf3cb55c13"}"#,
            InvalidSpan::MissingStart,
        ),
    ];
    for (bad, reason) in cases {
        let body = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{good},{bad},{good}]}}]}}]}}"#
        );
        let c = convert_traces(decode_request(Format::Json, &Bytes::from(body)).unwrap());
        assert_eq!(c.spans.len(), 2, "{bad}");
        assert_eq!(c.rejected.count, 1);
        assert_eq!(c.rejected.by_reason, vec![(reason, 1)]);
        assert!(
            c.rejected.message().contains("spans[1]"),
            "{}",
            c.rejected.message()
        );
    }
}

#[test]
fn json_mapping_details_are_honoured() {
    // Unknown fields ignored, enums as integers, 64-bit integers as strings or numbers.
    let body = r#"{"resourceSpans":[{"futureField":1,"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},
        "scopeSpans":[{"spans":[{"traceId":"5B8AA5A2D2C872E8321CF37308D69DF2","spanId":"051581bf3cb55c13","kind":3,"unknown":{"x":[1]},
        "startTimeUnixNano":10,"endTimeUnixNano":"20","attributes":[{"key":"n","value":{"intValue":"9007199254740993"}}],
        "status":{"code":2,"message":"bad"}}]}]}]}"#;
    let c = convert_traces(decode_request(Format::Json, &Bytes::from(body)).unwrap());
    assert_eq!(c.spans.len(), 1);
    let s = &c.spans[0];
    assert_eq!(s.kind, SpanKind::Client);
    assert_eq!(
        s.attributes.get("n"),
        Some(&AttrValue::Int(9_007_199_254_740_993))
    );
    assert_eq!(s.status.code, StatusCode::Error);
    assert_eq!(s.service(), "a");
}

fn nested_json(depth: usize) -> String {
    let mut v = r#"{"stringValue":"leaf"}"#.to_string();
    for _ in 0..depth {
        v = format!(r#"{{"arrayValue":{{"values":[{v}]}}}}"#);
    }
    format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8aa5a2d2c872e8321cf37308d69df2","spanId":"051581bf3cb55c13","startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{{"key":"deep","value":{v}}}]}}]}}]}}]}}"#
    )
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    // Shallow nesting is fine; deep nesting hits the decoder's recursion limit as a clean error.
    type Req = ExportTraceServiceRequest;
    assert!(decode_request::<Req>(Format::Json, &Bytes::from(nested_json(20))).is_ok());
    assert!(decode_request::<Req>(Format::Json, &Bytes::from(nested_json(100_000))).is_err());
    // Protobuf: a span whose attribute nests 100,000 arrays.
    let mut bytes: Vec<u8> = Vec::new(); // an empty AnyValue
    for _ in 0..100_000 {
        // Wrap the encoded value in ArrayValue{values:[…]} and AnyValue{array_value:…} by hand:
        // building the nested struct itself would recurse when dropped.
        let mut arr = vec![0x0a];
        prost::encoding::encode_varint(bytes.len() as u64, &mut arr);
        arr.extend_from_slice(&bytes);
        let mut any = vec![0x2a];
        prost::encoding::encode_varint(arr.len() as u64, &mut any);
        any.extend_from_slice(&arr);
        bytes = any;
    }
    assert!(
        <opentelemetry_proto::tonic::common::v1::AnyValue as prost::Message>::decode(
            bytes.as_slice()
        )
        .is_err()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_bytes_panic_the_decoders(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let bytes = Bytes::from(data);
        if let Ok(req) = decode_request(Format::Protobuf, &bytes) {
            let _ = convert_traces(req);
        }
        if let Ok(req) = decode_request(Format::Json, &bytes) {
            let _ = convert_traces(req);
        }
    }

    #[test]
    fn mutated_fixtures_never_panic(pos in 0usize..4000, byte in any::<u8>()) {
        let mut data = fixture("sdk_two_spans.json").to_vec();
        let at = pos % data.len();
        data[at] = byte;
        if let Ok(req) = decode_request(Format::Json, &Bytes::from(data)) {
            let _ = convert_traces(req);
        }
    }
}
