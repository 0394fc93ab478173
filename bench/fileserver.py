"""A minimal aiohttp static server for the plain-file loopback GET limit.

Run as ``python bench/fileserver.py FILE PORT``: ``GET /file`` answers ``FILE`` with
``web.FileResponse`` (sendfile where available), ``GET /healthz`` answers 200. Binds 127.0.0.1 only.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web


def make_app(path: Path) -> web.Application:
    async def serve_file(_: web.Request) -> web.FileResponse:
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/file", serve_file)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fileserver.py FILE PORT", file=sys.stderr)
        return 2
    web.run_app(make_app(Path(argv[0])), host="127.0.0.1", port=int(argv[1]), print=None,
                access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
