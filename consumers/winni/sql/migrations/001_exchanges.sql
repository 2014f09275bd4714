-- Exchanges: one row per HTTP exchange, the request half and the response half
-- filled by whichever event arrives first; dead letters: every message that
-- could not be decoded or stored, with its raw bytes and why.
-- Runs with search_path set to the target schema (consumers/sql.py).

-- A body as jsonb when PostgreSQL accepts it as JSON, else as text. Catching
-- data_exception covers invalid syntax and the \u0000 escape jsonb cannot hold.
-- Called in FROM, so the body is parsed once per row; each call costs one cheap
-- subtransaction.
CREATE FUNCTION json_or_text(raw text, OUT json jsonb, OUT text text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    json := raw::jsonb;
EXCEPTION WHEN data_exception THEN
    text := raw;
END
$$;

CREATE TABLE exchanges (
    exchange_id uuid PRIMARY KEY,
    session_key text NOT NULL,
    session_source text NOT NULL,
    agent_id text,
    parent_agent_id text,
    api_key_fingerprint text,
    client text,

    -- request half: NULL until the request event is stored
    request_event_id uuid,
    request_occurred_at timestamptz,
    method text,
    path text,
    query text,
    http_version text,
    model text,
    stream boolean,
    received_at timestamptz,
    request_headers jsonb,
    request_body jsonb COMPRESSION lz4,        -- the body when it is JSON jsonb accepts
    request_body_text text COMPRESSION lz4,    -- else when it is UTF-8 text without NUL
    request_body_bytes bytea COMPRESSION lz4,  -- else the bytes
    request_body_size bigint,                  -- as received, before redaction
    request_redactions text[],

    -- response half: NULL until the response event is stored
    response_event_id uuid,
    response_occurred_at timestamptz,
    status integer,
    response_headers jsonb,
    response_body jsonb COMPRESSION lz4,
    response_body_text text COMPRESSION lz4,   -- SSE streams land here
    response_body_bytes bytea COMPRESSION lz4,
    response_content_encoding text,
    is_sse boolean,
    message jsonb COMPRESSION lz4,             -- final message, reassembled from SSE or parsed
    usage jsonb,
    input_tokens bigint,
    output_tokens bigint,
    cache_creation_input_tokens bigint,
    cache_read_input_tokens bigint,
    stop_reason text,
    error_type text,
    error_message text,
    error_in_stream boolean,
    started_at timestamptz,
    ttfb_ms double precision,
    duration_ms double precision,
    client_disconnected boolean,
    upstream_complete boolean,
    response_redactions text[],

    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX exchanges_session_key_idx ON exchanges (session_key);
CREATE INDEX exchanges_received_at_idx ON exchanges (received_at);

CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL,
    key bytea,
    value bytea,
    reason text NOT NULL,
    error_class text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
