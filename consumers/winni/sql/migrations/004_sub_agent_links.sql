-- Each sub-agent conversation linked to the Agent tool call that started it
-- (Task in older Claude Code): the call sits in a reply of the parent thread,
-- the sub-agent's first message holds its prompt. Conversations stored before
-- this migration stay unlinked; `kgb replay` links them.
-- Runs with search_path set to the target schema (consumers/sql.py).

ALTER TABLE conversations
    ADD COLUMN spawned_by_tool_use_id text;   -- a sub-agent's: the tool_calls.tool_use_id of its Agent call

-- A sub-agent's Agent call by its id alone: a compaction or a branch copies the
-- call, so it may sit in more than one conversation, and not always in the
-- sub-agent's parent_conversation_id.
CREATE INDEX tool_calls_agent_calls_idx ON tool_calls (tool_use_id) WHERE name IN ('Agent', 'Task');
