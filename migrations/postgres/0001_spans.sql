-- Spans, one row each, in commit order (seq). Search columns are typed; the rest is JSON.
-- Indexes are chosen for ingest: each commit appends at the end of `seq` and of every service's
-- range of `spans_service`; only `spans_trace` takes random inserts (one per span).
CREATE TABLE spans (
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trace_id        BYTEA   NOT NULL,
    span_id         BYTEA   NOT NULL,
    parent_span_id  BYTEA,
    service         TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    kind            SMALLINT NOT NULL,
    start_ns        BIGINT  NOT NULL,
    duration_ns     BIGINT  NOT NULL,
    status_code     SMALLINT NOT NULL,
    is_error        BOOLEAN NOT NULL,
    resource_id     BIGINT  NOT NULL,
    attributes      JSONB   NOT NULL,
    extra           TEXT
);
CREATE INDEX spans_trace ON spans (trace_id);
CREATE INDEX spans_service ON spans (service, seq);

-- One row per commit: which seq range it wrote and the span start times in it. A time-range
-- search becomes a seq range; retention deletes whole commits by their age.
CREATE TABLE blocks (
    first_seq     BIGINT PRIMARY KEY,
    last_seq      BIGINT NOT NULL,
    min_start_ns  BIGINT NOT NULL,
    max_start_ns  BIGINT NOT NULL,
    committed_ns  BIGINT NOT NULL
);
CREATE INDEX blocks_max_start ON blocks (max_start_ns);
CREATE INDEX blocks_committed ON blocks (committed_ns);

-- Resources are shared by many spans; they are keyed by a hash of their content.
CREATE TABLE resources (
    id          BIGINT PRIMARY KEY,
    service     TEXT  NOT NULL,
    attributes  JSONB NOT NULL
);

-- The service and operation lists, kept apart so that listing them never scans spans.
CREATE TABLE operations (
    service     TEXT     NOT NULL,
    name        TEXT     NOT NULL,
    kind        SMALLINT NOT NULL,
    last_seen_ns BIGINT  NOT NULL,
    PRIMARY KEY (service, name, kind)
);
