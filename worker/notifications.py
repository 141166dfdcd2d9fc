"""Tell a job's client that it ended: the job's public JSON, POSTed to its ``webhook_url``.

The body is a :class:`~megasr.jobs.JobView` built from the job as it ended, with the terminal
status the worker just decided (succeeded, failed or canceled), so the receiver gets the same
document ``GET /v1/jobs/{id}`` answers, without polling for it.
"""

from __future__ import annotations

from typing import Any

from rq.job import Job

from megasr.jobs import (
    META_ERROR,
    META_OUTPUT,
    META_PROGRESS,
    META_STAGE,
    META_TIMINGS,
    JobStatus,
    JobView,
    OutputInfo,
)
from megasr.settings import Settings
from megasr.storage import Storage
from megasr.worker.webhooks import WebhookSender


class JobNotifier:
    """Sends the terminal-status webhook of jobs that asked for one."""

    def __init__(self, settings: Settings, storage: Storage, sender: WebhookSender) -> None:
        self.settings = settings
        self.storage = storage
        self.sender = sender

    def notify(self, job: Job, status: JobStatus) -> None:
        payload = job.args[0]
        url = payload.get("params", {}).get("webhook_url")
        if not url:
            return
        body = self.view(job, payload, status).model_dump_json().encode()
        self.sender.send(url, f"job.{status}", body)

    def view(self, job: Job, payload: dict[str, Any], status: JobStatus) -> JobView:
        meta = job.meta
        output = meta.get(META_OUTPUT) if status is JobStatus.SUCCEEDED else None
        return JobView(
            id=job.id,
            status=status,
            created_at=payload.get("created_at"),
            started_at=job.started_at,
            finished_at=job.ended_at,
            progress=meta.get(META_PROGRESS, 0.0),
            stage=meta.get(META_STAGE),
            params=payload.get("params", {}),
            input=payload.get("input"),
            output=self._output(output) if output else None,
            error=meta.get(META_ERROR) if status is not JobStatus.SUCCEEDED else None,
            timings=meta.get(META_TIMINGS, {}),
        )

    def _output(self, output: dict[str, Any]) -> OutputInfo:
        url = self.storage.url(output["key"], self.settings.presigned_url_ttl_s)
        fields = {k: v for k, v in output.items() if k != "key"}
        return OutputInfo(**fields, url=url)
