-- What `kgb web` reads by: full-text search over messages, and the two
-- indexes its sessions page pages and filters with.
-- Runs with search_path set to the target schema (consumers/sql.py).
--
-- Search covers each message's text, thinking, tool calls (name and every
-- string in the input) and tool results (their text), in English
-- (stemmed, stop words dropped). PostgreSQL's parser skips HTML tags whole
-- (and all that follows a `<script>` it sees no end of), so `<` is read as a
-- space: the words of captured markup are indexed like any others. It reads
-- `src/app/main.py` or `window.__pwned` as one token, so each word holding
-- . _ / \ : @ = is indexed again in its parts: a search for `main.py` and one
-- for `main` or `pwned` both find it. Plain prose gets nothing twice. The tsvector is a stored generated column
-- rather than an expression index: ranking reads it for every message that
-- matches, and recomputing to_tsvector there costs ~50 us per message, so a
-- word found in 10,000 messages would take half a second to rank. Writing
-- costs the same either way (one to_tsvector per stored message, no more:
-- a message is stored once per position); the column adds its size to the
-- table. Adding it to a table that already holds messages rewrites the table
-- once, under lock: winni waits for this migration at start-up.
--
-- The text is cut at 100,000 characters per message, which keeps every
-- tsvector below PostgreSQL's 1 MB limit whatever the script (4 bytes a
-- character, entries and positions included): a message above the limit
-- would otherwise fail its batch. Words over 2 KB (base64, minified code)
-- are skipped by to_tsvector itself. Images and signatures are not text.

-- SQL-standard bodies (BEGIN ATOMIC, RETURN): parsed once, here, so what they
-- call is bound now and not looked up on the search_path of whoever writes a
-- message later (a restore, a replay into another schema renamed after).
CREATE FUNCTION message_search_text(content jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT left(string_agg(part, E'\n' ORDER BY n), 100000)
    FROM jsonb_array_elements(CASE jsonb_typeof(content) WHEN 'array' THEN content ELSE '[]' END)
         WITH ORDINALITY AS block (b, n),
    LATERAL (
        SELECT CASE b->>'type'
            WHEN 'text' THEN b->>'text'
            WHEN 'thinking' THEN b->>'thinking'
            WHEN 'tool_use' THEN concat_ws(' ', b->>'name', (
                SELECT string_agg(v #>> '{}', ' ') FROM jsonb_path_query(b->'input', 'strict $.** ? (@.type() == "string")', '{}', true) v))
            WHEN 'server_tool_use' THEN concat_ws(' ', b->>'name', (
                SELECT string_agg(v #>> '{}', ' ') FROM jsonb_path_query(b->'input', 'strict $.** ? (@.type() == "string")', '{}', true) v))
            WHEN 'tool_result' THEN CASE jsonb_typeof(b->'content')
                WHEN 'string' THEN b->>'content'
                WHEN 'array' THEN (
                    SELECT string_agg(x->>'text', E'\n') FROM jsonb_array_elements(b->'content') x WHERE x->>'type' = 'text')
                END
            WHEN 'web_search_tool_result' THEN (
                SELECT string_agg(concat_ws(' ', v->>'title', v->>'url'), E'\n')
                FROM jsonb_path_query(b, 'lax $.content[*]', '{}', true) v WHERE jsonb_typeof(v) = 'object')
            END AS part
    ) AS parts
    WHERE part IS NOT NULL;
END;

-- One text's vector; a parameter is computed once however often the body
-- reads it (a FROM clause in the body made the whole function 4x slower).
CREATE FUNCTION text_search_vector(t text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN to_tsvector('english'::regconfig, replace(t, '<', ' '))
    || to_tsvector('english'::regconfig, regexp_replace(array_to_string(ARRAY(
           SELECT w[1] FROM regexp_matches(t, '([^\s<>]*[._/\\:@=][^\s<>]*)', 'g') AS w), ' '), '[._/\\:@=]+', ' ', 'g'));

CREATE FUNCTION message_search_vector(content jsonb) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN text_search_vector(coalesce(message_search_text(content), ''));

ALTER TABLE messages
    ADD COLUMN search tsvector COMPRESSION lz4
        GENERATED ALWAYS AS (message_search_vector(content)) STORED;

CREATE INDEX messages_search_idx ON messages USING gin (search);

-- The sessions page: newest first, a page at any depth one index range.
CREATE INDEX sessions_last_seen_idx ON sessions (last_seen DESC, session_key DESC);

-- Its API-key filter: a probe per session, not a scan of its exchanges.
CREATE INDEX exchanges_api_key_session_idx ON exchanges (api_key_fingerprint, session_key);
