-- Queries of the Dewey consumer, loaded by consumers/sql.py.
-- Unqualified names: the connection's search_path picks the schema (kgb_dewey).

-- name: pending_conversations
-- The sessions' conversations with something to do: never begun, an answer in
-- doubt, or messages past the last position sent. Refused ones stay put.
SELECT c.id, c.session_key, c.kind, c.agent_id, c.parent_agent_id, c.parent_conversation_id, c.model,
       d.conversation_id IS NOT NULL AS known, d.dewey_conversation_id, coalesce(d.sent_position, -1) AS sent_position,
       coalesce(d.in_doubt, false) AS in_doubt
FROM conversations c
LEFT JOIN dewey_conversations d ON d.conversation_id = c.id
WHERE c.session_key = ANY($1::text[])
  AND NOT coalesce(d.rejected, false)
  AND (d.in_doubt OR d.dewey_conversation_id IS NULL OR EXISTS (
      SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.position > d.sent_position))
ORDER BY c.session_key, c.ordinal;

-- name: messages_after
SELECT conversation_id, position, role, content::text AS content, exchange_id::text AS exchange_id, source, partial
FROM messages
WHERE conversation_id = $1 AND position > $2
ORDER BY position
LIMIT $3;

-- name: beginning
-- Recorded before dewey_begin_conversation goes out, so a crash before its
-- answer is recorded leaves the row in doubt.
INSERT INTO dewey_conversations (conversation_id, session_key, in_doubt)
VALUES ($1, $2, true)
ON CONFLICT (conversation_id) DO UPDATE SET in_doubt = true, updated_at = now();

-- name: begun
UPDATE dewey_conversations SET dewey_conversation_id = $2, in_doubt = false, updated_at = now()
WHERE conversation_id = $1;

-- name: refused
UPDATE dewey_conversations SET rejected = true, in_doubt = false, updated_at = now()
WHERE conversation_id = $1;

-- name: sending
UPDATE dewey_conversations SET in_doubt = true, updated_at = now()
WHERE conversation_id = $1;

-- name: sent
-- Positions only move forward: a reconciliation never undoes a dead letter's skip.
UPDATE dewey_conversations SET sent_position = greatest(sent_position, $2), in_doubt = false, updated_at = now()
WHERE conversation_id = $1;

-- name: insert_dead_letter
INSERT INTO dewey_dead_letters (conversation_id, position, tool, arguments, error_code, error_message, error_data)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7::jsonb)
ON CONFLICT (conversation_id, position) DO NOTHING;

-- name: prune_bodies
-- The copied exchanges keep what the conversation rules read back (the reply's
-- message) and drop the bodies, which winni's schema keeps: this copy grows
-- with the messages, not with the traffic.
UPDATE exchanges SET
    request_body = NULL, request_body_text = NULL, request_body_bytes = NULL,
    response_body = NULL, response_body_text = NULL, response_body_bytes = NULL
WHERE exchange_id = ANY($1::uuid[])
  AND num_nonnulls(request_body, request_body_text, request_body_bytes,
                   response_body, response_body_text, response_body_bytes) > 0;

-- name: pending_mcp_sessions
-- The MCP sessions with something to do, in the columns of pending_conversations:
-- each session is one Dewey conversation, its messages in position order.
SELECT md5('mcp:' || s.session_key)::uuid AS id, s.session_key, 'mcp' AS kind, NULL::text AS agent_id,
       NULL::text AS parent_agent_id, NULL::uuid AS parent_conversation_id, NULL::text AS model,
       s.server, s.transport, s.protocol_version, s.client_info::text AS client_info, s.server_info::text AS server_info,
       d.conversation_id IS NOT NULL AS known, d.dewey_conversation_id, coalesce(d.sent_position, -1) AS sent_position,
       coalesce(d.in_doubt, false) AS in_doubt
FROM mcp_sessions s
LEFT JOIN dewey_conversations d ON d.conversation_id = md5('mcp:' || s.session_key)::uuid
WHERE s.session_key = ANY($1::text[])
  AND NOT coalesce(d.rejected, false)
  AND (d.in_doubt OR d.dewey_conversation_id IS NULL OR s.message_count - 1 > d.sent_position)
ORDER BY s.session_key;

-- name: mcp_messages_after
-- An MCP session's messages as conversation messages: the client's as user, the server's as assistant.
SELECT md5('mcp:' || session_key)::uuid AS conversation_id, position,
       CASE direction WHEN 'client_to_server' THEN 'user' ELSE 'assistant' END AS role,
       coalesce(payload::text, to_jsonb(payload_text)::text) AS content, connection_id::text AS exchange_id,
       'mcp' AS source, false AS partial
FROM mcp_messages
WHERE session_key = $1 AND position > $2
ORDER BY position
LIMIT $3;
