"""The web client: static files from ``chatd/web`` served at ``/``, no build step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"

# The client renders everything users type as text; the policy makes an injection that
# slipped through inert anyway (no inline script, no foreign origins). Media is fetched with
# the bearer token and shown or downloaded through blob: URLs, hence blob: in img- and
# connect-src (a download of a blob: link counts as a connection).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' blob: ws: wss:; worker-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'"
)


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    if not request.path.startswith(("/api/", "/ws", "/metrics")):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
    return response


async def index(request: web.Request) -> web.StreamResponse:
    page = WEB_ROOT / "index.html"
    if not page.is_file():
        raise web.HTTPNotFound(text="the web client is not installed")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


async def service_worker(request: web.Request) -> web.StreamResponse:
    # Served from the root so that its scope covers the whole client.
    worker = WEB_ROOT / "sw.js"
    if not worker.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(
        worker, headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/sw.js", service_worker)
    app.router.add_static("/static/", WEB_ROOT, show_index=False, follow_symlinks=False)
