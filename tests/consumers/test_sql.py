"""The named-query loader and the migration runner, on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from consumers.errors import MigrationError
from consumers.sql import Migration, load_migrations, migrate, parse_migration_name, parse_queries, pending

WINNI = "consumers.winni"

EXPECTED_TABLES = {
    "dead_letters": {
        "id": "bigint",
        "topic": "text",
        "kafka_partition": "integer",
        "kafka_offset": "bigint",
        "key": "bytea",
        "value": "bytea",
        "reason": "text",
        "error_class": "text",
        "created_at": "timestamp with time zone",
    },
    "schema_migrations": {"version": "integer", "name": "text", "applied_at": "timestamp with time zone"},
}
EXCHANGE_COLUMNS = {
    "exchange_id": "uuid",
    "session_key": "text",
    "session_source": "text",
    "agent_id": "text",
    "parent_agent_id": "text",
    "api_key_fingerprint": "text",
    "client": "text",
    "request_event_id": "uuid",
    "request_occurred_at": "timestamp with time zone",
    "method": "text",
    "path": "text",
    "query": "text",
    "http_version": "text",
    "model": "text",
    "stream": "boolean",
    "received_at": "timestamp with time zone",
    "request_headers": "jsonb",
    "request_body": "jsonb",
    "request_body_text": "text",
    "request_body_bytes": "bytea",
    "request_body_size": "bigint",
    "request_redactions": "ARRAY",
    "response_event_id": "uuid",
    "response_occurred_at": "timestamp with time zone",
    "status": "integer",
    "response_headers": "jsonb",
    "response_body": "jsonb",
    "response_body_text": "text",
    "response_body_bytes": "bytea",
    "response_content_encoding": "text",
    "is_sse": "boolean",
    "message": "jsonb",
    "usage": "jsonb",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "cache_creation_input_tokens": "bigint",
    "cache_read_input_tokens": "bigint",
    "stop_reason": "text",
    "error_type": "text",
    "error_message": "text",
    "error_in_stream": "boolean",
    "started_at": "timestamp with time zone",
    "ttfb_ms": "double precision",
    "duration_ms": "double precision",
    "client_disconnected": "boolean",
    "upstream_complete": "boolean",
    "response_redactions": "ARRAY",
    "created_at": "timestamp with time zone",
    "updated_at": "timestamp with time zone",
    # 002_conversations
    "conversation_id": "uuid",
    "reply_position": "integer",
    "retry_of": "uuid",
    "request_hash": "bytea",
    # 003_request_parts
    "request_messages": "integer",
    "request_system": "bytea",
    "request_tools": "bytea",
    # 008_unanswered
    "unanswered_at": "timestamp with time zone",
    # 009_usage_fields
    "thinking_tokens": "bigint",
    "web_search_requests": "bigint",
    "web_fetch_requests": "bigint",
    "service_tier": "text",
    "speed": "text",
    "inference_geo": "text",
    "content_types": "jsonb",
    # 011_request_body_complete
    "request_body_complete": "boolean",
}
TIME = "timestamp with time zone"
CONVERSATION_TABLES = {
    "sessions": {
        "session_key": "text",
        "source": "text",
        "device_id": "text",
        "account_uuid": "text",
        "client": "text",
        "client_version": "text",
        "title": "text",
        "title_at": TIME,
        "first_seen": TIME,
        "last_seen": TIME,
    },
    "session_revisions": {"session_key": "text", "revision": "bigint"},
    "conversations": {
        "id": "uuid",
        "session_key": "text",
        "ordinal": "integer",
        "kind": "text",
        "agent_id": "text",
        "parent_agent_id": "text",
        "parent_conversation_id": "uuid",
        "summarises_conversation_id": "uuid",
        "branch_of": "uuid",
        "branch_position": "integer",
        "model": "text",
        "first_exchange_id": "uuid",
        "last_exchange_id": "uuid",
        "created_at": TIME,
        "last_at": TIME,
        "spawned_by_tool_use_id": "text",  # 004_sub_agent_links
    },
    "messages": {
        "conversation_id": "uuid",
        "position": "integer",
        "role": "text",
        "content": "jsonb",
        "content_hash": "bytea",
        "exchange_id": "uuid",
        "source": "text",
        "partial": "boolean",
        "created_at": TIME,
        "search": "tsvector",
    },
    "tool_calls": {
        "conversation_id": "uuid",
        "tool_use_id": "text",
        "name": "text",
        "input": "jsonb",
        "use_exchange_id": "uuid",
        "use_position": "integer",
        "used_at": TIME,
        "result": "jsonb",
        "is_error": "boolean",
        "result_exchange_id": "uuid",
        "result_position": "integer",
        "result_at": TIME,
        "mcp_call_id": "uuid",
    },
    "request_parts": {"hash": "bytea", "part": "jsonb"},
}
MCP_TABLES = {
    "mcp_sessions": {
        "session_key": "text",
        "server": "text",
        "transport": "text",
        "upstream_url": "text",
        "mcp_session_id": "text",
        "protocol_version": "text",
        "client_info": "jsonb",
        "server_info": "jsonb",
        "command": "jsonb",
        "first_seen": TIME,
        "last_seen": TIME,
        "ended_at": TIME,
        "end_reason": "text",
        "message_count": "integer",
    },
    "mcp_messages": {
        "session_key": "text",
        "position": "integer",
        "event_id": "uuid",
        "part": "integer",
        "connection_id": "uuid",
        "direction": "text",
        "kind": "text",
        "method": "text",
        "jsonrpc_id": "text",
        "payload": "jsonb",
        "payload_text": "text",
        "flag": "text",
        "call_id": "uuid",
        "occurred_at": TIME,
    },
    "mcp_calls": {
        "call_id": "uuid",
        "session_key": "text",
        "server": "text",
        "direction": "text",
        "method": "text",
        "jsonrpc_id": "text",
        "name": "text",
        "arguments": "jsonb",
        "tool_use_name": "text",
        "progress_token": "text",
        "connection_id": "uuid",
        "request_event_id": "uuid",
        "requested_at": TIME,
        "result": "jsonb",
        "error": "jsonb",
        "is_error": "boolean",
        "response_event_id": "uuid",
        "responded_at": TIME,
        "duration_ms": "double precision",
        "notifications": "jsonb",
        "cancelled": "boolean",
        "tool_use_id": "text",
    },
    "mcp_http_requests": {
        "connection_id": "uuid",
        "session_key": "text",
        "server": "text",
        "method": "text",
        "path": "text",
        "query": "text",
        "status": "integer",
        "content_type": "text",
        "error_type": "text",
        "error_message": "text",
        "request_headers": "jsonb",
        "response_headers": "jsonb",
        "request_body_size": "bigint",
        "response_body_size": "bigint",
        "started_at": TIME,
        "ttfb_ms": "double precision",
        "duration_ms": "double precision",
        "client_disconnected": "boolean",
        "upstream_complete": "boolean",
    },
}

COLUMNS = """
SELECT table_name, column_name, data_type FROM information_schema.columns
WHERE table_schema = $1 ORDER BY table_name, ordinal_position
"""
CONSTRAINTS = """
SELECT tc.table_name, tc.constraint_type, array_agg(kcu.column_name::text ORDER BY kcu.ordinal_position) AS columns
FROM information_schema.table_constraints tc
JOIN information_schema.key_column_usage kcu USING (constraint_schema, constraint_name)
WHERE tc.table_schema = $1 GROUP BY tc.table_name, tc.constraint_type, tc.constraint_name ORDER BY 1, 2, 3
"""


async def shape(conn: asyncpg.Connection, schema: str) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    for row in await conn.fetch(COLUMNS, schema):
        tables.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
    return tables


def test_queries_are_split_on_their_name_lines() -> None:
    text = "-- header comment\n-- name: first\n-- why\nSELECT 1;\n\n-- name: second\nSELECT $1\nFROM t;\n"
    assert parse_queries(text) == {"first": "-- why\nSELECT 1", "second": "SELECT $1\nFROM t"}
    assert parse_queries(text).second == "SELECT $1\nFROM t"
    with pytest.raises(AttributeError, match="no query named 'third'"):
        parse_queries(text).third  # noqa: B018
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1\n-- name: a\nSELECT 2")


def test_migration_files_are_numbered() -> None:
    assert parse_migration_name("001_exchanges.sql") == (1, "exchanges")
    assert parse_migration_name("README.md") is None
    assert [m.version for m in load_migrations(WINNI)] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]


def test_a_database_with_another_history_is_refused() -> None:
    ours = [Migration(1, "exchanges", ""), Migration(2, "conversations", "")]
    assert pending(ours, {1: "exchanges"}) == [ours[1]]
    with pytest.raises(MigrationError, match="'sessions' in the database but 'conversations' here"):
        pending(ours, {1: "exchanges", 2: "sessions"})
    with pytest.raises(MigrationError, match=r"does not know: \[3\]"):
        pending(ours, {1: "exchanges", 3: "later"})


@pytest.fixture
def database(empty_database: str) -> str:
    """These tests migrate for themselves: from nothing."""
    return empty_database


async def test_migrations_build_the_schema_once(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        assert await migrate(conn, load_migrations(WINNI), "kgb") == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
        first = await shape(conn, "kgb")
        constraints = [tuple(r) for r in await conn.fetch(CONSTRAINTS, "kgb")]
        assert await migrate(conn, load_migrations(WINNI), "kgb") == []
        assert await shape(conn, "kgb") == first
    finally:
        await conn.close()

    assert first == {**EXPECTED_TABLES, **CONVERSATION_TABLES, **MCP_TABLES, "exchanges": EXCHANGE_COLUMNS}
    assert list(first["exchanges"]) == list(EXCHANGE_COLUMNS)
    assert constraints == [
        ("conversations", "PRIMARY KEY", ["id"]),
        ("conversations", "UNIQUE", ["session_key", "ordinal"]),
        ("dead_letters", "PRIMARY KEY", ["id"]),
        ("dead_letters", "UNIQUE", ["topic", "kafka_partition", "kafka_offset"]),
        ("exchanges", "FOREIGN KEY", ["request_system"]),
        ("exchanges", "FOREIGN KEY", ["request_tools"]),
        ("exchanges", "PRIMARY KEY", ["exchange_id"]),
        ("mcp_calls", "FOREIGN KEY", ["session_key"]),
        ("mcp_calls", "PRIMARY KEY", ["call_id"]),
        ("mcp_calls", "UNIQUE", ["tool_use_id"]),
        ("mcp_http_requests", "PRIMARY KEY", ["connection_id"]),
        ("mcp_messages", "FOREIGN KEY", ["session_key"]),
        ("mcp_messages", "PRIMARY KEY", ["session_key", "position"]),
        ("mcp_messages", "UNIQUE", ["event_id", "part"]),
        ("mcp_sessions", "PRIMARY KEY", ["session_key"]),
        ("messages", "FOREIGN KEY", ["conversation_id"]),
        ("messages", "PRIMARY KEY", ["conversation_id", "position"]),
        ("request_parts", "PRIMARY KEY", ["hash"]),
        ("schema_migrations", "PRIMARY KEY", ["version"]),
        ("session_revisions", "PRIMARY KEY", ["session_key"]),
        ("sessions", "PRIMARY KEY", ["session_key"]),
        ("tool_calls", "FOREIGN KEY", ["conversation_id"]),
        ("tool_calls", "PRIMARY KEY", ["conversation_id", "tool_use_id"]),
    ]


async def test_two_consumers_starting_at_once_migrate_once(database: str) -> None:
    conns = [await asyncpg.connect(database) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate(c, load_migrations(WINNI), "kgb") for c in conns))
        rows = await conns[0].fetch("SELECT version, name FROM kgb.schema_migrations")
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert sorted(applied) == [[], [], [], [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]]
    assert [tuple(r) for r in rows] == [
        (1, "exchanges"),
        (2, "conversations"),
        (3, "request_parts"),
        (4, "sub_agent_links"),
        (5, "mcp"),
        (6, "search"),
        (8, "unanswered"),
        (9, "usage_fields"),
        (10, "search_indexer"),
        (11, "request_body_complete"),
    ]


async def test_any_schema_name_gets_the_same_tables(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await migrate(conn, load_migrations(WINNI), "kgb")
        await migrate(conn, load_migrations(WINNI), "kgb_rebuild")
        assert await shape(conn, "kgb_rebuild") == await shape(conn, "kgb")
        # The runner's search_path was local to its transaction.
        assert await conn.fetchval("SHOW search_path") == '"$user", public'
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(database: str) -> None:
    broken = [*load_migrations(WINNI), Migration(99, "broken", "CREATE TABLE half_done (id int); SELECT 1/0;")]
    conn = await asyncpg.connect(database)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, broken, "kgb")
        schemas = await conn.fetchval("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'kgb'")
    finally:
        await conn.close()
    assert schemas == 0
