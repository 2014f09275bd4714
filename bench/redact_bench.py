"""Body redaction: the per-rule scan the proxy used to run against today's single pass, per MB, in one run.

    .venv/bin/python -m bench.redact_bench [--rounds 20]

Bodies are Claude Code requests (`tests/data/samples`, copies of
/work/shared/samples: a ~80 KB system prompt and tools, histories of tool results)
and, for the shape that dominates traffic, the same requests grown to ~500 KB by
repeating their history. Each line is the median of `--rounds` passes over all
bodies, as ms of CPU per MB of body:

- per-rule (baseline): what `redact_body` did until this change: for each rule, a
  search for its literal hints, then the full pattern over the body where a hint
  was found (`://` is in every Claude Code request, so the URL-password pattern always ran);
- one pass: `redact_body` now: one Hyperscan (or RE2) scan names the candidate rules;
- request event: `redact_json`, what a request event costs now: the one pass over
  the raw body and over its decoded form (orjson re-serialisation of the parsed
  body), plus the joined text blocks; the body arrives parsed, as in `capture.request_event`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Sequence

import orjson

from proxy.redact import BUILTIN_RULES, Rule, matcher, redact_body, redact_json
from tests.claude_samples import load_samples

# The literal hints each rule carried before the single pass (proxy/redact.py until this change).
BASELINE_HINTS = {
    "anthropic_key": ["sk-ant-"],
    "openai_key": ["sk-"],
    "aws_access_key": ["A(?:KI|SI)A"],
    "github_token": ["g(?:h[pousr]|ithub_pat)_"],
    "slack_token": ["xox[abprs]-"],
    "google_api_key": ["AIza"],
    "stripe_key": ["k_live_"],
    "jwt": ["eyJ"],
    "private_key": ["-----BEGIN "],
    "bearer_token": ["earer", "EARER"],
    "url_password": ["://"],
}


def per_rule_baseline(rules: Sequence[Rule]) -> Callable[[bytes], object]:
    hints = {rule.name: [re.compile(h.encode()) for h in BASELINE_HINTS[rule.name]] for rule in rules}

    def redact(body: bytes) -> object:
        for rule in rules:
            if any(hint.search(body) for hint in hints[rule.name]):
                body, _ = rule.replace(body)
        return body

    return redact


def bodies() -> tuple[list[bytes], list[bytes]]:
    """(the samples' request bodies, the same grown to ~500 KB by repeating their messages)."""
    parsed = [sample["body"] for sample in load_samples() if isinstance(sample.get("body"), dict)]
    grown = []
    for body in parsed:
        messages = body.get("messages") or []
        size = len(orjson.dumps(body))
        copies = max(1, 500_000 // max(1, len(orjson.dumps(messages)))) if size < 500_000 and messages else 1
        grown.append(orjson.dumps({**body, "messages": messages * copies}))
    return [orjson.dumps(body) for body in parsed], grown


def ms_per_mb(redact: Callable[[bytes], object], data: list[bytes], rounds: int) -> float:
    megabytes = sum(map(len, data)) / 1e6
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for body in data:
            redact(body)
        times.append((time.process_time() - start) * 1000 / megabytes)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    rules = BUILTIN_RULES
    matcher(rules)
    baseline = per_rule_baseline(rules)
    for name, data in zip(("samples", "~500 KB"), bodies(), strict=True):
        parsed = {body: orjson.loads(body) for body in data}
        old = ms_per_mb(baseline, data, rounds)
        single = ms_per_mb(lambda body: redact_body(body, rules), data, rounds)
        event = ms_per_mb(lambda body, parsed=parsed: redact_json(body, rules, parsed[body]), data, rounds)
        size = sum(map(len, data)) / len(data) / 1000
        print(f"{name}: {len(data)} bodies, mean {size:.0f} KB")
        print(f"  per-rule (baseline)  {old:7.2f} ms/MB")
        print(f"  one pass             {single:7.2f} ms/MB   {old / single:5.1f}x faster")
        print(f"  request event        {event:7.2f} ms/MB   {old / event:5.1f}x faster (raw, decoded and joined forms)")


if __name__ == "__main__":
    main()
