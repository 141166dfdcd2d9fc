"""Every error the gateway answers is ``application/problem+json`` (RFC 9457).

Typed project errors carry their own status and type; FastAPI's validation errors become
422; Starlette's HTTP errors (unknown route 404, wrong method 405) keep their status and
headers; an unreachable Redis is 503 with ``Retry-After``; anything else is a logged 500.
No 5xx answer shows internals: the detail of a server-side error (a storage path, a host, a
library's message) goes to the log, and the client reads a generic one.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from megasr.errors import (
    AuthenticationError,
    MegaSRError,
    RateLimitedError,
    ServiceUnavailableError,
)
from megasr.problems import PROBLEM_CONTENT_TYPE, problem, problem_from_error
from megasr.service.security_headers import API_HEADERS

log = logging.getLogger(__name__)

REDIS_RETRY_AFTER_S = 5


def problem_response(
    body: dict, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


GENERIC_UNAVAILABLE = "a part the service needs cannot be reached; retry shortly"
GENERIC_SERVER_ERROR = "the gateway failed; the error was logged"


def error_response(error: MegaSRError) -> JSONResponse:
    headers = {}
    if isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(error.retry_after_s)
    elif isinstance(error, ServiceUnavailableError):
        headers["Retry-After"] = str(error.retry_after_s or REDIS_RETRY_AFTER_S)
    elif isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="megasr"'
    return problem_response(public_problem(error), error.status, headers)


def public_problem(error: MegaSRError) -> dict:
    """The problem a client may see: a server-side error's detail is logged, not shown."""
    body = problem_from_error(error)
    if error.status >= 500 and not getattr(error, "public", False):
        log.warning("%s (%d): %s", error.title, error.status, error.detail)
        unavailable = isinstance(error, ServiceUnavailableError)
        body["detail"] = GENERIC_UNAVAILABLE if unavailable else GENERIC_SERVER_ERROR
    return body


async def _megasr_error(request: Request, exc: MegaSRError) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    where = ("body", "query", "path", "header")
    detail = "; ".join(
        ".".join(str(p) for p in error["loc"] if p not in where) + f": {error['msg']}"
        for error in exc.errors()
    )
    body = problem(422, "Invalid parameter", detail or "invalid request", "invalid-parameter")
    return problem_response(body, 422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    title = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == title:
        detail = f"no such resource: {request.url.path}"
    return problem_response(problem(exc.status_code, title, detail), exc.status_code, exc.headers)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable: %s", exc)
    return error_response(
        ServiceUnavailableError(
            "the job queue (Redis) cannot be reached; retry shortly", public=True
        )
    )


async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
    """The client hung up mid-upload: nothing was stored, nobody reads the answer, and it is
    no server error (a 400 in the metrics, not a 500)."""
    log.info("client closed %s %s before its body ended", request.method, request.url.path)
    body = problem(400, "Bad request", "the client closed the connection mid-request")
    return problem_response(body, 400)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = problem(500, "Internal error", GENERIC_SERVER_ERROR, "internal")
    return problem_response(body, 500, API_HEADERS)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MegaSRError, _megasr_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
