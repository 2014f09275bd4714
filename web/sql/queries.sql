-- Queries of `kgb web`, loaded by consumers/sql.py. Read only, unqualified:
-- the connection's search_path is winni's schema, then the metrics schema.
-- Parameters that are NULL turn their filter off; the connections plan every
-- statement for its values (plan_cache_mode = force_custom_plan), so an
-- unused filter costs nothing and a used one can pick its index.

-- name: tables
-- Which consumers' tables are there: winni's, the metrics rollups, the MCP
-- links (migration of the MCP capture), the search column (migration 006).
SELECT to_regclass('sessions') IS NOT NULL AS winni,
       to_regclass('usage_daily') IS NOT NULL AND to_regclass('usage_exchanges') IS NOT NULL AS metrics,
       to_regclass('mcp_calls') IS NOT NULL AND EXISTS (
           SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass('tool_calls') AND attname = 'mcp_call_id' AND NOT attisdropped
       ) AS mcp,
       EXISTS (
           SELECT 1 FROM pg_attribute
           WHERE attrelid = to_regclass('messages') AND attname = 'search' AND NOT attisdropped
       ) AS search

-- name: sessions
-- Newest first; keyset on (last_seen, session_key) after $1, $2. A session is
-- in the day range [$3, $4) when it was active in it. Tokens are winni's own
-- counts from the exchanges; cost comes from the metrics tables (session_costs).
SELECT s.session_key, s.title, s.client, s.client_version, s.first_seen, s.last_seen,
       (SELECT count(*) FROM conversations c WHERE c.session_key = s.session_key) AS conversations,
       prompt.text AS first_prompt,
       t.exchanges, t.input_tokens, t.output_tokens, t.cache_write_tokens, t.cache_read_tokens
FROM sessions s
LEFT JOIN LATERAL (
    SELECT left(jsonb_path_query_first(
               m.content, '$[*] ? (@.type == "text" && !(@.text starts with "<system-reminder>")).text') #>> '{}', 300) AS text
    FROM conversations c JOIN messages m ON m.conversation_id = c.id AND m.position = 0
    WHERE c.session_key = s.session_key AND c.kind = 'main'
    ORDER BY c.ordinal LIMIT 1
) prompt ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS exchanges,
           coalesce(sum(e.input_tokens), 0) AS input_tokens,
           coalesce(sum(e.output_tokens), 0) AS output_tokens,
           coalesce(sum(e.cache_creation_input_tokens), 0) AS cache_write_tokens,
           coalesce(sum(e.cache_read_input_tokens), 0) AS cache_read_tokens
    FROM exchanges e WHERE e.session_key = s.session_key
) t ON true
WHERE ($1::timestamptz IS NULL OR (s.last_seen, s.session_key) < ($1::timestamptz, $2::text))
  AND ($3::timestamptz IS NULL OR s.last_seen >= $3::timestamptz)
  AND ($4::timestamptz IS NULL OR s.first_seen < $4::timestamptz)
  AND ($5::text IS NULL OR s.client = $5::text)
  AND ($6::text IS NULL OR EXISTS (
          SELECT 1 FROM conversations c WHERE c.session_key = s.session_key AND c.model = $6::text))
  AND ($7::text IS NULL OR EXISTS (
          SELECT 1 FROM exchanges e WHERE e.api_key_fingerprint = $7::text AND e.session_key = s.session_key))
ORDER BY s.last_seen DESC, s.session_key DESC
LIMIT $8

-- name: session_costs
-- Cost per session from the metrics rollups (NULL: nothing priced).
SELECT session_key, sum(cost_usd) AS cost_usd, sum(unpriced_requests)::bigint AS unpriced
FROM usage_daily WHERE session_key = ANY($1::text[])
GROUP BY session_key

-- name: session_clients
SELECT DISTINCT client FROM sessions WHERE client IS NOT NULL ORDER BY client

-- name: conversation_models
SELECT DISTINCT model FROM conversations WHERE model IS NOT NULL ORDER BY model

-- name: session
SELECT session_key, source, device_id, account_uuid, client, client_version, title, first_seen, last_seen
FROM sessions WHERE session_key = $1

-- name: session_conversations
-- Every thread of a session with its size and tokens, and for a sub-agent the
-- Agent (Task) call that started it (a compaction copies the call: the earliest).
SELECT c.id, c.ordinal, c.kind, c.agent_id, c.parent_conversation_id, c.summarises_conversation_id,
       c.branch_of, c.branch_position, c.model, c.created_at, c.last_at, c.spawned_by_tool_use_id,
       (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages,
       call.description AS call_description, call.prompt AS call_prompt,
       call.conversation_id AS call_conversation_id, call.use_position AS call_position,
       t.exchanges, t.errors, t.input_tokens, t.output_tokens, t.cache_write_tokens, t.cache_read_tokens
FROM conversations c
LEFT JOIN LATERAL (
    SELECT tc.input->>'description' AS description, left(tc.input->>'prompt', 500) AS prompt,
           tc.conversation_id, tc.use_position
    FROM tool_calls tc
    WHERE tc.tool_use_id = c.spawned_by_tool_use_id AND tc.name IN ('Agent', 'Task')
    ORDER BY tc.used_at LIMIT 1
) call ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS exchanges,
           count(*) FILTER (WHERE e.status IS DISTINCT FROM 200) AS errors,
           coalesce(sum(e.input_tokens), 0) AS input_tokens,
           coalesce(sum(e.output_tokens), 0) AS output_tokens,
           coalesce(sum(e.cache_creation_input_tokens), 0) AS cache_write_tokens,
           coalesce(sum(e.cache_read_input_tokens), 0) AS cache_read_tokens
    FROM exchanges e WHERE e.conversation_id = c.id
) t ON true
WHERE c.session_key = $1
ORDER BY c.ordinal

-- name: conversation_costs
-- Cost per conversation of a session, priced by the metrics consumer.
SELECT e.conversation_id, sum(u.cost_usd) AS cost_usd, count(*) FILTER (WHERE u.unpriced)::bigint AS unpriced
FROM exchanges e JOIN usage_exchanges u ON u.exchange_id = e.exchange_id::text
WHERE e.session_key = $1 AND e.conversation_id IS NOT NULL
GROUP BY e.conversation_id

-- name: conversation
SELECT c.id, c.session_key, c.ordinal, c.kind, c.agent_id, c.parent_conversation_id, c.summarises_conversation_id,
       c.branch_of, c.branch_position, c.model, c.created_at, c.last_at, c.spawned_by_tool_use_id,
       s.title, parent.kind AS parent_kind, parent.agent_id AS parent_agent
FROM conversations c
JOIN sessions s ON s.session_key = c.session_key
LEFT JOIN conversations parent ON parent.id = c.parent_conversation_id
WHERE c.id = $1

-- name: conversation_messages
SELECT position, role, content, source, partial, exchange_id, created_at
FROM messages WHERE conversation_id = $1 ORDER BY position

-- name: conversation_exchanges
-- Each request of the conversation; reply_position is where its answer went.
SELECT exchange_id, reply_position, request_messages, retry_of, model, status, stream, received_at,
       ttfb_ms, duration_ms, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens,
       stop_reason, error_type, error_message, error_in_stream, client_disconnected, upstream_complete
FROM exchanges WHERE conversation_id = $1
ORDER BY received_at, exchange_id

-- name: exchange_costs
SELECT exchange_id, cost_usd, unpriced FROM usage_exchanges WHERE exchange_id = ANY($1::text[])

-- name: spawned_conversations
-- The sub-agents the session's Agent calls started, by the call's id.
SELECT spawned_by_tool_use_id, id, agent_id
FROM conversations WHERE session_key = $1 AND spawned_by_tool_use_id IS NOT NULL

-- name: conversation_mcp_calls
-- Only run where the MCP capture's column exists (see `tables`).
SELECT tool_use_id, mcp_call_id::text AS mcp_call_id
FROM tool_calls WHERE conversation_id = $1 AND mcp_call_id IS NOT NULL

-- name: mcp_call
-- The MCP call a tool call went out as, whole, whatever columns the MCP capture gives it.
SELECT to_jsonb(m) AS row FROM mcp_calls m WHERE m.call_id::text = $1

-- name: exchange
SELECT e.*, c.session_key AS conversation_session, c.kind AS conversation_kind,
       sys.part::text AS system_part, tools.part::text AS tools_part
FROM exchanges e
LEFT JOIN conversations c ON c.id = e.conversation_id
LEFT JOIN request_parts sys ON sys.hash = e.request_system
LEFT JOIN request_parts tools ON tools.hash = e.request_tools
WHERE e.exchange_id = $1

-- name: request_messages
-- The messages a request carried, as stored (cache_control dropped, strings as text blocks).
SELECT role, content FROM messages WHERE conversation_id = $1 AND position < $2 ORDER BY position

-- name: unindexed
-- Messages winni's search indexer has not reached yet (migration 010), which search
-- cannot find until it does; counted up to $1 (the queue's own index, however long).
SELECT count(*) FROM (SELECT FROM messages WHERE search IS NULL LIMIT $1) waiting

-- name: search
-- Ranked full-text hits (migration 006), then their context with the query's
-- words marked by $8 and $9 (the caller escapes the text and turns those into marks).
WITH query AS (SELECT websearch_to_tsquery('english', $1) AS q),
hits AS (
    SELECT m.conversation_id, m.position, ts_rank_cd(m.search, query.q) AS rank, m.created_at
    FROM messages m, query
    WHERE m.search @@ query.q
      AND ($2::text IS NULL OR m.conversation_id IN (SELECT id FROM conversations WHERE session_key = $2::text))
      AND ($3::text IS NULL OR m.conversation_id IN (SELECT id FROM conversations WHERE kind = $3::text))
      AND ($4::timestamptz IS NULL OR m.created_at >= $4::timestamptz)
      AND ($5::timestamptz IS NULL OR m.created_at < $5::timestamptz)
    ORDER BY rank DESC, m.created_at DESC, m.conversation_id, m.position
    LIMIT $6 OFFSET $7
)
SELECT h.conversation_id, h.position, h.rank, h.created_at, m.role, c.session_key, c.kind, c.agent_id, s.title,
       ts_headline('english', coalesce(message_search_text(m.content), ''), query.q,
                   format('StartSel=%s, StopSel=%s, MaxFragments=3, MaxWords=30, MinWords=10, FragmentDelimiter=" … "',
                          $8::text, $9::text)) AS headline
FROM hits h
JOIN messages m ON m.conversation_id = h.conversation_id AND m.position = h.position
JOIN conversations c ON c.id = h.conversation_id
LEFT JOIN sessions s ON s.session_key = c.session_key
CROSS JOIN query
ORDER BY h.rank DESC, h.created_at DESC, h.conversation_id, h.position
