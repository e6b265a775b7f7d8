-- Spans, one row each, in commit order (seq; AUTOINCREMENT so that a seq is never reused after
-- retention empties the table, which `blocks` ranges rely on). Search columns are typed; the rest is JSON.
-- Indexes are chosen for ingest: each commit appends at the end of `seq` and of every service's
-- range of `spans_service`; only `spans_trace` takes random inserts (one per span).
CREATE TABLE spans (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX spans_service ON spans (service, seq);

-- One row per commit: which seq range it wrote and the span start times in it. A time-range
-- search becomes a seq range; retention deletes whole commits by their age.
CREATE TABLE blocks (
    first_seq     INTEGER PRIMARY KEY,
    last_seq      INTEGER NOT NULL,
    min_start_ns  INTEGER NOT NULL,
    max_start_ns  INTEGER NOT NULL,
    committed_ns  INTEGER NOT NULL
);
CREATE INDEX blocks_max_start ON blocks (max_start_ns);
CREATE INDEX blocks_committed ON blocks (committed_ns);

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
