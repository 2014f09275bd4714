-- Whether the stored request body is all the client sent (exchange schema v3, request.body_complete):
-- false when the exchange ended before the body did (the upstream answered early, or the client left),
-- when the proxy refused the body for its size (stored empty), or when the capture log was full or the
-- proxy stopped before the body's end was recorded. Rows stored before this migration keep NULL (not
-- known) until `kgb replay`; an event from a producer older than v3 reads as true.
ALTER TABLE exchanges ADD COLUMN request_body_complete boolean;
