"""Where the relay's time goes on an exchange's way to its first byte, stage by stage, one exchange at a time.

    .venv/bin/python -m bench.path_bench [--rounds 3] [--scale 1] [--baseline TREE] [--json F]

proxy_bench gives what the relay adds to a client's first byte (`+ttfb/dir`); this bench splits it.
`kgb proxy --no-worker` runs under bench/path_probe.py, which stamps the moments an exchange passes
(its request's bytes read, kgb's handler entered, the request's write upstream begun, the upstream's
head parsed, the client's answer built, the first body bytes here, the client write begun and returned)
and keeps the spans between them. The load generator drives it at concurrency 1, since the stamps are one set per
process, and direct runs in the same rounds, so each row's `+ttfb` is against its own round:

- json c=1 and sse50 c=1, the unpaced fake: back to back, the relay's code runs warm;
- paced c=1, 50 events 20 ms apart: the relay sleeps between events, and its first byte runs cold,
  as it does for most requests of real traffic, which are seconds apart.

Medians in microseconds over every exchange of every round. `--baseline TREE` runs another tree's
relay (`git worktree add`) under the same probe, each round taking turns, and prints this tree's
spans over its. No broker is needed: publishing is the worker's, and it does not run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/path_bench.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.path_probe import SPANS, TOTAL
from bench.proxy_bench import DELTAS, PACE_S, Scenario, expect_line, loadgen_spec, percentile, uptime
from bench.report import emit
from bench.targets import ROOT, BenchError, _spawn, free_port, start_fake, wait_http, workdir

SCENARIOS = (
    Scenario("json c=1", "fast", False, 1, 2000),
    Scenario("sse50 c=1", "fast", True, 1, 1000),
    Scenario("paced c=1", "paced", True, 1, 60),
)
DUMP_WAIT_S = 10.0


@dataclass(frozen=True)
class Probed:
    """One relay under the probe: its URL, its process, and the file its spans come to."""

    url: str
    process: subprocess.Popen[bytes]
    spans: Path

    def collect(self) -> dict[str, list[int]]:
        """The spans gathered since the last call (the probe starts again on each)."""
        self.spans.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + DUMP_WAIT_S
        while not self.spans.exists():
            if time.monotonic() > deadline:
                raise BenchError(f"the probe at {self.url} wrote no spans in {DUMP_WAIT_S:.0f} s")
            time.sleep(0.02)
        return orjson.loads(self.spans.read_bytes())


def start_probed(stack: contextlib.ExitStack, work: Path, name: str, upstream: str, tree: Path) -> Probed:
    """`kgb proxy --no-worker` of `tree`, under this tree's probe: PYTHONPATH puts `tree`'s modules first."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "KGB_SPOOL_DIR": str(work / f"{name}-spool"),
        "KGB_MCP_PORT": str(free_port()),
    }
    spans = work / f"{name}-spans.json"
    probe = ROOT / "bench" / "path_probe.py"
    cmd = [sys.executable, str(probe), str(spans), "--", "--log-level", "WARNING", "proxy", "--no-worker"]
    cmd += ["--port", str(port), "--upstream", upstream]
    process = _spawn(stack, cmd, work / f"{name}.log", env, cwd=tree)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", process, work / f"{name}.log")
    return Probed(url, process, spans)


def drive(scenario: Scenario, url: str, probed: Probed | None) -> tuple[list[float], dict[str, list[int]]]:
    """One load generator run: its TTFBs (s), and the probe's spans of the measured part (after the warm-up)."""
    cmd = [sys.executable, "-m", "bench.loadgen", loadgen_spec(scenario, url)]
    with subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        expect_line(process, "warming up")
        if probed:
            probed.collect()  # the warm-up's, dropped
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        result = orjson.loads(expect_line(process, "reporting"))
    if result["errors"]:
        raise BenchError(f"{scenario.name} at {url}: {result['errors']} errors, the first: {result['first_error']}")
    return result["ttfb"], probed.collect() if probed else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    if not chosen:
        raise BenchError(f"--only names none of {[s.name for s in SCENARIOS]}")
    scenarios = [Scenario(s.name, s.route, s.stream, 1, max(20, round(s.requests * args.scale))) for s in chosen]
    trees = {"kgb": ROOT} | ({"kgb-base": args.baseline.resolve()} if args.baseline else {})
    with contextlib.ExitStack() as stack:
        work = workdir(stack, keep=False)
        fakes = {
            "fast": start_fake(stack, work, "fake-fast", DELTAS, 0.0)[0],
            "paced": start_fake(stack, work, "fake-paced", DELTAS, PACE_S)[0],
        }
        relays = {
            (name, route): start_probed(stack, work, f"{name}-{route}", fakes[route], tree)
            for name, tree in trees.items()
            for route in fakes
        }
        report: dict[str, Any] = {"rounds": args.rounds, "load_at_start": uptime(), "scenarios": {}}
        for scenario in scenarios:
            ttfb: dict[str, list[float]] = {name: [] for name in ["direct", *trees]}
            added: dict[str, list[float]] = {name: [] for name in trees}
            spans: dict[str, dict[str, list[int]]] = {name: {} for name in trees}
            for number in range(args.rounds):
                order = ["direct", *trees]
                for target in order if number % 2 == 0 else order[::-1]:
                    probed = relays.get((target, scenario.route))
                    samples, got = drive(scenario, probed.url if probed else fakes[scenario.route], probed)
                    ttfb[target] += samples
                    for span, values in got.items():
                        spans[target].setdefault(span, []).extend(values)
                round_direct = percentile(ttfb["direct"][-scenario.requests :], 50)
                for name in trees:
                    added[name].append(1e6 * (percentile(ttfb[name][-scenario.requests :], 50) - round_direct))
            if any(TOTAL not in spans[name] for name in trees):
                raise BenchError(f"{scenario.name}: the probe stamped no exchange (a function it wraps renamed?)")
            report["scenarios"][scenario.name] = {
                name: {
                    "ttfb_p50_us": 1e6 * percentile(ttfb[name], 50),
                    "added_ttfb_p50_us_by_round": added[name],
                    "span_p50_us": {span: statistics.median(values) / 1e3 for span, values in spans[name].items() if values},
                    "exchanges": len(spans[name].get(TOTAL, [])),
                }
                for name in trees
            } | {"direct": {"ttfb_p50_us": 1e6 * percentile(ttfb["direct"], 50)}}
    return report


def render(report: dict[str, Any]) -> str:
    names = [name for name in ("kgb", "kgb-base") if any(name in rows for rows in report["scenarios"].values())]
    lines = [f"rounds: {report['rounds']}, load at start: {report['load_at_start']}", ""]
    for scenario, rows in report["scenarios"].items():
        lines.append(f"## {scenario}: direct's first byte at {rows['direct']['ttfb_p50_us']:.0f} us")
        header = f"{'span (median, us)':56s}" + "".join(f"{name:>10s}" for name in names)
        lines.append(header + ("   kgb/base" if len(names) == 2 else ""))
        for span in [name for name, _, _ in SPANS] + [TOTAL]:
            values = [rows[name]["span_p50_us"].get(span) for name in names]
            cells = "".join(f"{value:10.1f}" if value is not None else f"{'-':>10s}" for value in values)
            ratio = f"{values[0] / values[1]:11.2f}" if len(values) == 2 and values[0] and values[1] else ""
            lines.append(f"{span:56s}{cells}{ratio}")
        by_round = "  ".join(
            f"{name} " + " / ".join(f"{value:+.0f}" for value in rows[name]["added_ttfb_p50_us_by_round"]) for name in names
        )
        lines.append(f"{'first byte added over direct, by round':56s}{by_round}")
        lines.append(f"{'exchanges stamped':56s}" + "".join(f"{rows[name]['exchanges']:10d}" for name in names))
        lines.append("")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each target per scenario, taking turns")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each scenario's requests")
    parser.add_argument("--only", action="append", help="run only the scenario named (repeatable)")
    parser.add_argument("--baseline", type=Path, help="another source tree, whose relay runs beside this one's")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    report = run(args)
    emit(report, render(report), args.json)


if __name__ == "__main__":
    main()
