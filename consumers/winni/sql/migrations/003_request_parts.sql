-- Request bodies without their messages. A /v1/messages request resends the
-- whole history, which `messages` already stores once per position, and a
-- ~70 KB system prompt and tool list that stay the same turn after turn. So,
-- unless KGB_WINNI_STORE_REQUEST_BODIES is set, the exchange keeps its body
-- minus `messages`, `system` and `tools` in request_body; `system` and
-- `tools` go to request_parts once per distinct value; and request_messages
-- says how many messages the body carried: positions 0 to request_messages - 1
-- of conversation_id. Storage grows with what is distinct, not with requests.
-- Runs with search_path set to the target schema (consumers/sql.py).

CREATE TABLE request_parts (
    hash bytea PRIMARY KEY,                    -- blake2b-128 of the part as JSON with sorted keys
    part jsonb COMPRESSION lz4 NOT NULL
);

ALTER TABLE exchanges
    ADD COLUMN request_messages integer,       -- NULL: request_body is the whole body
    ADD COLUMN request_system bytea REFERENCES request_parts (hash),
    ADD COLUMN request_tools bytea REFERENCES request_parts (hash);
