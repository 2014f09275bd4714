"""The packages import each other in one direction: `kgb` (the command line) on top, `common` (the base) at the bottom."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("proxy", "consumers", "schemas", "web")


def imported(path: Path) -> Iterator[str]:
    """Every module a file imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def imports_from(package: str, prefixes: tuple[str, ...]) -> list[str]:
    """`file: module` for each import in the package's files of a module under one of the prefixes."""
    return [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in imported(path)
        if module.split(".")[0] in prefixes
    ]


def test_the_base_imports_no_service_and_not_the_command_line() -> None:
    assert imports_from("common", ("kgb", *SERVICES)) == []


def test_no_service_imports_the_command_line() -> None:
    for package in SERVICES:
        assert imports_from(package, ("kgb",)) == [], package


def test_the_base_is_what_the_services_share() -> None:
    """Guards against the check above passing on an empty tree: the services really do import the base."""
    assert all(imports_from(package, ("common",)) for package in ("proxy", "consumers", "web"))
