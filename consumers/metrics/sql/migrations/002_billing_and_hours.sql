-- What the API bills beyond base rates, the newer usage fields, and hourly rollups
-- by project and API key (consumers/metrics). Days and months are sums of hours, and
-- so are ccusage's 5-hour blocks; usage_daily and usage_daily_errors stay, as views.

ALTER TABLE usage_exchanges
    ADD COLUMN project text,                -- the working directory Claude Code names; a side request's is its session's
    ADD COLUMN key_fingerprint text,        -- the proxy's fingerprint of the API key or token
    ADD COLUMN thinking_tokens bigint NOT NULL DEFAULT 0,       -- usage.output_tokens_details.thinking_tokens (part of output)
    ADD COLUMN web_fetch_requests bigint NOT NULL DEFAULT 0,    -- usage.server_tool_use.web_fetch_requests
    ADD COLUMN speed text,                  -- usage.speed: standard, fast
    ADD COLUMN inference_geo text,          -- usage.inference_geo: global, us
    ADD COLUMN service_tier text,           -- usage.service_tier: standard, priority, batch
    ADD COLUMN stop_reason text,
    ADD COLUMN content_blocks jsonb,        -- the reply's blocks by type: {"text": 1, "compaction": 1}
    ADD COLUMN parts jsonb,                 -- usage.iterations as billed: [[type, model, input, output, w5m, w1h, read], ...]
    ADD COLUMN compactions integer NOT NULL DEFAULT 0,          -- server-side compaction iterations
    ADD COLUMN served_model text,           -- the fallback model whose output was returned
    ADD COLUMN unpriced_models text[],      -- what had no price: a model, or "model (fast mode)"
    ADD COLUMN long_context boolean,        -- billed at a long-context premium
    ADD COLUMN fast boolean,                -- billed at fast mode rates
    ADD COLUMN us_only boolean,             -- billed at the US-only inference multiplier
    ADD COLUMN batch boolean;               -- billed at the batch rate

CREATE TABLE usage_hourly (
    hour timestamptz NOT NULL,              -- UTC hour the request reached the proxy
    model text NOT NULL,                    -- '' for exchanges without one (HEAD /, /v1/models)
    session_key text NOT NULL,
    kind text NOT NULL,                     -- consumers.kinds, and batch for Message Batches results
    project text NOT NULL,                  -- '' when unknown
    key_fingerprint text NOT NULL,          -- '' when unknown
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    interrupted bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_write_5m_tokens bigint NOT NULL,
    cache_write_1h_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    thinking_tokens bigint NOT NULL,
    web_search_requests bigint NOT NULL,
    web_fetch_requests bigint NOT NULL,
    cost_usd numeric,                       -- of the priced requests; NULL when none was
    unpriced_requests bigint NOT NULL,
    long_context_requests bigint NOT NULL,
    fast_requests bigint NOT NULL,
    us_only_requests bigint NOT NULL,
    batch_requests bigint NOT NULL,
    compactions bigint NOT NULL,
    ttfb_ms_sum double precision NOT NULL,
    ttfb_count bigint NOT NULL,
    duration_ms_sum double precision NOT NULL,
    duration_count bigint NOT NULL,
    first_at timestamptz NOT NULL,          -- the hour's first and last request: 5-hour blocks start and gap on them
    last_at timestamptz NOT NULL,
    PRIMARY KEY (hour, model, session_key, kind, project, key_fingerprint)
);

CREATE TABLE usage_hourly_tallies (
    hour timestamptz NOT NULL,
    model text NOT NULL,
    session_key text NOT NULL,
    kind text NOT NULL,
    project text NOT NULL,
    key_fingerprint text NOT NULL,
    tally text NOT NULL,                    -- error_type, stop_reason, block (content blocks by type), unpriced
    value text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (hour, model, session_key, kind, project, key_fingerprint, tally, value)
);

-- The latest working directory each session named, for its requests that name none.
CREATE TABLE usage_sessions (
    session_key text PRIMARY KEY,
    project text NOT NULL,
    seen_at timestamptz NOT NULL
);

-- Every request a downloaded Message Batches results file billed, once.
CREATE TABLE usage_batch_items (
    item_id text PRIMARY KEY,               -- the result message's id
    custom_id text,
    exchange_id text NOT NULL,              -- the download that first brought it
    session_key text NOT NULL,
    model text,
    counted_at timestamptz NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_write_5m_tokens bigint NOT NULL,
    cache_write_1h_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cost_usd numeric,
    unpriced_models text[],
    prices_version text NOT NULL
);

INSERT INTO usage_hourly
SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', coalesce(model, ''), session_key, kind, '', '',
       count(*), count(*) FILTER (WHERE error_type IS NOT NULL), count(*) FILTER (WHERE interrupted),
       sum(input_tokens), sum(output_tokens), sum(cache_write_5m_tokens), sum(cache_write_1h_tokens), sum(cache_read_tokens),
       0, sum(web_search_requests), 0, sum(cost_usd), count(*) FILTER (WHERE unpriced), 0, 0, 0, 0, 0,
       coalesce(sum(ttfb_ms), 0), count(ttfb_ms), coalesce(sum(duration_ms), 0), count(duration_ms), min(started_at), max(started_at)
FROM usage_exchanges WHERE has_request AND has_response
GROUP BY 1, 2, 3, 4;

INSERT INTO usage_hourly_tallies
SELECT date_trunc('hour', started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', coalesce(model, ''), session_key, kind, '', '',
       'error_type', error_type, count(*)
FROM usage_exchanges WHERE has_request AND has_response AND error_type IS NOT NULL
GROUP BY 1, 2, 3, 4, 8;

DROP TABLE usage_daily;
DROP TABLE usage_daily_errors;

CREATE VIEW usage_daily AS
SELECT (hour AT TIME ZONE 'UTC')::date AS day, model, session_key, kind,
       sum(requests)::bigint AS requests, sum(errors)::bigint AS errors, sum(interrupted)::bigint AS interrupted,
       sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,
       sum(cache_write_5m_tokens)::bigint AS cache_write_5m_tokens, sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens,
       sum(cache_read_tokens)::bigint AS cache_read_tokens, sum(web_search_requests)::bigint AS web_search_requests,
       sum(cost_usd) AS cost_usd, sum(unpriced_requests)::bigint AS unpriced_requests,
       sum(ttfb_ms_sum) AS ttfb_ms_sum, sum(ttfb_count)::bigint AS ttfb_count, sum(duration_ms_sum) AS duration_ms_sum
FROM usage_hourly
GROUP BY 1, 2, 3, 4;

CREATE VIEW usage_daily_errors AS
SELECT (hour AT TIME ZONE 'UTC')::date AS day, model, session_key, kind, value AS error_type, sum(n)::bigint AS errors
FROM usage_hourly_tallies WHERE tally = 'error_type'
GROUP BY 1, 2, 3, 4, 5;
