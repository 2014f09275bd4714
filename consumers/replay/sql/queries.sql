-- kgb replay's statements (consumers/replay/rebuild.py). Schema names are
-- only known at run time, so the statements that name them are built here with
-- format's %I (quoted identifiers), never in Python, and run as they come back.

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text);

-- name: lock_tables
-- Every table of the live schema, in the order a live winni batch first writes
-- them (request_parts, then exchanges: store.write_exchanges; a batch of MCP
-- events alone starts with mcp_sessions: consumers/winni/mcp.py), so once replay
-- holds those no batch holds another table while waiting for them: no deadlock
-- (and should the order change, PostgreSQL breaks the deadlock and either side
-- retries). EXCLUSIVE blocks writers, not readers.
SELECT format('LOCK TABLE %s IN EXCLUSIVE MODE', string_agg(
           format('%I.%I', schemaname, tablename),
           ', ' ORDER BY array_position(ARRAY['request_parts', 'exchanges', 'mcp_sessions'], tablename::text) NULLS LAST, tablename))
FROM pg_tables WHERE schemaname = $1::text;

-- name: outrank_revisions
-- Every session revision in the rebuilt schema ($1) above any the live schema
-- ($2) ever held, so a live consumer's cached session state never matches and
-- it reads each session back from the rebuilt tables (conversation_stage.py).
-- Sessions only the live schema knows get a row too, for the same reason.
SELECT format($sql$
    INSERT INTO %1$I.session_revisions (session_key, revision)
    SELECT session_key, 0 FROM %2$I.session_revisions
    ON CONFLICT (session_key) DO NOTHING;
    UPDATE %1$I.session_revisions
    SET revision = revision + (SELECT coalesce(max(revision), 0) + 1 FROM %2$I.session_revisions)
$sql$, $1::text, $2::text);

-- name: rename_schema
SELECT format('ALTER SCHEMA %I RENAME TO %I', $1::text, $2::text);

-- name: drop_schema
SELECT format('DROP SCHEMA %I CASCADE', $1::text);

-- name: exchange_counts
-- Rebuilt ($1) and live ($2): replay reads every event the live consumer read,
-- so fewer rebuilt exchanges means another topic, or one that lost events.
SELECT format('SELECT (SELECT count(*) FROM %I.exchanges), (SELECT count(*) FROM %I.exchanges)', $1::text, $2::text);
