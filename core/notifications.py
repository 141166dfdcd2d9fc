"""Tell a job's client that it ended: the job's public JSON, POSTed to its ``webhook_url``.

The body is a :class:`~megasr.jobs.JobView` built from the job as it ended, with the terminal
status just decided, so the receiver gets the same document ``GET /v1/jobs/{id}`` answers,
without polling for it. Three places decide that a job ended, and each tells the client:

- a worker, for every job it finishes, fails for good or drops on a cancel;
- the gateway, for a job canceled while still queued (no worker will ever see it);
- RQ's registry cleanup, in the gateway or a worker, for a job whose worker died holding it
  on its last try (:meth:`JobNotifier.on_abandoned`, an RQ exception handler).

Delivery is at least once: a job canceled just as a worker takes it may be told twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from rq.exceptions import AbandonedJobError
from rq.job import Job

from megasr.jobs import (
    META_ERROR,
    META_OUTPUT,
    META_PROGRESS,
    META_STAGE,
    META_TIMINGS,
    TASK_FUNC,
    JobStatus,
    JobView,
    OutputInfo,
)
from megasr.problems import worker_lost_problem
from megasr.settings import Settings
from megasr.storage import Storage
from megasr.webhooks import WebhookSender


class JobNotifier:
    """Sends the terminal-status webhook of jobs that asked for one."""

    def __init__(self, settings: Settings, storage: Storage, sender: WebhookSender) -> None:
        self.settings = settings
        self.storage = storage
        self.sender = sender

    @classmethod
    def from_settings(cls, settings: Settings, storage: Storage) -> JobNotifier:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        sender = WebhookSender(secret, settings.webhook_attempts, settings.webhook_backoff_s)
        return cls(settings, storage, sender)

    def notify(self, job: Job, status: JobStatus) -> None:
        payload = job.args[0]
        url = payload.get("params", {}).get("webhook_url")
        if not url:
            return
        body = self.view(job, payload, status).model_dump_json().encode()
        self.sender.send(url, f"job.{status}", body)

    def on_abandoned(
        self,
        job: Job,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """RQ exception handler: a job abandoned on its last try fails now, so say so.

        RQ's registry cleanup calls it for every job whose lease lapsed, before it retries the
        job or moves it to the failed registry; with retries left there is nothing to tell.
        """
        abandoned = kind is AbandonedJobError and job.func_name == TASK_FUNC
        if abandoned and not job.retries_left:
            job.meta.update({META_ERROR: worker_lost_problem(), META_STAGE: "failed"})
            job.save_meta()
            self.notify(job, JobStatus.FAILED)
        return True  # the next handler runs too

    def close(self) -> None:
        """Wait for deliveries still in flight, retries included."""
        self.sender.close()

    def view(self, job: Job, payload: dict[str, Any], status: JobStatus) -> JobView:
        meta = job.meta
        output = meta.get(META_OUTPUT) if status is JobStatus.SUCCEEDED else None
        error = None
        if status is JobStatus.FAILED:
            error = meta.get(META_ERROR) or worker_lost_problem()
        return JobView(
            id=job.id,
            status=status,
            created_at=payload.get("created_at"),
            started_at=job.started_at,
            finished_at=job.ended_at or datetime.now(UTC),
            progress=meta.get(META_PROGRESS, 0.0),
            stage=meta.get(META_STAGE),
            params=payload.get("params", {}),
            input=payload.get("input"),
            output=self._output(output) if output else None,
            error=error,
            timings=meta.get(META_TIMINGS, {}),
        )

    def _output(self, output: dict[str, Any]) -> OutputInfo:
        url = self.storage.url(output["key"], self.settings.presigned_url_ttl_s)
        fields = {k: v for k, v in output.items() if k != "key"}
        return OutputInfo(**fields, url=url)
