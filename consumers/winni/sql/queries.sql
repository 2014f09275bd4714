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
    request_body, request_body_text, request_body_bytes, request_body_size, request_body_complete,
    request_redactions, request_messages, request_system, request_tools,
    conversation_id, reply_position, retry_of, request_hash
)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text,
       $6::text, $7::text,
       $8::uuid, $9::timestamptz, $10::text, $11::text, $12::text, $13::text,
       $14::text, $15::boolean, $16::timestamptz, $17::jsonb,
       body.json, body.text, $19::bytea, $20::bigint, $21::boolean,
       $22::text[], $23::integer, $24::bytea, $25::bytea,
       $26::uuid, $27::integer, $28::text::uuid, $29::bytea
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
    request_body_complete = EXCLUDED.request_body_complete,
    request_redactions = EXCLUDED.request_redactions,
    request_messages = EXCLUDED.request_messages,
    request_system = EXCLUDED.request_system,
    request_tools = EXCLUDED.request_tools,
    conversation_id = EXCLUDED.conversation_id,
    reply_position = EXCLUDED.reply_position,
    retry_of = EXCLUDED.retry_of,
    request_hash = EXCLUDED.request_hash,
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
    response_redactions, thinking_tokens, web_search_requests, web_fetch_requests,
    service_tier, speed, inference_geo, content_types
)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text,
       $6::text, $7::text,
       $8::uuid, $9::timestamptz, $10::integer, $11::jsonb,
       body.json, body.text, $13::bytea,
       $14::text, $15::boolean, message.json, usage.json,
       $18::bigint, $19::bigint, $20::bigint, $21::bigint,
       $22::text, $23::text, $24::text, $25::boolean,
       $26::timestamptz, $27::double precision, $28::double precision, $29::boolean, $30::boolean,
       $31::text[], facts.*
FROM json_or_text($12::text) AS body, json_or_text($16::text) AS message, json_or_text($17::text) AS usage,
     reply_facts(usage.json, message.json) AS facts
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
    thinking_tokens = EXCLUDED.thinking_tokens,
    web_search_requests = EXCLUDED.web_search_requests,
    web_fetch_requests = EXCLUDED.web_fetch_requests,
    service_tier = EXCLUDED.service_tier,
    speed = EXCLUDED.speed,
    inference_geo = EXCLUDED.inference_geo,
    content_types = EXCLUDED.content_types,
    unanswered_at = NULL,
    updated_at = now()
WHERE e.response_event_id IS NULL;

-- name: mark_unanswered
-- Request-only rows stored more than $1 seconds ago (migration 008). created_at, not the
-- proxy's received_at: a replay of old events must not mark a request whose response is
-- merely further down the topic.
UPDATE exchanges SET unanswered_at = now(), updated_at = now()
WHERE response_event_id IS NULL AND unanswered_at IS NULL
  AND created_at < now() - make_interval(secs => $1::double precision);

-- name: stored_exchanges
SELECT exchange_id::text FROM exchanges WHERE exchange_id = ANY($1::uuid[]);

-- name: insert_exchange
-- Both halves at once, for an exchange the table does not hold yet whose two
-- events came in one batch (the common case): one row version instead of an
-- insert and an update. Parameters: upsert_request's, then upsert_response's
-- from its 8th on. No ON CONFLICT: the caller asked first under its sessions'
-- revision locks, so a conflict is an event that lies about its session, and
-- the batch's one-by-one retry stores it by the upserts.
INSERT INTO exchanges (
    exchange_id, session_key, session_source, agent_id, parent_agent_id,
    api_key_fingerprint, client,
    request_event_id, request_occurred_at, method, path, query, http_version,
    model, stream, received_at, request_headers,
    request_body, request_body_text, request_body_bytes, request_body_size, request_body_complete,
    request_redactions, request_messages, request_system, request_tools,
    conversation_id, reply_position, retry_of, request_hash,
    response_event_id, response_occurred_at, status, response_headers,
    response_body, response_body_text, response_body_bytes,
    response_content_encoding, is_sse, message, usage,
    input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
    stop_reason, error_type, error_message, error_in_stream,
    started_at, ttfb_ms, duration_ms, client_disconnected, upstream_complete,
    response_redactions, thinking_tokens, web_search_requests, web_fetch_requests,
    service_tier, speed, inference_geo, content_types
)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text,
       $6::text, $7::text,
       $8::uuid, $9::timestamptz, $10::text, $11::text, $12::text, $13::text,
       $14::text, $15::boolean, $16::timestamptz, $17::jsonb,
       body.json, body.text, $19::bytea, $20::bigint, $21::boolean,
       $22::text[], $23::integer, $24::bytea, $25::bytea,
       $26::uuid, $27::integer, $28::text::uuid, $29::bytea,
       $30::uuid, $31::timestamptz, $32::integer, $33::jsonb,
       reply.json, reply.text, $35::bytea,
       $36::text, $37::boolean, message.json, usage.json,
       $40::bigint, $41::bigint, $42::bigint, $43::bigint,
       $44::text, $45::text, $46::text, $47::boolean,
       $48::timestamptz, $49::double precision, $50::double precision, $51::boolean, $52::boolean,
       $53::text[], facts.*
FROM json_or_text($18::text) AS body, json_or_text($34::text) AS reply,
     json_or_text($38::text) AS message, json_or_text($39::text) AS usage, reply_facts(usage.json, message.json) AS facts;

-- name: stored_parts
SELECT hash FROM request_parts WHERE hash = ANY($1::bytea[]);

-- name: insert_parts
-- Content-addressed: a part another writer stored meanwhile is the same part.
INSERT INTO request_parts (hash, part)
SELECT hash, part::jsonb FROM unnest($1::bytea[], $2::text[]) AS p (hash, part)
ON CONFLICT (hash) DO NOTHING;

-- name: insert_dead_letter
-- Unique on the message's position, so a redelivered bad message is recorded once.
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, key, value, reason, error_class)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING;

-- Conversations (consumers/winni/conversation_stage.py). Every write is keyed by a
-- deterministic key, so a redelivered or replayed batch changes nothing.

-- name: bump_revisions
-- Locks the batch's sessions (in key order, so two writers cannot deadlock) and
-- returns their new revisions; the caller's cached state is current only if it
-- holds the revision before this one.
INSERT INTO session_revisions AS r (session_key, revision)
SELECT key, 1 FROM unnest($1::text[]) AS key ORDER BY key
ON CONFLICT (session_key) DO UPDATE SET revision = r.revision + 1
RETURNING session_key, revision;

-- name: load_conversations
SELECT session_key, id, kind, agent_id, summarises_conversation_id, spawned_by_tool_use_id, last_at
FROM conversations WHERE session_key = ANY($1::text[])
ORDER BY session_key, ordinal;

-- name: load_positions
SELECT m.conversation_id, m.role, m.content_hash, m.source = 'response' AS from_response, m.partial
FROM messages m JOIN conversations c ON c.id = m.conversation_id
WHERE c.session_key = ANY($1::text[])
ORDER BY m.conversation_id, m.position;

-- name: load_agent_calls
-- Every Agent (Task) call stored with its prompt, once per conversation holding
-- it (a compaction, a branch copies it), where it sits; from complete messages
-- that hold it still (a cut reply was not run; the reply that replaced it has
-- calls of its own). The caller drops the ones a sub-agent has claimed.
SELECT c.session_key, t.conversation_id, t.tool_use_id, t.input->>'prompt' AS prompt, t.used_at, t.use_position
FROM conversations c
JOIN tool_calls t ON t.conversation_id = c.id
JOIN messages m ON m.conversation_id = t.conversation_id AND m.position = t.use_position
WHERE c.session_key = ANY($1::text[]) AND t.name IN ('Agent', 'Task') AND jsonb_typeof(t.input->'prompt') = 'string'
  AND NOT m.partial AND m.content @> jsonb_build_array(jsonb_build_object('type', 'tool_use', 'id', t.tool_use_id));

-- name: load_exchanges
-- In the order the requests came: of two that asked the same anew, a retry repeats the latest.
-- message_id: of a reply with content, which a request may continue from (the message threads beta).
SELECT e.session_key, e.exchange_id::text, e.conversation_id, e.reply_position, e.retry_of, e.request_hash, c.kind,
       CASE WHEN jsonb_typeof(e.message->'id') = 'string' AND jsonb_typeof(e.message->'content') = 'array'
                 AND e.message->'content' <> '[]'::jsonb
            THEN e.message->>'id' END AS message_id
FROM exchanges e JOIN conversations c ON c.id = e.conversation_id
WHERE e.session_key = ANY($1::text[])
ORDER BY e.received_at, e.exchange_id;

-- name: upsert_session
-- The first device and account seen stay; the latest client version wins.
INSERT INTO sessions AS s (session_key, source, device_id, account_uuid, client, client_version, title, first_seen, last_seen)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (session_key) DO UPDATE SET
    source = COALESCE(s.source, EXCLUDED.source),
    device_id = COALESCE(s.device_id, EXCLUDED.device_id),
    account_uuid = COALESCE(s.account_uuid, EXCLUDED.account_uuid),
    client = COALESCE(EXCLUDED.client, s.client),
    client_version = COALESCE(EXCLUDED.client_version, s.client_version),
    first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
    last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen);

-- name: set_title
UPDATE sessions SET title = $2, title_at = $3
WHERE session_key = $1 AND (title_at IS NULL OR title_at <= $3);

-- name: upsert_conversation
-- Created once; later requests only move the last exchange forward.
INSERT INTO conversations AS c (
    id, session_key, ordinal, kind, agent_id, parent_agent_id, parent_conversation_id,
    summarises_conversation_id, branch_of, branch_position, model,
    first_exchange_id, created_at, last_exchange_id, last_at, spawned_by_tool_use_id
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::uuid, $13, $14::text::uuid, $15, $16)
ON CONFLICT (id) DO UPDATE SET last_exchange_id = EXCLUDED.last_exchange_id, last_at = EXCLUDED.last_at
WHERE c.last_at <= EXCLUDED.last_at;

-- name: upsert_message
-- Stored once per position; only a partial reply gives way, to a complete one, whose
-- search vector the indexer builds anew (search_index.py).
INSERT INTO messages AS m (conversation_id, position, role, content, content_hash, exchange_id, source, partial, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5, $6::text::uuid, $7, $8, $9)
ON CONFLICT (conversation_id, position) DO UPDATE SET
    role = EXCLUDED.role, content = EXCLUDED.content, content_hash = EXCLUDED.content_hash,
    exchange_id = EXCLUDED.exchange_id, partial = false, created_at = EXCLUDED.created_at, search = NULL
WHERE m.partial AND m.source = 'response' AND EXCLUDED.source = 'response' AND NOT EXCLUDED.partial;

-- name: copy_messages
-- A conversation that starts from a history the server held (the message threads beta): the
-- positions before its own, as the conversation holding them has them, search vector
-- included (NULL when not indexed yet: then both copies are indexed).
INSERT INTO messages (conversation_id, position, role, content, content_hash, exchange_id, source, partial, created_at, search)
SELECT $2::uuid, position, role, content, content_hash, exchange_id, source, partial, created_at, search
FROM messages WHERE conversation_id = $1::uuid AND position < $3::integer
ON CONFLICT (conversation_id, position) DO NOTHING;

-- name: copy_tool_calls
-- The tool calls of those positions: a use, a result, or both, whichever sits before $3; the
-- target's own rows (a result of a copied use, stored by its request) keep what they hold.
INSERT INTO tool_calls AS t (
    conversation_id, tool_use_id, name, input, use_exchange_id, use_position, used_at,
    result, is_error, result_exchange_id, result_position, result_at
)
SELECT $2::uuid, s.tool_use_id, s.name, s.input, s.use_exchange_id, s.use_position, s.used_at,
       s.result, s.is_error, s.result_exchange_id, s.result_position, s.result_at
FROM (
    SELECT tool_use_id,
           CASE WHEN use_position < $3 THEN name END AS name, CASE WHEN use_position < $3 THEN input END AS input,
           CASE WHEN use_position < $3 THEN use_exchange_id END AS use_exchange_id,
           CASE WHEN use_position < $3 THEN use_position END AS use_position,
           CASE WHEN use_position < $3 THEN used_at END AS used_at,
           CASE WHEN result_position < $3 THEN result END AS result,
           CASE WHEN result_position < $3 THEN is_error END AS is_error,
           CASE WHEN result_position < $3 THEN result_exchange_id END AS result_exchange_id,
           CASE WHEN result_position < $3 THEN result_position END AS result_position,
           CASE WHEN result_position < $3 THEN result_at END AS result_at
    FROM tool_calls WHERE conversation_id = $1::uuid AND (use_position < $3::integer OR result_position < $3::integer)
) AS s
ON CONFLICT (conversation_id, tool_use_id) DO UPDATE SET
    name = CASE WHEN t.use_position IS NULL THEN EXCLUDED.name ELSE t.name END,
    input = CASE WHEN t.use_position IS NULL THEN EXCLUDED.input ELSE t.input END,
    use_exchange_id = CASE WHEN t.use_position IS NULL THEN EXCLUDED.use_exchange_id ELSE t.use_exchange_id END,
    used_at = CASE WHEN t.use_position IS NULL THEN EXCLUDED.used_at ELSE t.used_at END,
    use_position = coalesce(t.use_position, EXCLUDED.use_position),
    result = CASE WHEN t.result_position IS NULL THEN EXCLUDED.result ELSE t.result END,
    is_error = CASE WHEN t.result_position IS NULL THEN EXCLUDED.is_error ELSE t.is_error END,
    result_exchange_id = CASE WHEN t.result_position IS NULL THEN EXCLUDED.result_exchange_id ELSE t.result_exchange_id END,
    result_at = CASE WHEN t.result_position IS NULL THEN EXCLUDED.result_at ELSE t.result_at END,
    result_position = coalesce(t.result_position, EXCLUDED.result_position);

-- name: upsert_tool_use
-- A result can be stored before its use (the use came in a reply not captured);
-- a replaced partial reply rewrites the use at the same position.
INSERT INTO tool_calls AS t (conversation_id, tool_use_id, name, input, use_exchange_id, use_position, used_at)
VALUES ($1, $2, $3, $4::jsonb, $5::text::uuid, $6, $7)
ON CONFLICT (conversation_id, tool_use_id) DO UPDATE SET
    name = EXCLUDED.name, input = EXCLUDED.input, use_exchange_id = EXCLUDED.use_exchange_id,
    use_position = EXCLUDED.use_position, used_at = EXCLUDED.used_at
WHERE t.use_position IS NULL OR t.use_position = EXCLUDED.use_position;

-- name: upsert_tool_result
INSERT INTO tool_calls AS t (conversation_id, tool_use_id, result, is_error, result_exchange_id, result_position, result_at)
VALUES ($1, $2, $3::jsonb, $4, $5::text::uuid, $6, $7)
ON CONFLICT (conversation_id, tool_use_id) DO UPDATE SET
    result = EXCLUDED.result, is_error = EXCLUDED.is_error, result_exchange_id = EXCLUDED.result_exchange_id,
    result_position = EXCLUDED.result_position, result_at = EXCLUDED.result_at
WHERE t.result_position IS NULL;

-- name: load_early_replies
-- Replies not placed yet: their request is late; the request will place them.
SELECT session_key, exchange_id::text, message::text, client_disconnected, upstream_complete, error_in_stream,
       response_occurred_at
FROM exchanges
WHERE session_key = ANY($1::text[]) AND conversation_id IS NULL AND message ? 'content';

-- MCP (consumers/winni/mcp.py, mcp_links.py): keyed by event ids and uuid5 of
-- them, so a redelivered or replayed batch changes nothing.

-- name: mcp_stored_messages
SELECT event_id::text, part FROM mcp_messages WHERE event_id = ANY($1::uuid[]);

-- name: mcp_message_counts
SELECT session_key, message_count FROM mcp_sessions WHERE session_key = ANY($1::text[]);

-- name: mcp_open_calls
SELECT call_id, session_key, jsonrpc_id, direction, connection_id::text, requested_at, progress_token
FROM mcp_calls WHERE session_key = ANY($1::text[]) AND response_event_id IS NULL
ORDER BY requested_at, call_id;

-- name: upsert_mcp_session
-- The first client, server and command seen stay; the latest protocol version and end win.
INSERT INTO mcp_sessions AS s (session_key, server, transport, upstream_url, mcp_session_id, protocol_version, client_info,
                               server_info, command, first_seen, last_seen, ended_at, end_reason, message_count)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12, $13, $14)
ON CONFLICT (session_key) DO UPDATE SET
    upstream_url = coalesce(s.upstream_url, EXCLUDED.upstream_url),
    mcp_session_id = coalesce(s.mcp_session_id, EXCLUDED.mcp_session_id),
    protocol_version = coalesce(EXCLUDED.protocol_version, s.protocol_version),
    client_info = coalesce(s.client_info, EXCLUDED.client_info),
    server_info = coalesce(s.server_info, EXCLUDED.server_info),
    command = coalesce(s.command, EXCLUDED.command),
    first_seen = least(s.first_seen, EXCLUDED.first_seen),
    last_seen = greatest(s.last_seen, EXCLUDED.last_seen),
    ended_at = coalesce(EXCLUDED.ended_at, s.ended_at),
    end_reason = coalesce(EXCLUDED.end_reason, s.end_reason),
    message_count = greatest(s.message_count, EXCLUDED.message_count);

-- name: insert_mcp_message
INSERT INTO mcp_messages (session_key, position, event_id, part, connection_id, direction, kind, method, jsonrpc_id,
                          payload, payload_text, flag, call_id, occurred_at)
SELECT $1, $2, $3::uuid, $4, $5::uuid, $6, $7, $8, $9, b.json, b.text, $11, $12, $13
FROM json_or_text($10) b
ON CONFLICT (event_id, part) DO NOTHING;

-- name: insert_mcp_call
INSERT INTO mcp_calls (call_id, session_key, server, direction, method, jsonrpc_id, name, arguments, tool_use_name,
                       progress_token, connection_id, request_event_id, requested_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11::uuid, $12::uuid, $13)
ON CONFLICT (call_id) DO NOTHING;

-- name: answer_mcp_call
UPDATE mcp_calls SET result = $2::jsonb, error = $3::jsonb, is_error = $4, response_event_id = $5::uuid,
                     responded_at = $6, duration_ms = $7
WHERE call_id = $1 AND response_event_id IS NULL;

-- name: note_mcp_call
UPDATE mcp_calls SET notifications = notifications || $2::jsonb, cancelled = cancelled OR $3
WHERE call_id = $1;

-- name: insert_mcp_http_request
INSERT INTO mcp_http_requests (connection_id, session_key, server, method, path, query, status, content_type, error_type,
                               error_message, request_headers, response_headers, request_body_size, response_body_size,
                               started_at, ttfb_ms, duration_ms, client_disconnected, upstream_complete)
VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (connection_id) DO NOTHING;

-- name: mcp_batch_calls
-- The batch's tools/call requests not linked yet, with the name a tool_use of them has.
SELECT tool_use_name AS name, requested_at AS at FROM mcp_calls
WHERE call_id = ANY($1::uuid[]) AND tool_use_id IS NULL AND tool_use_name IS NOT NULL;

-- name: mcp_batch_uses
-- The batch's mcp__SERVER__TOOL tool uses not linked yet (copies of linked ones included).
SELECT tool_use_id, name, used_at AS at FROM tool_calls
WHERE use_exchange_id = ANY($1::uuid[]) AND mcp_call_id IS NULL AND name LIKE 'mcp\_\_%' AND used_at IS NOT NULL;

-- name: lock_mcp_link_names
-- Both sides of a link take these, in name order, before they look for the other side: whichever
-- commits second sees the first's rows, so a pair is linked whichever side arrives first.
SELECT pg_advisory_xact_lock(hashtext('kgb.mcp-link:' || n)) FROM (SELECT unnest($1::text[]) AS n ORDER BY 1) names;

-- name: mcp_link_uses
-- Unlinked tool uses of these names in the window; a compaction's copy of a call shares its id, so the earliest is the use.
SELECT DISTINCT ON (t.tool_use_id) t.tool_use_id, t.name, coalesce(t.input, '{}'::jsonb)::text AS input, t.used_at,
       t.result_at
FROM tool_calls t
WHERE t.name = ANY($1::text[]) AND t.mcp_call_id IS NULL AND t.used_at BETWEEN $2 AND $3
  AND NOT EXISTS (SELECT 1 FROM mcp_calls c WHERE c.tool_use_id = t.tool_use_id)
ORDER BY t.tool_use_id, t.used_at;

-- name: mcp_link_calls
SELECT call_id, tool_use_name AS name, coalesce(arguments, '{}'::jsonb)::text AS arguments, requested_at
FROM mcp_calls
WHERE tool_use_name = ANY($1::text[]) AND tool_use_id IS NULL AND requested_at BETWEEN $2 AND $3;

-- name: set_mcp_call_tool_uses
UPDATE mcp_calls c SET tool_use_id = l.tool_use_id
FROM unnest($1::uuid[], $2::text[]) AS l (call_id, tool_use_id)
WHERE c.call_id = l.call_id AND c.tool_use_id IS NULL;

-- name: link_tool_calls
-- Every tool_calls row of these tool uses (copies included) whose call is known.
UPDATE tool_calls t SET mcp_call_id = c.call_id
FROM mcp_calls c
WHERE t.tool_use_id = ANY($1::text[]) AND c.tool_use_id = t.tool_use_id AND t.mcp_call_id IS NULL;

-- name: index_messages
-- The search indexer's step (search_index.py): the next $1 messages without a vector, in
-- key order, get theirs. SKIP LOCKED leaves rows another indexer (one per winni process)
-- or a writer holds to them, so indexers never wait on each other or on winni's batches.
WITH batch AS (
    SELECT conversation_id, position FROM messages WHERE search IS NULL
    ORDER BY conversation_id, position LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE messages m SET search = message_search_vector(m.content)
FROM batch WHERE m.conversation_id = batch.conversation_id AND m.position = batch.position;

-- name: unindexed_messages
-- The next $1 messages without a vector, for indexing one at a time after a batch failed.
SELECT conversation_id, position FROM messages WHERE search IS NULL
ORDER BY conversation_id, position LIMIT $1;

-- name: index_message
UPDATE messages SET search = message_search_vector(content)
WHERE conversation_id = $1 AND position = $2 AND search IS NULL;

-- name: leave_unindexed
-- A message whose vector PostgreSQL refused: an empty one, so it leaves the queue
-- (it stays stored and readable; search does not find it).
UPDATE messages SET search = ''::tsvector
WHERE conversation_id = $1 AND position = $2 AND search IS NULL;
