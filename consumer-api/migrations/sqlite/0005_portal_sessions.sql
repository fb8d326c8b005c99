-- Consumer portal sessions. A row is minted as a one-time link (only the SHA-256 of its token
-- is kept) and becomes a browser session when the link is opened (the SHA-256 of the cookie
-- token is kept). Times the store compares are Unix milliseconds.
CREATE TABLE portal_sessions (
    id                 TEXT    NOT NULL PRIMARY KEY, -- ps_<ULID>
    consumer_id        TEXT    NOT NULL,
    link_hash          TEXT    NOT NULL UNIQUE,      -- hex SHA-256 of the link token
    link_expires_ms    INTEGER NOT NULL,
    session_ttl_ms     INTEGER NOT NULL,
    session_hash       TEXT    UNIQUE,               -- hex SHA-256 of the cookie token, once opened
    session_expires_ms INTEGER,
    theme              TEXT,                         -- JSON: name, logo_url, accent
    created_at         TEXT    NOT NULL,
    opened_at          TEXT,
    revoked_at         TEXT
);
CREATE INDEX portal_sessions_consumer ON portal_sessions (consumer_id, id);
