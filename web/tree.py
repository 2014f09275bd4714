"""A session's conversations as the tree people read: threads, what they started, and the side requests.

winni links every conversation by id (`parent_conversation_id` for a
sub-agent, `summarises_conversation_id` for a compaction and for the part of
the thread that continued after it, `branch_of` for a rewound history); this
turns those rows into nodes, each placed exactly once. A thread that was
compacted reads as its parts in order with the compaction between them;
every part carries the sub-agents it started and the branches taken from it,
nested to any depth. Anything whose link leads nowhere (a parent not stored,
a sub-agent seen before its Agent call) is listed apart rather than lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

THREAD_KINDS = frozenset({"main", "subagent"})


@dataclass
class Node:
    row: Mapping[str, Any]
    cost: Any = None
    unpriced: int = 0
    children: list[Node] = field(default_factory=list)  # sub-agents and branches it started
    parts: list[Node] = field(default_factory=list)  # a thread's compactions and continuations, in order

    @property
    def id(self) -> Any:
        return self.row["id"]


@dataclass
class Tree:
    threads: list[Node]  # main threads, each with its parts and what they started
    side: list[Node]  # title, count_tokens, web_search, other
    unattached: list[Node]  # links that lead nowhere


def build(rows: Sequence[Mapping[str, Any]], costs: Mapping[Any, Mapping[str, Any]]) -> Tree:
    """The tree of ``rows`` (session_conversations, in ordinal order), with each node's cost from ``costs``."""
    nodes = {row["id"]: Node(row, *_cost(costs.get(row["id"]))) for row in rows}
    placed: set[Any] = set()
    started: dict[Any, list[Node]] = defaultdict(list)
    following: dict[Any, list[Node]] = defaultdict(list)
    for node in nodes.values():
        row = node.row
        if row["summarises_conversation_id"] in nodes:
            following[row["summarises_conversation_id"]].append(node)
        elif row["branch_of"] in nodes:
            started[row["branch_of"]].append(node)
        elif row["kind"] == "subagent" and row["parent_conversation_id"] in nodes:
            started[row["parent_conversation_id"]].append(node)

    def grow(node: Node) -> Node:
        placed.add(node.id)
        node.children = [grow(child) for child in started.get(node.id, ()) if child.id not in placed]
        if node.row["summarises_conversation_id"] not in nodes:  # a thread's first part gathers the rest
            node.parts = [grow(part) for part in _chain(node, following) if part.id not in placed]
        return node

    threads = [grow(n) for n in nodes.values() if _starts_thread(n.row, nodes) and n.id not in placed]
    side = [grow(n) for n in nodes.values() if n.row["kind"] not in THREAD_KINDS | {"compaction"} and n.id not in placed]
    unattached = [grow(n) for n in nodes.values() if n.id not in placed]
    return Tree(threads, side, unattached)


def _starts_thread(row: Mapping[str, Any], nodes: Mapping[Any, Node]) -> bool:
    return (
        row["kind"] == "main"
        and row["summarises_conversation_id"] not in nodes
        and row["branch_of"] not in nodes
        and row["parent_conversation_id"] not in nodes
    )


def _chain(node: Node, following: Mapping[Any, list[Node]]) -> list[Node]:
    """What came after ``node`` in its thread: each compaction of it, then the part that continued, and so on."""
    chain: list[Node] = []
    seen = {node.id}
    current = node
    while current.id in following:
        after = [
            n
            for n in sorted(following[current.id], key=lambda n: (n.row["kind"] != "compaction", n.row["ordinal"]))
            if n.id not in seen
        ]
        chain += after
        seen.update(n.id for n in after)
        continued = [n for n in after if n.row["kind"] != "compaction"]
        if not continued:
            break
        current = continued[-1]
    return chain


def _cost(found: Mapping[str, Any] | None) -> tuple[Any, int]:
    return (None, 0) if found is None else (found["cost_usd"], found["unpriced"])
