-- Spans as compressed blocks (storage/src/block): each commit writes its spans, grouped by trace,
-- as one block of columns. `blocks` keeps the commit's seq range and time range as before, plus
-- the summary a search checks before it reads the block (NULL: a commit of the row store, whose
-- spans are rows of `spans`, read in place until retention removes them); the compressed
-- columns are a row of `block_data`, so that a search's scan of `blocks` never reads them.
-- Seqs stay one sequence (sqlite_sequence's row for `spans`): a block's spans take the seqs
-- first_seq..last_seq in their order in the block, and `trace_index` points at them as before.
ALTER TABLE blocks ADD COLUMN summary BLOB;
-- Tiered retention: the traces to keep once the block is older than `retention_full`, and why
-- (storage/src/block/keep.rs); NULL once the block holds only those. Then `span_count` says how
-- many spans it holds (NULL: all of first_seq..=last_seq).
ALTER TABLE blocks ADD COLUMN keep BLOB;
ALTER TABLE blocks ADD COLUMN span_count INTEGER;
CREATE INDEX blocks_to_thin ON blocks (first_seq) WHERE keep IS NOT NULL;
CREATE TABLE block_data (
    first_seq  INTEGER PRIMARY KEY,
    data       BLOB NOT NULL
);

-- Each service's part of each block: the start times of its spans there and a summary of them
-- alone. A search that names a service (Jaeger's always does) reads only that service's rows, in
-- the order of this key, and decodes only the blocks where that service may have what it asks.
CREATE TABLE block_services (
    service       TEXT    NOT NULL,
    max_start_ns  INTEGER NOT NULL,
    first_seq     INTEGER NOT NULL,
    min_start_ns  INTEGER NOT NULL,
    summary       BLOB    NOT NULL,
    PRIMARY KEY (service, max_start_ns, first_seq)
) WITHOUT ROWID;
CREATE INDEX block_services_first_seq ON block_services (first_seq);
