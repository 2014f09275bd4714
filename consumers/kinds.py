"""What kind of conversation a request belongs to, from its path, body and agent id: pure.

Claude Code sends several kinds of request through the same endpoint, and
winni (conversations) and metrics (usage by kind) must agree on which is
which, so the rules live here once. They follow what Claude Code 2.1.x sends
(../shared/DESIGN.md, "Threads inside one session"):

- ``count_tokens``: the ``/v1/messages/count_tokens`` path;
- ``title``: ``tools: []`` and a JSON-schema output format whose object has a
  ``title`` property (the small model names the session; other structured
  side requests must not land their answer on the session as its title);
- ``web_search``: a ``web_search_*`` server tool the request forces with
  ``tool_choice``;
- ``compaction``: the last user message asks for a summary of the
  conversation (the next request of that thread starts a new history);
- ``subagent``: any other model call carrying ``x-claude-code-agent-id``;
- ``main``: any other model call offering client tools (ones with an
  ``input_schema``), which only the main thread does without an agent id;
- ``other``: whatever fits none (``HEAD /``, ``/v1/models``, a bare SDK call
  without tools).

The side kinds are tested before the agent id: a sub-agent compacts and
searches the web too, and those requests are side requests of its thread.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = ("main", "subagent", "title", "count_tokens", "web_search", "compaction", "other")

_SUMMARY_REQUEST = re.compile(r"\bsummary of (?:the|this|our) (?:entire )?conversation\b", re.IGNORECASE)
_FORCED = ("tool", "any")


def kind_of(path: str, body: dict[str, Any] | None, agent_id: str | None) -> str:
    """One of `KINDS` for a request; never raises, whatever the body holds."""
    if path.endswith("/count_tokens"):
        return "count_tokens"
    if not path.endswith("/v1/messages") or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return "other"
    if is_title(body):
        return "title"
    if is_web_search(body):
        return "web_search"
    if is_compaction(body["messages"]):
        return "compaction"
    if agent_id:
        return "subagent"
    if any(isinstance(tool, dict) and "input_schema" in tool for tool in _tools(body)):
        return "main"
    return "other"


def is_title(body: dict[str, Any]) -> bool:
    """No tools, and a structured answer with a ``title`` field."""
    if body.get("tools") != []:
        return False
    output = body.get("output_config")
    fmt = output.get("format") if isinstance(output, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return False
    schema = fmt.get("schema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return isinstance(properties, dict) and "title" in properties


def is_web_search(body: dict[str, Any]) -> bool:
    """A ``web_search_*`` server tool that ``tool_choice`` forces (by name, or as the only choice)."""
    names = {
        tool.get("name") for tool in _tools(body)
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_")
    }
    choice = body.get("tool_choice")
    if not names or not isinstance(choice, dict) or choice.get("type") not in _FORCED:
        return False
    return choice.get("type") == "any" or choice.get("name") in names


def is_compaction(messages: list[Any]) -> bool:
    """The last message is the user's and asks for a summary of the conversation."""
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return False
    return any(_SUMMARY_REQUEST.search(text) for text in texts(last.get("content")))


def tools_outline(tools: Any) -> list[Any] | None:
    """``tools`` reduced to what the rules read of them: `kind_of` decides the same on a body
    whose tools are replaced by this. winni remembers it per distinct tools value rather than
    parse ~60 KB of tools per request."""
    return [_tool_outline(tool) for tool in tools] if isinstance(tools, list) else None


def _tool_outline(tool: Any) -> dict[str, Any] | None:
    """Its type and name, and whether it has an ``input_schema`` (as True)."""
    if not isinstance(tool, dict):
        return None
    return {k: True if k == "input_schema" else tool[k] for k in ("type", "name", "input_schema") if k in tool}


def _tools(body: dict[str, Any]) -> list[Any]:
    tools = body.get("tools")
    return tools if isinstance(tools, list) else []


def texts(content: Any) -> list[str]:
    """The text of a string content or of its text blocks (winni finds sub-agent prompts with it too)."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)]
