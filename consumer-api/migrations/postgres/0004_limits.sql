-- Per-subscription delivery limits, enforced by the dispatchers together: a rate in requests
-- per second (NULL: unlimited) and a cap on requests in flight (64, the former fixed cap).
ALTER TABLE subscriptions ADD COLUMN rate_limit DOUBLE PRECISION;
ALTER TABLE subscriptions ADD COLUMN max_in_flight BIGINT NOT NULL DEFAULT 64;
