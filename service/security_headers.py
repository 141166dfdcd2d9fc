"""Security headers on every response the gateway sends.

Every answer gets ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy: for the API, ``default-src
'none'`` (a JSON answer loads nothing); for the web page at ``/``, its own scripts and styles
only, images from ``blob:`` (the before/after pictures) and ``fetch`` to the gateway and to
the object store that result redirects lead to; for the API docs (``/docs``, ``/redoc``),
what FastAPI's pages load from their CDN. No page may be framed (``frame-ancestors 'none'``).
``Strict-Transport-Security`` goes with answers to HTTPS requests (as uvicorn sees them
behind a proxy that sets ``X-Forwarded-Proto``) when ``hsts_max_age_s`` is set.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from megasr.settings import Settings

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'none'; script-src 'unsafe-inline' {_CDN}; style-src 'unsafe-inline' {_CDN}; "
    f"img-src 'self' data: https://fastapi.tiangolo.com; worker-src blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
AWS_S3 = "https://*.amazonaws.com"
# On every answer; a 500 from an unhandled error leaves through Starlette's outermost
# middleware, past this one, so its handler adds them itself.
BASE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
API_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": API_POLICY}


def page_policy(settings: Settings) -> str:
    """The web page's policy: what ``service/static`` loads, and nothing else."""
    connect = ["'self'"]
    store = result_origin(settings)
    if store is not None:
        connect.append(store)
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        f"connect-src {' '.join(connect)}; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def result_origin(settings: Settings) -> str | None:
    """Where ``GET /v1/jobs/{id}/result`` redirects a browser: the object store's public
    endpoint (AWS when none is set), or None with local storage (the gateway streams it)."""
    if settings.storage_backend != "s3":
        return None
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if not endpoint:
        return AWS_S3
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class SecurityHeaders:
    """ASGI middleware: adds the headers above unless a route set its own."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.page = page_policy(settings)
        self.hsts = f"max-age={settings.hsts_max_age_s}" if settings.hsts_max_age_s > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self._policy(scope["path"])
        secure = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                for name, value in BASE_HEADERS.items():
                    headers.setdefault(name, value)
                if secure and self.hsts:
                    headers.setdefault("Strict-Transport-Security", self.hsts)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _policy(self, path: str) -> str:
        if path == "/":
            return self.page
        if path in DOCS_PATHS:
            return DOCS_POLICY
        return API_POLICY
