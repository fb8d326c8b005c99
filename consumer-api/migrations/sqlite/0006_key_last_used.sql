-- When each API key was last used (RFC 3339), written at most once a minute per key and
-- consumer-api instance, off the request's path. NULL until its first use.
ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
