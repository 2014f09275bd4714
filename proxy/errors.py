"""The proxy's own failures, and the Anthropic-shaped answers clients get for them.

    ProxyError           500 api_error           (anything unforeseen on the way upstream)
    ├── Refused              (the proxy answered itself: no whole request went upstream)
    │   ├── BodyTooLarge         413 request_too_large     (the client sent more than KGB_MAX_BODY_BYTES)
    │   ├── TargetNotRelayed     400 invalid_request_error (CONNECT host:port, OPTIONS *: no path to relay)
    │   └── ClientLeft           400 invalid_request_error (the client went away before its body ended)
    ├── UpstreamUnreachable  502 api_error           (connect refused, DNS, reset before headers)
    └── UpstreamTimeout      504 timeout_error       (no headers, or no next chunk, in time)

Clients of the Anthropic API already know how to read and retry these
bodies, so the proxy's own errors look exactly like the API's.
"""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import orjson

from proxy import upstream


class ProxyError(Exception):
    status = 500
    error_type = "api_error"
    kind = "proxy_error"

    def body(self) -> bytes:
        return error_body(self.error_type, str(self))


class Refused(ProxyError):
    """Decided from the request alone (a streamed body may have begun upstream, and is aborted there),
    so no upstream error is counted."""


class BodyTooLarge(Refused):
    status = 413
    error_type = "request_too_large"
    kind = "request_too_large"


class TargetNotRelayed(Refused):
    status = 400
    error_type = "invalid_request_error"
    kind = "target_not_relayed"


class ClientLeft(Refused):
    status = 400
    error_type = "invalid_request_error"
    kind = "client_disconnected"


class UpstreamUnreachable(ProxyError):
    status = 502
    error_type = "api_error"
    kind = "upstream_unreachable"


class UpstreamTimeout(ProxyError):
    status = 504
    error_type = "timeout_error"
    kind = "upstream_timeout"


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type, "message": message}, "request_id": f"kgb_{uuid.uuid4().hex}"}
    )


def translate(exc: Exception) -> ProxyError:
    """The one place that decides what a failure to reach the upstream means to the client.

    Anything unforeseen becomes a 500 rather than an aiohttp traceback, so the
    exchange is still answered in the API's shape and still captured.
    """
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("KGB proxy: the upstream did not answer in time")
    if isinstance(exc, (upstream.UpstreamError, aiohttp.ClientError)):  # aiohttp's: the MCP relays' upstream client
        return UpstreamUnreachable(f"KGB proxy: upstream unreachable ({type(exc).__name__}: {exc})")
    return ProxyError(f"KGB proxy: internal error ({type(exc).__name__}: {exc})")
