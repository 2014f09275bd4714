"""The capture worker's CPU per exchange for building and encoding events, offline: no relay, no Kafka.

    .venv/bin/python -m bench.build_bench [--baseline TREE] [--rounds 3] [--passes 3] [--profile]

A spool is written once, with the relay's own writer (`proxy.tap.Tap` on a
`LogWriter`), per scenario: exchanges shaped like those of bench/proxy_bench.py
(the load generator's requests, `bench.loadgen.request_body`, bodies in 64 KiB
pieces; the fake
upstream's answers, `tests.fakes.anthropic`, each SSE event a chunk of its own),
`c` of them open at a time, their records interleaved as a relay serving `c`
clients appends them. Then the worker's path is run over each spool: the
`LogReader`, both assemblers (decoding, SSE reassembly, redaction, session
parsing, event building), and the encoding `Session._send_built` does (Avro,
FRAGMENT events past the limit), with nothing sent.

Each tree (this one, and `--baseline TREE`, a checkout of another commit) is
measured in a process of its own, started with that tree as its cwd and first
on its path, so its own code runs; rounds alternate between the trees, so both
see the same machine load. A process reads each spool once to warm up, then
`--passes` times timed (CPU time of the process); a row is the median over
every timed pass of every round, in ms of CPU per exchange; `read` is the part
of it the `LogReader` alone takes (passes that only read). The digest is a
SHA-256 over every encoded message (key and value) in order: equal digests mean
both trees put byte-identical events on the topic. `--profile` also runs this
tree once under cProfile per scenario and prints its costliest functions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
BODY_PIECE = 64 * 1024  # a request body reaches the log in pieces as aiohttp's reader hands them over
RECEIVED_AT = 1_764_000_000_000_000  # microseconds; fixed, so the events do not depend on when the spool was written


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    concurrency: int
    exchanges: int
    body_bytes: int = 0


SCENARIOS = (
    Scenario("json c=64", False, 64, 640),
    Scenario("sse50 c=64", True, 64, 320),
    Scenario("500KB c=16", True, 16, 48, body_bytes=500 * 1024),
)


# --- writing the spools (this tree's relay code) ---------------------------------


def request_headers(body: bytes) -> list[tuple[str, str]]:
    """The load generator's headers, with what aiohttp's client adds, in the order it sends them."""
    from bench.loadgen import request_headers as loadgen_headers

    added = [
        ("Host", "127.0.0.1:8089"),
        ("Accept", "*/*"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Content-Length", str(len(body))),
    ]
    return [*added, *loadgen_headers().items()]


def write_spool(directory: Path, scenario: Scenario) -> None:
    """`scenario.exchanges` exchanges appended through the relay's tap, `concurrency` open at a time."""
    from bench.loadgen import Spec, request_body
    from proxy.capture import RequestRecord
    from proxy.logwriter import FsyncPolicy, LogSettings, LogWriter
    from proxy.tap import HeaderPolicy, Tap
    from tests.fakes import anthropic

    random.seed(scenario.name)  # the fake's message and request ids
    spec = Spec(
        "http://127.0.0.1:8089/v1/messages", scenario.concurrency, scenario.exchanges, 0, scenario.stream, scenario.body_bytes
    )
    body = request_body(spec)
    writer = LogWriter(LogSettings(directory, max_bytes=1 << 40, fsync=FsyncPolicy.NONE))
    tap = Tap(writer, HeaderPolicy.of((), b"bench-fingerprint-key"))
    number = 0
    try:
        while number < scenario.exchanges:
            wave = []
            for _ in range(min(scenario.concurrency, scenario.exchanges - number)):
                record = RequestRecord(
                    "POST",
                    "/v1/messages",
                    "",
                    "1.1",
                    request_headers(body),
                    body,
                    received_at=RECEIVED_AT + number,
                    exchange_id=str(uuid.UUID(int=number + 1)),
                )
                reply = anthropic.text_stream(deltas=50) if scenario.stream else anthropic.json_message()
                headers = anthropic.response_headers(reply)
                if not reply.streamed:
                    headers += [("Content-Length", str(len(reply.payload))), ("Date", "Tue, 25 Nov 2025 12:00:00 GMT")]
                exchange = tap.streaming(record, len(body))
                for start in range(0, len(body), BODY_PIECE):
                    exchange.body(body[start : start + BODY_PIECE])
                exchange.body_end()
                wave.append((exchange, reply, headers))
                number += 1
            for exchange, _, headers in wave:
                exchange.response_head(200, headers, with_chunk=True)
            for index in range(max(len(reply.body) for _, reply, _ in wave)):
                for exchange, reply, _ in wave:
                    if index < len(reply.body):
                        exchange.chunk(reply.body[index])
            for exchange, _, _ in wave:
                exchange.end(client_disconnected=False, upstream_complete=True)
    finally:
        writer.close()


# --- the worker's path (whichever tree's code this process imports) --------------


def build_all(directory: Path, digest: Any = None) -> tuple[int, int]:
    """Every record of the spool through the worker's read, assemble and encode path: (exchanges, events);
    each encoded message goes into `digest` too, if given (outside the timed passes: hashing 500 KB costs)."""
    from proxy.assemble import Assembler
    from proxy.capture import RedactionPolicy
    from proxy.logreader import LogReader, Position
    from proxy.mcp.assemble import McpAssembler
    from proxy.settings import CaptureSettings, ProxySettings
    from proxy.worker import FRAGMENT_ROOM
    from schemas import fragments
    from schemas.codec import EXCHANGE, MCP, single_object_encoder

    settings = ProxySettings()
    policy = RedactionPolicy(settings.rules(), settings.redact_headers, b"")
    encoders = {EXCHANGE: single_object_encoder(EXCHANGE), MCP: single_object_encoder(MCP)}
    part = min(fragments.FRAGMENT_BYTES, CaptureSettings().max_event_bytes - FRAGMENT_ROOM)
    reader = LogReader(directory, Position(0, 0))
    assemblers = (Assembler(policy), McpAssembler(policy))
    exchanges, events = set(), 0
    while reads := reader.poll():
        for read in reads:
            for assembler in assemblers:
                for built in assembler.feed(read):
                    event, encoder = built.event, encoders[built.schema]
                    value = encoder.encode(event)
                    whole = len(value) <= part or built.schema != EXCHANGE
                    pieces = [value] if whole else [encoder.encode(piece) for piece in fragments.split(event, value, part)]
                    key = event["session_key"].encode()
                    for piece in pieces:
                        if digest is not None:
                            digest.update(len(key).to_bytes(4, "big") + key + len(piece).to_bytes(8, "big") + piece)
                        events += 1
                    exchanges.add(built.exchange)
    reader.close()
    return len(exchanges), events


def read_all(directory: Path) -> int:
    """Only the `LogReader`'s part of the path: every record read, none assembled."""
    from proxy.logreader import LogReader, Position

    reader, records = LogReader(directory, Position(0, 0)), 0
    while reads := reader.poll():
        records += len(reads)
    reader.close()
    return records


def cpu_seconds(work: Any, *args: Any) -> float:
    start = time.process_time()
    work(*args)
    return time.process_time() - start


def measure(root: Path, names: list[str], passes: int) -> dict[str, Any]:
    """Per scenario: a warm-up pass that takes the digest, then `passes` timed ones (process CPU time), each
    beside a pass of reading alone."""
    rows = {}
    for name in names:
        directory, digest = root / slug(name), hashlib.sha256()
        exchanges, events = build_all(directory, digest)
        times = [cpu_seconds(build_all, directory) for _ in range(passes)]
        reading = [cpu_seconds(read_all, directory) for _ in range(passes)]
        rows[name] = {
            "cpu_s": times,
            "read_cpu_s": reading,
            "exchanges": exchanges,
            "events": events,
            "digest": digest.hexdigest(),
        }
    return rows


def profile(root: Path, name: str, top: int, order: str) -> str:
    build_all(root / slug(name))
    profiler = cProfile.Profile()
    profiler.runcall(build_all, root / slug(name))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
    return out.getvalue()


# --- orchestration ---------------------------------------------------------------


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def run_tree(tree: Path, root: Path, names: list[str], passes: int) -> dict[str, Any]:
    """`measure` in a process of its own whose code is `tree`'s (its cwd, first on its path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", str(root), "--passes", str(passes)]
    command += [arg for name in names for arg in ("--only", name)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr}")
    return orjson.loads(done.stdout)


def report(names: list[str], trees: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in names:
        row: dict[str, Any] = {}
        for label, runs in trees:
            samples = [t for run in runs for t in run[name]["cpu_s"]]
            reading = [t for run in runs for t in run[name]["read_cpu_s"]]
            exchanges = runs[0][name]["exchanges"]
            row[label] = {
                "ms_per_exchange": 1000 * statistics.median(samples) / exchanges,
                "min_ms_per_exchange": 1000 * min(samples) / exchanges,
                "read_ms_per_exchange": 1000 * statistics.median(reading) / exchanges,
                "exchanges": exchanges,
                "events": runs[0][name]["events"],
                "digest": runs[0][name]["digest"],
                "digests_stable": len({run[name]["digest"] for run in runs}) == 1,
            }
        if "base" in row:
            row["ratio"] = row["this"]["ms_per_exchange"] / row["base"]["ms_per_exchange"]
            row["digests_equal"] = row["this"]["digest"] == row["base"]["digest"]
        rows[name] = row
    return rows


def render(rows: dict[str, Any]) -> str:
    lines = [f"{'scenario':<12} {'tree':<5} {'ms/exch':>8} {'min':>8} {'read':>6} {'exch':>5} {'events':>6}  digest"]
    for name, row in rows.items():
        for label in ("this", "base"):
            if label in row:
                r = row[label]
                lines.append(
                    f"{name:<12} {label:<5} {r['ms_per_exchange']:8.3f} {r['min_ms_per_exchange']:8.3f} {r['read_ms_per_exchange']:6.3f}"
                    f" {r['exchanges']:5d} {r['events']:6d}  {r['digest'][:16]}"
                )
        if "ratio" in row:
            lines.append(
                f"{name:<12} ratio this/base {row['ratio']:.3f}, digests {'equal' if row['digests_equal'] else 'DIFFER'}"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="also measure the code of this source tree (rows marked base)")
    parser.add_argument("--rounds", type=int, default=3, help="measuring processes per tree, alternating between trees")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over each spool per process")
    parser.add_argument("--only", action="append", metavar="SCENARIO", help="only this scenario (repeatable)")
    parser.add_argument("--profile", action="store_true", help="also profile this tree's code per scenario (cProfile)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument("--sort", default="tottime", help="profile order: tottime (default), cumulative, ...")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the per-tree process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    known = [s.name for s in SCENARIOS]
    names = args.only or known
    if unknown := set(names) - set(known):
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {known}")
    if args.measure is not None:
        print(orjson.dumps(measure(args.measure, names, args.passes)).decode())
        return
    with tempfile.TemporaryDirectory(prefix="kgb-build-bench-") as work:
        root = Path(work)
        for scenario in SCENARIOS:
            if scenario.name in names:
                write_spool(root / slug(scenario.name), scenario)
        trees = [("this", ROOT)] + ([("base", args.baseline.resolve())] if args.baseline else [])
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
        for _ in range(args.rounds):
            for label, tree in trees:
                runs[label].append(run_tree(tree, root, names, args.passes))
        rows = report(names, list(runs.items()))
        load = os.getloadavg()
        print(render(rows))
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        if args.profile:
            for name in names:
                print(f"\n--- profile: {name} (this tree) ---")
                print(profile(root, name, args.top, args.sort))
        if args.json:
            args.json.write_text(orjson.dumps({"load_average": load, "results": rows}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
