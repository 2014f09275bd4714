-- The Dewey consumer's own tables, in its schema (kgb_dewey) beside its copy of
-- winni's tables (migrations 001, 002, ... of consumers/winni, applied to the
-- same schema first; this package numbers from 101 so the two never meet).
-- Runs with search_path set to the target schema (consumers/sql.py).

-- One row per KGB conversation Dewey has been asked to begin.
CREATE TABLE dewey_conversations (
    conversation_id uuid PRIMARY KEY REFERENCES conversations (id),
    session_key text NOT NULL,
    dewey_conversation_id text,                -- NULL until Dewey has answered the begin
    sent_position integer NOT NULL DEFAULT -1, -- last position Dewey acknowledged, or dead-lettered
    in_doubt boolean NOT NULL DEFAULT true,    -- a call went out and its answer has not been recorded:
                                               -- ask Dewey what it holds before sending again
    rejected boolean NOT NULL DEFAULT false,   -- Dewey refused to begin it (see dewey_dead_letters)
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dewey_conversations_session_key_idx ON dewey_conversations (session_key);

-- What Dewey refused, with its answer; the rest of the conversation went on.
CREATE TABLE dewey_dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id uuid NOT NULL,
    position integer,                          -- NULL: the begin of the conversation was refused
    tool text NOT NULL,
    arguments jsonb NOT NULL,                  -- what was sent, whole
    error_code integer,
    error_message text NOT NULL,
    error_data jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (conversation_id, position)
);
