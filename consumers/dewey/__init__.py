"""`kgb consume dewey`: each KGB conversation forwarded to Dewey's MCP tools, exactly once."""
