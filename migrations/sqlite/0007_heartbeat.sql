-- One row the readiness probe rewrites: a commit that changes a page proves the store takes
-- writes (a full disk or a read-only file fails it).
CREATE TABLE heartbeat (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    at_ns  INTEGER NOT NULL
);
INSERT INTO heartbeat (id, at_ns) VALUES (1, 0);
