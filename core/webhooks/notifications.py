"""Tell a job's client that it ended: the job's public JSON, POSTed to its ``webhook_url``.

The body is a :class:`~megasr.jobs.JobView` built from the job as it ended, with the terminal
status just decided, so the receiver gets the same document ``GET /v1/jobs/{id}`` answers,
without polling for it. Three places decide that a job ended, and each tells the client:

- a worker, for every job it finishes, fails for good or drops on a cancel;
- the gateway, for a job canceled while still queued (no worker will ever see it);
- RQ's registry cleanup, in the gateway or a worker, for a job whose worker died holding it
  on its last try (:meth:`JobNotifier.on_abandoned`, an RQ exception handler).

The webhook goes into the durable outbox in Redis (:mod:`megasr.webhooks.outbox`) in the same
moment (a worker queues it into the very transaction that writes the job's end:
:meth:`JobNotifier.queue_in`), and this process's
:class:`~megasr.webhooks.delivery.WebhookDispatcher` (or any other gateway's or worker's)
delivers it. Each end of a job has one delivery id (:func:`delivery_id`), whoever tells it
and however often: a job canceled just as a worker takes it, or a cleanup that ran twice,
is one delivery. Attempts are at least once: a receiver whose answer was lost gets the same
``webhook-id`` again, and drops it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType

from redis import Redis
from redis.client import Pipeline
from rq.exceptions import AbandonedJobError
from rq.job import Job

from megasr.job_view import public_view
from megasr.jobs import META_ERROR, META_OUTPUT, META_STAGE, TASK_FUNC, JobStatus, JobView
from megasr.problems import worker_lost_problem
from megasr.queue import redis_connection
from megasr.settings import Settings
from megasr.storage import Storage
from megasr.webhooks.delivery import WebhookDispatcher
from megasr.webhooks.outbox import WebhookOutbox

# The dispatcher's own connection: a Redis that stops answering must not hang its thread.
DISPATCHER_SOCKET_TIMEOUT_S = 10.0


def delivery_id(job_id: str, status: JobStatus) -> str:
    """The ``webhook-id`` of the webhook that tells ``job_id`` ended at ``status``."""
    return f"msg_{status}_{job_id}"


class JobNotifier:
    """Queues the terminal-status webhook of jobs that asked for one, and drains the outbox."""

    def __init__(self, settings: Settings, storage: Storage, dispatcher: WebhookDispatcher) -> None:
        self.settings = settings
        self.storage = storage
        self.dispatcher = dispatcher

    @classmethod
    def from_settings(
        cls, settings: Settings, storage: Storage, connection: Redis | None = None
    ) -> JobNotifier:
        """A notifier whose dispatcher drains the outbox at once, in ``connection``'s Redis or
        ``redis_url``'s (with neither, from the first job's Redis it is told about)."""
        dispatcher = WebhookDispatcher(settings)
        if connection is None and settings.redis_url:
            connection = redis_connection(settings, socket_timeout=DISPATCHER_SOCKET_TIMEOUT_S)
        if connection is not None:
            dispatcher.start(connection)
        return cls(settings, storage, dispatcher)

    def notify(self, job: Job, status: JobStatus) -> None:
        """Queue the webhook of ``job``'s end at ``status`` and send it soon."""
        with job.connection.pipeline() as pipeline:
            queued = self.queue_in(pipeline, job, status)
            pipeline.execute()
        if queued:
            self.wake(job.connection)

    def queue_in(self, pipeline: Pipeline, job: Job, status: JobStatus) -> bool:
        """Add the webhook of ``job``'s end at ``status`` to ``pipeline``, a transaction the
        caller executes with the end itself; False when the job asked for none."""
        payload = job.args[0]
        url = payload.get("params", {}).get("webhook_url")
        if not url:
            return False
        body = self.view(job, status).model_dump_json().encode()
        outbox = WebhookOutbox(job.connection, self.settings.queue_name)
        tenant = payload.get("tenant", "")
        event = f"job.{status}"
        outbox.add(url, event, tenant, job.id, body, delivery_id(job.id, status), pipeline)
        return True

    def wake(self, connection: Redis) -> None:
        """Deliver what was just queued now, rather than at the dispatcher's next poll."""
        self.dispatcher.start(connection)
        self.dispatcher.wake()

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
        """Wait for the attempts in flight; deliveries still due wait in the outbox."""
        self.dispatcher.close()

    def view(self, job: Job, status: JobStatus) -> JobView:
        """What ``GET /v1/jobs/{id}`` answers once the job has ended at ``status``, with the
        result's storage URL (presigned; None for local storage)."""
        created = job.args[0].get("created_at")
        output = job.meta.get(META_OUTPUT)
        url = None
        if status is JobStatus.SUCCEEDED and output:
            url = self.storage.url(output["key"], self.settings.presigned_url_ttl_s)
        created_at = datetime.fromisoformat(created) if created else None
        view = public_view(job, status, created_at, url)
        view.finished_at = view.finished_at or datetime.now(UTC)  # ended before RQ stamps it
        return view
