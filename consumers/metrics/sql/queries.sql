-- Named queries of `kgb consume metrics` and `kgb usage`; tables in migrations/.

-- name: add_requests
-- Request halves; returns the rows that gained their request now (a redelivered
-- one returns nothing). Those that also have their response are complete.
INSERT INTO usage_exchanges AS u (exchange_id, session_key, agent_id, day, started_at, has_request, model, kind, path)
SELECT r.exchange_id, r.session_key, r.agent_id, r.day, r.started_at, true, r.model, r.kind, r.path
FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])
    AS r(exchange_id, session_key, agent_id, day, started_at, model, kind, path)
ON CONFLICT (exchange_id) DO UPDATE
    SET has_request = true, model = EXCLUDED.model, kind = EXCLUDED.kind, path = EXCLUDED.path
    WHERE NOT u.has_request
RETURNING u.*

-- name: add_responses
-- Response halves, likewise.
INSERT INTO usage_exchanges AS u (
    exchange_id, session_key, agent_id, day, started_at, has_response, status, error_type, interrupted, has_usage,
    input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests,
    ttfb_ms, duration_ms
)
SELECT r.exchange_id, r.session_key, r.agent_id, r.day, r.started_at, true, r.status, r.error_type, r.interrupted,
       r.has_usage, r.input_tokens, r.output_tokens, r.cache_write_5m_tokens, r.cache_write_1h_tokens,
       r.cache_read_tokens, r.web_search_requests, r.ttfb_ms, r.duration_ms
FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::timestamptz[], $6::int[], $7::text[], $8::bool[],
            $9::bool[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
            $16::float8[], $17::float8[])
    AS r(exchange_id, session_key, agent_id, day, started_at, status, error_type, interrupted, has_usage,
         input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens,
         web_search_requests, ttfb_ms, duration_ms)
ON CONFLICT (exchange_id) DO UPDATE
    SET has_response = true, status = EXCLUDED.status, error_type = EXCLUDED.error_type,
        interrupted = EXCLUDED.interrupted, has_usage = EXCLUDED.has_usage,
        input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
        cache_write_5m_tokens = EXCLUDED.cache_write_5m_tokens, cache_write_1h_tokens = EXCLUDED.cache_write_1h_tokens,
        cache_read_tokens = EXCLUDED.cache_read_tokens, web_search_requests = EXCLUDED.web_search_requests,
        ttfb_ms = EXCLUDED.ttfb_ms, duration_ms = EXCLUDED.duration_ms
    WHERE NOT u.has_response
RETURNING u.*

-- name: set_costs
UPDATE usage_exchanges AS u
SET cost_usd = p.cost_usd, unpriced = p.unpriced, prices_version = $4
FROM unnest($1::text[], $2::numeric[], $3::bool[]) AS p(exchange_id, cost_usd, unpriced)
WHERE u.exchange_id = p.exchange_id

-- name: add_daily
INSERT INTO usage_daily AS d (
    day, model, session_key, kind, requests, errors, interrupted, input_tokens, output_tokens,
    cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests, cost_usd,
    unpriced_requests, ttfb_ms_sum, ttfb_count, duration_ms_sum
)
SELECT * FROM unnest(
    $1::date[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
    $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::numeric[], $15::bigint[],
    $16::float8[], $17::bigint[], $18::float8[]
)
ON CONFLICT (day, model, session_key, kind) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests,
    errors = d.errors + EXCLUDED.errors,
    interrupted = d.interrupted + EXCLUDED.interrupted,
    input_tokens = d.input_tokens + EXCLUDED.input_tokens,
    output_tokens = d.output_tokens + EXCLUDED.output_tokens,
    cache_write_5m_tokens = d.cache_write_5m_tokens + EXCLUDED.cache_write_5m_tokens,
    cache_write_1h_tokens = d.cache_write_1h_tokens + EXCLUDED.cache_write_1h_tokens,
    cache_read_tokens = d.cache_read_tokens + EXCLUDED.cache_read_tokens,
    web_search_requests = d.web_search_requests + EXCLUDED.web_search_requests,
    cost_usd = CASE WHEN EXCLUDED.cost_usd IS NULL THEN d.cost_usd ELSE coalesce(d.cost_usd, 0) + EXCLUDED.cost_usd END,
    unpriced_requests = d.unpriced_requests + EXCLUDED.unpriced_requests,
    ttfb_ms_sum = d.ttfb_ms_sum + EXCLUDED.ttfb_ms_sum,
    ttfb_count = d.ttfb_count + EXCLUDED.ttfb_count,
    duration_ms_sum = d.duration_ms_sum + EXCLUDED.duration_ms_sum

-- name: add_daily_errors
INSERT INTO usage_daily_errors AS d (day, model, session_key, kind, error_type, errors)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[])
ON CONFLICT (day, model, session_key, kind, error_type) DO UPDATE SET errors = d.errors + EXCLUDED.errors

-- name: usage_report
-- `kgb usage`: totals since $1 (NULL: all), grouped by the columns whose flag is
-- set ($2 day, $3 model, $4 session, $5 kind); the others come back NULL.
SELECT
    CASE WHEN $2::bool THEN day END AS day,
    CASE WHEN $3::bool THEN model END AS model,
    CASE WHEN $4::bool THEN session_key END AS session_key,
    CASE WHEN $5::bool THEN kind END AS kind,
    sum(requests)::bigint AS requests,
    sum(errors)::bigint AS errors,
    sum(interrupted)::bigint AS interrupted,
    sum(input_tokens)::bigint AS input_tokens,
    sum(output_tokens)::bigint AS output_tokens,
    sum(cache_write_5m_tokens)::bigint AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens,
    sum(cache_read_tokens)::bigint AS cache_read_tokens,
    sum(web_search_requests)::bigint AS web_search_requests,
    sum(cost_usd) AS cost_usd,
    sum(unpriced_requests)::bigint AS unpriced_requests,
    sum(ttfb_ms_sum) / nullif(sum(ttfb_count), 0) AS ttfb_ms_avg,
    sum(duration_ms_sum) / nullif(sum(requests), 0) AS duration_ms_avg
FROM usage_daily
WHERE $1::date IS NULL OR day >= $1::date
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4

-- name: add_mcp_calls
-- The batch's requests; a redelivered one changes nothing.
INSERT INTO mcp_usage_calls (call_key, session_key, server, transport, direction, method, tool, jsonrpc_id, connection_id,
                             day, requested_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                     $9::text[], $10::date[], $11::timestamptz[])
ON CONFLICT (call_key) DO NOTHING

-- name: mcp_counted_answers
SELECT answer_key FROM mcp_usage_calls WHERE answer_key = ANY($1::text[])

-- name: mcp_usage_open
SELECT call_key AS call_id, session_key, jsonrpc_id, direction, connection_id, requested_at
FROM mcp_usage_calls WHERE session_key = ANY($1::text[]) AND answer_key IS NULL
ORDER BY requested_at, call_key

-- name: answer_mcp_calls
-- Returns the calls answered now, which the caller rolls up: each exactly once.
UPDATE mcp_usage_calls AS c
SET answer_key = a.answer_key, protocol_version = a.protocol_version, responded_at = a.responded_at,
    duration_ms = a.duration_ms, error_type = a.error_type
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[], $6::text[])
    AS a(call_key, answer_key, protocol_version, responded_at, duration_ms, error_type)
WHERE c.call_key = a.call_key AND c.answer_key IS NULL
RETURNING c.*

-- name: add_mcp_daily
INSERT INTO mcp_usage_daily AS d (day, server, transport, method, tool, calls, errors, duration_ms_sum)
SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::float8[])
ON CONFLICT (day, server, transport, method, tool) DO UPDATE SET
    calls = d.calls + EXCLUDED.calls, errors = d.errors + EXCLUDED.errors,
    duration_ms_sum = d.duration_ms_sum + EXCLUDED.duration_ms_sum
