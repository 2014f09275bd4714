"""The MCP servers of bench/mcp_bench.py: as fast as a server can be, so what is measured is the relay.

    python -m bench.mcp_servers http --port 8123     # POST /json: one JSON answer; POST /sse: an SSE stream of one event
    python -m bench.mcp_servers stdio                # one answer line per request line

Each answers a ``tools/call`` with a small result of the shape real tools send.
"""

from __future__ import annotations

import argparse
import sys

import orjson
from aiohttp import web

RESULT = {"content": [{"type": "text", "text": "5 results for kgb: " + "lorem ipsum " * 20}], "isError": False}


def answer(request: bytes) -> bytes:
    ident = orjson.loads(request).get("id")
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "result": RESULT})


async def json(request: web.Request) -> web.Response:
    return web.Response(body=answer(await request.read()), content_type="application/json")


async def sse(request: web.Request) -> web.StreamResponse:
    body = answer(await request.read())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"event: message\ndata: " + body + b"\n\n")
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def serve_http(port: int) -> None:
    app = web.Application()
    app.router.add_post("/json", json)
    app.router.add_post("/sse", sse)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_stdio() -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        out.write(answer(line) + b"\n")
        out.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=("http", "stdio"))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve_http(args.port) if args.transport == "http" else serve_stdio()


if __name__ == "__main__":
    main()
