"""The dashboard on the side port: `GET /` and its assets under `/dashboard/`.

The files are read once at start. Assets are addressed with `?v=<content hash>` from the page,
so a browser may keep them for a year; the page itself is revalidated on every load (ETag).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

from aiohttp import web

from collectord.api.errors import ApiError
from collectord.dashboard import DIRECTORY

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
ASSETS = ("catalogue.js", "app.js", "app.css")
VERSION_MARK = "@VERSION@"
# The page loads only its own files and talks only to its own origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    gzipped: bytes  # compressed once at start: the page's first load stays small
    content_type: str
    etag: str

    @property
    def gzip_etag(self) -> str:
        return self.etag[:-1] + '.gz"'


def _static(body: bytes, suffix: str) -> StaticFile:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticFile(body, gzip.compress(body, 9, mtime=0), CONTENT_TYPES[suffix], etag)


def load_files() -> tuple[StaticFile, dict[str, StaticFile], str]:
    """The page with its asset links pinned to a hash of every asset, the assets, and that hash."""
    assets = {name: _static((DIRECTORY / name).read_bytes(), "." + name.rsplit(".", 1)[1]) for name in ASSETS}
    version = hashlib.sha256(b"".join(assets[name].body for name in ASSETS)).hexdigest()[:16]
    page = (DIRECTORY / "index.html").read_text(encoding="utf-8").replace(VERSION_MARK, version)
    return _static(page.encode(), ".html"), assets, version


class DashboardApi:
    def __init__(self) -> None:
        self.page, self.assets, self.version = load_files()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/", self.index), web.get("/dashboard/{name}", self.asset)]

    async def index(self, request: web.Request) -> web.StreamResponse:
        return _answer(request, self.page, REVALIDATE, {"Content-Security-Policy": CSP})

    async def asset(self, request: web.Request) -> web.StreamResponse:
        found = self.assets.get(request.match_info["name"])
        if found is None:
            raise ApiError(404, "not_found", path=request.path)
        pinned = request.query.get("v") == self.version
        return _answer(request, found, IMMUTABLE if pinned else REVALIDATE, {})


def _answer(request: web.Request, file: StaticFile, cache: str, extra: dict[str, str]) -> web.Response:
    compressed = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    etag = file.gzip_etag if compressed else file.etag
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        **extra,
    }
    if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = file.content_type
    if compressed:
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=file.gzipped, headers=headers)
    return web.Response(body=file.body, headers=headers)
