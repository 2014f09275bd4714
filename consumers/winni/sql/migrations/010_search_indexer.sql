-- Search vectors built behind winni's writes, not inside them.
-- Runs with search_path set to the target schema (consumers/sql.py).
--
-- Migration 006 made messages.search a generated column: every stored message
-- computed its tsvector (~1 ms of PostgreSQL per message, several times what
-- the rest of its row costs) inside winni's transaction. Here it becomes a
-- plain column that a message is stored without (NULL: not indexed yet) and
-- that winni's indexer (consumers/winni/search_index.py) fills afterwards, in
-- batches on a connection of its own, with the same function, so a message
-- once indexed holds the vector 006 gave it and search finds the same rows.
-- A message replaced by its complete reply has its vector cleared with it
-- (upsert_message), and is indexed again.
--
-- Rows stored before this migration keep their vectors: dropping the
-- expression rewrites nothing.
ALTER TABLE messages ALTER COLUMN search DROP EXPRESSION;

-- The indexer's queue, in key order: only the messages not indexed yet, so
-- finding the next batch costs the same whatever the table holds, and an
-- indexed message leaves it.
CREATE INDEX messages_unindexed_idx ON messages (conversation_id, position) WHERE search IS NULL;
