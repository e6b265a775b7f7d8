-- Spans as compressed blocks (storage/src/block): each commit writes its spans, grouped by trace,
-- as one block of columns. `blocks` keeps the commit's seq range and time range as before, plus
-- the summary a search checks before it reads the block (NULL: a commit of the row store, whose
-- spans are rows of `spans`, read in place until retention removes them); the compressed
-- columns are a row of `block_data`, so that a search's scan of `blocks` never reads them.
-- Seqs stay one sequence (sqlite_sequence's row for `spans`): a block's spans take the seqs
-- first_seq..last_seq in their order in the block, and `trace_index` points at them as before.
ALTER TABLE blocks ADD COLUMN summary BLOB;
CREATE TABLE block_data (
    first_seq  INTEGER PRIMARY KEY,
    data       BLOB NOT NULL
);
