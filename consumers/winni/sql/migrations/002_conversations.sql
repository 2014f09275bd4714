-- Conversations: sessions, their threads, the messages of each thread stored
-- once per position, and tool calls linked to their results; each exchange
-- learns its conversation and the exchange it retries. Every row derives from
-- the topic alone (ids are uuid5 of the session and the first exchange, times
-- are the events' own), so a replay rebuilds the same rows.
-- Runs with search_path set to the target schema (consumers/sql.py).

CREATE TABLE sessions (
    session_key text PRIMARY KEY,
    source text,                -- header, metadata_json, metadata_legacy, api_key, anonymous
    device_id text,             -- from metadata.user_id
    account_uuid text,          -- from metadata.user_id
    client text,                -- User-Agent product, e.g. claude-cli
    client_version text,        -- its version, the latest seen
    title text,                 -- the latest title-generation answer
    title_at timestamptz,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL
);

-- Bumped by every batch that touches a session; the consumer's in-memory
-- thread state is valid only while its revision is the one stored here.
CREATE TABLE session_revisions (
    session_key text PRIMARY KEY,
    revision bigint NOT NULL
);

CREATE TABLE conversations (
    id uuid PRIMARY KEY,
    session_key text NOT NULL,
    ordinal integer NOT NULL,                  -- 0, 1, ... in the order the session started them
    kind text NOT NULL,                        -- main, subagent, title, count_tokens, web_search, compaction, other
    agent_id text,
    parent_agent_id text,
    parent_conversation_id uuid,               -- a sub-agent's: its parent agent's conversation, else the main one
    summarises_conversation_id uuid,           -- a compaction's, and the thread conversation that followed it
    branch_of uuid,                            -- a rewound history: the conversation it diverged from
    branch_position integer,                   -- ... and how many positions they share
    model text,                                -- of the first request
    first_exchange_id uuid NOT NULL,
    last_exchange_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL,
    UNIQUE (session_key, ordinal)
);

CREATE INDEX conversations_created_at_idx ON conversations (created_at);

CREATE TABLE messages (
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    position integer NOT NULL,
    role text NOT NULL,                        -- user, assistant, system (as sent inside messages)
    content jsonb COMPRESSION lz4 NOT NULL,    -- list of blocks: strings as one text block, cache_control dropped
    content_hash bytea NOT NULL,
    exchange_id uuid NOT NULL,                 -- where the message was first seen
    source text NOT NULL CHECK (source IN ('request', 'response')),
    partial boolean NOT NULL DEFAULT false,    -- a reply cut short: client gone, stream broken
    created_at timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, position)
);

CREATE TABLE tool_calls (
    conversation_id uuid NOT NULL REFERENCES conversations (id),
    tool_use_id text NOT NULL,
    name text,
    input jsonb,
    use_exchange_id uuid,
    use_position integer,
    used_at timestamptz,
    result jsonb COMPRESSION lz4,
    is_error boolean,
    result_exchange_id uuid,
    result_position integer,
    result_at timestamptz,
    PRIMARY KEY (conversation_id, tool_use_id)
);

ALTER TABLE exchanges
    ADD COLUMN conversation_id uuid,
    ADD COLUMN reply_position integer,         -- where the reply to this request goes
    ADD COLUMN retry_of uuid,                  -- the exchange this one repeats, body for body
    ADD COLUMN request_hash bytea;

CREATE INDEX exchanges_conversation_id_idx ON exchanges (conversation_id);
