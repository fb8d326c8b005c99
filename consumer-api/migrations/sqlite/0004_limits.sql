-- Per-subscription delivery limits, enforced by the dispatchers together: a rate in requests
-- per second in thousandths (NULL: unlimited) and a cap on requests in flight (64, the former fixed cap).
ALTER TABLE subscriptions ADD COLUMN rate_limit_millis INTEGER;  -- thousandths of a request per second
ALTER TABLE subscriptions ADD COLUMN max_in_flight INTEGER NOT NULL DEFAULT 64;
