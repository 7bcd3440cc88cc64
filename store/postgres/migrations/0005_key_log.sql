-- The keys a group commit inserts (Message-IDs and duplicate keys), one
-- row per commit, written in that commit. The commit's notice is now sent
-- after it, in a transaction of its own: a transaction that NOTIFYs holds
-- PostgreSQL's notify queue lock from its commit's start until its WAL
-- flush returned, so the group commits of every node queued behind each
-- other's flushes (two nodes stored less than one). A notice sent after
-- the commit can be lost (the node dies in between); every node therefore
-- also reads this table every second, from where its last read's snapshot
-- left off (keys.go), so a lost notice delays a key by a second, never
-- for good. Rows are pruned after ten minutes.
CREATE TABLE key_log (
    xid      xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at       timestamptz NOT NULL DEFAULT now(),
    payloads text[] NOT NULL -- notice payloads ("k..." of keys.go)
);
CREATE INDEX key_log_xid ON key_log (xid);
CREATE INDEX key_log_at ON key_log (at);
ALTER TABLE key_log SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
