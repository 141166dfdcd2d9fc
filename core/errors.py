"""The project's typed errors.

Every refusal of user input is a :class:`MegaSRError` subclass that carries the HTTP status
it maps to and a short problem type, so the CLI can print one line and the gateway can answer
``application/problem+json`` without a lookup table of its own.
"""

from __future__ import annotations


class MegaSRError(Exception):
    """Base of all errors the project raises on purpose."""

    status: int = 500
    problem_type: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidImageError(MegaSRError):
    """The bytes are not a decodable image (not an image, truncated, corrupt)."""

    status = 400
    problem_type = "invalid-image"
    title = "Invalid image"


class MalformedRequestError(MegaSRError):
    """The request itself is broken: a multipart body that does not parse or ends before its
    closing boundary, or HTTP framing that could be read two ways (Content-Length and
    Transfer-Encoding together)."""

    status = 400
    problem_type = "malformed-request"
    title = "Malformed request"


class RequestTimeoutError(MegaSRError):
    """The client sent its request body too slowly: past the upload deadline, paused past the
    idle deadline, or too slow to finish in time while the gateway needed its place."""

    status = 408
    problem_type = "request-timeout"
    title = "Request timeout"


class ImageTooLargeError(MegaSRError):
    """Bytes or pixels over the configured limits, or a decompression bomb."""

    status = 413
    problem_type = "image-too-large"
    title = "Image too large"


class UnsupportedFormatError(MegaSRError):
    """A real image in a format the project does not read or write."""

    status = 415
    problem_type = "unsupported-format"
    title = "Unsupported image format"


class InvalidParameterError(MegaSRError):
    """A request parameter out of range or inconsistent with another."""

    status = 422
    problem_type = "invalid-parameter"
    title = "Invalid parameter"


class EngineError(MegaSRError):
    """An engine could not be loaded or run (missing weights, bad checkpoint, device)."""

    status = 503
    problem_type = "engine-unavailable"
    title = "Engine unavailable"


class AuthenticationError(MegaSRError):
    """No API key, or one that belongs to no tenant."""

    status = 401
    problem_type = "unauthorized"
    title = "Unauthorized"


class NotFoundError(MegaSRError):
    """No such job for this tenant, or no such stored object."""

    status = 404
    problem_type = "not-found"
    title = "Not found"


class ConflictError(MegaSRError):
    """The request clashes with the job's state (cancel a finished job, a duplicate in flight)."""

    status = 409
    problem_type = "conflict"
    title = "Conflict"


class RateLimitedError(MegaSRError):
    """Too many requests or jobs for a tenant, or the queue is full; retry after a while."""

    status = 429
    problem_type = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(MegaSRError):
    """A part the request needs (the queue's Redis, the object storage) cannot be reached.

    Its detail may name hosts, paths or library errors, so the gateway logs it and answers a
    generic one, unless it was raised ``public=True`` (a detail written for the client).
    ``retry_after_s`` is when to try again, where the gateway knows better than its default.
    """

    status = 503
    problem_type = "service-unavailable"
    title = "Service unavailable"

    def __init__(
        self, detail: str, *, public: bool = False, retry_after_s: int | None = None
    ) -> None:
        super().__init__(detail)
        self.public = public
        self.retry_after_s = retry_after_s


class JobFailedError(MegaSRError):
    """A job ended failed, canceled or expired; ``problem`` is its error object, if any."""

    status = 500
    problem_type = "job-failed"
    title = "Job failed"

    def __init__(self, detail: str, problem: dict | None = None) -> None:
        super().__init__(detail)
        self.problem = problem or {}
