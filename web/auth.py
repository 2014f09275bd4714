"""`KGB_WEB_TOKEN`: with it set, every page asks for it, by a bearer header or a login cookie.

Scripts send ``Authorization: Bearer <token>``; people type the token once
into the login form, which sets a cookie holding an HMAC of the token (not
the token itself), HttpOnly and SameSite=Strict, so another site can neither
read it nor make the browser send it. Changing the token signs everyone out.
Static files (CSS, Chart.js) are served without it: they hold nothing
captured, and the login page needs its stylesheet.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Middleware

COOKIE = "kgb_web"
OPEN_PATHS = frozenset({"/login", "/health"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"kgb web login", hashlib.sha256).hexdigest()


def matches(given: str, expected: str) -> bool:
    """Compared in constant time, so the answer's timing tells nothing about the secret."""
    return hmac.compare_digest(given.encode(), expected.encode())


def authorised(request: web.Request, token: str) -> bool:
    """The bearer token, or the cookie the login form set."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and matches(header[7:].strip(), token):
        return True
    return matches(request.cookies.get(COOKIE, ""), cookie_value(token))


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this site, never another site (``//host``, ``/\\host``)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def middleware(token: str) -> Middleware:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or request.path.startswith("/static/") or authorised(request, token):
            return await handler(request)
        if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
        raise web.HTTPUnauthorized(
            text="KGB_WEB_TOKEN required: Authorization: Bearer <token>, or log in at /login",
            headers={"WWW-Authenticate": 'Bearer realm="kgb web"'},
        )

    return require_token


def log_in(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(COOKIE, cookie_value(token), httponly=True, samesite="Strict", path="/", secure=request.secure)


def log_out(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")
