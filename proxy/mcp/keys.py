"""What the MCP app holds for its handlers, by key: one place, so the relays and the app agree."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from proxy.capture import RedactionPolicy
from proxy.upstream import Pool

POLICY = web.AppKey("mcp_policy", RedactionPolicy)
WS_SESSION = web.AppKey("mcp_ws_session", aiohttp.ClientSession)
HTTP_POOL = web.AppKey("mcp_http_pool", Pool)
# NAME to (URL, URL as events hold it), for the HTTP servers among KGB_MCP_UPSTREAMS (proxy.mcp.http.http_upstreams).
HTTP_UPSTREAMS = web.AppKey("mcp_http_upstreams", dict[str, tuple[str, str]])
