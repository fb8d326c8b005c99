-- What an attempt sent and got back: the request's headers (credentials redacted) and the
-- response's (at most 32 headers, 4 KiB), each a JSON array of [name, value] pairs, NULL when
-- there were none; how many response headers those bounds left out.
ALTER TABLE attempts ADD COLUMN request_headers TEXT;
ALTER TABLE attempts ADD COLUMN response_headers TEXT;
ALTER TABLE attempts ADD COLUMN response_headers_omitted INTEGER NOT NULL DEFAULT 0;
