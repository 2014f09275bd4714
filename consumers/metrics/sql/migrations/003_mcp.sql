-- MCP calls, counted by `kgb consume metrics` from kgb.mcp: one row per request,
-- answered by its response or error (the rule of consumers/mcp.py: same session
-- and id, the other way). A call adds to the daily rollup exactly once, in the
-- transaction that answers its row; an answer already counted is recognised by
-- its event.

CREATE TABLE mcp_usage_calls (
    call_key text PRIMARY KEY,              -- the request's event id and part
    session_key text NOT NULL,
    server text NOT NULL,
    transport text NOT NULL,                -- websocket, streamable_http, stdio
    direction text NOT NULL,                -- client_to_server, server_to_client
    method text NOT NULL,
    tool text,                              -- tools/call, prompts/get: the name; resources/read: the URI
    jsonrpc_id text NOT NULL,
    connection_id text NOT NULL,
    day date NOT NULL,                      -- UTC day of the request
    requested_at timestamptz NOT NULL,
    answer_key text UNIQUE,                 -- the answer's event id and part; NULL while unanswered
    protocol_version text,
    responded_at timestamptz,
    duration_ms double precision,
    error_type text                         -- the JSON-RPC error code, or tool_error for a result with isError
);

CREATE INDEX mcp_usage_calls_open_idx ON mcp_usage_calls (session_key) WHERE answer_key IS NULL;

CREATE TABLE mcp_usage_daily (
    day date NOT NULL,
    server text NOT NULL,
    transport text NOT NULL,
    method text NOT NULL,
    tool text NOT NULL,                     -- '' when the method names none
    calls bigint NOT NULL,
    errors bigint NOT NULL,
    duration_ms_sum double precision NOT NULL,
    PRIMARY KEY (day, server, transport, method, tool)
);
