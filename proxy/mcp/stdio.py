"""The stdio shim: ``kgb mcp stdio NAME -- COMMAND [ARGS...]`` in place of a stdio MCP server's command.

It starts the server and sits between it and the client::

    client stdin  ──chunk──► shim ──write──► server stdin      each line it completes recorded first
    client stdout ◄──write── shim ◄──chunk── server stdout     each line it completes recorded first
    client stderr ◄───────── server stderr (the same file: passed through, not recorded)

Bytes pass as they come, chunk by chunk, never waiting for a line's end; a
copy goes to a line splitter, and each newline-delimited JSON-RPC message
becomes an event (`proxy.mcp.events`) appended to the capture log before the
chunk that completes it goes on: a shim killed outright a moment after its
peer got a message still has that message in the log. Signals
the shim gets (INT, TERM, HUP, QUIT, USR1, USR2) go to the server, which runs
in its own process group so a terminal's Ctrl-C reaches it once; if the shim
itself is killed outright, the kernel sends the server SIGTERM
(``PR_SET_PDEATHSIG``). The shim exits with the server's code (128 + N when
signal N ended it); a server that will not start gets a message on stderr and
127 (not found) or 126 (not executable), like a shell.

Events go to a capture log of the shim's own (a log has one writer): a slot
under ``KGB_SPOOL_DIR/mcp-stdio/``, the first whose lock no running shim holds.
A capture worker (proxy/worker.py) publishes that log from a child process,
supervised as `kgb proxy` supervises its own (proxy/supervisor.py): its CPU never
competes with the relay for the GIL or the loop, and a slow or dead broker never
delays the server's start or a message. Once the server has exited, the worker
publishes what is left (for at most KGB_SHUTDOWN_TIMEOUT) and the shim waits for
it; what Kafka did not take stays in the slot, and the next shim to claim it
publishes it. A shim killed outright closes the worker's pipe, which is its stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import fcntl
import itertools
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from common.running import new_loop
from proxy.capture import RedactionPolicy
from proxy.mcp import events
from proxy.redact import redact_text
from proxy.settings import ProxySettings
from proxy.supervisor import KILL_GRACE, Supervisor, worker_command
from proxy.tap import McpSink, capture_log

log = logging.getLogger(__name__)

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
CHUNK = 256 * 1024
PR_SET_PDEATHSIG = 1
NOT_FOUND, NOT_EXECUTABLE = 127, 126
SPOOL_SLOTS = "mcp-stdio"
LOCK_FILE = "lock"


@dataclass(frozen=True)
class ShimSettings:
    """What `kgb mcp stdio` needs: the server's name and command, and where its events go."""

    name: str
    command: tuple[str, ...]
    proxy: ProxySettings
    policy: RedactionPolicy

    @classmethod
    def of(cls, name: str, command: Sequence[str], proxy: ProxySettings) -> ShimSettings:
        return cls(name, tuple(command), proxy, RedactionPolicy(proxy.rules(), proxy.redact_headers, b""))


# --- pure ---------------------------------------------------------------------------------


class LineSplitter:
    """Newline-delimited messages out of chunks split anywhere; a CR before the LF is not part of the message."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        return [line.removesuffix(b"\r") for line in lines if not _blank(line)]

    def flush(self) -> list[bytes]:
        """The end of the stream: what came after the last newline, if anything."""
        rest, self._pending = self._pending, b""
        return [] if _blank(rest) else [rest]


def _blank(line: bytes) -> bool:
    """Whether a line holds nothing but ASCII whitespace, told without a stripped copy of each message."""
    return not line or line.isspace()


def exit_status(returncode: int) -> int:
    """The shim's own exit code for the server's: the same, or 128 + N for a server ended by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def start_failure(error: OSError) -> int:
    return NOT_FOUND if isinstance(error, FileNotFoundError) else NOT_EXECUTABLE


def process_fields(command: Sequence[str], policy: RedactionPolicy, **process: Any) -> dict[str, Any]:
    """OPEN and CLOSE: the command line, each argument redacted (a token may be passed as one)."""
    redacted = [redact_text(argument, policy.rules) for argument in command]
    fired = sorted({rule for _, hits in redacted for rule in hits})
    return {
        "process": {"command": [text for text, _ in redacted], "pid": None, "exit_code": None, "signal": None} | process,
        "redactions": fired,
    }


def close_fields(command: Sequence[str], policy: RedactionPolicy, returncode: int | None, error: str | None) -> dict[str, Any]:
    fields = process_fields(
        command,
        policy,
        exit_code=None if returncode is None else exit_status(returncode),
        signal=-returncode if returncode is not None and returncode < 0 else None,
    )
    if error is not None:
        fields |= {"error_type": "server_failed_to_start", "error_message": error}
    return fields


# --- the shim: thin async shells -----------------------------------------------------------


def claim_spool(base: Path) -> tuple[Path, int]:
    """The first spool slot no running shim holds, locked for this process's life (the fd is never closed)."""
    for slot in itertools.count():
        directory = base / str(slot)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return directory, fd
    raise AssertionError("unreachable: slots never end")


def _child_setup() -> None:
    """In the server, before exec: its own process group, and SIGTERM when the shim dies."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Source(Protocol):
    async def read(self, size: int) -> bytes: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def can_write_eof(self) -> bool: ...
    def close(self) -> None: ...


async def pump(source: Source, sink: Sink, record: Callable[[bytes], None]) -> None:
    """Forward chunks until the source ends, recording each line a chunk completes before the chunk goes on."""
    lines = LineSplitter()
    try:
        while chunk := await source.read(CHUNK):
            for line in lines.feed(chunk):
                record(line)
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, BrokenPipeError) as exc:
        log.info("stdio shim: %s", exc)
    finally:
        for line in lines.flush():
            record(line)
        with contextlib.suppress(ConnectionError, BrokenPipeError, OSError):
            if sink.can_write_eof() and isinstance(sink, asyncio.StreamWriter):
                sink.write_eof()
            else:
                sink.close()


def is_stream(fd: int) -> bool:
    """Pipes, sockets and terminals can be watched by the loop; a regular file cannot."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class FileSource:
    """Standard input redirected from a regular file: read on a thread (the loop cannot watch files)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def read(self, size: int) -> bytes:
        return await asyncio.to_thread(os.read, self._fd, size)


class FileSink:
    """Standard output redirected to a regular file: plain writes, which a file takes at once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        return None


async def standard_streams() -> tuple[Source, Sink]:
    """This process's stdin and stdout as streams: the client's pipes (or files, when run by hand)."""
    loop = asyncio.get_running_loop()
    source: Source = FileSource(0)
    if is_stream(0):
        reader = asyncio.StreamReader(limit=CHUNK)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0, closefd=False))
        source = reader
    if not is_stream(1):
        return source, FileSink(1)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0, closefd=False)
    )
    return source, asyncio.StreamWriter(transport, protocol, None, loop)


@dataclass
class Shim:
    settings: ShimSettings
    sink: McpSink
    recorder: events.Recorder = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        origin = events.Origin(events.STDIO, self.settings.name, None)
        self.recorder = events.Recorder(origin, policy=self.settings.policy, submit=self.sink.submit, at_once=True)

    def record(self, direction: str) -> Callable[[bytes], None]:
        return lambda line: self.recorder.message(events.Message(direction, line))

    async def run(self) -> int:
        command, policy = self.settings.command, self.settings.policy
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=_child_setup
            )
        except OSError as exc:
            message = f"cannot start {command[0]!r}: {exc.strerror or exc}"
            print(f"kgb mcp stdio {self.settings.name}: {message}", file=sys.stderr, flush=True)
            self.recorder.record("OPEN", process_fields, command, policy)
            self.recorder.record("CLOSE", close_fields, command, policy, None, message)
            return start_failure(exc)
        self.recorder.record("OPEN", partial(process_fields, pid=process.pid), command, policy)
        assert process.stdin is not None and process.stdout is not None
        loop = asyncio.get_running_loop()
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, _forward, process, sig)
        client_in, client_out = await standard_streams()
        requests = asyncio.create_task(pump(client_in, process.stdin, self.record(events.CLIENT_TO_UPSTREAM)))
        replies = asyncio.create_task(pump(process.stdout, client_out, self.record(events.UPSTREAM_TO_CLIENT)))
        returncode = await process.wait()
        await replies
        requests.cancel()
        await asyncio.gather(requests, return_exceptions=True)
        self.recorder.record("CLOSE", close_fields, command, policy, returncode, None)
        return exit_status(returncode)


def _forward(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


async def shim(settings: ShimSettings) -> int:
    """Run the server through the shim until it exits; its exit code is the result."""
    capture = settings.proxy.capture
    slot, _lock = claim_spool(capture.spool_dir / SPOOL_SLOTS)
    capture = dataclasses.replace(capture, spool_dir=slot)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    env = {**os.environ, "KGB_SPOOL_DIR": str(slot)}
    supervisor = Supervisor(worker_command(level), capture.close_timeout, env=env, stdout=sys.stderr.fileno())
    publishing = asyncio.create_task(supervisor.run())
    try:
        async with capture_log(capture.log()) as writer:
            code = await Shim(settings, McpSink(writer)).run()
            await asyncio.sleep(0)  # the last events are built at the next turn of the loop
        return code
    finally:
        if not await supervisor.started(slot, capture.close_timeout + KILL_GRACE):
            log.error("stdio shim: its capture worker did not start; the next shim on %s publishes the log", slot)
        supervisor.stop()
        await publishing


def main(settings: ShimSettings) -> int:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(shim(settings))
