"""Problem details (RFC 9457) to and from the project's typed errors.

The gateway answers every error as ``application/problem+json``; the worker stores a failed
job's error in the same shape; the client turns a problem back into the typed error it came
from. One mapping here keeps the three in step.
"""

from __future__ import annotations

from typing import Any

from megasr.errors import MegaSRError, RateLimitedError

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:megasr:problem:"


def problem(status: int, title: str, detail: str, kind: str | None = None) -> dict[str, Any]:
    """A problem object; ``kind`` None means a plain HTTP error (type ``about:blank``)."""
    return {
        "type": TYPE_PREFIX + kind if kind else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }


def worker_lost_problem() -> dict[str, Any]:
    """The problem of a job whose worker went away mid-job and left no error of its own."""
    return problem(
        500,
        "Job failed",
        "the worker stopped without finishing the job (killed, timed out or crashed)",
        "job-failed",
    )


def problem_from_error(error: MegaSRError) -> dict[str, Any]:
    """The problem object of a typed error."""
    body = problem(error.status, error.title, error.detail, error.problem_type)
    if isinstance(error, RateLimitedError):
        body["retry_after"] = error.retry_after_s
    return body


def error_from_problem(body: dict[str, Any], status: int | None = None) -> MegaSRError:
    """The typed error a problem object stands for (the closest by status when unknown)."""
    status = int(body.get("status") or status or 500)
    detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    kind = str(body.get("type", ""))
    kind = kind.removeprefix(TYPE_PREFIX) if kind.startswith(TYPE_PREFIX) else None
    cls = _error_class(kind, status)
    if cls is RateLimitedError:
        return RateLimitedError(detail, int(body.get("retry_after") or 1))
    error = cls(detail)
    error.status = status
    return error


def _error_class(kind: str | None, status: int) -> type[MegaSRError]:
    classes = _all_error_classes()
    for cls in classes:
        if kind is not None and cls.problem_type == kind:
            return cls
    for cls in classes:
        if cls.status == status:
            return cls
    return MegaSRError


def _all_error_classes() -> list[type[MegaSRError]]:
    found: list[type[MegaSRError]] = []
    pending = [MegaSRError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
