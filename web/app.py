"""`kgb web`: the aiohttp application, its safety headers and its error pages.

Every response carries a Content-Security-Policy that lets the page run only
this site's own script files (the usage charts) and load only its own
styles and images, so even markup that slipped past escaping could not run
or call out. Pages are not cached (they hold captured traffic); static files
are. The database pool opens lazily: the viewer starts while PostgreSQL is
down and answers 503 until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware

from common.config import SettingsError
from web import auth, pages
from web.conversation import as_result
from web.database import MissingTables, open_pool
from web.filters import BadRequest
from web.render import filters
from web.settings import WebSettings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# What a database that went away, or was never there, raises.
DATABASE_AWAY = (ConnectionError, socket.gaierror, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


STARTED = web.RequestKey("started", tuple)


@web.middleware
async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[STARTED] = (time.perf_counter(), time.process_time())
    return await handler(request)


async def secure(request: web.Request, response: web.StreamResponse) -> None:
    """Safety headers on every response, and ``Server-Timing``: the server's time to the first byte
    (queries and template) and the CPU the process spent meanwhile (all requests in flight: one
    request's own when it is alone), which browsers' developer tools show and bench/web_bench.py reads."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = "public, max-age=3600" if request.path.startswith("/static/") else "no-store"
    if STARTED in request:
        wall, cpu = request[STARTED]
        response.headers["Server-Timing"] = (
            f"app;dur={(time.perf_counter() - wall) * 1000:.2f}, cpu;dur={(time.process_time() - cpu) * 1000:.2f}"
        )


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    return aiohttp_jinja2.render_template("error.html", request, {"title": title, "detail": detail}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad parameters, missing rows and an unreachable or slow database as pages that say so."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error_page(request, 400, "Bad request", str(exc))
    except MissingTables as exc:
        settings = request.app[pages.SETTINGS]
        schema = settings.metrics_schema if exc.consumer == "metrics" else settings.db_schema
        return aiohttp_jinja2.render_template("empty.html", request, {"consumer": exc.consumer, "schema": schema}, status=404)
    except (web.HTTPNotFound, web.HTTPUnauthorized) as exc:
        if "text/html" not in request.headers.get("Accept", "") or request.path.startswith("/static/"):
            raise
        return error_page(request, exc.status, exc.reason, exc.text or "")
    except asyncpg.QueryCanceledError:
        log.warning("%s: a query ran past KGB_WEB_STATEMENT_TIMEOUT", request.path_qs)
        return error_page(request, 503, "Too slow", "A query ran past KGB_WEB_STATEMENT_TIMEOUT; narrow the filters.")
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError, asyncpg.InvalidSchemaNameError) as exc:
        log.warning("%s: the tables changed under the viewer: %s", request.path_qs, exc)
        return error_page(request, 503, "Tables changing", f"The tables are being changed (a migration or a replay?): {exc}")
    except DATABASE_AWAY as exc:
        log.warning("%s: database unavailable: %s", request.path_qs, exc)
        return error_page(request, 503, "Database unavailable", "PostgreSQL (KGB_DATABASE_URL) cannot be reached; retry shortly.")


def pool_context(settings: WebSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[pages.POOL] = await open_pool(settings)
        yield
        await app[pages.POOL].close()

    return pool


def build_app(settings: WebSettings) -> web.Application:
    middlewares: list[Middleware] = [timed, errors, *([auth.middleware(settings.token)] if settings.token else [])]
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[pages.SETTINGS] = settings
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        context_processors=[aiohttp_jinja2.request_processor],
    )
    environment.filters.update(filters())
    environment.globals.update(as_result=as_result, token_required=settings.token is not None)
    app.add_routes(pages.routes)
    app.router.add_static("/static", STATIC, name="static")
    app.on_response_prepare.append(secure)
    app.cleanup_ctx.append(pool_context(settings))
    return app


async def check_database(settings: WebSettings) -> None:
    """One connection before listening: a wrong database name, login or URL then ends `kgb web` with
    one line (`common.failures`) instead of a 500 on every page; a database that is only away is no
    reason not to start, since the pages say so until it is back."""
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=10)
    except DATABASE_AWAY as exc:
        log.warning("PostgreSQL (KGB_DATABASE_URL) cannot be reached yet (%s); the pages say so until it can", exc)
        return
    await conn.close()


async def serve(settings: WebSettings, stop: asyncio.Event) -> None:
    """Listen until ``stop``; a port that cannot be had is a settings error naming the variable."""
    await check_database(settings)
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as exc:
            raise SettingsError(f"cannot listen on {settings.host}:{settings.port} (KGB_WEB_PORT): {exc.strerror}") from None
        log.info("kgb web on %s", settings.url)
        await stop.wait()
    finally:
        await runner.cleanup()
