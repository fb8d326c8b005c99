-- Tenants and their API keys, secret rotation, and what the recorder keeps: events in order of
-- acceptance, delivery attempts, dead letters, and how long each subscription has been failing.
-- Times the store compares are Unix milliseconds (INTEGER); RFC 3339 text is kept for display.

ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
ALTER TABLE subscriptions ADD COLUMN previous_secret_expires_ms INTEGER;

CREATE TABLE consumers (
    id         TEXT NOT NULL PRIMARY KEY,
    name       TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT NOT NULL PRIMARY KEY,      -- key_<ULID>
    consumer_id TEXT NOT NULL,
    prefix      TEXT NOT NULL,                  -- first characters, to recognise a key
    key_hash    TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the whole key
    created_at  TEXT NOT NULL
);
CREATE INDEX api_keys_consumer ON api_keys (consumer_id, id);

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- the pull cursor: order of recording
    id          TEXT    NOT NULL UNIQUE,
    event_type  TEXT    NOT NULL,
    consumer    TEXT,
    accepted_ms INTEGER NOT NULL,
    body        TEXT    NOT NULL                   -- the envelope JSON as published
);
CREATE INDEX events_accepted ON events (accepted_ms);
CREATE INDEX events_consumer_seq ON events (consumer, seq);

CREATE TABLE attempts (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT    NOT NULL,
    subscription_id  TEXT    NOT NULL,
    attempt          INTEGER NOT NULL,
    at               TEXT    NOT NULL,
    at_ms            INTEGER NOT NULL,
    outcome          TEXT    NOT NULL,
    status           INTEGER,
    latency_ms       INTEGER NOT NULL,
    error            TEXT,
    response_excerpt TEXT,
    next_attempt_at  TEXT
);
CREATE INDEX attempts_subscription_seq ON attempts (subscription_id, seq);
CREATE INDEX attempts_event ON attempts (event_id);
CREATE INDEX attempts_at ON attempts (at_ms);

CREATE TABLE dead_letters (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,        -- dl_<ULID>
    event_id        TEXT    NOT NULL,
    subscription_id TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      TEXT,
    last_status     INTEGER,
    body            TEXT    NOT NULL,
    dead_ms         INTEGER NOT NULL,
    dead_at         TEXT    NOT NULL,
    redriven_at     TEXT
);
CREATE INDEX dead_letters_subscription_seq ON dead_letters (subscription_id, seq);
CREATE INDEX dead_letters_dead ON dead_letters (dead_ms);

CREATE TABLE subscription_health (
    subscription_id  TEXT NOT NULL PRIMARY KEY,
    failing_since_ms INTEGER                        -- first failure after the last success
);
