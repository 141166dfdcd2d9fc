"""A Python client for the MegaSR service.

    from megasr.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        job = client.submit("photo.jpg", scale=4)
        job = client.wait(job.id, on_progress=lambda job: print(job.status, job.progress))
        client.download(job.id, "photo-x4.png")

Every refusal arrives as the typed error the service raised (``InvalidImageError``,
``RateLimitedError`` with ``retry_after_s``, ...), rebuilt from its problem+json body; a job
that ends failed, canceled or expired raises :class:`~megasr.errors.JobFailedError`.

A busy or briefly unreachable service is waited for: a 429 or 503 is retried after its
``Retry-After`` (a connection failure after a doubling backoff), up to ``retries`` times per
call; every call is safe to repeat (a submit carries its Idempotency-Key). :meth:`Client.wait`
polls at a widening interval while nothing changes.

A webhook receiver checks each delivery with :func:`verify_webhook` (the Standard Webhooks
scheme: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)::

    from megasr.client import WebhookVerificationError, verify_webhook

    try:
        delivery_id = verify_webhook(request_body, request_headers, secret)
    except WebhookVerificationError:
        ...  # answer 400 and drop it
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from megasr.engine_status import EngineCatalog
from megasr.errors import JobFailedError, MegaSRError, ServiceUnavailableError
from megasr.jobs import JobStatus, JobView, UpscaleParams
from megasr.problems import error_from_problem
from megasr.webhooks.signature import WebhookVerificationError
from megasr.webhooks.signature import verify as verify_webhook

__all__ = ["Client", "WebhookVerificationError", "verify_webhook"]

ProgressCallback = Callable[[JobView], None]
_RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_WAIT_S = 60.0  # a Retry-After longer than this is waited for only this long
MAX_POLL_INTERVAL_S = 5.0
POLL_GROWTH = 1.5


class Client:
    """Talks to one gateway; a context manager that closes its connections."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        *,
        retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``retries``: how often one call is repeated on 429, 503 or no connection (0 = never);
        ``sleep``: how the client waits (replace it to wait in your own way)."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.retries = retries
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self,
        image: str | Path | bytes,
        *,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> JobView:
        """Upload ``image`` (a path or bytes) with upscale ``params``; returns the queued job.

        The parameters are checked here first (the same model the gateway uses), and an
        Idempotency-Key is always sent, so retrying a submit never queues the job twice.
        """
        fields = UpscaleParams.parse(params).model_dump(mode="json", exclude_none=True)
        if isinstance(image, bytes):
            data, name = image, filename or "image"
        else:
            path = Path(image)
            data, name = path.read_bytes(), filename or path.name
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        response = self._request(
            "POST",
            "/v1/upscale",
            files={"image": (name, data, "application/octet-stream")},
            data={key: str(value) for key, value in fields.items()},
            headers=headers,
        )
        return JobView.model_validate(response.json())

    def get(self, job_id: str) -> JobView:
        return JobView.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> JobView:
        return JobView.model_validate(self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def engines(self) -> EngineCatalog:
        return EngineCatalog.model_validate(self._request("GET", "/v1/engines").json())

    def wait(
        self,
        job_id: str,
        on_progress: ProgressCallback | None = None,
        poll_interval_s: float = 0.5,
        timeout_s: float | None = None,
    ) -> JobView:
        """Poll until the job ends; returns it when it succeeded, else raises JobFailedError.

        ``on_progress`` gets the job after every poll whose status, stage or progress changed.
        Polls start ``poll_interval_s`` apart; while nothing changes the interval grows by
        half each time, up to 5 s, and a change brings it back (each poll counts against the
        tenant's request rate).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: tuple | None = None
        interval = poll_interval_s
        while True:
            job = self.get(job_id)
            state = (job.status, job.stage, job.progress, job.queue_position)
            if state != last:
                interval = poll_interval_s
                if on_progress is not None:
                    on_progress(job)
            else:
                interval = min(MAX_POLL_INTERVAL_S, max(interval, poll_interval_s) * POLL_GROWTH)
            last = state
            if job.status is JobStatus.SUCCEEDED:
                return job
            if job.status.is_terminal:
                detail = (job.error or {}).get("detail") or f"job {job_id} ended {job.status}"
                raise JobFailedError(detail, problem=job.error)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s} s")
            self._sleep(interval)

    def download(self, job_id: str, destination: str | Path | None = None) -> bytes:
        """The result's bytes (following a redirect to object storage); also written to
        ``destination`` when one is given."""
        response = self._request("GET", f"/v1/jobs/{job_id}/result", follow_redirects=True)
        data = response.content
        if destination is not None:
            Path(destination).write_bytes(data)
        return data

    def upscale(
        self,
        image: str | Path | bytes,
        destination: str | Path | None = None,
        on_progress: ProgressCallback | None = None,
        **params: Any,
    ) -> bytes:
        """Submit, wait and download in one call."""
        job = self.submit(image, **params)
        self.wait(job.id, on_progress=on_progress)
        return self.download(job.id, destination)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call, repeated on 429, 503 or no connection while retries are left."""
        retry = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if retry >= self.retries:
                    raise ServiceUnavailableError(
                        f"cannot reach {self._http.base_url}: {exc}"
                    ) from exc
                delay = min(MAX_RETRY_WAIT_S, 2.0**retry)
            else:
                if response.status_code in _RETRY_STATUSES and retry < self.retries:
                    delay = _retry_after_s(response, default_s=2.0**retry)
                elif response.status_code >= 400:
                    raise _error_of(response)
                else:
                    return response
            retry += 1
            self._sleep(delay)


def _retry_after_s(response: httpx.Response, default_s: float) -> float:
    """The response's Retry-After in seconds (the delay form), else ``default_s``; capped."""
    text = response.headers.get("Retry-After", "")
    seconds = float(text) if text.isdigit() else default_s
    return min(MAX_RETRY_WAIT_S, seconds)


def _error_of(response: httpx.Response) -> MegaSRError:
    """The typed error of a failed response (problem+json, or the bare status)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if "retry_after" not in body and response.headers.get("Retry-After", "").isdigit():
        body["retry_after"] = int(response.headers["Retry-After"])
    body.setdefault("detail", f"HTTP {response.status_code} from {response.request.url.path}")
    return error_from_problem(body, response.status_code)
