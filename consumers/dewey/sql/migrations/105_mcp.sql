-- MCP sessions go to Dewey too, one Dewey conversation each, tracked in
-- dewey_conversations like the KGB conversations: their conversation_id is
-- md5('mcp:' || session_key) as a uuid (pending_mcp_sessions), which no
-- conversations row holds, so the column no longer refers to that table.
-- Runs with search_path set to the target schema (consumers/sql.py).

ALTER TABLE dewey_conversations DROP CONSTRAINT dewey_conversations_conversation_id_fkey;
