"""MCP capture: the WebSocket relay (`websocket`), the Streamable HTTP relay (`http`), the stdio shim
(`stdio`), all building their events with `events`; `app` serves the relays on KGB_MCP_PORT."""

from proxy.mcp.app import build_mcp_app

__all__ = ["build_mcp_app"]
