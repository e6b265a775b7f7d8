-- Spans as compressed blocks (storage/src/block): each commit writes its spans, grouped by trace,
-- as one block of columns. `blocks` keeps the commit's seq range and time range as before, plus
-- the summary a search checks before it reads the block (NULL: a commit of the row store, whose
-- spans are rows of `spans`, read in place until retention removes them); the compressed
-- columns are a row of `block_data` (already compressed: stored out of line, not compressed
-- again).
ALTER TABLE blocks ADD COLUMN summary BYTEA;
-- Tiered retention: the traces to keep once the block is older than `retention_full`, and why
-- (storage/src/block/keep.rs); NULL once the block holds only those. Then `span_count` says how
-- many spans it holds (NULL: all of first_seq..=last_seq).
ALTER TABLE blocks ADD COLUMN keep BYTEA;
ALTER TABLE blocks ADD COLUMN span_count INTEGER;
CREATE INDEX blocks_to_thin ON blocks (first_seq) WHERE keep IS NOT NULL;
CREATE TABLE block_data (
    first_seq  BIGINT PRIMARY KEY,
    data       BYTEA NOT NULL
);
ALTER TABLE block_data ALTER COLUMN data SET STORAGE EXTERNAL;

-- Each service's part of each block: the start times of its spans there and a summary of them
-- alone. A search that names a service (Jaeger's always does) reads only that service's rows, in
-- the order of this key, and decodes only the blocks where that service may have what it asks.
CREATE TABLE block_services (
    service       TEXT    NOT NULL,
    max_start_ns  BIGINT  NOT NULL,
    first_seq     BIGINT  NOT NULL,
    min_start_ns  BIGINT  NOT NULL,
    summary       BYTEA   NOT NULL,
    PRIMARY KEY (service, max_start_ns, first_seq)
);
CREATE INDEX block_services_first_seq ON block_services (first_seq);

-- The seqs blocks take: one counter, continuing after the rows' identity.
CREATE TABLE span_seq (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  BIGINT NOT NULL
);
INSERT INTO span_seq (id, last_seq)
    VALUES (1, GREATEST(COALESCE((SELECT MAX(seq) FROM spans), 0), COALESCE((SELECT MAX(last_seq) FROM blocks), 0)));

-- A trace's spans in a block: the trace key (as SQLite's trace_index: the id's first 8 bytes, the
-- last 8 for a 64-bit id) and the seq range of its spans there. One entry per trace and commit.
CREATE TABLE trace_index (
    trace_key   BYTEA   NOT NULL,
    first_seq   BIGINT  NOT NULL,
    span_count  INTEGER NOT NULL,
    PRIMARY KEY (trace_key, first_seq)
);
CREATE INDEX trace_index_first_seq ON trace_index (first_seq);
