"""Operations routes: liveness, readiness, metrics, and the web page with its icon."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from megasr.errors import MegaSRError
from megasr.problems import problem
from megasr.service.context import Gateway, gateway
from megasr.service.problems import problem_response

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"

router = APIRouter(tags=["operations"])
GatewayDep = Annotated[Gateway, Depends(gateway)]


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis and the object storage answer")
def readyz(gw: GatewayDep) -> Response:
    checks = {"redis": _check(lambda: gw.redis.ping()), "storage": _check(gw.storage.ping)}
    if all(result == "ok" for result in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(f"{name}: {result}" for name, result in checks.items() if result != "ok")
    body = problem(503, "Not ready", failing, "service-unavailable")
    body["checks"] = checks
    return problem_response(body, 503, {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(gw: GatewayDep) -> Response:
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    """Where browsers, bookmarks and tabs of the API docs look for an icon unasked; the page
    itself names the SVG one (``static/icon.svg``), of which this is the raster copy."""
    return FileResponse(
        STATIC_DIR / "favicon.ico",
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )


def _check(probe) -> str:
    """``ok`` or ``failed``; why goes to the log (it can name hosts and paths), not the body."""
    try:
        probe()
    except (RedisError, MegaSRError, OSError) as exc:
        log.warning("readiness check failed: %s", getattr(exc, "detail", None) or exc)
        return "failed"
    return "ok"
