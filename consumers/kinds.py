"""What kind of conversation a request belongs to, from its path, body and agent id: pure.

Every client of the Messages API sends its model calls to the same endpoint,
and winni (conversations) and metrics (usage by kind) must agree on which is
which, so the rules live here once. A model call is ``main`` unless one of
the markers Claude Code puts on its side requests says otherwise
(../shared/DESIGN.md, "Threads inside one session"); whatever carries none is
a conversation of its own client, with or without tools (an SDK chat, a tool
runner, Claude Code's main thread). Claude Code rewords its prompts between
releases, so each side kind is recognised by any one of the markers it
carries, never by all of them together:

- ``count_tokens``: the ``/v1/messages/count_tokens`` path;
- ``title``: no tools and a JSON-schema output format whose object has a
  ``title`` property (other structured side requests must not land their
  answer on the session as its title), or a system prompt that opens with
  Claude Code's title instruction;
- ``web_search``: a ``web_search_*`` server tool, and either ``tool_choice``
  forcing it, the user message opening with Claude Code's search request, or
  the system prompt opening with its search assistant's;
- ``compaction``: the last user message asks for a summary of the
  conversation, or opens with "CRITICAL: Respond with TEXT ONLY" (the
  compaction prompt of releases that offer the main thread's tools to it),
  or the system prompt is the summariser's; the request that follows opens
  with `is_continuation`'s phrase, which winni reads to link it;
- ``subagent``: any other model call carrying ``x-claude-code-agent-id``;
- ``main``: any other model call (a ``messages`` list sent to
  ``/v1/messages``);
- ``other``: not a model call (``HEAD /``, ``/v1/models``, batches, files):
  an exchange, never a conversation.

The side kinds are tested before the agent id: a sub-agent compacts and
searches the web too, and those requests are side requests of its thread.
"""

from __future__ import annotations

import re
from typing import Any

KINDS = ("main", "subagent", "title", "count_tokens", "web_search", "compaction", "other")

_SUMMARY_REQUEST = re.compile(r"\bsummary of (?:the|this|our) (?:entire )?conversation\b", re.IGNORECASE)
_COMPACTION_OPENER = "CRITICAL: Respond with TEXT ONLY"
_SUMMARISER_SYSTEM = "You are a helpful AI assistant tasked with summarizing conversations"
_CONTINUATION = "This session is being continued from a previous conversation"
_TITLE_SYSTEM = "Generate a concise, sentence-case title"
_SEARCH_REQUEST = "Perform a web search for the query:"
_SEARCH_SYSTEM = "You are an assistant for performing a web search tool use"
_FORCED = ("tool", "any")
# How much of a text `_opens` reads: more than the longest phrase above.
OPENING = 80


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
    if is_compaction(body):
        return "compaction"
    return "subagent" if agent_id else "main"


def is_title(body: dict[str, Any]) -> bool:
    """A structured answer with a ``title`` field and no tools, or Claude Code's title instruction."""
    return _title_schema(body) or _system_opens(body, _TITLE_SYSTEM)


def _title_schema(body: dict[str, Any]) -> bool:
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
    """A ``web_search_*`` server tool, with any of Claude Code's markers of its search requests."""
    names = {
        tool.get("name")
        for tool in _tools(body)
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_")
    }
    if not names:
        return False
    choice = body.get("tool_choice")
    forced = (
        isinstance(choice, dict)
        and choice.get("type") in _FORCED
        and (choice.get("type") == "any" or choice.get("name") in names)
    )
    return forced or _last_user_opens(body["messages"], _SEARCH_REQUEST) or _system_opens(body, _SEARCH_SYSTEM)


def is_compaction(body: dict[str, Any]) -> bool:
    """The last message is the user's and asks for a summary, or the summariser's system prompt."""
    messages = body["messages"]
    last = _last_user(messages)
    asks = last is not None and any(_SUMMARY_REQUEST.search(text) for text in texts(last.get("content")))
    return asks or _last_user_opens(messages, _COMPACTION_OPENER) or _system_opens(body, _SUMMARISER_SYSTEM)


def is_continuation(messages: list[Any]) -> bool:
    """The first message is the user's and opens with the phrase Claude Code starts a thread
    with after compacting it: this history continues an earlier, summarised one."""
    first = messages[0] if messages else None
    return isinstance(first, dict) and first.get("role") == "user" and _opens(first.get("content"), _CONTINUATION)


def _last_user(messages: list[Any]) -> dict[str, Any] | None:
    last = messages[-1] if messages else None
    return last if isinstance(last, dict) and last.get("role") == "user" else None


def _last_user_opens(messages: list[Any], phrase: str) -> bool:
    last = _last_user(messages)
    return last is not None and _opens(last.get("content"), phrase)


def _system_opens(body: dict[str, Any], phrase: str) -> bool:
    return _opens(body.get("system"), phrase)


def _opens(content: Any, phrase: str) -> bool:
    """Some text of ``content`` starts with ``phrase``, white space and case aside."""
    folded = phrase.casefold()
    return any(text.lstrip()[: len(phrase)].casefold() == folded for text in texts(content))


def tools_outline(tools: Any) -> list[Any] | None:
    """``tools`` reduced to what the rules read of them: `kind_of` decides the same on a body
    whose tools are replaced by this. winni remembers it per distinct tools value rather than
    parse ~60 KB of tools per request."""
    return [_tool_outline(tool) for tool in tools] if isinstance(tools, list) else None


def system_outline(system: Any) -> list[dict[str, str]]:
    """``system`` reduced to what the rules read of it, the opening of each text, as
    `tools_outline` reduces tools (Claude Code's system prompt is ~20 KB)."""
    return [{"type": "text", "text": text.lstrip()[:OPENING]} for text in texts(system)]


def _tool_outline(tool: Any) -> dict[str, Any] | None:
    """Its type and name."""
    if not isinstance(tool, dict):
        return None
    return {k: tool[k] for k in ("type", "name") if k in tool}


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
