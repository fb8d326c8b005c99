-- Subscriptions and their signing secrets (PostgreSQL; the same columns as the SQLite set).
--
-- Portable types on purpose: TEXT and BIGINT only (booleans as 0/1, times as RFC 3339 text), so
-- the same queries run on both backends through sqlx's Any driver.
CREATE TABLE subscriptions (
    id          TEXT    NOT NULL PRIMARY KEY,  -- sub_<ULID>: id order is creation order
    url         TEXT    NOT NULL,
    event_types TEXT    NOT NULL,              -- JSON array of topic filters
    consumer    TEXT,
    description TEXT,
    enabled     BIGINT NOT NULL DEFAULT 1,
    secret      TEXT    NOT NULL,              -- whsec_…
    revision    BIGINT NOT NULL DEFAULT 1,    -- +1 on every change
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

-- `GET /v1/subscriptions?consumer=…` pages through one consumer's subscriptions in id order.
CREATE INDEX subscriptions_consumer_id ON subscriptions (consumer, id);
