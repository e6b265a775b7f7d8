"""Writes collector/testdata/graph/shop.otlp.jsonl: real OpenTelemetry Python SDK exports (one
OTLP/JSON ExportTraceServiceRequest per line, one per service, as each service's exporter would
send them) of two traces through a small shop mesh. The Rust fixture test reads them back and
checks the service graph against shop.edges.json.

Run: .venv/bin/python tests/python/make_graph_fixture.py
"""
from __future__ import annotations

import json
from pathlib import Path

from opentelemetry import context, trace
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

OUT = Path(__file__).resolve().parents[2] / "collector" / "testdata" / "graph" / "shop.otlp.jsonl"
PROP = TraceContextTextMapPropagator()


def service(name: str, version: str) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(
        {"service.name": name, "service.namespace": "shop", "service.version": version}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("shop-fixture"), exporter


frontend, frontend_out = service("frontend", "v1")
checkout_v1, checkout_v1_out = service("checkout", "v1")
checkout_v2, checkout_v2_out = service("checkout", "v2")
payments, payments_out = service("payments", "v2")


def serve(tracer: trace.Tracer, carrier: dict, name: str, **attrs):
    """A SERVER span continuing the caller's context, as an instrumented server makes it."""
    return tracer.start_as_current_span(name, context=PROP.extract(carrier), kind=SpanKind.SERVER, attributes=attrs)


def call(tracer: trace.Tracer, name: str, **attrs) -> tuple:
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attrs)
    carrier: dict = {}
    PROP.inject(carrier, context=trace.set_span_in_context(span))
    return span, carrier


def checkout_request(checkout: trace.Tracer, carrier: dict, pay: bool) -> None:
    with serve(checkout, carrier, "POST /checkout", **{"http.request.method": "POST", "http.response.status_code": 200}):
        db = checkout.start_span("SELECT orders", kind=SpanKind.CLIENT,
                                 attributes={"db.system": "postgresql", "db.namespace": "orders"})
        db.end()
        if pay:
            charge, c2 = call(checkout, "POST /charge", **{"http.request.method": "POST", "http.response.status_code": 503})
            with serve(payments, c2, "POST /charge", **{"http.request.method": "POST", "http.response.status_code": 503}) as s:
                s.set_status(Status(StatusCode.ERROR, "card service down"))
            charge.set_status(Status(StatusCode.ERROR))
            charge.end()
            publish = checkout.start_span("orders publish", kind=SpanKind.PRODUCER,
                                          attributes={"messaging.system": "kafka", "messaging.destination.name": "orders"})
            publish.end()


def request(checkout: trace.Tracer, pay: bool) -> None:
    with frontend.start_as_current_span("GET /checkout", kind=SpanKind.SERVER,
                                        attributes={"http.request.method": "GET", "http.response.status_code": 200}):
        span, carrier = call(frontend, "POST /checkout", **{"http.request.method": "POST", "http.response.status_code": 200})
        token = context.attach(context.Context())
        try:
            checkout_request(checkout, carrier, pay)
        finally:
            context.detach(token)
        span.end()
        rec = frontend.start_span("GET /recommendations", kind=SpanKind.CLIENT,
                                  attributes={"peer.service": "recommendations", "http.request.method": "GET"})
        rec.end()
        with frontend.start_as_current_span("render"):
            pass


request(checkout_v1, pay=True)
request(checkout_v2, pay=False)

lines = []
for exporter in (frontend_out, checkout_v1_out, checkout_v2_out, payments_out):
    encoded = encode_spans(exporter.get_finished_spans())
    lines.append(json.dumps(json.loads(encoded.to_json()), separators=(",", ":")))
OUT.write_text("\n".join(lines) + "\n")
print(f"wrote {OUT} ({len(lines)} exports)")
