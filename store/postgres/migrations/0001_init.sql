-- Records are stored as their JSON encoding (bytea: Go's JSON may carry
-- \u0000, which jsonb refuses) beside the columns queries need.

CREATE TABLE tenants (
    id      text PRIMARY KEY,
    inbound text NOT NULL UNIQUE, -- lower(inbound address)
    data    bytea NOT NULL
);

CREATE TABLE users (
    tenant text NOT NULL REFERENCES tenants (id),
    id     text NOT NULL,
    email  text NOT NULL, -- lower(email)
    data   bytea NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, email)
);

CREATE TABLE candidates (
    tenant text NOT NULL REFERENCES tenants (id),
    id     text NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE candidate_emails (
    tenant    text NOT NULL,
    email     text NOT NULL, -- lower(email)
    candidate text NOT NULL,
    PRIMARY KEY (tenant, email)
);

CREATE SEQUENCE thread_ids;
CREATE SEQUENCE message_ids;

CREATE TABLE threads (
    tenant    text NOT NULL,
    id        bigint NOT NULL,
    candidate text NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX threads_candidate ON threads (tenant, candidate);

-- Raw message bytes, committed in the same transaction as their record.
CREATE TABLE raw_blobs (
    id    bigserial PRIMARY KEY,
    bytes bytea NOT NULL
);
ALTER TABLE raw_blobs ALTER COLUMN bytes SET STORAGE EXTERNAL; -- already compressed or small: skip pglz

CREATE TABLE messages (
    tenant    text NOT NULL,
    id        bigint NOT NULL,
    thread    bigint NOT NULL,
    direction text NOT NULL,
    status    text NOT NULL,
    sent_by   text NOT NULL,
    msgid     text NOT NULL,
    received  timestamptz NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX messages_thread ON messages (tenant, thread, id);
CREATE INDEX messages_received ON messages (tenant, received);
CREATE INDEX messages_id ON messages (id);
CREATE INDEX messages_sending ON messages (received) WHERE status = 'sending';

-- Message-IDs for matching rule 2 (issued, learned, received): the first
-- holder keeps an id.
CREATE TABLE msgids (
    tenant  text NOT NULL,
    msgid   text NOT NULL,
    thread  bigint NOT NULL,
    message bigint NOT NULL,
    PRIMARY KEY (tenant, msgid)
);

-- Duplicate keys per thread (Message-ID or sha256:digest): the unique key
-- decides which of two concurrent copies is stored.
CREATE TABLE thread_copies (
    tenant  text NOT NULL,
    thread  bigint NOT NULL,
    dk      text NOT NULL,
    message bigint NOT NULL,
    PRIMARY KEY (tenant, thread, dk)
);

CREATE TABLE conv_index (
    tenant text NOT NULL,
    conv   text NOT NULL,
    thread bigint NOT NULL,
    PRIMARY KEY (tenant, conv)
);

-- Decision counters: one row per node, summed on read (no hot row).
CREATE TABLE counters (
    tenant   text NOT NULL,
    hour     timestamptz NOT NULL,
    decision text NOT NULL,
    reason   text NOT NULL,
    node     text NOT NULL,
    n        bigint NOT NULL,
    PRIMARY KEY (tenant, hour, decision, reason, node)
);

CREATE TABLE last_seen (
    tenant text PRIMARY KEY,
    at     timestamptz NOT NULL
);

CREATE TABLE kv (
    k       text PRIMARY KEY,
    expires timestamptz, -- NULL: never
    value   bytea NOT NULL
);

-- The webhook outbox. done_at is when an event was delivered or given up.
CREATE TABLE outbox (
    seq          bigserial PRIMARY KEY,
    tenant       text NOT NULL,
    type         text NOT NULL,
    created      timestamptz NOT NULL,
    state        text NOT NULL,
    attempts     int NOT NULL DEFAULT 0,
    next_attempt timestamptz,
    done_at      timestamptz,
    last_error   text NOT NULL DEFAULT '',
    data         bytea NOT NULL
);
CREATE INDEX outbox_due ON outbox (next_attempt, seq) WHERE state = 'pending';
CREATE INDEX outbox_delivered ON outbox (done_at) WHERE state = 'delivered';
CREATE INDEX outbox_dead ON outbox (seq) WHERE state = 'dead';
-- A hot queue table: vacuum it early so dead tuples do not pile up.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

CREATE SEQUENCE quarantine_ids;
CREATE TABLE quarantine (
    tenant  text NOT NULL,
    id      bigint NOT NULL,
    expires timestamptz NOT NULL,
    raw_id  bigint,
    data    bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX quarantine_expires ON quarantine (expires);

CREATE TABLE grants (
    tenant text NOT NULL,
    "user" text NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (tenant, "user")
);

CREATE SEQUENCE delegation_ids;
CREATE TABLE delegations (
    tenant    text NOT NULL,
    id        bigint NOT NULL,
    requester text NOT NULL,
    grantor   text NOT NULL,
    live      boolean NOT NULL,
    data      bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
-- A pair has at most one live (requested or active) delegation.
CREATE UNIQUE INDEX delegations_live ON delegations (tenant, requester, grantor) WHERE live;

CREATE TABLE meta (
    k text PRIMARY KEY,
    v text NOT NULL
);
