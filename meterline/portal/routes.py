"""`GET /portal` and its assets (docs/design.md, "The usage portal").

The page holds no data: its script reads the portal token from the address's fragment and asks
`/graphql` for everything, so the page and its assets may be cached while GraphQL answers never
are (`Cache-Control: no-store` there). Assets are addressed with their content's hash (`?v=`),
so a browser may keep them a year and a new release is fetched at once. Every answer carries a
Content-Security-Policy that lets the page load and connect to this origin only, with no inline
script, and frames it only where `PORTAL_FRAME_ANCESTORS` allows.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from meterline.config import Settings
from meterline.services.portal import PORTAL_PATH

ASSETS_PATH: Final = f"{PORTAL_PATH}/assets"
_CONTENT_TYPES: Final = {
    ".css": "text/css",
    ".js": "text/javascript",
    ".svg": "image/svg+xml",
}
PAGE_FILE: Final = "index.html"
# Assets named by their hash: kept a year. The page, and an asset asked for without (or with an
# outdated) hash: revalidated on every use, cheaply (ETag).
IMMUTABLE: Final = "public, max-age=31536000, immutable"
REVALIDATE: Final = "no-cache"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> StaticFile:
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def content_security_policy(frame_ancestors: str) -> str:
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )


def security_headers(settings: Settings) -> dict[str, str]:
    headers = {
        "Content-Security-Policy": content_security_policy(settings.portal_frame_ancestors),
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if settings.portal_frame_ancestors == "'none'":
        headers["X-Frame-Options"] = "DENY"  # for browsers that predate frame-ancestors
    return headers


def load_static() -> tuple[bytes, dict[str, StaticFile]]:
    """The page's template and the assets, read from the package once."""
    folder = resources.files("meterline.portal").joinpath("static")
    page = folder.joinpath(PAGE_FILE).read_bytes()
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.name != PAGE_FILE and suffix in _CONTENT_TYPES:
            assets[entry.name] = StaticFile.of(entry.read_bytes(), _CONTENT_TYPES[suffix])
    return page, assets


def render_page(template: bytes, *, base_path: str, version: str) -> bytes:
    """The page with where it is served (`__BASE__`, PUBLIC_BASE_URL's path) and its assets'
    version (`__VERSION__`) filled in."""
    # The settings allow only URL-safe characters in the path; escaped all the same.
    return template.replace(b"__BASE__", html.escape(base_path).encode()).replace(
        b"__VERSION__", version.encode()
    )


def portal_routes(settings: Settings) -> list[HTTPRouteHandler]:
    headers = security_headers(settings)
    template, assets = load_static()
    version = hashlib.sha256(
        b"".join(a.etag.encode() for _, a in sorted(assets.items()))
    ).hexdigest()[:16]
    base_path = urlsplit(settings.public_base_url).path if settings.public_base_url else ""
    page = StaticFile.of(render_page(template, base_path=base_path, version=version), "text/html")

    def answer(request: Request[Any, Any, Any], file: StaticFile, cache: str) -> Response[bytes]:
        file_headers = {**headers, "Cache-Control": cache, "ETag": file.etag}
        if request.headers.get("if-none-match") == file.etag:
            return Response(b"", status_code=304, headers=file_headers)
        return Response(file.body, media_type=file.content_type, headers=file_headers)

    def not_configured() -> Response[Any]:
        return Response(
            {
                "status_code": 503,
                "detail": "The usage portal is not configured (PUBLIC_BASE_URL, "
                "PORTAL_TOKEN_SECRET).",
            },
            status_code=503,
            headers={**headers, "Cache-Control": "no-store"},
        )

    @get(PORTAL_PATH, sync_to_thread=False, include_in_schema=False)
    def portal_page(request: Request[Any, Any, Any]) -> Response[Any]:
        if not settings.portal_configured:
            return not_configured()
        return answer(request, page, REVALIDATE)

    @get(f"{ASSETS_PATH}/{{name:str}}", sync_to_thread=False, include_in_schema=False)
    def portal_asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[Any]:
        if not settings.portal_configured:
            return not_configured()
        asset = assets.get(name)
        if asset is None:
            return Response(
                {"status_code": 404, "detail": "Not Found"},
                status_code=404,
                headers={**headers, "Cache-Control": "no-store"},
            )
        cache = IMMUTABLE if request.query_params.get("v") == version else REVALIDATE
        return answer(request, asset, cache)

    return [portal_page, portal_asset]
