-- Spans, one row each. Search columns are typed; the rest of the span is JSON.
CREATE TABLE spans (
    trace_id        BLOB    NOT NULL,
    span_id         BLOB    NOT NULL,
    parent_span_id  BLOB,
    service         TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    kind            INTEGER NOT NULL,
    start_ns        INTEGER NOT NULL,
    duration_ns     INTEGER NOT NULL,
    status_code     INTEGER NOT NULL,
    is_error        INTEGER NOT NULL,
    resource_id     INTEGER NOT NULL,
    attributes      TEXT    NOT NULL,
    extra           TEXT
);
CREATE INDEX spans_trace ON spans (trace_id);
CREATE INDEX spans_service_start ON spans (service, start_ns);
CREATE INDEX spans_start ON spans (start_ns);

-- Resources are shared by many spans; they are keyed by a hash of their content.
CREATE TABLE resources (
    id          INTEGER PRIMARY KEY,
    service     TEXT NOT NULL,
    attributes  TEXT NOT NULL
);

-- The service and operation lists, kept apart so that listing them never scans spans.
CREATE TABLE operations (
    service     TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (service, name, kind)
) WITHOUT ROWID;
