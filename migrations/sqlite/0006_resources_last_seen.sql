-- Resources follow retention: each is stamped with the last commit that wrote it (writers stamp
-- it again after every retention round), and retention deletes those not stamped since its
-- cutoff. Rows already here are stamped now, so they go one retention period from now, when the
-- spans that refer to them have gone.
ALTER TABLE resources ADD COLUMN last_seen_ns INTEGER NOT NULL DEFAULT 0;
UPDATE resources SET last_seen_ns = CAST((julianday('now') - 2440587.5) * 86400000000000.0 AS INTEGER);
