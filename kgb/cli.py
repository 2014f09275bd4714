"""`kgb`: the one command line for every KGB service.

Each subcommand builds its settings object from `KGB_*` variables, lets
flags override the few that people change by hand, and runs the service
until SIGINT or SIGTERM, which let it flush or spool what is in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import TYPE_CHECKING

from kgb.checks import (
    HTTP_SCHEMES,
    WEBSOCKET_SCHEMES,
    check_bootstrap,
    check_database_url,
    check_url,
    known_settings,
    unknown_settings,
)
from common.config import KafkaSettings, SettingsError
from common.failures import run_explained
from common.running import configure_logging, keep_heap, run_until_signal, settle_heap

if TYPE_CHECKING:
    from proxy.settings import ProxySettings

log = logging.getLogger("kgb")


def _check_kafka(kafka: KafkaSettings) -> None:
    check_bootstrap(kafka.bootstrap)
    if kafka.schema_registry_url:
        check_url(kafka.schema_registry_url, "KGB_SCHEMA_REGISTRY_URL", HTTP_SCHEMES)


def _proxy(args: argparse.Namespace) -> None:
    from proxy.settings import ProxySettings

    settings = ProxySettings.from_env()
    upstream = args.upstream and args.upstream.rstrip("/")
    overrides = {"host": args.host, "port": args.port, "upstream_url": upstream, "mcp_port": args.mcp_port}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    check_url(settings.upstream_url, "KGB_UPSTREAM_URL (kgb proxy --upstream)", HTTP_SCHEMES)
    _check_kafka(settings.capture.kafka)
    log.info("kgb proxy: %s", settings)
    print(f"kgb proxy: export ANTHROPIC_BASE_URL=http://{settings.host}:{settings.port}", flush=True)
    print(
        f"kgb proxy: MCP clients use http://{settings.host}:{settings.mcp_port}/mcp/NAME "
        f"(or a WebSocket to ws://{settings.host}:{settings.mcp_port}/?upstream=NAME)",
        flush=True,
    )
    worker = None if args.no_worker else args.log_level.upper()
    keep_heap()
    run_until_signal(lambda stop: _serve_proxy(settings, stop, worker))


async def _serve_proxy(settings: ProxySettings, stop: asyncio.Event, worker_log_level: str | None) -> None:
    """The HTTP proxy and the MCP relay in one process, each its own app on its own port, and the
    capture worker in a child process; on a signal both apps stop listening and close their
    connections, then the worker publishes what the capture log holds and exits."""
    from aiohttp import web

    from proxy import listen
    from proxy.app import build_app, health_text
    from proxy.mcp.app import build_mcp_app
    from proxy.supervisor import Supervisor, worker_command

    guard = listen.guard_for(settings)
    health = health_text(settings).encode()
    sites = [
        (build_app(settings), settings.port, "KGB_PROXY_PORT"),
        (build_mcp_app(settings), settings.mcp_port, "KGB_MCP_PORT"),
    ]
    runners: list[web.AppRunner] = []
    supervisor = (
        None if worker_log_level is None else Supervisor(worker_command(worker_log_level), settings.capture.close_timeout)
    )
    supervising = None if supervisor is None else asyncio.create_task(supervisor.run())
    try:
        for app, port, name in sites:
            runner = listen.runner(app, guard)
            runners.append(runner)
            await runner.setup()
            try:
                await listen.GuardedSite(runner, guard, settings.host, port, health).start()
            except OSError as exc:
                raise SettingsError(f"cannot listen on {settings.host}:{port} ({name}): {exc.strerror}") from None
        settle_heap()
        await stop.wait()
    finally:
        await asyncio.gather(*(runner.cleanup() for runner in runners))
        if supervisor is not None and supervising is not None:
            supervisor.stop()
            await supervising


def _capture_worker(args: argparse.Namespace) -> None:
    from common.outages import KAFKA_WATCH, watching
    from proxy import worker
    from proxy.settings import ProxySettings

    settings = ProxySettings.from_env()

    async def run(stop: asyncio.Event) -> None:
        eof = asyncio.create_task(worker.stop_at_eof(sys.stdin.fileno(), stop)) if args.supervised else None
        async with watching(KAFKA_WATCH, settings.capture.kafka.bootstrap):
            await worker.run(settings, stop)
        if eof is not None:
            eof.cancel()

    keep_heap()
    run_until_signal(run)


def _mcp_stdio(args: argparse.Namespace) -> None:
    from proxy.mcp.stdio import ShimSettings, main
    from proxy.settings import ProxySettings

    command = args.server_command[1:] if args.server_command[:1] == ["--"] else args.server_command
    if not command:
        raise SettingsError("kgb mcp stdio NAME -- COMMAND [ARGS...]: the server's command is missing")
    raise SystemExit(main(ShimSettings.of(args.name, command, ProxySettings.from_env())))


def _consume_winni(args: argparse.Namespace) -> None:
    from consumers.winni.consumer import run_processes
    from consumers.winni.settings import WinniSettings

    settings = WinniSettings.from_env()
    check_database_url(settings.database_url)
    _check_kafka(settings.kafka)
    run_until_signal(lambda stop: run_processes(settings, stop))


def _consume_dewey(args: argparse.Namespace) -> None:
    from consumers.dewey.settings import DeweySettings
    from consumers.dewey.consumer import run

    settings = DeweySettings.from_env()
    if args.url is not None:
        settings = dataclasses.replace(settings, url=args.url)
    check_url(settings.url, "KGB_DEWEY_URL (kgb consume dewey --url)", WEBSOCKET_SCHEMES)
    check_database_url(settings.database_url)
    _check_kafka(settings.kafka)
    run_until_signal(lambda stop: run(settings, stop))


def _consume_metrics(args: argparse.Namespace) -> None:
    from consumers.metrics.settings import MetricsSettings
    from consumers.metrics.consumer import run

    settings = MetricsSettings.from_env()
    if args.port is not None:
        settings = dataclasses.replace(settings, port=args.port)
    check_database_url(settings.database_url)
    _check_kafka(settings.kafka)
    run_until_signal(lambda stop: run(settings, stop))


def _replay(args: argparse.Namespace) -> None:
    from consumers.replay.rebuild import replay
    from consumers.winni.settings import WinniSettings
    from common.config import identifier

    settings = WinniSettings.from_env()
    check_database_url(settings.database_url)
    _check_kafka(settings.kafka)
    into = args.into and identifier("kgb replay --into", args.into)

    async def run(stop: asyncio.Event) -> None:
        outcome = await replay(settings, into=into, keep_old=args.keep_old, stop=stop)
        print(f"kgb replay: {outcome}", flush=True)
        if not outcome.complete:
            raise SystemExit(1)

    run_until_signal(run)


def _usage(args: argparse.Namespace) -> None:
    from consumers.metrics.settings import MetricsSettings
    from consumers.metrics.usage import parse_query, report

    try:
        query = parse_query(args.by, args.since, args.until)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    output = "json" if args.json else "csv" if args.csv else "table"
    settings = MetricsSettings.from_env()
    check_database_url(settings.database_url)
    print(asyncio.run(report(settings, query, output)))


def _web(args: argparse.Namespace) -> None:
    from web.app import serve
    from web.settings import WebSettings

    settings = WebSettings.from_env()
    overrides = {"host": args.host, "port": args.port}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    check_database_url(settings.database_url)
    log.info("kgb web: %s", settings)
    print(f"kgb web: {settings.url}", flush=True)
    run_until_signal(lambda stop: serve(settings, stop))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="kgb",
        description="Capture Anthropic API traffic through a proxy, publish it to Kafka, and consume it. "
        "Settings come from KGB_* environment variables (see the README); flags override them.",
    )
    root.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    root.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback of every failure (without it, an expected one is a line naming the setting to fix)",
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {version('kgb')}")
    commands = root.add_subparsers(dest="command", required=True)

    about = "run the capture proxy (HTTP on KGB_PROXY_PORT, default 8089; MCP relays on KGB_MCP_PORT, default 9000)"
    proxy = commands.add_parser("proxy", help=about, description=about)
    proxy.add_argument("--host", help="listen address (KGB_PROXY_HOST, default 127.0.0.1)")
    proxy.add_argument("--port", type=int, help="listen port (KGB_PROXY_PORT, default 8089)")
    proxy.add_argument("--upstream", help="upstream base URL (KGB_UPSTREAM_URL, default https://api.anthropic.com)")
    proxy.add_argument("--mcp-port", type=int, help="MCP relay listen port (KGB_MCP_PORT, default 9000)")
    proxy.add_argument(
        "--no-worker",
        action="store_true",
        help="do not start the capture worker (run `kgb capture-worker` yourself, on the same KGB_SPOOL_DIR)",
    )
    proxy.set_defaults(run=_proxy, title=proxy.prog)

    about = (
        "publish the capture log (KGB_SPOOL_DIR) to Kafka: what `kgb proxy` runs in a child process; "
        "run it alone beside `kgb proxy --no-worker`"
    )
    capture_worker = commands.add_parser("capture-worker", help=about, description=about)
    capture_worker.add_argument(
        "--supervised",
        action="store_true",
        help="also stop when standard input closes: how `kgb proxy` stops it, and how it learns the proxy died",
    )
    capture_worker.set_defaults(run=_capture_worker, title=capture_worker.prog)

    mcp = commands.add_parser("mcp", help="MCP capture outside the proxy")
    transports = mcp.add_subparsers(dest="transport", required=True)
    about = (
        "run a stdio MCP server through KGB: put `kgb mcp stdio NAME -- COMMAND [ARGS...]` in place of its command; "
        "every message is published to KGB_MCP_TOPIC, and the exit code is the server's"
    )
    stdio = transports.add_parser("stdio", help=about, description=about)
    stdio.add_argument("name", help="the server's name, as in Claude Code's MCP config (mcp__NAME__TOOL)")
    stdio.add_argument(
        "server_command", metavar="command", nargs=argparse.REMAINDER, help="-- then the server's command and arguments"
    )
    stdio.set_defaults(run=_mcp_stdio, title=stdio.prog)

    consume = commands.add_parser("consume", help="run a consumer group")
    consumers = consume.add_subparsers(dest="consumer", required=True)
    about = "persist exchanges to PostgreSQL (KGB_DATABASE_URL), consumer group KGB_WINNI_GROUP"
    winni = consumers.add_parser("winni", help=about, description=about)
    winni.set_defaults(run=_consume_winni, title=winni.prog)
    about = "forward each conversation to Dewey's MCP tools (KGB_DEWEY_URL), consumer group KGB_DEWEY_GROUP"
    dewey = consumers.add_parser("dewey", help=about, description=about)
    dewey.add_argument("--url", help="Dewey's MCP WebSocket (KGB_DEWEY_URL, default ws://dewey-mcp:9020)")
    dewey.set_defaults(run=_consume_dewey, title=dewey.prog)
    about = "token usage and cost: rollup tables in PostgreSQL and Prometheus /metrics, consumer group KGB_METRICS_GROUP"
    metrics = consumers.add_parser("metrics", help=about, description=about)
    metrics.add_argument("--port", type=int, help="/metrics listen port (KGB_METRICS_PORT, default 9464)")
    metrics.set_defaults(run=_consume_metrics, title=metrics.prog)

    about = "print token usage and cost from the metrics rollup tables (KGB_DATABASE_URL, KGB_METRICS_SCHEMA)"
    usage = commands.add_parser("usage", help=about, description=about)
    usage.add_argument(
        "--by",
        default="day,model",
        help="comma list of day, month or block (ccusage's 5-hour blocks), and "
        "model, session, kind, project (Claude Code's working directory), key (API-key fingerprint); "
        "default day,model",
    )
    usage.add_argument("--since", help="first UTC day to include, YYYY-MM-DD (default: all)")
    usage.add_argument("--until", help="last UTC day to include, YYYY-MM-DD (default: all)")
    formats = usage.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="JSON instead of a table; costs as exact decimal strings")
    formats.add_argument("--csv", action="store_true", help="CSV instead of a table, every column; costs exact")
    usage.set_defaults(run=_usage, title=usage.prog)

    about = "browse, search and total what was captured: a read-only web viewer of the winni and metrics tables"
    web = commands.add_parser("web", help=about, description=about)
    web.add_argument("--host", help="listen address (KGB_WEB_HOST, default 127.0.0.1; any other needs KGB_WEB_TOKEN)")
    web.add_argument("--port", type=int, help="listen port (KGB_WEB_PORT, default 8090)")
    web.set_defaults(run=_web, title=web.prog)

    about = (
        "rebuild the winni tables from the start of the topic into a fresh schema, beside the live consumer, "
        "then swap them in for KGB_DB_SCHEMA in one transaction"
    )
    replay = commands.add_parser("replay", help=about, description=about)
    replay.add_argument("--into", metavar="SCHEMA", help="only fill SCHEMA (created if missing); the live schema is left alone")
    replay.add_argument("--keep-old", action="store_true", help="keep the replaced tables as schema <KGB_DB_SCHEMA>_old_<time>")
    replay.set_defaults(run=_replay, title=replay.prog)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    configure_logging(args.log_level.upper(), debug=args.debug)
    for warning in unknown_settings(os.environ, known_settings()):
        log.warning("%s", warning)
    run_explained(args.title, lambda: args.run(args), args.debug)
