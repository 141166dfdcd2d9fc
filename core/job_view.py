"""An RQ job as its client sees it: one builder for ``GET /v1/jobs/{id}`` and the webhooks.

The gateway decides the status (cancel requests and expiry included) and a worker or the
cleanup decides it when a job ends; either way the document is built here, so a webhook body
is the very document a poll would answer. Only the result's ``url`` differs by caller: the
gateway's own download route, or the storage's presigned URL in a webhook.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rq.job import Job

from megasr.jobs import (
    META_ERROR,
    META_OUTPUT,
    META_PROGRESS,
    META_STAGE,
    META_TIMINGS,
    META_WORK,
    ImageInfo,
    JobStatus,
    JobView,
    OutputInfo,
    WorkCount,
)
from megasr.problems import worker_lost_problem


def public_view(
    job: Job, status: JobStatus, created_at: datetime | None, output_url: str | None
) -> JobView:
    """The public JSON of ``job`` at ``status``; ``output_url`` is where its result is got."""
    payload: dict[str, Any] = job.args[0] if job.args else {}
    meta = job.meta or {}
    view = JobView(
        id=job.id,
        status=status,
        created_at=created_at,
        started_at=_utc(job.started_at),
        finished_at=_utc(job.ended_at) if status.is_terminal else None,
        progress=1.0 if status is JobStatus.SUCCEEDED else float(meta.get(META_PROGRESS, 0.0)),
        stage=meta.get(META_STAGE),
        work=_work(meta, status),
        params=payload.get("params", {}),
        input=ImageInfo(**payload["input"]) if payload.get("input") else None,
        timings=meta.get(META_TIMINGS) or {},
    )
    if status is JobStatus.SUCCEEDED and meta.get(META_OUTPUT):
        output = meta[META_OUTPUT]
        view.output = OutputInfo(
            width=output["width"],
            height=output["height"],
            format=output["format"],
            bytes=output["bytes"],
            url=output_url,
        )
    elif status is JobStatus.FAILED:
        view.error = meta.get(META_ERROR) or worker_lost_problem()
    return view


def _work(meta: dict[str, Any], status: JobStatus) -> WorkCount | None:
    """The engine work counted so far; none while queued (a job waiting for its retry counted
    work it will do again)."""
    if status is JobStatus.QUEUED or not meta.get(META_WORK):
        return None
    return WorkCount(**meta[META_WORK])


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
