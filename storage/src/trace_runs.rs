//! SQLite's trace index: sorted runs, merged in the background (see `migrations/sqlite/0005_trace_runs.sql`).
//!
//! Each commit appends one run: its traces' keys (the first 8 bytes of the id) with the seq range
//! of their spans, in key order, so the pages it writes are new pages at the end of the B-tree
//! instead of a random page per span. Between commits the writer takes a step of maintenance:
//! merging `FAN_IN` runs of one level into a run of the next (one key slice per transaction),
//! or dropping a run whose spans retention has deleted. A lookup seeks its key in every run;
//! with `FAN_IN` = 8 there are at most 7 idle runs per level, and a level holds 8× the entries
//! of the one below.

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

/// Runs of one level merged at once.
pub(crate) const FAN_IN: i64 = 8;
/// Entries one maintenance step moves or deletes, about: a step is one transaction, taken between
/// two commits of spans, so this bounds how long it holds them up.
pub(crate) const STEP_ENTRIES: u64 = 8_192;

/// The FROM and WHERE of a lookup, followed by `AND i.trace_key IN (…) AND s.trace_id IN (…)`:
/// a seek per run and key, then the entry's seqs; the whole id is checked on the span.
pub(crate) const LOOKUP_FROM: &str = "trace_index i JOIN spans s ON s.seq BETWEEN i.first_seq AND i.first_seq + i.span_count - 1 WHERE i.run_id IN (SELECT run_id FROM trace_runs)";
/// The level of the run a migration made of spans stored before runs existed: never merged.
const LEGACY_LEVEL: i64 = 1000;

/// The index key of a trace id: its first 8 bytes, random in a 128-bit id; a 64-bit id (Zipkin's
/// B3, older Jaeger clients) has zeros there, so its key is its last 8 bytes instead.
pub(crate) fn trace_key(trace_id: &[u8; 16]) -> [u8; 8] {
    let (high, low) = trace_id.split_at(8);
    let mut key = [0u8; 8];
    key.copy_from_slice(if high == [0u8; 8] { low } else { high });
    key
}

/// The key entries of 64-bit ids were stored under before they had their own (their first 8
/// bytes): a lookup of a 64-bit id seeks it too, so spans stored then are found until retention
/// removes them.
pub(crate) const OLD_64_BIT_KEY: [u8; 8] = [0; 8];

/// Whether a lookup of this id also seeks [`OLD_64_BIT_KEY`].
pub(crate) fn is_64_bit(trace_id: &[u8; 16]) -> bool {
    trace_id[..8] == OLD_64_BIT_KEY
}

/// The order the writer stores a commit's rows in: by key, then by id, so that each trace's
/// spans get consecutive seqs and the run's entries come in key order.
pub(crate) fn row_order(trace_id: &[u8; 16]) -> ([u8; 8], [u8; 16]) {
    (trace_key(trace_id), *trace_id)
}

/// One entry: spans `first_seq .. first_seq + span_count` belong to traces with this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub key: [u8; 8],
    pub first_seq: i64,
    pub span_count: i64,
}

/// Appends the run of one commit; `entries` are in key order.
pub(crate) fn append_run(
    tx: &Transaction,
    entries: &[Entry],
    first_seq: i64,
    last_seq: i64,
) -> rusqlite::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO trace_runs (level, first_seq, last_seq, entries) VALUES (0, ?1, ?2, ?3)",
    )?
    .execute(params![first_seq, last_seq, entries.len() as i64])?;
    let run = tx.last_insert_rowid();
    insert_entries(tx, run, entries)
}

fn insert_entries(tx: &Transaction, run: i64, entries: &[Entry]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO trace_index (run_id, trace_key, first_seq, span_count) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for e in entries {
        insert.execute(params![run, &e.key[..], e.first_seq, e.span_count])?;
    }
    Ok(())
}

/// What a maintenance step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Moved one slice of a merge (entries moved, entries dropped as deleted by retention).
    Merged { moved: u64, dropped: u64 },
    /// Started merging runs of this level.
    Started { level: i64 },
    /// Deleted entries of a run whose spans are all gone.
    Dropped { entries: u64 },
    /// Nothing to do.
    Idle,
}

/// One step of maintenance, in one transaction, moving or deleting about `step_entries`
/// entries. Call until it returns `Step::Idle`.
pub(crate) fn step(conn: &mut Connection, step_entries: u64) -> rusqlite::Result<Step> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let floor = live_floor(&tx)?;
    let step = if let Some((run, next_key)) = tx
        .query_row(
            "SELECT run_id, next_key FROM trace_runs WHERE next_key IS NOT NULL ORDER BY run_id LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?
    {
        merge_slice(&tx, run, key_value(&next_key), floor, step_entries)?
    } else if let Some(run) = tx
        .query_row(
            "SELECT run_id FROM trace_runs WHERE last_seq < ?1 AND merged_into IS NULL AND next_key IS NULL ORDER BY run_id LIMIT 1",
            [floor],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
    {
        drop_entries(&tx, run, step_entries)?
    } else if let Some(level) = tx
        .query_row(
            "SELECT level FROM trace_runs WHERE merged_into IS NULL AND next_key IS NULL AND level < ?1 GROUP BY level HAVING COUNT(*) >= ?2 ORDER BY level LIMIT 1",
            [LEGACY_LEVEL, FAN_IN],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
    {
        start_merge(&tx, level)?
    } else {
        Step::Idle
    };
    tx.commit()?;
    Ok(step)
}

/// The lowest seq still stored, in a row or a block: runs and entries wholly below it point at
/// nothing.
fn live_floor(tx: &Transaction) -> rusqlite::Result<i64> {
    tx.query_row(
        "SELECT COALESCE((SELECT MIN(s) FROM (SELECT (SELECT seq FROM spans ORDER BY seq LIMIT 1) AS s UNION ALL SELECT (SELECT first_seq FROM block_data ORDER BY first_seq LIMIT 1))), (SELECT seq + 1 FROM sqlite_sequence WHERE name = 'spans'), 0)",
        [],
        |r| r.get(0),
    )
}

/// The oldest `FAN_IN` idle runs of `level` become the sources of a new run one level up.
fn start_merge(tx: &Transaction, level: i64) -> rusqlite::Result<Step> {
    let sources: Vec<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT run_id, first_seq, last_seq FROM trace_runs WHERE level = ?1 AND merged_into IS NULL AND next_key IS NULL ORDER BY run_id LIMIT ?2",
        )?
        .query_map([level, FAN_IN], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let first = sources.iter().map(|s| s.1).min().unwrap_or(0);
    let last = sources.iter().map(|s| s.2).max().unwrap_or(0);
    tx.execute(
        "INSERT INTO trace_runs (level, first_seq, last_seq, entries, next_key) VALUES (?1, ?2, ?3, 0, ?4)",
        params![level + 1, first, last, &0u64.to_be_bytes()[..]],
    )?;
    let run = tx.last_insert_rowid();
    let mut mark = tx.prepare_cached("UPDATE trace_runs SET merged_into = ?1 WHERE run_id = ?2")?;
    for (source, _, _) in &sources {
        mark.execute([run, *source])?;
    }
    Ok(Step::Started { level })
}

/// Moves the sources' entries with keys in the next slice into `run`, leaving out those whose
/// spans retention deleted. The slices split the key space evenly (trace ids are random), each
/// holding about `STEP_ENTRIES` of the sources' entries.
fn merge_slice(
    tx: &Transaction,
    run: i64,
    lo: u64,
    floor: i64,
    step_entries: u64,
) -> rusqlite::Result<Step> {
    let sources: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT run_id, entries FROM trace_runs WHERE merged_into = ?1")?
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let total: u64 = sources.iter().map(|s| s.1.max(0) as u64).sum();
    let slices = total
        .div_ceil(step_entries.max(1))
        .max(1)
        .next_power_of_two();
    let hi = lo as u128 + (1u128 << 64) / slices as u128;
    let hi = u64::try_from(hi).ok();
    let lo_key = lo.to_be_bytes();
    let hi_key = hi.map(u64::to_be_bytes);
    let mut moved = Vec::new();
    for (source, _) in &sources {
        moved.extend(slice_entries(tx, *source, &lo_key, hi_key.as_ref())?);
        delete_slice(tx, *source, &lo_key, hi_key.as_ref())?;
    }
    let before = moved.len();
    moved.retain(|e| e.first_seq + e.span_count > floor);
    let dropped = (before - moved.len()) as u64;
    moved.sort_unstable();
    insert_entries(tx, run, &moved)?;
    tx.execute(
        "UPDATE trace_runs SET entries = entries + ?1, next_key = ?2 WHERE run_id = ?3",
        params![moved.len() as i64, hi_key.as_ref().map(|k| &k[..]), run],
    )?;
    if hi.is_none() {
        tx.execute("DELETE FROM trace_runs WHERE merged_into = ?1", [run])?;
    }
    Ok(Step::Merged {
        moved: moved.len() as u64,
        dropped,
    })
}

fn slice_entries(
    tx: &Transaction,
    run: i64,
    lo: &[u8; 8],
    hi: Option<&[u8; 8]>,
) -> rusqlite::Result<Vec<Entry>> {
    let map = |r: &rusqlite::Row| {
        let key: Vec<u8> = r.get(0)?;
        Ok(Entry {
            key: key_bytes(&key),
            first_seq: r.get(1)?,
            span_count: r.get(2)?,
        })
    };
    match hi {
        Some(hi) => tx
            .prepare_cached("SELECT trace_key, first_seq, span_count FROM trace_index WHERE run_id = ?1 AND trace_key >= ?2 AND trace_key < ?3")?
            .query_map(params![run, &lo[..], &hi[..]], map)?
            .collect(),
        None => tx
            .prepare_cached("SELECT trace_key, first_seq, span_count FROM trace_index WHERE run_id = ?1 AND trace_key >= ?2")?
            .query_map(params![run, &lo[..]], map)?
            .collect(),
    }
}

fn delete_slice(
    tx: &Transaction,
    run: i64,
    lo: &[u8; 8],
    hi: Option<&[u8; 8]>,
) -> rusqlite::Result<()> {
    match hi {
        Some(hi) => tx
            .prepare_cached(
                "DELETE FROM trace_index WHERE run_id = ?1 AND trace_key >= ?2 AND trace_key < ?3",
            )?
            .execute(params![run, &lo[..], &hi[..]])?,
        None => tx
            .prepare_cached("DELETE FROM trace_index WHERE run_id = ?1 AND trace_key >= ?2")?
            .execute(params![run, &lo[..]])?,
    };
    Ok(())
}

/// Deletes up to `step_entries` entries of a run whose spans are all gone, then the run.
fn drop_entries(tx: &Transaction, run: i64, step_entries: u64) -> rusqlite::Result<Step> {
    let n = tx
        .prepare_cached(
            "DELETE FROM trace_index WHERE run_id = ?1 AND (trace_key, first_seq) IN (SELECT trace_key, first_seq FROM trace_index WHERE run_id = ?1 ORDER BY trace_key, first_seq LIMIT ?2)",
        )?
        .execute(params![run, step_entries as i64])?;
    if (n as u64) < step_entries {
        tx.execute("DELETE FROM trace_runs WHERE run_id = ?1", [run])?;
    }
    Ok(Step::Dropped { entries: n as u64 })
}

/// A key read back from the database: 8 bytes, or anything else padded or cut to 8.
fn key_bytes(b: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    let n = b.len().min(8);
    key[..n].copy_from_slice(&b[..n]);
    key
}

fn key_value(b: &[u8]) -> u64 {
    u64::from_be_bytes(key_bytes(b))
}

/// Groups rows sorted by trace id into entries: consecutive seqs of one trace make one entry.
pub(crate) fn entries_of<'a>(
    sorted_ids: impl IntoIterator<Item = &'a [u8; 16]>,
    first_seq: i64,
) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut last: Option<&[u8; 16]> = None;
    for (i, id) in sorted_ids.into_iter().enumerate() {
        let seq = first_seq + i as i64;
        match (last, entries.last_mut()) {
            (Some(prev), Some(e)) if prev == id => e.span_count += 1,
            _ => entries.push(Entry {
                key: trace_key(id),
                first_seq: seq,
                span_count: 1,
            }),
        }
        last = Some(id);
    }
    entries
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The schema as the migrations leave it.
    fn database() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for m in [
            include_str!("../../migrations/sqlite/0001_spans.sql"),
            include_str!("../../migrations/sqlite/0005_trace_runs.sql"),
            include_str!("../../migrations/sqlite/0008_span_blocks.sql"),
        ] {
            conn.execute_batch(m).unwrap();
        }
        conn
    }

    fn id(trace: u64) -> [u8; 16] {
        // The same first 8 bytes for traces 2k and 2k+1: keys collide and the whole id decides.
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(
            &(trace / 2)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_be_bytes(),
        );
        id[8..].copy_from_slice(&trace.to_be_bytes());
        id
    }

    /// One commit as the writer makes it: rows sorted by trace id, then their run.
    fn commit(conn: &mut Connection, traces: &[u64], expected: &mut BTreeMap<u64, Vec<i64>>) {
        let mut ids: Vec<(u64, [u8; 16])> = traces.iter().map(|t| (*t, id(*t))).collect();
        ids.sort_by_key(|a| row_order(&a.1));
        let tx = conn.transaction().unwrap();
        let mut first = None;
        for (t, trace_id) in &ids {
            tx.execute(
                "INSERT INTO spans (trace_id, span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes) VALUES (?1, x'0000000000000001', 's', 'n', 1, 0, 0, 0, 0, 0, '{}')",
                [&trace_id[..]],
            )
            .unwrap();
            let seq = tx.last_insert_rowid();
            first.get_or_insert(seq);
            expected.entry(*t).or_default().push(seq);
        }
        let first = first.unwrap();
        let entries = entries_of(ids.iter().map(|(_, id)| id), first);
        append_run(&tx, &entries, first, first + ids.len() as i64 - 1).unwrap();
        tx.commit().unwrap();
    }

    fn lookup(conn: &Connection, trace: u64) -> Vec<i64> {
        let id = id(trace);
        let mut seqs: Vec<i64> = conn
            .prepare(&format!(
                "SELECT s.seq FROM {LOOKUP_FROM} AND i.trace_key = ?1 AND s.trace_id = ?2"
            ))
            .unwrap()
            .query_map(params![&trace_key(&id)[..], &id[..]], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        seqs.sort_unstable();
        seqs
    }

    fn check(conn: &Connection, expected: &BTreeMap<u64, Vec<i64>>, when: &str) {
        for (trace, seqs) in expected {
            assert_eq!(&lookup(conn, *trace), seqs, "trace {trace} {when}");
        }
        let (entries, spans): (i64, i64) = conn
            .query_row(
                "SELECT (SELECT COALESCE(SUM(span_count), 0) FROM trace_index), (SELECT COUNT(*) FROM spans)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(entries, spans, "every stored span has one entry {when}");
    }

    fn levels(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT level, COUNT(*) FROM trace_runs GROUP BY level ORDER BY level")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn entries_group_consecutive_spans_of_a_trace() {
        let (a, b) = (id(2), id(3));
        let sorted = [&a, &a, &b, &b, &b];
        let e = entries_of(sorted, 10);
        assert_eq!(
            e,
            vec![
                Entry {
                    key: trace_key(&a),
                    first_seq: 10,
                    span_count: 2
                },
                Entry {
                    key: trace_key(&b),
                    first_seq: 12,
                    span_count: 3
                },
            ]
        );
        assert_eq!(trace_key(&a), trace_key(&b));
    }

    /// Every trace is found whole after every step, each step being one transaction as a crash
    /// would leave it: merges of many slices (4 entries per step here), across three levels.
    #[test]
    fn lookups_stay_exact_through_every_step_of_every_merge() {
        let mut conn = database();
        let mut expected = BTreeMap::new();
        let mut steps = 0;
        let mut merged_slices = 0;
        for c in 0..80u64 {
            // Each trace spans two commits; some commits repeat a trace twice.
            let traces: Vec<u64> = (c * 3..c * 3 + 6).chain([c * 3]).collect();
            commit(&mut conn, &traces, &mut expected);
            // One step per commit, as the writer does under load.
            let s = step(&mut conn, 4).unwrap();
            steps += 1;
            merged_slices += matches!(s, Step::Merged { .. }) as u32;
            check(&conn, &expected, &format!("after commit {c} and {s:?}"));
        }
        loop {
            let s = step(&mut conn, 4).unwrap();
            check(&conn, &expected, &format!("after settling step {s:?}"));
            if s == Step::Idle {
                break;
            }
            steps += 1;
            merged_slices += matches!(s, Step::Merged { .. }) as u32;
        }
        assert!(
            merged_slices > 80,
            "{merged_slices} slices in {steps} steps"
        );
        let levels = levels(&conn);
        // 80 runs: 80 = 1×64 + 2×8 → one run at level 2, two at level 1, none at level 0.
        assert_eq!(levels, vec![(1, 2), (2, 1)]);
        let merging: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM trace_runs WHERE merged_into IS NOT NULL OR next_key IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(merging, 0);
    }

    /// Retention: a run whose spans are all gone is dropped whole, and entries of deleted spans
    /// in a run that still has live ones leave when it is merged.
    #[test]
    fn deleted_spans_leave_the_index() {
        let mut conn = database();
        let mut expected = BTreeMap::new();
        for c in 0..64u64 {
            commit(&mut conn, &[c * 2, c * 2 + 1], &mut expected);
        }
        // Runs 1–50 hold seqs 1–100 and run 51 seqs 101–102: delete seqs 1–101.
        conn.execute("DELETE FROM spans WHERE seq <= 101", [])
            .unwrap();
        expected.retain(|_, seqs| {
            seqs.retain(|s| *s > 101);
            !seqs.is_empty()
        });
        let (mut dropped, mut left_out) = (0, 0);
        loop {
            match step(&mut conn, 16).unwrap() {
                Step::Dropped { entries } => dropped += entries,
                Step::Merged { dropped, .. } => left_out += dropped,
                Step::Started { .. } => {}
                Step::Idle => break,
            }
        }
        check(
            &conn,
            &expected,
            "after dropping and merging past deleted spans",
        );
        assert_eq!((dropped, left_out), (100, 1));
        // Runs 51–58 merged; 59–64 wait for two more.
        assert_eq!(levels(&conn), vec![(0, 6), (1, 1)]);
        // Everything deleted: every run goes whole.
        let live: u64 = conn
            .query_row("SELECT COUNT(*) FROM trace_index", [], |r| r.get(0))
            .unwrap();
        conn.execute("DELETE FROM spans", []).unwrap();
        let mut dropped = 0;
        loop {
            match step(&mut conn, 5).unwrap() {
                Step::Dropped { entries } => dropped += entries,
                Step::Idle => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(dropped, live);
        assert_eq!(levels(&conn), vec![]);
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM trace_index", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    /// Spans stored before the runs existed: the migration indexes them as one run that lookups
    /// use, that no merge takes, and that goes once its spans are deleted.
    #[test]
    fn the_migration_indexes_spans_stored_before_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../../migrations/sqlite/0001_spans.sql"))
            .unwrap();
        let mut expected: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        for (i, trace) in [5u64, 9, 5, 4, 5].into_iter().enumerate() {
            conn.execute(
                "INSERT INTO spans (trace_id, span_id, service, name, kind, start_ns, duration_ns, status_code, is_error, resource_id, attributes) VALUES (?1, x'0000000000000001', 's', 'n', 1, 0, 0, 0, 0, 0, '{}')",
                [&id(trace)[..]],
            )
            .unwrap();
            expected.entry(trace).or_default().push(i as i64 + 1);
        }
        conn.execute_batch(include_str!("../../migrations/sqlite/0005_trace_runs.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../../migrations/sqlite/0008_span_blocks.sql"))
            .unwrap();
        check(&conn, &expected, "after the migration");
        for c in 0..8 {
            commit(&mut conn, &[100 + c], &mut expected);
        }
        while step(&mut conn, 16).unwrap() != Step::Idle {}
        check(&conn, &expected, "after merging the new runs");
        assert_eq!(levels(&conn), vec![(1, 1), (LEGACY_LEVEL, 1)]);
        conn.execute("DELETE FROM spans WHERE seq <= 5", [])
            .unwrap();
        assert_eq!(step(&mut conn, 16).unwrap(), Step::Dropped { entries: 5 });
        assert_eq!(levels(&conn), vec![(1, 1)]);
    }
}
