-- Per-minute rollups of the service graph's edges, so the graph of a past window can be rebuilt
-- after a restart. One row per (minute, version-level edge); the edge key, counts and latency
-- sketches are encoded by the storage crate (see storage/src/rollup.rs).
CREATE TABLE edge_minutes (
    minute BIGINT NOT NULL,
    edge TEXT NOT NULL,
    counts TEXT NOT NULL,
    metric_counts TEXT NOT NULL,
    server_latency BYTEA NOT NULL,
    client_latency BYTEA NOT NULL,
    PRIMARY KEY (minute, edge)
);
