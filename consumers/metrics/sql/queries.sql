-- Named queries of `kgb consume metrics` and `kgb usage`; tables in migrations/.

-- name: add_requests
-- Request halves; returns the rows that gained their request now (a redelivered
-- one returns nothing). Those that also have their response are complete.
INSERT INTO usage_exchanges AS u (
    exchange_id, session_key, agent_id, day, started_at, has_request, model, kind, path, project, key_fingerprint
)
SELECT r.exchange_id, r.session_key, r.agent_id, r.day, r.started_at, true, r.model, r.kind, r.path, r.project,
       r.key_fingerprint
FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::timestamptz[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[])
    AS r(exchange_id, session_key, agent_id, day, started_at, model, kind, path, project, key_fingerprint)
ON CONFLICT (exchange_id) DO UPDATE
    SET has_request = true, model = EXCLUDED.model, kind = EXCLUDED.kind, path = EXCLUDED.path,
        project = EXCLUDED.project, key_fingerprint = EXCLUDED.key_fingerprint
    WHERE NOT u.has_request
RETURNING u.*

-- name: add_responses
-- Response halves, likewise. The key's fingerprint is the request's when it came first.
INSERT INTO usage_exchanges AS u (
    exchange_id, session_key, agent_id, day, started_at, has_response, status, error_type, interrupted, has_usage,
    input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, web_search_requests,
    ttfb_ms, duration_ms, thinking_tokens, web_fetch_requests, speed, inference_geo, service_tier, stop_reason,
    content_blocks, parts, compactions, served_model, key_fingerprint
)
SELECT r.exchange_id, r.session_key, r.agent_id, r.day, r.started_at, true, r.status, r.error_type, r.interrupted,
       r.has_usage, r.input_tokens, r.output_tokens, r.cache_write_5m_tokens, r.cache_write_1h_tokens,
       r.cache_read_tokens, r.web_search_requests, r.ttfb_ms, r.duration_ms, r.thinking_tokens, r.web_fetch_requests,
       r.speed, r.inference_geo, r.service_tier, r.stop_reason, r.content_blocks, r.parts, r.compactions, r.served_model,
       r.key_fingerprint
FROM unnest($1::text[], $2::text[], $3::text[], $4::date[], $5::timestamptz[], $6::int[], $7::text[], $8::bool[],
            $9::bool[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
            $16::float8[], $17::float8[], $18::bigint[], $19::bigint[], $20::text[], $21::text[], $22::text[],
            $23::text[], $24::jsonb[], $25::jsonb[], $26::int[], $27::text[], $28::text[])
    AS r(exchange_id, session_key, agent_id, day, started_at, status, error_type, interrupted, has_usage,
         input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens,
         web_search_requests, ttfb_ms, duration_ms, thinking_tokens, web_fetch_requests, speed, inference_geo,
         service_tier, stop_reason, content_blocks, parts, compactions, served_model, key_fingerprint)
ON CONFLICT (exchange_id) DO UPDATE
    SET has_response = true, status = EXCLUDED.status, error_type = EXCLUDED.error_type,
        interrupted = EXCLUDED.interrupted, has_usage = EXCLUDED.has_usage,
        input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
        cache_write_5m_tokens = EXCLUDED.cache_write_5m_tokens, cache_write_1h_tokens = EXCLUDED.cache_write_1h_tokens,
        cache_read_tokens = EXCLUDED.cache_read_tokens, web_search_requests = EXCLUDED.web_search_requests,
        ttfb_ms = EXCLUDED.ttfb_ms, duration_ms = EXCLUDED.duration_ms, thinking_tokens = EXCLUDED.thinking_tokens,
        web_fetch_requests = EXCLUDED.web_fetch_requests, speed = EXCLUDED.speed, inference_geo = EXCLUDED.inference_geo,
        service_tier = EXCLUDED.service_tier, stop_reason = EXCLUDED.stop_reason,
        content_blocks = EXCLUDED.content_blocks, parts = EXCLUDED.parts, compactions = EXCLUDED.compactions,
        served_model = EXCLUDED.served_model, key_fingerprint = coalesce(u.key_fingerprint, EXCLUDED.key_fingerprint)
    WHERE NOT u.has_response
RETURNING u.*

-- name: set_costs
-- What pricing decided for the completed rows, and the project a side request takes from its session.
UPDATE usage_exchanges AS u
SET cost_usd = p.cost_usd, unpriced = p.unpriced_models <> '[]', prices_version = p.prices_version,
    unpriced_models = ARRAY(SELECT jsonb_array_elements_text(p.unpriced_models)), project = p.project,
    long_context = p.long_context, fast = p.fast, us_only = p.us_only, batch = p.batch
FROM unnest($1::text[], $2::numeric[], $3::jsonb[], $4::text[], $5::text[], $6::bool[], $7::bool[], $8::bool[],
            $9::bool[])
    AS p(exchange_id, cost_usd, unpriced_models, prices_version, project, long_context, fast, us_only, batch)
WHERE u.exchange_id = p.exchange_id

-- name: remember_projects
-- Each session's latest working directory; a redelivered older request changes nothing.
INSERT INTO usage_sessions AS s (session_key, project, seen_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
ON CONFLICT (session_key) DO UPDATE SET project = EXCLUDED.project, seen_at = EXCLUDED.seen_at
    WHERE EXCLUDED.seen_at >= s.seen_at

-- name: session_projects
SELECT session_key, project FROM usage_sessions WHERE session_key = ANY($1::text[])

-- name: add_batch_items
-- Returns the items not counted before: a results file downloaded again bills nothing twice.
INSERT INTO usage_batch_items (
    item_id, custom_id, exchange_id, session_key, model, counted_at, input_tokens, output_tokens,
    cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_usd, unpriced_models, prices_version
)
SELECT i.item_id, i.custom_id, i.exchange_id, i.session_key, i.model, i.counted_at, i.input_tokens, i.output_tokens,
       i.cache_write_5m_tokens, i.cache_write_1h_tokens, i.cache_read_tokens, i.cost_usd,
       ARRAY(SELECT jsonb_array_elements_text(i.unpriced_models)), i.prices_version
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::bigint[], $8::bigint[],
            $9::bigint[], $10::bigint[], $11::bigint[], $12::numeric[], $13::jsonb[], $14::text[])
    AS i(item_id, custom_id, exchange_id, session_key, model, counted_at, input_tokens, output_tokens,
         cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, cost_usd, unpriced_models, prices_version)
ON CONFLICT (item_id) DO NOTHING
RETURNING item_id

-- name: add_hourly
INSERT INTO usage_hourly AS h (
    hour, model, session_key, kind, project, key_fingerprint, requests, errors, interrupted, input_tokens,
    output_tokens, cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, thinking_tokens,
    web_search_requests, web_fetch_requests, cost_usd, unpriced_requests, long_context_requests, fast_requests,
    us_only_requests, batch_requests, compactions, ttfb_ms_sum, ttfb_count, duration_ms_sum, duration_count,
    first_at, last_at
)
SELECT * FROM unnest(
    $1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[],
    $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
    $16::bigint[], $17::bigint[], $18::numeric[], $19::bigint[], $20::bigint[], $21::bigint[], $22::bigint[],
    $23::bigint[], $24::bigint[], $25::float8[], $26::bigint[], $27::float8[], $28::bigint[], $29::timestamptz[],
    $30::timestamptz[]
)
ON CONFLICT (hour, model, session_key, kind, project, key_fingerprint) DO UPDATE SET
    requests = h.requests + EXCLUDED.requests,
    errors = h.errors + EXCLUDED.errors,
    interrupted = h.interrupted + EXCLUDED.interrupted,
    input_tokens = h.input_tokens + EXCLUDED.input_tokens,
    output_tokens = h.output_tokens + EXCLUDED.output_tokens,
    cache_write_5m_tokens = h.cache_write_5m_tokens + EXCLUDED.cache_write_5m_tokens,
    cache_write_1h_tokens = h.cache_write_1h_tokens + EXCLUDED.cache_write_1h_tokens,
    cache_read_tokens = h.cache_read_tokens + EXCLUDED.cache_read_tokens,
    thinking_tokens = h.thinking_tokens + EXCLUDED.thinking_tokens,
    web_search_requests = h.web_search_requests + EXCLUDED.web_search_requests,
    web_fetch_requests = h.web_fetch_requests + EXCLUDED.web_fetch_requests,
    cost_usd = CASE WHEN EXCLUDED.cost_usd IS NULL THEN h.cost_usd ELSE coalesce(h.cost_usd, 0) + EXCLUDED.cost_usd END,
    unpriced_requests = h.unpriced_requests + EXCLUDED.unpriced_requests,
    long_context_requests = h.long_context_requests + EXCLUDED.long_context_requests,
    fast_requests = h.fast_requests + EXCLUDED.fast_requests,
    us_only_requests = h.us_only_requests + EXCLUDED.us_only_requests,
    batch_requests = h.batch_requests + EXCLUDED.batch_requests,
    compactions = h.compactions + EXCLUDED.compactions,
    ttfb_ms_sum = h.ttfb_ms_sum + EXCLUDED.ttfb_ms_sum,
    ttfb_count = h.ttfb_count + EXCLUDED.ttfb_count,
    duration_ms_sum = h.duration_ms_sum + EXCLUDED.duration_ms_sum,
    duration_count = h.duration_count + EXCLUDED.duration_count,
    first_at = least(h.first_at, EXCLUDED.first_at),
    last_at = greatest(h.last_at, EXCLUDED.last_at)

-- name: add_tallies
INSERT INTO usage_hourly_tallies AS t (hour, model, session_key, kind, project, key_fingerprint, tally, value, n)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::bigint[])
ON CONFLICT (hour, model, session_key, kind, project, key_fingerprint, tally, value) DO UPDATE SET n = t.n + EXCLUDED.n

-- name: usage_report
-- `kgb usage`: totals of the hours from $1 to $2 (NULL: open), grouped by the
-- columns whose flag is set ($3 day, $4 month, $5 model, $6 session, $7 kind,
-- $8 project, $9 key, $10 hour, for 5-hour blocks); the others come back NULL.
SELECT
    CASE WHEN $3::bool THEN (hour AT TIME ZONE 'UTC')::date END AS day,
    CASE WHEN $4::bool THEN to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM') END AS month,
    CASE WHEN $5::bool THEN model END AS model,
    CASE WHEN $6::bool THEN session_key END AS session_key,
    CASE WHEN $7::bool THEN kind END AS kind,
    CASE WHEN $8::bool THEN project END AS project,
    CASE WHEN $9::bool THEN key_fingerprint END AS key_fingerprint,
    CASE WHEN $10::bool THEN hour END AS hour,
    sum(requests)::bigint AS requests,
    sum(errors)::bigint AS errors,
    sum(interrupted)::bigint AS interrupted,
    sum(input_tokens)::bigint AS input_tokens,
    sum(output_tokens)::bigint AS output_tokens,
    sum(cache_write_5m_tokens)::bigint AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens,
    sum(cache_read_tokens)::bigint AS cache_read_tokens,
    sum(thinking_tokens)::bigint AS thinking_tokens,
    sum(web_search_requests)::bigint AS web_search_requests,
    sum(web_fetch_requests)::bigint AS web_fetch_requests,
    sum(cost_usd) AS priced_cost_usd,
    sum(unpriced_requests)::bigint AS unpriced_requests,
    sum(long_context_requests)::bigint AS long_context_requests,
    sum(fast_requests)::bigint AS fast_requests,
    sum(us_only_requests)::bigint AS us_only_requests,
    sum(batch_requests)::bigint AS batch_requests,
    sum(compactions)::bigint AS compactions,
    sum(ttfb_ms_sum) / nullif(sum(ttfb_count), 0) AS ttfb_ms_avg,
    sum(duration_ms_sum) / nullif(sum(duration_count), 0) AS duration_ms_avg,
    min(first_at) AS first_at,
    max(last_at) AS last_at
FROM usage_hourly
WHERE ($1::date IS NULL OR hour >= $1::date::timestamp AT TIME ZONE 'UTC')
  AND ($2::date IS NULL OR hour < ($2::date + 1)::timestamp AT TIME ZONE 'UTC')
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
ORDER BY 1, 2, 3, 4, 5, 6, 7, 8

-- name: unpriced_models
-- What had no price in the hours of $1 to $2, with how many requests: `kgb usage` names each.
SELECT value AS model, sum(n)::bigint AS requests
FROM usage_hourly_tallies
WHERE tally = 'unpriced'
  AND ($1::date IS NULL OR hour >= $1::date::timestamp AT TIME ZONE 'UTC')
  AND ($2::date IS NULL OR hour < ($2::date + 1)::timestamp AT TIME ZONE 'UTC')
GROUP BY 1
ORDER BY 1

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
