-- atender-webhooks on PostgreSQL, schema version 2: the per-subscription rate limit.
--
-- rate_limit_per_second is the subscription's rateLimitPerSecond (NULL: no limit).
-- rate_granted_at_us is the limiter's state (Unix microseconds): when the subscription's last
-- attempt was granted its start. A claim checks and stamps it under the subscription's row
-- lock, so the limit holds across every node. It is engine state, not part of the
-- subscription: writes of the subscription's fields leave it alone.
-- ADD COLUMN IF NOT EXISTS: nodes starting together race harmlessly, as in version 1.

ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS rate_limit_per_second INT;
ALTER TABLE subscriptions ADD COLUMN IF NOT EXISTS rate_granted_at_us BIGINT;
