"""A long-lived MCP stream holds no segment on disk, and survives a killed capture worker (issue 8).

A stateful server's GET stream stays open through the MCP relay while many
other requests pass; the relay writes small segments, so the log rotates often.
The worker, a real `kgb capture-worker` process, saves the stream's state with
the checkpoint once its events are acknowledged, so the checkpoint passes the
stream's head and the segments behind it are deleted while the stream is still
open. Then the worker is SIGKILLed mid-stream, more notifications cross, a new
worker restores the stream from the saved state: its events go on numbering
where they stopped, and winni holds every message once. Waits poll with a
deadline that only bounds a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition

from proxy import checkpoint
from proxy.logwriter import segments
from tests.e2e.scan import partition_numbers
from tests.mcp_pipeline import McpPipeline, mcp_pipeline, serving
from tests.test_cli import KGB
from tests.topic import read_events

SESSION = "held-session-1"
SEGMENT_BYTES = 16 * 1024  # a new segment every few dozen calls
CALLS, MORE_CALLS = 120, 20
PAD = "p" * 400  # each call's argument: the log grows by a segment every ~15 calls
DEADLINE = 120.0
NOTES = 15  # 5 before the kill, 5 while no worker runs, 5 after the restart


def note(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": f"held-{n}"}}


class Server:
    """A stateful MCP server in miniature: a GET stream carrying notifications when told, tools/call answered in JSON."""

    def __init__(self) -> None:
        self.notes: asyncio.Queue[int | None] = asyncio.Queue()

    def app(self) -> web.Application:
        app = web.Application(handler_args={"handler_cancellation": True})
        app.router.add_get("/mcp", self.stream)
        app.router.add_post("/mcp", self.call)
        return app

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Mcp-Session-Id": SESSION})
        await response.prepare(request)
        await response.write(b"id: 0\ndata:\n\n")  # a priming event: no message
        while (n := await self.notes.get()) is not None:
            await response.write(b"id: %d\ndata: %s\n\n" % (n + 1, orjson.dumps(note(n))))
        await response.write_eof()
        return response

    async def call(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        text = body["params"]["arguments"]["marker"]
        answer = {"jsonrpc": "2.0", "id": body["id"], "result": {"content": [{"type": "text", "text": text}]}}
        return web.Response(body=orjson.dumps(answer), content_type="application/json", headers={"Mcp-Session-Id": SESSION})


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE
    while loop.time() < give_up:
        if condition():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {DEADLINE:.0f}s")


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(*KGB, "capture-worker", env=env, stdout=output, stderr=output)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 60)


async def calls(http: aiohttp.ClientSession, pipeline: McpPipeline, markers: range) -> None:
    headers = {"Mcp-Session-Id": SESSION, "MCP-Protocol-Version": "2025-11-25", "Accept": "application/json, text/event-stream"}
    for n in markers:
        call = {
            "jsonrpc": "2.0",
            "id": n,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"marker": f"call-{n}", "pad": PAD}},
        }
        async with http.post(pipeline.at("held"), data=orjson.dumps(call), headers=headers) as response:
            assert (await response.json())["result"]["content"][0]["text"] == f"call-{n}"


async def every_event(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    partitions = [TopicPartition(topic, n) for n in await partition_numbers(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        total = sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()
    return await read_events(bootstrap, topic, total, schema="mcp")


async def test_an_open_stream_lets_segments_go_and_goes_on_numbering_after_a_killed_worker(
    kafka, database: str, tmp_path: Path
) -> None:
    spool, server = tmp_path / "spool", Server()
    async with serving(server.app()) as url:
        extra = {"KGB_CAPTURE_SEGMENT_BYTES": str(SEGMENT_BYTES)}
        async with mcp_pipeline(
            kafka.bootstrap, database, spool, {"held": f"{url}/mcp"}, worker=False, extra_env=extra
        ) as pipeline:
            env = {**os.environ, **pipeline.env, "KGB_UPSTREAM_URL": "http://127.0.0.1:9"}
            seen: list[bytes] = []

            async def read(stream: aiohttp.ClientResponse) -> None:
                async for line in stream.content:
                    if line.startswith(b"data: {"):
                        seen.append(line)

            async def notify(markers: range) -> None:
                for n in markers:
                    server.notes.put_nowait(n)
                await until(lambda: len(seen) == markers.stop, f"the client got {markers.stop} notifications")

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
                async with worker_process(env, tmp_path / "worker-1.log") as first:
                    stream_headers = {
                        "Accept": "text/event-stream",
                        "Mcp-Session-Id": SESSION,
                        "MCP-Protocol-Version": "2025-11-25",
                    }
                    async with http.get(pipeline.at("held"), headers=stream_headers) as stream:
                        reading = asyncio.create_task(read(stream))
                        await notify(range(5))
                        head_segment = segments(spool)[-1][0]  # where the stream's head is: the log's newest segment then
                        await calls(http, pipeline, range(CALLS))
                        assert segments(spool)[-1][0] > head_segment + 3, "the log rotated past the stream's head"

                        def caught_up() -> bool:
                            return len(segments(spool)) <= 2

                        await until(caught_up, "the segments behind the checkpoint, the open stream's head's among them, deleted")
                        assert segments(spool)[0][0] > head_segment
                        _, held = checkpoint.load_open(spool)
                        assert [h.assembler for h in held.values()] == ["mcp"], "the open stream saved with the checkpoint"

                        first.send_signal(signal.SIGKILL)  # mid-stream, whatever it was doing
                        await first.wait()
                        await notify(range(5, 10))
                        await calls(http, pipeline, range(CALLS, CALLS + MORE_CALLS))
                        async with worker_process(env, tmp_path / "worker-2.log"):
                            await notify(range(10, NOTES))
                            server.notes.put_nowait(None)
                            await reading

                            await pipeline.calls(CALLS + MORE_CALLS, "tools/call")
                            rows = await pipeline.wait_for(
                                "SELECT payload, event_id, connection_id FROM mcp_messages WHERE method = 'notifications/message'",
                                lambda rows: len(rows) >= NOTES,
                            )
                            await pipeline.wait_for(
                                "SELECT * FROM mcp_http_requests WHERE method = 'GET'", lambda rows: len(rows) == 1
                            )
                            await until(lambda: checkpoint.load_open(spool)[1] == {}, "the ended stream's state forgotten")
    assert len(seen) == NOTES
    datas = Counter(row["payload"]["params"]["data"] for row in rows)
    assert datas == Counter({f"held-{n}": 1 for n in range(NOTES)}), "every notification in winni, once"
    (connection,) = {row["connection_id"] for row in rows}

    events = [e for e in await every_event(kafka.bootstrap, pipeline.mcp_topic) if e["connection_id"] == str(connection)]
    by_id: dict[str, tuple[int, bytes | None]] = {}
    for event in events:
        assert by_id.setdefault(event["event_id"], (event["sequence"], event.get("payload"))) == (
            event["sequence"],
            event.get("payload"),
        ), "an event published again is the same event"
    ordered = sorted(by_id.values())
    assert [sequence for sequence, _ in ordered] == list(range(NOTES + 1)), "one numbering, no gap, no repeat"
    notes = [orjson.loads(payload)["params"]["data"] for _, payload in ordered[:NOTES] if payload]
    assert notes == [f"held-{n}" for n in range(NOTES)], "the restored stream's events go on where they stopped"
    calls_rows = await pipeline.query("SELECT arguments FROM mcp_calls WHERE method = 'tools/call'")
    markers = Counter(row["arguments"]["marker"] for row in calls_rows)
    assert markers == Counter({f"call-{n}": 1 for n in range(CALLS + MORE_CALLS)}), "every call in winni, once"
