"""Adds the ``RateLimit-*`` headers that the rate-limit check left on the request scope.

The check runs in a dependency, which cannot touch the headers of a response a route builds
itself (a redirect, a stream); the middleware sees every response start and adds them.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SCOPE_KEY = "megasr.rate_limit_headers"


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            extra = scope.get(SCOPE_KEY)
            if message["type"] == "http.response.start" and extra:
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
