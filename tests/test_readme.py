"""The README is the settings reference: every `KGB_*` variable the code reads is in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("kgb", "common", "proxy", "consumers", "schemas", "web")


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


SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
PSQL_URL = re.compile(r"psql '(postgresql://[^']+)'")
# The values the README's queries take as psql variables (`:'conversation'` and the like).
PSQL_VARIABLES = {
    "conversation": "00000000-0000-4000-8000-000000000000",
    "session": "a-session",
    "exchange": "00000000-0000-4000-8000-000000000001",
}


def readme_queries() -> list[str]:
    """Every SQL block of the README but the one that creates a role (it is not a query, and not per database)."""
    blocks = SQL_BLOCK.findall((ROOT / "README.md").read_text())
    queries = [block for block in blocks if not block.lstrip().upper().startswith("CREATE ROLE")]
    assert len(blocks) - len(queries) == 1 and len(queries) >= 9, "the README's SQL blocks were not found"
    return queries


async def test_the_readmes_queries_run_as_pasted_into_the_printed_psql(database: str) -> None:
    """dev.sh prints the psql URL the README shows; with it, each query runs unqualified against the tables
    winni and metrics make."""
    import asyncpg

    from consumers.service import apply_migrations
    from consumers.sql import load_migrations
    from consumers.winni.consumer import migrations

    for package, schema in (("consumers.winni", "kgb"), ("consumers.metrics", "kgb_metrics")):
        pool = await asyncpg.create_pool(database, min_size=1, max_size=1, server_settings={"search_path": schema})
        try:
            await apply_migrations(pool, migrations() if package == "consumers.winni" else load_migrations(package), schema)
        finally:
            await pool.close()
    test_db = urlsplit(database)
    # dev.sh's and compose's, each pointed at the test database: the same options either way.
    (url,) = {
        urlunsplit(urlsplit(printed)._replace(netloc=test_db.netloc, path=test_db.path))
        for printed in PSQL_URL.findall((ROOT / "README.md").read_text())
    }
    variables = [arg for name, value in PSQL_VARIABLES.items() for arg in ("-v", f"{name}={value}")]
    for query in readme_queries():
        done = subprocess.run(
            ["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables],
            input=query,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{query}\n{done.stderr}"
