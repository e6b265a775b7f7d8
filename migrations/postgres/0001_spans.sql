-- Spans, one row each. Search columns are typed; the rest of the span is JSON.
CREATE TABLE spans (
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
CREATE INDEX spans_service_start ON spans (service, start_ns);
CREATE INDEX spans_start ON spans (start_ns);

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
