"""The column each ``$N`` of a named query feeds, read from its SQL, to check rows built by name against it.

A row's fields must be, in order, the columns its parameters land in: an
INSERT's column list paired with its VALUES or SELECT list (a parameter read
through ``json_or_text($N) AS alias`` feeds the first column taking
``alias.something``), an UPDATE's ``column = ...$N...`` in SET and WHERE, and
``unnest($1, ...) AS alias (column, ...)`` (or the INSERT's columns, for ``SELECT * FROM unnest(...)``).
"""

from __future__ import annotations

import re

_PARAMETER = re.compile(r"\$(\d+)\b")
_THROUGH = re.compile(r"\w+\(\s*\$(\d+)[^)]*\)\s+(?:AS\s+)?(\w+)", re.IGNORECASE)
_UNNEST = re.compile(r"unnest\s*\((?P<args>[^;]*?)\)\s*(?:AS\s+\w+\s*\((?P<names>[^)]*)\)|ON\s|$)", re.IGNORECASE)
_ASSIGNED = re.compile(r"(?:^|[\s(,])(?:\w+\.)?(\w+)\s*=\s*([^,]*?)(?=,|\bWHERE\b|\bAND\b|$)", re.IGNORECASE | re.DOTALL)
_INSERT = re.compile(
    r"INSERT\s+INTO\s+\w+(?:\s+AS\s+\w+)?\s*\((?P<columns>[^)]*)\)\s*(?:VALUES\s*\((?P<values>.*?)\)\s*(?:ON\s|$)|SELECT\s+(?P<select>.*?)\s+FROM\s)",
    re.IGNORECASE | re.DOTALL,
)


def split_top(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def parameter_columns(sql: str) -> tuple[str, ...]:
    """The column ``$1``, ``$2``, ... feed, in parameter order; an error names a parameter no column takes."""
    sql = _strip_comments(sql)
    found: dict[int, str] = {}
    through = {alias: int(n) for n, alias in _THROUGH.findall(sql)}
    insert = _INSERT.search(sql)
    if unnest := _UNNEST.search(sql):
        names = unnest["names"] if unnest["names"] is not None else insert["columns"]  # SELECT *: the INSERT's columns
        for arg, name in zip(split_top(unnest["args"]), split_top(names), strict=True):
            found.setdefault(int(_PARAMETER.search(arg)[1]), name)
    elif insert:
        values = insert["values"] if insert["values"] is not None else insert["select"]
        columns, values = split_top(insert["columns"]), split_top(values)
        if values[-1].endswith(".*"):  # a function's columns end the list: no parameter feeds them
            columns, values = columns[: len(values) - 1], values[:-1]
        for column, value in zip(columns, values, strict=True):
            numbers = [int(n) for n in _PARAMETER.findall(value)]
            alias = re.match(r"(\w+)\.", value)
            if not numbers and alias and alias[1] in through:
                numbers = [through[alias[1]]]
            for number in numbers:
                found.setdefault(number, column)
    else:
        for column, value in _ASSIGNED.findall(sql):
            for number in _PARAMETER.findall(value):
                found.setdefault(int(number), column)
    count = max(int(n) for n in _PARAMETER.findall(sql))
    missing = [n for n in range(1, count + 1) if n not in found]
    assert not missing, f"no column takes parameters {missing}"
    return tuple(found[n] for n in range(1, count + 1))
