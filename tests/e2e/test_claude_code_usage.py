"""What the metrics consumer needs of the real Claude Code CLI's requests: a price for every model it
names, and the working directory its system prompt names (`kgb usage --by project`).

The CLI (see test_claude_code.py for how it is found and run) talks to the fake
upstream through the proxy; the assertions read the requests the fake received,
exactly as they reached the API side, and price them with the shipped table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from consumers.kinds import kind_of
from consumers.metrics.prices import load_prices
from consumers.metrics.rollup import working_directory
from tests.e2e.conftest import Pipeline
from tests.e2e.test_claude_code import main_requests, run_claude, upstream  # noqa: F401  (the fixture is this module's too)
from tests.fakes.anthropic import text_stream


async def test_every_model_claude_code_names_has_a_price_and_its_directory_is_read(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.fake.main_thread.append(text_stream("Hello."))

    done = await run_claude(pipeline.url, tmp_path, "-p", "say hello")

    assert done.returncode == 0, done.stderr
    calls = [r for r in pipeline.fake.requests if r.method == "POST" and r.path.startswith("/v1/messages")]
    models = {r.json().get("model") for r in calls}
    prices, now = load_prices(), datetime.now(UTC)
    assert models and all(prices.price_of(m, now) for m in models), f"models without a price: {models}"
    (main,) = main_requests(pipeline)
    body = main.json()
    assert kind_of(main.path, body, None) == "main"
    assert working_directory(body) == str((tmp_path / "work").resolve())
