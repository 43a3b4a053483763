-- atender-webhooks on PostgreSQL, schema version 1.
--
-- Kept within what CockroachDB and YugabyteDB also accept: TEXT, BIGINT, INT, BOOLEAN, BYTEA,
-- JSONB and TEXT[] columns, composite primary keys, partial indexes, IF NOT EXISTS. Times are
-- Unix milliseconds (BIGINT), as everywhere in the daemon; ids are the typed ids' text.

CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT[] NOT NULL,
    -- [[name, value], ...] in the order given
    headers JSONB NOT NULL,
    max_retries INT NOT NULL,
    retry_delay_seconds INT NOT NULL,
    is_active BOOLEAN NOT NULL,
    is_paused BOOLEAN NOT NULL,
    disable_reason TEXT,
    disabled_at BIGINT,
    consecutive_failures INT NOT NULL,
    last_delivery_at BIGINT,
    -- 'succeeded' | 'failed'
    last_delivery_status TEXT,
    last_delivery_response_code INT,
    last_delivery_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    secret TEXT NOT NULL,
    retired_secret TEXT,
    retired_secret_valid_until BIGINT
);
CREATE INDEX IF NOT EXISTS subscriptions_by_tenant ON subscriptions (tenant_id, id);

-- Checked against max_webhooks under a row lock in the create transaction.
CREATE TABLE IF NOT EXISTS tenant_counts (
    tenant_id TEXT PRIMARY KEY,
    subscriptions INT NOT NULL
);

-- A deleted subscription until its deliveries are purged (the purge resumes after a crash).
CREATE TABLE IF NOT EXISTS deleted_subscriptions (
    id TEXT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- the exact body sent on every attempt
    body BYTEA NOT NULL,
    -- deliveries that still reference the event; it is deleted at zero
    live_deliveries INT NOT NULL
);

CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    -- 'pending' | 'held' | 'succeeded' | 'failed' | 'expired'
    state TEXT NOT NULL,
    -- [{"at", "durationMs", "responseCode", "error"}, ...], oldest first, at most 50
    attempts JSONB NOT NULL,
    attempts_in_round INT NOT NULL,
    -- due time while pending
    next_attempt_at BIGINT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- while held: since when (hold_retention counts from here)
    held_since BIGINT,
    -- the node attempting it, and until when its claim holds (the lease)
    claimed_by TEXT,
    claimed_until BIGINT
);
-- the delivery log, newest first
CREATE INDEX IF NOT EXISTS deliveries_log ON deliveries (subscription_id, id);
-- the queue: one subscription's pending deliveries in due order
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (subscription_id, next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_held ON deliveries (subscription_id, held_since)
    WHERE state = 'held';
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (finished_at)
    WHERE finished_at IS NOT NULL;
-- claims under way, counted against a subscription's in-flight cap
CREATE INDEX IF NOT EXISTS deliveries_claimed ON deliveries (subscription_id, claimed_until)
    WHERE claimed_by IS NOT NULL;

CREATE TABLE IF NOT EXISTS idempotency (
    tenant_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    deliveries INT NOT NULL,
    fingerprint BYTEA,
    PRIMARY KEY (tenant_id, client_id)
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (created_at);

-- Keys every node shares, made by the first node that needs one (the portal's signing key).
CREATE TABLE IF NOT EXISTS shared_keys (
    name TEXT PRIMARY KEY,
    key BYTEA NOT NULL
);
