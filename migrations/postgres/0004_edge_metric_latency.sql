-- Latencies from proxies' histograms per edge minute (used where spans gave none). Rows written
-- before this migration have none.
ALTER TABLE edge_minutes ADD COLUMN metric_latency BYTEA NOT NULL DEFAULT ''::bytea;
