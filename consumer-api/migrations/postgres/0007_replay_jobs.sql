-- Replay jobs (POST /v1/subscriptions/{id}/replay): a window of recorded events re-sent to one
-- subscription by a background task. A job first counts what it will send (`total`, up to the
-- event `last_seq`), then publishes in order of recording, moving `cursor_seq` and `published`
-- after every confirmed event, so an instance that takes it over (its `owner`'s lease ran out)
-- resumes after the last confirmed one. At most one queued or running job per subscription.
CREATE TABLE replay_jobs (
    id              TEXT    NOT NULL PRIMARY KEY, -- rpl_<ULID>
    subscription_id TEXT    NOT NULL,
    since_ms        BIGINT  NOT NULL,
    until_ms        BIGINT  NOT NULL,
    state           TEXT    NOT NULL,             -- queued, running, done, failed
    reason          TEXT,                         -- why it failed
    total           BIGINT,                       -- NULL until counted
    last_seq        BIGINT,                       -- the newest event counted
    cursor_seq      BIGINT  NOT NULL DEFAULT 0,   -- every wanted event up to here is confirmed
    published       BIGINT  NOT NULL DEFAULT 0,
    owner           TEXT,                         -- the instance running it
    lease_until_ms  BIGINT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    finished_ms     BIGINT,
    finished_at     TEXT
);
CREATE UNIQUE INDEX replay_jobs_one_active ON replay_jobs (subscription_id)
    WHERE state IN ('queued', 'running');
CREATE INDEX replay_jobs_state ON replay_jobs (state, lease_until_ms);
CREATE INDEX replay_jobs_finished ON replay_jobs (finished_ms);
