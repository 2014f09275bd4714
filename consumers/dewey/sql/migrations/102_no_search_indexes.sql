-- Dewey reads its copy of winni's tables to send messages, never to search
-- them, and no indexer fills its `messages.search`: winni's GIN index over it
-- (006) would stay empty and the queue of unindexed messages (010) would list
-- every message the copy ever stored. Both are dropped here; the column stays,
-- so the copy's rows keep winni's shape.
DROP INDEX messages_search_idx;
DROP INDEX messages_unindexed_idx;
