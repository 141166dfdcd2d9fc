"""The gateway's FastAPI app: ``create_app(settings)``.

Nothing here (or anywhere in the gateway) imports torch: the gateway image ships without it
and a test proves the import graph stays that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from megasr import __version__
from megasr.problems import PROBLEM_CONTENT_TYPE
from megasr.service import api, ops
from megasr.service.context import Gateway
from megasr.service.headers import RateLimitHeaders
from megasr.service.http_framing import RequestFraming
from megasr.service.maintenance import run_maintenance
from megasr.service.problems import install_problem_handlers
from megasr.service.prometheus import MetricsMiddleware
from megasr.service.security_headers import SecurityHeaders
from megasr.settings import Settings, get_settings

EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Idempotent-Replayed",
]

DESCRIPTION = """Upload an image with `POST /v1/upscale`, poll `GET /v1/jobs/{id}`, download
`GET /v1/jobs/{id}/result`. Errors are `application/problem+json` (RFC 9457)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app for ``settings`` (the process-wide settings by default)."""
    settings = settings or get_settings()
    gw = Gateway.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        chores = asyncio.create_task(run_maintenance(gw, stop))
        try:
            yield
        finally:
            stop.set()
            await chores
            gw.close()

    app = FastAPI(title="MegaSR", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.gateway = gw
    install_problem_handlers(app)
    app.include_router(api.router)
    app.include_router(ops.router)
    app.mount("/static", StaticFiles(directory=ops.STATIC_DIR), name="static")
    app.add_middleware(RequestFraming)  # innermost: it sees the handlers' answers
    app.add_middleware(RateLimitHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Idempotency-Key", "Content-Type"],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(SecurityHeaders, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=gw.metrics)
    _add_problem_schema(app)
    return app


def _add_problem_schema(app: FastAPI) -> None:
    """Put the RFC 9457 Problem object in the OpenAPI components the routes refer to."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
                "type": "object",
                "description": f"RFC 9457 problem details ({PROBLEM_CONTENT_TYPE}).",
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
                "required": ["type", "title", "status", "detail"],
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
