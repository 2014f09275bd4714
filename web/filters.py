"""What the pages' query strings ask for, parsed and checked: filters, day ranges and the sessions cursor.

A bad value is a `BadRequest` naming the parameter, answered with 400; an
empty one means the filter is off. Days are UTC calendar days, as the
tables' timestamps and the usage rollups' ``day`` are.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import orjson

KINDS = ("main", "subagent", "title", "count_tokens", "web_search", "compaction", "other")
MAX_QUERY_CHARS = 1000
USAGE_DAYS = 30


class BadRequest(ValueError):
    """A query parameter the page cannot use; the message names it."""


def text(params: Mapping[str, str], name: str, limit: int = 500) -> str | None:
    value = params.get(name, "").strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters")
    return value or None


def day(params: Mapping[str, str], name: str) -> date | None:
    value = text(params, name, 10)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be a day, YYYY-MM-DD; got {value!r}") from None


def start_of(value: date | None) -> datetime | None:
    return None if value is None else datetime.combine(value, time(), UTC)


def end_of(value: date | None) -> datetime | None:
    """The instant the day ends: ranges are [from, until + 1 day)."""
    return None if value is None else datetime.combine(value + timedelta(days=1), time(), UTC)


def kind(params: Mapping[str, str]) -> str | None:
    value = text(params, "kind", 20)
    if value is not None and value not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}; got {value!r}")
    return value


def page_number(params: Mapping[str, str]) -> int:
    value = params.get("page", "1")
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        raise BadRequest(f"page must be a number from 1 to 1000; got {value!r}")
    return int(value)


def day_range(params: Mapping[str, str]) -> tuple[date | None, date | None]:
    since, until = day(params, "from"), day(params, "until")
    if since and until and until < since:
        raise BadRequest("until is before from")
    return since, until


def usage_range(params: Mapping[str, str], today: date) -> tuple[date | None, date | None]:
    """The usage page's days: the last `USAGE_DAYS` unless asked; an empty ``from`` means since the first."""
    since, until = day_range(params)
    if "from" not in params and until is None:
        since = today - timedelta(days=USAGE_DAYS - 1)
    return since, until


@dataclass(frozen=True)
class Cursor:
    """Where the last page ended: the sessions after (last_seen, session_key), newest first."""

    last_seen: datetime
    session_key: str

    def encode(self) -> str:
        raw = orjson.dumps([self.last_seen.isoformat(), self.session_key])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        try:
            seen, key = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            return cls(datetime.fromisoformat(seen), str(key))
        except (ValueError, TypeError):
            raise BadRequest("after is not a cursor this page gave") from None


@dataclass(frozen=True)
class SessionFilter:
    since: date | None = None
    until: date | None = None
    model: str | None = None
    client: str | None = None
    key: str | None = None
    after: Cursor | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SessionFilter:
        since, until = day_range(params)
        after = text(params, "after", 1000)
        return cls(
            since,
            until,
            text(params, "model"),
            text(params, "client"),
            text(params, "key"),
            Cursor.decode(after) if after else None,
        )

    def arguments(self, limit: int) -> tuple[object, ...]:
        """The `sessions` query's parameters, $1 to $8."""
        after = self.after
        return (
            after and after.last_seen,
            after and after.session_key,
            start_of(self.since),
            end_of(self.until),
            self.client,
            self.model,
            self.key,
            limit,
        )

    def query(self, after: Cursor | None = None) -> dict[str, str]:
        """These filters as query parameters, with ``after`` for the next page."""
        values = {
            "from": self.since and self.since.isoformat(),
            "until": self.until and self.until.isoformat(),
            "model": self.model,
            "client": self.client,
            "key": self.key,
            "after": after and after.encode(),
        }
        return {k: v for k, v in values.items() if v}


@dataclass(frozen=True)
class SearchFilter:
    words: str | None = None
    session: str | None = None
    kind: str | None = None
    since: date | None = None
    until: date | None = None
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SearchFilter:
        since, until = day_range(params)
        return cls(text(params, "q", MAX_QUERY_CHARS), text(params, "session"), kind(params), since, until, page_number(params))

    def arguments(self, limit: int, start: str, stop: str) -> tuple[object, ...]:
        """The `search` query's parameters, $1 to $9: one more than a page, to know whether another follows."""
        return (
            self.words,
            self.session,
            self.kind,
            start_of(self.since),
            end_of(self.until),
            limit + 1,
            (self.page - 1) * limit,
            start,
            stop,
        )

    def query(self, page: int) -> dict[str, str]:
        values = {
            "q": self.words,
            "session": self.session,
            "kind": self.kind,
            "from": self.since and self.since.isoformat(),
            "until": self.until and self.until.isoformat(),
            "page": str(page) if page > 1 else None,
        }
        return {k: v for k, v in values.items() if v}
