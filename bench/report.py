"""What every bench does with its figures at the end: print them for the reader, and keep them as JSON
when `--json` asks (bench/results-*.json are such files)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson


def emit(report: Mapping[str, Any], text: str, json_path: Path | None) -> None:
    print(text)
    if json_path is not None:
        json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
