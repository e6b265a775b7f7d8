-- Resources follow retention: each is stamped with the last commit that wrote it (writers stamp
-- it again after every retention round), and retention deletes those not stamped since its
-- cutoff. Rows already here are stamped now, so they go one retention period from now, when the
-- spans that refer to them have gone.
ALTER TABLE resources ADD COLUMN last_seen_ns BIGINT NOT NULL DEFAULT 0;
UPDATE resources SET last_seen_ns = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT;
