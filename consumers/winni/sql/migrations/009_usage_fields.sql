-- The newer usage fields and the reply's block types as columns of exchanges. PostgreSQL
-- computes them from the usage and message jsonb it parses anyway (queries.sql), so the
-- consumer parses nothing more for them. Rows stored before this migration have them
-- NULL until `kgb replay`; `usage` and `message` hold them in full either way.

-- A whole number in range at `path`, else NULL (never an error, whatever the JSON holds).
CREATE FUNCTION usage_count(usage jsonb, path jsonpath) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(n) = 'number' THEN
        CASE WHEN n::numeric = trunc(n::numeric) AND n::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
             THEN n::numeric::bigint END
    END
    FROM jsonb_path_query_first(usage, path) AS n
$$;

-- A string at `path`, else NULL.
CREATE FUNCTION usage_text(usage jsonb, path jsonpath) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(s) = 'string' THEN s #>> '{}' END FROM jsonb_path_query_first(usage, path) AS s
$$;

-- The distinct types of a message's content blocks, in the order they first appear; NULL when it has none.
CREATE FUNCTION content_types(message jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(t ORDER BY first)
    FROM (
        SELECT b.t #>> '{}' AS t, min(b.i) AS first
        FROM jsonb_path_query(message, 'lax $.content[*].type ? (@.type() == "string")') WITH ORDINALITY AS b(t, i)
        GROUP BY 1
    ) AS types
$$;

-- The columns below, from a response's usage and message, in their order.
CREATE FUNCTION reply_facts(
    usage jsonb, message jsonb, OUT thinking_tokens bigint, OUT web_search_requests bigint, OUT web_fetch_requests bigint,
    OUT service_tier text, OUT speed text, OUT inference_geo text, OUT content_types text[]
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT usage_count(usage, '$.output_tokens_details.thinking_tokens'), usage_count(usage, '$.server_tool_use.web_search_requests'),
           usage_count(usage, '$.server_tool_use.web_fetch_requests'), usage_text(usage, '$.service_tier'),
           usage_text(usage, '$.speed'), usage_text(usage, '$.inference_geo'), content_types(message)
$$;

ALTER TABLE exchanges
    ADD COLUMN thinking_tokens bigint,      -- usage.output_tokens_details.thinking_tokens (a part of output_tokens)
    ADD COLUMN web_search_requests bigint,  -- usage.server_tool_use.web_search_requests
    ADD COLUMN web_fetch_requests bigint,   -- usage.server_tool_use.web_fetch_requests
    ADD COLUMN service_tier text,           -- usage.service_tier: standard, priority, batch
    ADD COLUMN speed text,                  -- usage.speed: standard, fast
    ADD COLUMN inference_geo text,          -- usage.inference_geo: global, us
    ADD COLUMN content_types text[];        -- the reply's block types: text, thinking, tool_use, compaction, fallback, ...
