-- MCP: every session a relay or the stdio shim saw (kgb.mcp), every message of
-- it in order, each request joined with its answer, each Streamable HTTP request,
-- and the link from a Claude Code tool_use (mcp__SERVER__TOOL) to the tools/call
-- that served it. Every row derives from the topic alone (ids are uuid5 of event
-- ids, times are the events' own), so a replay rebuilds the same rows.
-- Runs with search_path set to the target schema (consumers/sql.py).

CREATE TABLE mcp_sessions (
    session_key text PRIMARY KEY,              -- Mcp-Session-Id, the connection or shim run, or 'stateless:...' (schemas/mcp.avsc)
    server text NOT NULL,                      -- the NAME the client used: /mcp/NAME, ?upstream=NAME, kgb mcp stdio NAME
    transport text NOT NULL,                   -- websocket, streamable_http, stdio
    upstream_url text,                         -- where NAME led, credentials removed
    mcp_session_id text,                       -- the server's Mcp-Session-Id, when it gave one
    protocol_version text,                     -- the latest in force
    client_info jsonb,                         -- initialize's clientInfo, or the _meta one of 2026-07-28 requests
    server_info jsonb,                         -- initialize's serverInfo, or the _meta one of 2026-07-28 results
    command jsonb,                             -- stdio: the server's command line, redacted
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    ended_at timestamptz,                      -- WebSocket closed, shim's server exited, HTTP DELETE answered
    end_reason text,                           -- e.g. close 1000, exit 0, deleted, server_failed_to_start
    message_count integer NOT NULL DEFAULT 0   -- messages in mcp_messages; the next one's position
);

CREATE INDEX mcp_sessions_first_seen_idx ON mcp_sessions (first_seen);

CREATE TABLE mcp_messages (
    session_key text NOT NULL REFERENCES mcp_sessions (session_key),
    position integer NOT NULL,                 -- 0, 1, ... in the order the relay recorded them
    event_id uuid NOT NULL,
    part integer NOT NULL,                     -- above 0 only for a version 1 WebSocket frame holding a batch
    connection_id uuid NOT NULL,               -- the WebSocket connection, shim run, or HTTP request that carried it
    direction text NOT NULL CHECK (direction IN ('client_to_server', 'server_to_client')),
    kind text,                                 -- request, response, notification, error; NULL when flagged
    method text,
    jsonrpc_id text,                           -- as JSON text: 1 and "1" differ
    payload jsonb COMPRESSION lz4,             -- the message, when it is JSON
    payload_text text,                         -- else the bytes as text (with flag)
    flag text,                                 -- not_json, not_jsonrpc, binary_frame
    call_id uuid,                              -- the mcp_calls row it belongs to: request, answer, or attached notification
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (session_key, position),
    UNIQUE (event_id, part)
);

CREATE TABLE mcp_calls (
    call_id uuid PRIMARY KEY,                  -- uuid5 of the request's event id
    session_key text NOT NULL REFERENCES mcp_sessions (session_key),
    server text NOT NULL,
    direction text NOT NULL,                   -- client_to_server, or server_to_client (sampling, elicitation, roots, ping)
    method text NOT NULL,
    jsonrpc_id text NOT NULL,
    name text,                                 -- tools/call and prompts/get: params.name; resources/read: params.uri
    arguments jsonb COMPRESSION lz4,           -- tools/call: params.arguments; anything else: params
    tool_use_name text,                        -- tools/call: the name a Claude Code tool_use of it has, mcp__SERVER__TOOL
    progress_token text,                       -- params._meta.progressToken as JSON text
    connection_id uuid NOT NULL,
    request_event_id uuid NOT NULL,
    requested_at timestamptz NOT NULL,
    result jsonb COMPRESSION lz4,
    error jsonb,                               -- the JSON-RPC error object
    is_error boolean,                          -- an error, or a result with isError true; NULL while unanswered
    response_event_id uuid,
    responded_at timestamptz,
    duration_ms double precision,              -- request to answer, as the relay saw them
    notifications jsonb NOT NULL DEFAULT '[]', -- progress (by token), cancellation (by id), others on the same HTTP stream
    cancelled boolean NOT NULL DEFAULT false,
    tool_use_id text UNIQUE                    -- the Claude Code tool_use it served (tool_calls.tool_use_id)
);

CREATE INDEX mcp_calls_open_idx ON mcp_calls (session_key) WHERE response_event_id IS NULL;
CREATE INDEX mcp_calls_unlinked_idx ON mcp_calls (tool_use_name, requested_at) WHERE tool_use_id IS NULL AND tool_use_name IS NOT NULL;
CREATE INDEX mcp_calls_requested_at_idx ON mcp_calls (requested_at);

CREATE TABLE mcp_http_requests (
    connection_id uuid PRIMARY KEY,            -- the relay's id for one HTTP request (mcp_messages.connection_id)
    session_key text NOT NULL,
    server text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    query text NOT NULL,
    status integer,                            -- what the client got; NULL when it left first
    content_type text,
    error_type text,                           -- unknown_server, upstream_unreachable, upstream_gone, client_gone, body_too_large, ...
    error_message text,
    request_headers jsonb NOT NULL,            -- redacted; names lower-cased, repeats joined
    response_headers jsonb NOT NULL,
    request_body_size bigint NOT NULL,
    response_body_size bigint NOT NULL,
    started_at timestamptz NOT NULL,
    ttfb_ms double precision,
    duration_ms double precision NOT NULL,
    client_disconnected boolean NOT NULL,
    upstream_complete boolean NOT NULL
);

CREATE INDEX mcp_http_requests_session_idx ON mcp_http_requests (session_key, started_at);

ALTER TABLE tool_calls
    ADD COLUMN mcp_call_id uuid;               -- an mcp__SERVER__TOOL call: the mcp_calls row of the tools/call that served it

CREATE INDEX tool_calls_tool_use_id_idx ON tool_calls (tool_use_id);
CREATE INDEX tool_calls_unlinked_mcp_idx ON tool_calls (name, used_at) WHERE mcp_call_id IS NULL AND name LIKE 'mcp\_\_%';
CREATE INDEX tool_calls_mcp_uses_idx ON tool_calls (use_exchange_id) WHERE name LIKE 'mcp\_\_%';
