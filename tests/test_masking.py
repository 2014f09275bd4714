"""No credential in a URL or a secret setting is ever shown: not in `/health`, the start-up
line, a settings repr, a log line or an error; `common.config.SecretURL` does it everywhere."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from consumers.dewey.settings import DeweySettings
from consumers.metrics.settings import MetricsSettings
from consumers.winni.settings import WinniSettings
from common.config import Secret, SecretURL, mask_url
from proxy.settings import ProxySettings
from schemas.errors import RegistryError
from schemas.registry import Registry
from tests.services import free_port
from tests.test_cli import start_proxy, wait_healthy
from web.settings import WebSettings

PASSWORDS = ("hunter2", "t0ken", "s3cret", "qu3ry", "w3btoken-long-enough", "f1ngerprint")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://winni:hunter2@db:5432/winni", "postgresql://winni:****@db:5432/winni"),
        (
            "postgresql://winni@db/winni?password=hunter2&sslmode=require",
            "postgresql://winni@db/winni?password=****&sslmode=require",
        ),
        ("https://mcp.example/mcp?token=t0ken&x=1#part", "https://mcp.example/mcp?token=****&x=1#part"),
        ("http://reg:p@ss@127.0.0.1:8081/x?API%5FKEY=k", "http://reg:****@127.0.0.1:8081/x?API%5FKEY=****"),
        ("https://api.anthropic.com", "https://api.anthropic.com"),
        ("postgresql://postgres@127.0.0.1/winni", "postgresql://postgres@127.0.0.1/winni"),
        ("not a url: pw", "not a url: pw"),
    ],
)
def test_mask_url_hides_passwords_and_credential_parameters_and_keeps_the_rest(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_secret_works_as_its_value_and_prints_masked_in_any_repr() -> None:
    url = SecretURL("postgresql://u:hunter2@h/db")
    assert url == "postgresql://u:hunter2@h/db" and f"{url}" == "postgresql://u:hunter2@h/db"
    assert repr(url) == "'postgresql://u:****@h/db'" and url.masked == "postgresql://u:****@h/db"
    assert repr([Secret("s3cret")]) == "['****']"
    assert repr(SecretURL("127.0.0.1:8089")) == "'127.0.0.1:8089'"  # nothing to mask: itself, as a plain str


def every_settings_repr() -> list[str]:
    env = {
        "KGB_DATABASE_URL": "postgresql://winni:hunter2@127.0.0.1/w?password=qu3ry",
        "KGB_SCHEMA_REGISTRY_URL": "http://reg:t0ken@127.0.0.1:8081",
        "KGB_DEWEY_URL": "ws://dewey:s3cret@127.0.0.1:9020",
        "KGB_WEB_TOKEN": "w3btoken-long-enough",
        "KGB_FINGERPRINT_KEY": "f1ngerprint",
        "KGB_UPSTREAM_URL": "https://u:hunter2@127.0.0.1:1",
        "KGB_MCP_UPSTREAMS": "fake=http://127.0.0.1:1/mcp?token=t0ken",
        "KGB_REDACT_PATTERNS_FILE": "",
    }
    proxy = ProxySettings.from_env(env)
    cli = replace(proxy, upstream_url="https://cli:s3cret@127.0.0.1:2")  # `kgb proxy --upstream`
    overridden = replace(WinniSettings(), database_url="postgresql://winni:hunter2@db/w")  # a plain string, as tests pass it
    built = [
        WinniSettings.from_env(env),
        MetricsSettings.from_env(env),
        DeweySettings.from_env(env),
        WebSettings.from_env(env),
        proxy,
        cli,
        overridden,
    ]
    return [repr(settings) for settings in built] + [str(settings) for settings in built]


def test_no_settings_object_prints_a_credential() -> None:
    for shown in every_settings_repr():
        assert not [password for password in PASSWORDS if password in shown], shown
    assert any("https://cli:****@127.0.0.1:2" in shown for shown in every_settings_repr())


async def test_a_registry_error_names_the_registry_without_its_password() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistryError) as raised:
            await Registry(f"http://reg:t0ken@127.0.0.1:{free_port()}", session).register("s", {"type": "string"})
    assert "t0ken" not in str(raised.value) and "reg:****@" in str(raised.value)


@asynccontextmanager
async def failing_registry() -> AsyncIterator[tuple[str, list[int]]]:
    """A schema registry that answers every call with 503; yields its URL (with a password) and the call count."""
    calls: list[int] = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"error_code": 50301, "message": "down"}, status=503)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://reg:t0ken@127.0.0.1:{port}", calls
    finally:
        await runner.cleanup()


async def test_kgb_proxy_shows_no_credential_on_health_at_start_or_while_the_registry_is_down(
    kafka, topic: str, tmp_path
) -> None:
    port, mcp_port = free_port(), free_port()
    async with failing_registry() as (registry, calls):
        env = {
            **os.environ,
            "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "KGB_TOPIC": topic,
            "KGB_SPOOL_DIR": str(tmp_path),
            "KGB_SCHEMA_REGISTRY_URL": registry,
            "KGB_MCP_UPSTREAMS": "fake=http://127.0.0.1:1/mcp?token=qu3ry",
        }
        process = await start_proxy(
            env, port, mcp_port, "http://u:hunter2@127.0.0.1:1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        answers = []
        for url in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mcp_port}"):
            await asyncio.wait_for(wait_healthy(url, process), 60)
            async with aiohttp.ClientSession() as session, session.get(url + "/health") as health:
                answers.append(await health.json())
        async with asyncio.timeout(60):
            while len(calls) < 6:  # the worker retried the registry a few times (both schemas)
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    shown = stdout.decode() + stderr.decode()
    assert [answer["upstream"] for answer in answers] == ["http://u:****@127.0.0.1:1"] * 2
    assert not [password for password in PASSWORDS if password in shown + str(answers)]
    assert "upstream_url='http://u:****@127.0.0.1:1'" in shown
    assert shown.count("unavailable") == 1, shown  # once, not once per retry
