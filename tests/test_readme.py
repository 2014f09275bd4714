"""The README is the settings reference: every `KGB_*` variable the code reads is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("kgb", "proxy", "consumers", "schemas", "web")


def settings_in_code() -> set[str]:
    names: set[str] = set()
    for package in PRODUCT:
        for source in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r'"(KGB_[A-Z0-9_]+)"', source.read_text()))
    return names


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(KGB_[A-Z0-9_]+)`", readme))
    assert settings_in_code(), "found no settings: the scan is broken"
    assert sorted(settings_in_code() - documented) == []
