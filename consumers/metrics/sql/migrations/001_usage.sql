-- Token usage and cost, written by `kgb consume metrics` (consumers/metrics).
-- usage_exchanges: one row per exchange, opened by whichever half arrives first
-- and completed by the other; an exchange adds to the daily rollups exactly once,
-- in the transaction that completes its row.

CREATE TABLE usage_exchanges (
    exchange_id text PRIMARY KEY,
    session_key text NOT NULL,
    agent_id text,
    day date NOT NULL,                      -- UTC day the request reached the proxy
    started_at timestamptz NOT NULL,
    has_request boolean NOT NULL DEFAULT false,
    has_response boolean NOT NULL DEFAULT false,
    model text,                             -- as requested; from the request half
    kind text,                              -- consumers.kinds: main, subagent, title, ...
    path text,
    status integer,                         -- from the response half
    error_type text,
    interrupted boolean,                    -- client gone or stream cut, without an error
    has_usage boolean,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_write_5m_tokens bigint NOT NULL DEFAULT 0,
    cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens bigint NOT NULL DEFAULT 0,
    web_search_requests bigint NOT NULL DEFAULT 0,
    ttfb_ms double precision,
    duration_ms double precision,
    cost_usd numeric,                       -- NULL while incomplete, and when unpriced
    unpriced boolean,                       -- billable usage on a model the price table lacks
    prices_version text                     -- the price table's version that priced it
);

CREATE INDEX usage_exchanges_incomplete ON usage_exchanges (started_at) WHERE NOT (has_request AND has_response);

CREATE TABLE usage_daily (
    day date NOT NULL,
    model text NOT NULL,                    -- '' for exchanges without one (HEAD /, /v1/models)
    session_key text NOT NULL,
    kind text NOT NULL,
    requests bigint NOT NULL,
    errors bigint NOT NULL,
    interrupted bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_write_5m_tokens bigint NOT NULL,
    cache_write_1h_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    web_search_requests bigint NOT NULL,
    cost_usd numeric,                       -- of the priced exchanges; NULL when none was
    unpriced_requests bigint NOT NULL,
    ttfb_ms_sum double precision NOT NULL,
    ttfb_count bigint NOT NULL,
    duration_ms_sum double precision NOT NULL,
    PRIMARY KEY (day, model, session_key, kind)
);

CREATE TABLE usage_daily_errors (
    day date NOT NULL,
    model text NOT NULL,
    session_key text NOT NULL,
    kind text NOT NULL,
    error_type text NOT NULL,
    errors bigint NOT NULL,
    PRIMARY KEY (day, model, session_key, kind, error_type)
);
