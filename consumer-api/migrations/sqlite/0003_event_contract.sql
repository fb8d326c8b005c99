-- The event contract: the event-type catalogue (schemas checked at ingest), and per
-- subscription the signature scheme with its ed25519 signing keys, a payload filter, static
-- headers and endpoint credentials; the health row learns when a circuit was seen open.

CREATE TABLE event_types (
    name        TEXT    NOT NULL PRIMARY KEY,
    description TEXT,
    schema      TEXT,                          -- JSON Schema (draft 2020-12) of data, or NULL
    examples    TEXT    NOT NULL,              -- JSON array of example data
    deprecated  INTEGER NOT NULL DEFAULT 0,
    revision    BIGINT  NOT NULL,              -- catalogue revision of the last change
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

-- One sequence for every change of the catalogue (deletions included), so ingest and the
-- dispatchers order a snapshot and the notifications around it.
CREATE TABLE catalogue_revision (
    id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    value BIGINT  NOT NULL
);
INSERT INTO catalogue_revision (id, value) VALUES (1, 0);

ALTER TABLE subscriptions ADD COLUMN signature_scheme TEXT NOT NULL DEFAULT 'v1';
ALTER TABLE subscriptions ADD COLUMN signing_key TEXT;                 -- whsk_…
ALTER TABLE subscriptions ADD COLUMN previous_signing_key TEXT;        -- during a rotation
ALTER TABLE subscriptions ADD COLUMN previous_signing_key_expires_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN filter TEXT;                      -- JSON payload filter
ALTER TABLE subscriptions ADD COLUMN headers TEXT;                     -- JSON object
ALTER TABLE subscriptions ADD COLUMN credentials TEXT;                 -- JSON basic/bearer

ALTER TABLE subscription_health ADD COLUMN circuit_opened_ms BIGINT;   -- first circuit_open since the last success
