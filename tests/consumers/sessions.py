"""Whole Claude Code sessions as event sequences, and the conversation tables they must produce.

`SessionBuilder` plays a client: each call sends one request (the thread's
whole history, as Claude Code does) and its response, and keeps the history
the next request of that thread resends. It also counts what the tables must
hold, per conversation label ("main", "main#2" after a compaction, an agent
id, "title#3"), so tests compare exact rows without recomputing the rules.

Sub-agents start the way Claude Code starts them: the parent thread's reply
calls the Agent tool (`spawn`), the sub-agent's first message carries the
call's prompt beside a system reminder, and the call's result goes back to the
parent; `spawns` says which call started each agent.

`sample_session()` turns ../shared/samples into events, each answered the way
the stand-in answered it.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.claude_samples import load_samples
from tests.consumers.factories import request_event, response_event, text_message

STUB_TEXT = "Hello! This is the stub speaking."
COMPACTION_PROMPT = (
    "Your task is to create a detailed summary of the conversation so far, paying close attention to the "
    "user's explicit requests and your previous actions."
)
CONTINUATION = "This session is being continued from a previous conversation that ran out of context. Summary: "
HAIKU = "claude-haiku-4-5-20251001"
REMINDER = "<system-reminder>\nAs you answer the user's questions, you can use the following context.\n</system-reminder>"


def text(value: str, cache: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": value}
    if cache:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def tool_use(tool_id: str, command: str, name: str = "Bash") -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": name, "input": {"command": command}}


def agent_use(tool_id: str, prompt: str, description: str = "Do a sub-task") -> dict[str, Any]:
    """A call of Claude Code's Agent tool, which starts a sub-agent with ``prompt``."""
    return {
        "type": "tool_use",
        "id": tool_id,
        "name": "Agent",
        "input": {"description": description, "prompt": prompt, "subagent_type": "general-purpose"},
    }


def tool_result(tool_id: str, output: str, is_error: bool = False) -> dict[str, Any]:
    return {"tool_use_id": tool_id, "type": "tool_result", "content": output, "is_error": is_error}


def reply(*blocks: dict[str, Any], stop_reason: str = "end_turn") -> dict[str, Any]:
    return {**text_message(), "content": list(blocks), "stop_reason": stop_reason}


def answered(request: dict[str, Any], message: dict[str, Any] | None, **switches: Any) -> dict[str, Any]:
    """The JSON response carrying ``message``; a count_tokens answer has no usage object."""
    if message is None or "usage" in message:
        return response_event(request=request, message=message, sse=False, **switches)
    event = response_event(request=request, message={**message, "usage": {}, "stop_reason": None}, sse=False, **switches)
    event["response"].update(body=orjson.dumps(message), message=orjson.dumps(message).decode(), usage=None, stop_reason=None)
    return event


def without_cache_control(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Claude Code does to older turns: the marker moves to the newest message."""
    return [
        {**m, "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]}
        if isinstance(m["content"], list)
        else m
        for m in messages
    ]


@dataclass
class SessionBuilder:
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    events: list[dict[str, Any]] = field(default_factory=list)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    positions: Counter[str] = field(default_factory=Counter)  # label -> message rows expected
    tool_calls: int = 0
    conversations: int = 0
    spawns: dict[str, str] = field(default_factory=dict)  # agent id -> the tool_use id of the Agent call that started it
    _labels: dict[str, str] = field(default_factory=dict)  # thread -> its current conversation label
    _tools: int = 0

    def exchange(
        self,
        thread: str,
        messages: list[dict[str, Any]],
        answer: dict[str, Any] | None,
        *,
        agent_id: str | None = None,
        parent_agent_id: str | None = None,
        body: bytes | None = None,
        path: str = "/v1/messages",
        **response: Any,
    ) -> dict[str, Any]:
        """One request with ``messages`` and its response carrying ``answer`` (None: an error)."""
        overrides: dict[str, Any] = {"path": path}
        if body is not None:
            overrides["body"] = body
        request = request_event(
            session_id=self.session_id,
            agent_id=agent_id,
            parent_agent_id=parent_agent_id,
            messages=without_cache_control(messages[:-1]) + messages[-1:],
            **overrides,
        )
        if answer is None:
            response.setdefault("error", ("overloaded_error", "Overloaded"))
        self.events += [request, answered(request, answer, **response)]
        return request

    def turn(
        self,
        thread: str,
        *content: dict[str, Any],
        answer: dict[str, Any],
        retries: int = 0,
        partial: bool = False,
        agent_id: str | None = None,
        parent_agent_id: str | None = None,
    ) -> None:
        """The user (or a tool result) speaks in ``thread``; ``retries`` failed attempts come first."""
        history = self.histories.setdefault(thread, [])
        if thread not in self._labels:
            self._start(thread, thread)
        history.append({"role": "user", "content": [*content[:-1], {**content[-1], "cache_control": {"type": "ephemeral"}}]})
        self.positions[self._labels[thread]] += 1
        for _ in range(retries):
            self.exchange(thread, history, None, agent_id=agent_id, parent_agent_id=parent_agent_id)
        disconnected = {"client_disconnected": True} if partial else {}
        self.exchange(thread, history, answer, agent_id=agent_id, parent_agent_id=parent_agent_id, **disconnected)
        history.append({"role": "assistant", "content": answer["content"]})
        self.positions[self._labels[thread]] += 1
        self._count_tools(answer["content"])

    def tool_turn(self, thread: str, command: str, output: str, **switches: Any) -> None:
        """The model runs a command, then the client sends its result back."""
        self._tools += 1
        tool_id = f"toolu_{self._tools:024d}"
        self.turn(
            thread, text(f"please run {command}"), answer=reply(tool_use(tool_id, command), stop_reason="tool_use"), **switches
        )
        self.turn(thread, tool_result(tool_id, output), answer=reply(text(f"It printed {output}.")), **switches)

    def spawn(self, thread: str, agents: dict[str, str], **switches: Any) -> dict[str, str]:
        """``thread`` asks for sub-agents (agent id -> prompt), all in one reply; their call ids by agent.

        Each sub-agent then starts with `start`, and the calls' results go back with `turn`."""
        calls = {}
        for agent_id in agents:
            self._tools += 1
            calls[agent_id] = f"toolu_{self._tools:024d}"
        uses = [agent_use(calls[agent_id], prompt) for agent_id, prompt in agents.items()]
        self.turn(thread, text(f"delegate {', '.join(agents)}"), answer=reply(*uses, stop_reason="tool_use"), **switches)
        self.spawns.update(calls)
        return calls

    def start(self, agent_id: str, prompt: str, answer: dict[str, Any], parent_agent_id: str | None = None) -> None:
        """A sub-agent's first turn: a system reminder, then the prompt its Agent call gave."""
        self.turn(agent_id, text(REMINDER), text(prompt), answer=answer, agent_id=agent_id, parent_agent_id=parent_agent_id)

    def title(self, prompt: str, title: str) -> None:
        """The side request Claude Code sends beside the main thread, answered as structured output."""
        messages = [{"role": "user", "content": [text(f"<session>\n{prompt}\n</session>")]}]
        body = orjson.dumps(
            {
                "model": HAIKU,
                "messages": messages,
                "system": [text("Generate a title.")],
                "tools": [],
                "metadata": {
                    "user_id": orjson.dumps({"device_id": "cf7deb13", "account_uuid": "", "session_id": self.session_id}).decode()
                },
                "max_tokens": 32000,
                "thinking": {"type": "disabled"},
                "temperature": 1,
                "output_config": {
                    "format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}}}
                },
                "stream": True,
            }
        )
        self.exchange("title", messages, reply(text(orjson.dumps({"title": title}).decode())), body=body)
        self._side("title", 2)

    def web_search(self, query: str, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The side request Claude Code's WebSearch tool sends (the server tool, forced by
        ``tool_choice``), answered with the search and its results; returns the answer."""
        messages = [{"role": "user", "content": [text(f"Perform a web search for the query: {query}")]}]
        body = orjson.dumps(
            {
                "model": HAIKU,
                "messages": messages,
                "system": [text("You are an assistant for performing a web search tool use")],
                "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
                "tool_choice": {"type": "tool", "name": "web_search"},
                "metadata": {
                    "user_id": orjson.dumps({"device_id": "cf7deb13", "account_uuid": "", "session_id": self.session_id}).decode()
                },
                "max_tokens": 32000,
                "stream": True,
            }
        )
        self._tools += 1
        use_id = f"srvtoolu_{self._tools:024d}"
        found = results[0]["url"] if results else "nothing"
        answer = reply(
            {"type": "server_tool_use", "id": use_id, "name": "web_search", "input": {"query": query}},
            {"type": "web_search_tool_result", "tool_use_id": use_id, "content": results},
            {
                "type": "text",
                "text": f"Found {found}.",
                "citations": [{"type": "web_search_result_location", "url": found, "title": "Result", "cited_text": "..."}],
            },
        )
        self.exchange("web_search", messages, answer, body=body)
        self._side("web_search", 2)
        self.tool_calls += 1
        return answer

    def count_tokens(self, value: str) -> None:
        messages = [{"role": "user", "content": value}]
        body = orjson.dumps({"model": "claude-opus-4-8", "messages": messages, "tools": []})
        self.exchange("count_tokens", messages, {"input_tokens": 9}, body=body, path="/v1/messages/count_tokens")
        self._side("count_tokens", 1)

    def compact(
        self, thread: str = "main", *, prompt: str = COMPACTION_PROMPT, continuation: str = CONTINUATION, side: bool = True
    ) -> None:
        """The summary request (``prompt`` its last message), then the thread starts again from the
        summary, opening with ``continuation``. ``side``: the rules know the prompt for a compaction's,
        else it is a turn of the thread like any other."""
        history = self.histories[thread]
        summary = f"the first {len(history)} messages, summarised"
        self.exchange(thread, [*history, {"role": "user", "content": [text(prompt)]}], reply(text(summary)))
        if side:
            self._side("compaction", len(history) + 2)
            for message in history:  # the compaction's copy of the history has its own tool calls
                self._count_tools(message["content"])
        else:
            self.positions[self._labels[thread]] += 2
        self.histories[thread] = [{"role": "user", "content": [text(continuation + summary)]}]
        self._start(thread, f"{thread}#{self.conversations}")
        self.positions[self._labels[thread]] += 1
        history = self.histories[thread]
        self.exchange(thread, history, reply(text("Continuing.")))
        history.append({"role": "assistant", "content": [text("Continuing.")]})
        self.positions[self._labels[thread]] += 1

    def _start(self, thread: str, label: str) -> None:
        self._labels[thread] = label
        self.conversations += 1

    def _side(self, kind: str, positions: int) -> None:
        self.conversations += 1
        self.positions[f"{kind}#{self.conversations}"] = positions

    def _count_tools(self, content: list[dict[str, Any]]) -> None:
        self.tool_calls += sum(1 for block in content if block.get("type") == "tool_use")

    @property
    def messages(self) -> int:
        return sum(self.positions.values())


def long_session(turns: int = 200) -> SessionBuilder:
    """A generated session of ``turns`` main-thread turns with everything Claude Code does in one.

    Every 10th turn runs a tool, every 25th calls the Agent tool: a sub-agent that
    runs a tool and itself starts a nested sub-agent, every 20th is retried twice after 529s, every 30th
    is interrupted (its partial reply resent as history), every 40th asks for
    a title and counts tokens, and the session is compacted once in the middle.
    """
    s = SessionBuilder()
    for n in range(turns):
        if n == turns // 2:
            s.compact()
        if n % 40 == 0:
            s.title(f"prompt {n}", f"Title at turn {n}")
            s.count_tokens(f"count {n}")
        if n % 25 == 5:
            _sub_agent(s, n)
        if n % 10 == 3:
            s.tool_turn("main", f"echo {n}", f"{n}")
            continue
        partial = n % 30 == 7
        answer = reply(text(f"Answer {n}, cut" if partial else f"Answer {n}."))
        s.turn("main", text(f"Question {n}"), answer=answer, retries=2 if n % 20 == 9 else 0, partial=partial)
    return s


def _sub_agent(s: SessionBuilder, n: int) -> None:
    """The main thread starts a sub-agent, which runs a tool and starts a nested one."""
    agent, nested = f"a{n:016x}", f"b{n:016x}"
    call = s.spawn("main", {agent: f"Sub-task {n}"})[agent]
    s.start(agent, f"Sub-task {n}", reply(text("Starting.")))
    s.tool_turn(agent, f"ls {n}", "file", agent_id=agent)
    nested_call = s.spawn(agent, {nested: f"Nested task {n}"}, agent_id=agent)[nested]
    s.start(nested, f"Nested task {n}", reply(text("Nested done.")), parent_agent_id=agent)
    s.turn(agent, tool_result(nested_call, "Nested done."), answer=reply(text(f"Sub-task {n} done.")), agent_id=agent)
    s.turn("main", tool_result(call, f"Sub-task {n} done."), answer=reply(text(f"Sub-task {n} is done.")))


# --- the samples -----------------------------------------------------------------


def sample_events() -> list[dict[str, Any]]:
    """Every sample as a request event and the response the stand-in gave it."""
    samples = load_samples()
    events: list[dict[str, Any]] = []
    for index, sample in enumerate(samples):
        headers = {name.lower(): value for name, value in sample["headers"]}
        session = headers.get("x-claude-code-session-id") or "anonymous:Bun"
        body = sample["body"]
        raw = orjson.dumps(body) if body is not None else b""
        request = request_event(
            session_id=session,
            agent_id=headers.get("x-claude-code-agent-id"),
            method=sample["method"],
            path=sample["path"],
            query=sample["query"],
            body=raw,
            body_size=len(raw),
            model=body.get("model") if isinstance(body, dict) else None,
        )
        events += [request, _stub_response(request, sample, samples[index + 1 :])]
    return events


def _stub_response(request: dict[str, Any], sample: dict[str, Any], later: list[dict[str, Any]]) -> dict[str, Any]:
    """The stand-in's answer. Its log says "stream text" for the two broken streams the
    samples README describes (055: empty, 062: an error event after message_start)."""
    if sample["seq"] == 55:
        event = response_event(request=request, upstream_complete=False, body=b"")
        event["response"]["message"] = None
        return event
    if sample["seq"] == 62:
        return response_event(request=request, error=("overloaded_error", "Overloaded"), error_in_stream=True)
    answer = _stub_answer(sample, later)
    return answered(request, answer.pop("message", None), **answer)


def _stub_answer(sample: dict[str, Any], later: list[dict[str, Any]]) -> dict[str, Any]:
    """A text, the tool_use the session's next request carries, an error, a count."""
    stub = sample["stub_response"]
    if stub.startswith("injected error"):
        _, _, status, error_type = stub.split()
        return {"error": (error_type, "Overloaded"), "status": int(status)}
    if stub.startswith("count_tokens"):
        return {"message": {"input_tokens": int(stub.split()[1])}}
    if stub == "404 unhandled":
        return {"error": ("not_found_error", "Not found")}
    if stub == "stream tool":
        n = len(sample["body"]["messages"])
        follow = next(s for s in later if s["body"] and len(s["body"].get("messages", [])) > n)
        return {"message": reply(*follow["body"]["messages"][n]["content"], stop_reason="tool_use")}
    return {"message": reply(text(STUB_TEXT))}
