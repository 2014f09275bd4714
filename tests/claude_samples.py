"""Real Claude Code 2.1.x requests, copied from the project's shared samples so
a clone tests on its own; see tests/data/samples/README.md for what each one is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"


def sample_files() -> list[Path]:
    files = sorted(SAMPLES_DIR.glob("[0-9]*.json"))
    assert files, f"no samples in {SAMPLES_DIR}"
    return files


def load_sample(number: str) -> dict[str, Any]:
    return json.loads((SAMPLES_DIR / f"{number}.json").read_text())


def load_samples() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sample_files()]
