-- An exchange whose response never came: a stream cut by a proxy killed mid-answer leaves
-- only its request event, and the row would wait for the response half forever. winni marks
-- such a row once its request has been stored KGB_WINNI_UNANSWERED_AFTER seconds without a
-- response (queries.sql: mark_unanswered); a response that arrives later still completes the
-- row and clears the mark.
ALTER TABLE exchanges ADD COLUMN unanswered_at timestamptz;

-- Only the rows still waiting, so the periodic sweep reads a handful of index entries.
CREATE INDEX exchanges_awaiting_response_idx ON exchanges (created_at)
    WHERE response_event_id IS NULL AND unanswered_at IS NULL;
