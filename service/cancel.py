"""``DELETE /v1/jobs/{id}``: cancel a queued or running job.

Three things, in this order: the cancel key (the one signal a worker can trust, see
:mod:`megasr.cancellation`), RQ's own cancel (status ``canceled``, out of the queue and the
registries, so ``rq info`` agrees) and, for a running job, RQ's stop-job command so a
worker that listens drops it at once instead of at its next check. A job canceled before any
worker took it gets its ``job.canceled`` webhook from here.
"""

from __future__ import annotations

import contextlib

from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.job import JobStatus as RQStatus

from megasr.cancellation import is_cancel_requested, request_cancel
from megasr.errors import ConflictError
from megasr.jobs import JobStatus
from megasr.queue import JOB_SERIALIZER
from megasr.service.context import Gateway
from megasr.service.views import public_status


def cancel_job(gw: Gateway, job_id: str, job: Job | None) -> None:
    """Cancel the job; canceling twice is fine, a finished or expired job is 409."""
    if is_cancel_requested(gw.redis, job_id):
        return
    if job is None:
        raise ConflictError(f"job {job_id} has expired")
    rq_status = job.get_status(refresh=True)
    status = public_status(rq_status, cancel_requested=False)
    if status.is_terminal:
        raise ConflictError(f"job {job_id} is already {status}")
    settings = gw.settings
    request_cancel(gw.redis, job_id, settings.result_ttl_s + settings.expired_record_ttl_s)
    # InvalidJobOperation: RQ canceled it in the meantime, or no worker holds it any more.
    with contextlib.suppress(InvalidJobOperation):
        job.cancel()
    if rq_status == RQStatus.STARTED:
        with contextlib.suppress(InvalidJobOperation):
            send_stop_job_command(gw.redis, job_id, serializer=JOB_SERIALIZER)
    else:  # no worker holds it, so none will tell the client it ended
        gw.notifier.notify(job, JobStatus.CANCELED)
