"""RQ's view of a job -> the public job (``GET /v1/jobs/{id}``).

RQ knows eleven statuses; a client needs six. A cancel request (its own Redis key, see
:mod:`megasr.cancellation`) wins over whatever a worker wrote after it, and a job RQ no
longer has but whose ownership record remains reads ``expired``.
"""

from __future__ import annotations

from datetime import datetime

from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus

from megasr.cancellation import is_cancel_requested
from megasr.errors import NotFoundError
from megasr.job_view import public_view
from megasr.jobs import JobStatus, JobView
from megasr.queue import JOB_SERIALIZER
from megasr.service.context import Gateway
from megasr.service.records import JobRecord, load_record

_PUBLIC_STATUS = {
    RQStatus.CREATED: JobStatus.QUEUED,
    RQStatus.QUEUED: JobStatus.QUEUED,
    RQStatus.DEFERRED: JobStatus.QUEUED,
    RQStatus.SCHEDULED: JobStatus.QUEUED,  # waiting for a retry
    RQStatus.RATE_LIMITED: JobStatus.QUEUED,
    RQStatus.READY_TO_ENQUEUE: JobStatus.QUEUED,
    RQStatus.STARTED: JobStatus.RUNNING,
    RQStatus.FINISHED: JobStatus.SUCCEEDED,
    RQStatus.FAILED: JobStatus.FAILED,
    RQStatus.STOPPED: JobStatus.FAILED,
    RQStatus.CANCELED: JobStatus.CANCELED,
}


def public_status(rq_status: RQStatus | None, cancel_requested: bool) -> JobStatus:
    if cancel_requested:
        return JobStatus.CANCELED
    if rq_status is None:
        return JobStatus.EXPIRED
    return _PUBLIC_STATUS[RQStatus(rq_status)]


def owned_job(gw: Gateway, tenant: str, job_id: str) -> tuple[JobRecord, Job | None]:
    """The job's record and RQ job (None once RQ dropped it); 404 unless ``tenant`` owns it."""
    record = load_record(gw.redis, job_id)
    if record is None or record.tenant != tenant:
        raise NotFoundError(f"no job {job_id}")
    try:
        job = Job.fetch(job_id, connection=gw.redis, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        job = None
    return record, job


def job_view(
    gw: Gateway, job_id: str, record: JobRecord, job: Job | None, result_url: str
) -> JobView:
    created_at = datetime.fromisoformat(record.created_at)
    if job is None:
        status = public_status(None, is_cancel_requested(gw.redis, job_id))
        return JobView(id=job_id, status=status, created_at=created_at)
    status = public_status(job.get_status(refresh=False), is_cancel_requested(gw.redis, job_id))
    view = public_view(job, status, created_at, result_url)
    if status is JobStatus.QUEUED:
        view.queue_position = _queue_position(job)
    return view


def _queue_position(job: Job) -> int | None:
    """Jobs ahead of this one; 0 once a worker has taken it but not started it yet."""
    if job.get_status(refresh=False) != RQStatus.QUEUED:
        return None  # waiting for a retry, not in the queue list
    position = job.get_position()
    return 0 if position is None else position
