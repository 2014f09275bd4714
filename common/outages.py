"""A service that is away is one line when it goes, one when it is back, and a summary in between.

Left alone, a consumer whose Kafka and PostgreSQL are stopped writes
thousands of lines a minute: aiokafka logs every reconnect attempt at ERROR,
asyncpg's pool a traceback per attempt, and each retry its own warning. The
reader needs three facts: what is away, since when, and that it is back.

- `Outage` is that as a pure state machine (a clock passed in): the lines to
  write for a failure and for a success, and the waiting it stands for.
- `HEALTH` is the process's list of what it waits for: ``/ready`` on the
  proxy and on the metrics port answers with it.
- `QuietClients` is the logging filter: aiokafka's records and asyncpg's
  pool retries never reach the log (``--debug`` keeps them); each one makes a
  `Watch` look at the service itself (a Kafka metadata request, a PostgreSQL
  connection), and only a service that does not answer opens an outage.
  aiokafka's errors on a healthy start (the group coordinator still loading)
  are then no line at all, and an idle consumer still says when its database
  goes and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from common.tasks import Shared

log = logging.getLogger(__name__)

SUMMARY_EVERY = 60.0  # seconds between "still away" lines
PROBE_EVERY = 2.0  # seconds between looks at a broker that is away
PROBE_TIMEOUT = 2.0
KAFKA = "Kafka (KGB_KAFKA_BOOTSTRAP)"
POSTGRES = "PostgreSQL (KGB_DATABASE_URL)"


@dataclass
class Outage:
    """One service's absence, from its first failure to its first success after it."""

    what: str
    gone: str = "is away"
    back: str = "is back"
    summary_every: float = SUMMARY_EVERY
    since: float | None = None
    failures: int = 0
    last_error: str = ""
    _summarised_at: float = field(default=0.0, repr=False)

    @property
    def away(self) -> bool:
        return self.since is not None

    def failed(self, error: str, now: float) -> str | None:
        """The line to log for this failure: the first, then one per ``summary_every``, else None."""
        self.failures += 1
        self.last_error = error
        if self.since is None:
            self.since = self._summarised_at = now
            return f"{self.what} {self.gone} ({error}); retrying until it answers, nothing is lost"
        if now - self._summarised_at >= self.summary_every:
            self._summarised_at = now
            return f"{self.what} still {self.gone.split()[-1]} after {now - self.since:.0f}s ({self.failures} failures; last: {error})"
        return None

    def recovered(self, now: float) -> str | None:
        """The line to log when it answers again; None when it was not away."""
        if self.since is None:
            return None
        line = f"{self.what} {self.back} after {now - self.since:.0f}s ({self.failures} failures)"
        self.since, self.failures, self.last_error = None, 0, ""
        return line


class Health:
    """What this process waits for, by name, with why: empty means ready.

    A consumer waits for ``start`` from its first step until it has joined its
    group (`consumers.service`); each retry loop that is failing waits for its step.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, str] = {}

    def waiting_for(self) -> list[str]:
        return list(self._waiting.values())

    def wait(self, name: str, why: str) -> None:
        self._waiting[name] = why

    def done(self, name: str) -> None:
        self._waiting.pop(name, None)


HEALTH = Health()


class Reporter:
    """An `Outage` that logs its own lines and keeps `HEALTH` up to date."""

    def __init__(
        self, outage: Outage, logger: logging.Logger = log, health: Health = HEALTH, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.outage = outage
        self.log = logger
        self.health = health
        self.clock = clock

    def failed(self, error: str) -> None:
        line = self.outage.failed(error, self.clock())
        self.health.wait(self.outage.what, f"{self.outage.what}: {self.outage.last_error}")
        if line:
            self.log.warning("%s", line)
        else:
            self.log.debug("%s failed again (%s; failure %d)", self.outage.what, error, self.outage.failures)

    def recovered(self) -> None:
        line = self.outage.recovered(self.clock())
        self.health.done(self.outage.what)
        if line:
            self.log.info("%s", line)


def metadata_request() -> bytes:
    """A Kafka Metadata v0 request for every topic: the cheapest question a broker must answer."""
    body = struct.pack(">hhih", 3, 0, 1, 3) + b"kgb" + struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


async def broker_answers(bootstrap: str) -> bool:
    """True when one of the bootstrap brokers answers a metadata request."""
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, int(port))
                try:
                    writer.write(metadata_request())
                    await writer.drain()
                    _size, correlation_id = struct.unpack(">ii", await reader.readexactly(8))
                finally:
                    writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            continue
        if correlation_id == 1:
            return True
    return False


async def database_answers(url: str) -> bool:
    """True when PostgreSQL at ``url`` takes a connection."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close(timeout=PROBE_TIMEOUT)
    return True


class Watch:
    """The process's view of one service, fed by its client's log records (`QuietClients`).

    A record is a hint, not a verdict: `run` then asks the service itself, and
    only when it does not answer is it away; from then it asks every
    `PROBE_EVERY` seconds until it answers, which is when it is back.
    """

    def __init__(self, what: str, probe: Callable[[str], Awaitable[bool]]) -> None:
        self.reporter = Reporter(Outage(what))
        self.probe = probe
        self.hint: asyncio.Event | None = None  # made by `run`, in the loop it waits in
        self.running = Shared(f"watch {what}")
        self.last_hint = ""

    def noticed(self, message: str) -> None:
        """From the logging filter, in the loop's thread (aiokafka logs from its tasks)."""
        self.last_hint = message
        if self.hint is not None:
            self.hint.set()

    async def run(self, target: str) -> None:
        self.hint = hint = asyncio.Event()
        try:
            while True:
                if not self.reporter.outage.away:
                    await hint.wait()
                hint.clear()
                if await self.probe(target):
                    self.reporter.recovered()
                    continue
                self.reporter.failed(self.last_hint or "no answer")
                await asyncio.sleep(PROBE_EVERY)
        finally:
            self.hint = None


KAFKA_WATCH = Watch(KAFKA, broker_answers)
POSTGRES_WATCH = Watch(POSTGRES, database_answers)


@contextlib.asynccontextmanager
async def watching(watch: Watch, target: str) -> AsyncIterator[None]:
    """``watch`` running for the block, asking ``target`` (a bootstrap list, a database URL): a service
    opens one for each service it talks to. Nested or concurrent blocks (several consumers in one
    test process) share the first one's, which runs until the last of them ends."""
    async with watch.running.use(partial(watch.run, target)):
        await asyncio.sleep(0)  # let it make its event, so a hint from the block's first step is heard
        yield


class QuietClients(logging.Filter):
    """On the root handlers: aiokafka's records and asyncpg's pool retries become hints to their `Watch`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiokafka"):
            if record.levelno >= logging.WARNING:
                KAFKA_WATCH.noticed(record.getMessage())
            return False
        if record.name == "asyncpg.pool" and record.levelno < logging.ERROR:
            POSTGRES_WATCH.noticed(f"{record.getMessage()} ({record.exc_info[1]})" if record.exc_info else record.getMessage())
            return False
        return True
