"""Routes of the data explorer: the page at ``/``, its files under ``/ui/``, and
``GET /api/explorer/session`` (who the visitor is, what they may see, the page's settings).

The files are public and hold no data: every number the page shows comes from the API
(``POST /api/cohorts/query`` and the saved-cohort endpoints), which applies the caller's role
(archive.auth). They are read once, in a thread at start-up, and served from memory with an
ETag, so a request never touches the disk.

Every answer here carries a Content-Security-Policy that lets the page run only this origin's
scripts and styles and talk only to this origin; images may also be ``blob:`` URLs (thumbnails the
page fetches with the visitor's token). No inline script, style or event handler is allowed.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from archive import keys
from archive.auth import STATES, principal
from archive.clinical.dictionary import CASE
from archive.cohorts.api import suppression_minimum
from archive.cohorts.filters import ENUM_FILTERS
from archive.cohorts.query import ALL_FACETS
from archive.config import UiConfig

STATIC = Path(__file__).parent / "static"
PAGE = "index.html"
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
CSP = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob:",
    "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(folder: Path, title: str) -> dict[str, Asset]:
    """Every file of ``folder`` under its path below it (``js/main.js``); the page gets ``title``
    in place of ``{{title}}``. Files of other types than HTML, CSS, JS and SVG are left out."""
    assets: dict[str, Asset] = {}
    for path in sorted(folder.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        name = path.relative_to(folder).as_posix()
        if name == PAGE:
            body = body.replace(b"{{title}}", html.escape(title).encode("utf-8"))
        assets[name] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


def _respond(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8",
                        headers=headers)


class Explorer:
    """The page's handlers, over its files loaded in memory (by :meth:`load`, at start-up)."""

    def __init__(self, settings: UiConfig) -> None:
        self.assets: dict[str, Asset] = {}
        self.settings = settings

    async def load(self, app: web.Application) -> None:
        """on_startup: read the files off the event loop."""
        self.assets = await asyncio.to_thread(load_assets, STATIC, self.settings.title)

    async def page(self, request: web.Request) -> web.Response:
        """GET /: the page."""
        return _respond(request, self.assets[PAGE])

    async def asset(self, request: web.Request) -> web.Response:
        """GET /ui/{path}: a file of the page (the page itself is only at /)."""
        name = request.match_info["path"]
        asset = self.assets.get(name) if name != PAGE else None
        if asset is None:
            raise web.HTTPNotFound(text="no such file")
        return _respond(request, asset)

    async def session(self, request: web.Request) -> web.Response:
        """GET /api/explorer/session: the caller, the release states they see, whether their
        counts are suppressed below a minimum, the filter choices and the page's settings."""
        caller = principal(request)
        states = [s for s in STATES if s in caller.visibility.states]
        choices = {}
        for name in ENUM_FILTERS:
            spec = CASE.field(name)
            assert spec is not None, name
            choices[name] = list(spec.allowed)
        body = {"caller": {"name": caller.name, "role": caller.role}, "release_states": states,
                "min_cell_count": suppression_minimum(request), "choices": choices,
                "facets": list(ALL_FACETS), "title": self.settings.title,
                "viewer_url": self.settings.viewer_url}
        return web.json_response(body, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    """The page, its files and the session endpoint, when ``[ui] enabled``."""
    settings = app[keys.CONFIG].ui
    if not settings.enabled:
        return
    explorer = Explorer(settings)
    app.on_startup.append(explorer.load)
    app.router.add_get("/", explorer.page)
    app.router.add_get("/ui/{path:.+}", explorer.asset)
    app.router.add_get("/api/explorer/session", explorer.session)
