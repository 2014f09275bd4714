"""MCP capture: the WebSocket relay (`websocket`), the Streamable HTTP relay (`http`), the stdio shim
(`stdio`), all building their events with `events`; `app` serves the relays on KGB_MCP_PORT."""
