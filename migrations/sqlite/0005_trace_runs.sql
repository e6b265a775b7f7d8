-- Finding a trace by id without a per-span random index. `spans_trace` put every new span on a
-- random page of one growing B-tree, and each commit wrote every page it touched whole to the
-- write-ahead log: most of what a commit wrote was that index.
--
-- Instead, each commit writes a sorted run of (trace key, seq range) at the end of `trace_index`,
-- and the writer merges runs of one level, `fan-in` at a time, into one run of the next level
-- (storage/src/trace_runs.rs), moving a slice of keys per transaction. A lookup seeks its key in
-- every run. An entry is in exactly one run at any commit, so a lookup never misses or doubles
-- one, even in the middle of a merge or after a crash.
CREATE TABLE trace_runs (
    run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    level        INTEGER NOT NULL,
    -- The seq range of the spans its entries point at.
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    entries      INTEGER NOT NULL,
    -- On a run being merged away: the run its entries move into.
    merged_into  INTEGER,
    -- On a merged run being filled: the first key not moved yet (8 bytes, big-endian); NULL once done.
    next_key     BLOB
);
CREATE INDEX trace_runs_merged_into ON trace_runs (merged_into);

-- trace_key: the trace id's first 8 bytes (a lookup checks the whole id on the span). Spans of a
-- trace that one commit wrote are consecutive (the writer sorts each commit by trace id), so
-- one entry covers them: seqs first_seq .. first_seq + span_count - 1.
CREATE TABLE trace_index (
    run_id      INTEGER NOT NULL,
    trace_key   BLOB    NOT NULL,
    first_seq   INTEGER NOT NULL,
    span_count  INTEGER NOT NULL,
    PRIMARY KEY (run_id, trace_key, first_seq)
) WITHOUT ROWID;

-- Spans stored before this migration: one run, at a level no merge reaches, dropped whole once
-- retention has deleted its spans.
INSERT INTO trace_runs (level, first_seq, last_seq, entries)
    SELECT 1000, MIN(seq), MAX(seq), COUNT(*) FROM spans HAVING COUNT(*) > 0;
INSERT INTO trace_index (run_id, trace_key, first_seq, span_count)
    SELECT r.run_id, substr(s.trace_id, 1, 8), s.seq, 1 FROM spans s, trace_runs r
    ORDER BY substr(s.trace_id, 1, 8), s.seq;

DROP INDEX spans_trace;
