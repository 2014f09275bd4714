-- Queries of the winni consumer, loaded by consumers/sql.py.
-- Unqualified names: the connection's search_path picks the schema.

-- name: upsert_request
-- The request half of an exchange. Creates the row, or fills the half a
-- response event left empty; a request half already stored (a redelivery,
-- a replay) is left untouched, which makes the write idempotent on the event.
INSERT INTO exchanges AS e (
    exchange_id, session_key, session_source, agent_id, parent_agent_id,
    api_key_fingerprint, client,
    request_event_id, request_occurred_at, method, path, query, http_version,
    model, stream, received_at, request_headers,
    request_body, request_body_text, request_body_bytes, request_body_size,
    request_redactions
)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text,
       $6::text, $7::text,
       $8::uuid, $9::timestamptz, $10::text, $11::text, $12::text, $13::text,
       $14::text, $15::boolean, $16::timestamptz, $17::jsonb,
       body.json, body.text, $19::bytea, $20::bigint,
       $21::text[]
FROM json_or_text($18::text) AS body
ON CONFLICT (exchange_id) DO UPDATE SET
    session_key = EXCLUDED.session_key,
    session_source = EXCLUDED.session_source,
    agent_id = EXCLUDED.agent_id,
    parent_agent_id = EXCLUDED.parent_agent_id,
    api_key_fingerprint = EXCLUDED.api_key_fingerprint,
    client = EXCLUDED.client,
    request_event_id = EXCLUDED.request_event_id,
    request_occurred_at = EXCLUDED.request_occurred_at,
    method = EXCLUDED.method,
    path = EXCLUDED.path,
    query = EXCLUDED.query,
    http_version = EXCLUDED.http_version,
    model = EXCLUDED.model,
    stream = EXCLUDED.stream,
    received_at = EXCLUDED.received_at,
    request_headers = EXCLUDED.request_headers,
    request_body = EXCLUDED.request_body,
    request_body_text = EXCLUDED.request_body_text,
    request_body_bytes = EXCLUDED.request_body_bytes,
    request_body_size = EXCLUDED.request_body_size,
    request_redactions = EXCLUDED.request_redactions,
    updated_at = now()
WHERE e.request_event_id IS NULL;

-- name: upsert_response
-- The response half; same rules as upsert_request. The session columns are
-- only set when the response creates the row: the request is their authority.
INSERT INTO exchanges AS e (
    exchange_id, session_key, session_source, agent_id, parent_agent_id,
    api_key_fingerprint, client,
    response_event_id, response_occurred_at, status, response_headers,
    response_body, response_body_text, response_body_bytes,
    response_content_encoding, is_sse, message, usage,
    input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
    stop_reason, error_type, error_message, error_in_stream,
    started_at, ttfb_ms, duration_ms, client_disconnected, upstream_complete,
    response_redactions
)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text,
       $6::text, $7::text,
       $8::uuid, $9::timestamptz, $10::integer, $11::jsonb,
       body.json, body.text, $13::bytea,
       $14::text, $15::boolean, message.json, usage.json,
       $18::bigint, $19::bigint, $20::bigint, $21::bigint,
       $22::text, $23::text, $24::text, $25::boolean,
       $26::timestamptz, $27::double precision, $28::double precision, $29::boolean, $30::boolean,
       $31::text[]
FROM json_or_text($12::text) AS body, json_or_text($16::text) AS message, json_or_text($17::text) AS usage
ON CONFLICT (exchange_id) DO UPDATE SET
    response_event_id = EXCLUDED.response_event_id,
    response_occurred_at = EXCLUDED.response_occurred_at,
    status = EXCLUDED.status,
    response_headers = EXCLUDED.response_headers,
    response_body = EXCLUDED.response_body,
    response_body_text = EXCLUDED.response_body_text,
    response_body_bytes = EXCLUDED.response_body_bytes,
    response_content_encoding = EXCLUDED.response_content_encoding,
    is_sse = EXCLUDED.is_sse,
    message = EXCLUDED.message,
    usage = EXCLUDED.usage,
    input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens,
    cache_creation_input_tokens = EXCLUDED.cache_creation_input_tokens,
    cache_read_input_tokens = EXCLUDED.cache_read_input_tokens,
    stop_reason = EXCLUDED.stop_reason,
    error_type = EXCLUDED.error_type,
    error_message = EXCLUDED.error_message,
    error_in_stream = EXCLUDED.error_in_stream,
    started_at = EXCLUDED.started_at,
    ttfb_ms = EXCLUDED.ttfb_ms,
    duration_ms = EXCLUDED.duration_ms,
    client_disconnected = EXCLUDED.client_disconnected,
    upstream_complete = EXCLUDED.upstream_complete,
    response_redactions = EXCLUDED.response_redactions,
    updated_at = now()
WHERE e.response_event_id IS NULL;

-- name: insert_dead_letter
-- Unique on the message's position, so a redelivered bad message is recorded once.
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, key, value, reason, error_class)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING;
