-- One row the readiness probe rewrites: a commit proves the store takes writes (a read-only
-- database or a lost connection fails it).
CREATE TABLE heartbeat (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    at_ns  BIGINT NOT NULL
);
INSERT INTO heartbeat (id, at_ns) VALUES (1, 0);
