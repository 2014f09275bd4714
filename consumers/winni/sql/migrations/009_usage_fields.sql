-- The newer usage fields and the reply's block types as columns of exchanges. PostgreSQL
-- computes them from the usage and message jsonb it parses anyway (queries.sql), so the
-- consumer parses nothing more for them; the functions are plain expressions PostgreSQL
-- inlines (about 17 us a row, where jsonpath lookups in non-inlined functions cost 250).
-- Rows stored before this migration have them NULL until `kgb replay`; `usage` and
-- `message` hold them in full either way.

-- A whole number in range at `path`, else NULL (never an error, whatever the JSON holds).
CREATE FUNCTION usage_count(usage jsonb, path text[]) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(usage #> path) = 'number' THEN
        CASE WHEN (usage #> path)::numeric = trunc((usage #> path)::numeric)
              AND (usage #> path)::numeric BETWEEN -9223372036854775808 AND 9223372036854775807
             THEN (usage #> path)::numeric::bigint END
    END
$$;

-- A string at `path`, else NULL.
CREATE FUNCTION usage_text(usage jsonb, path text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(usage #> path) = 'string' THEN usage #>> path END
$$;

-- The columns below, from a response's usage and message, in their order (a table function,
-- so that PostgreSQL inlines it into the statement that stores the response).
CREATE FUNCTION reply_facts(usage jsonb, message jsonb) RETURNS TABLE (
    thinking_tokens bigint, web_search_requests bigint, web_fetch_requests bigint, service_tier text, speed text,
    inference_geo text, content_types jsonb
)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT usage_count(usage, '{output_tokens_details,thinking_tokens}'), usage_count(usage, '{server_tool_use,web_search_requests}'),
           usage_count(usage, '{server_tool_use,web_fetch_requests}'), usage_text(usage, '{service_tier}'),
           usage_text(usage, '{speed}'), usage_text(usage, '{inference_geo}'),
           nullif(jsonb_path_query_array(message, 'lax $.content[*].type ? (@.type() == "string")'), '[]')
$$;

ALTER TABLE exchanges
    ADD COLUMN thinking_tokens bigint,      -- usage.output_tokens_details.thinking_tokens (a part of output_tokens)
    ADD COLUMN web_search_requests bigint,  -- usage.server_tool_use.web_search_requests
    ADD COLUMN web_fetch_requests bigint,   -- usage.server_tool_use.web_fetch_requests
    ADD COLUMN service_tier text,           -- usage.service_tier: standard, priority, batch
    ADD COLUMN speed text,                  -- usage.speed: standard, fast
    ADD COLUMN inference_geo text,          -- usage.inference_geo: global, us
    ADD COLUMN content_types jsonb;         -- the reply's block types, one per block in order:
                                            -- ["thinking", "text", "tool_use", "tool_use"]; `content_types ? 'compaction'`
