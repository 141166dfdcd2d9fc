"""``POST /v1/upscale``: from a streamed form to a queued job.

Cheap refusals come first (declared length, rate and capacity limits), then the body is
read under its limit, the fields and the image are checked, and only then is anything
written: the input object, the ownership record, the RQ job. A failure after the
Idempotency-Key was claimed releases the claim and the stored input.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from anyio.to_thread import run_sync

from megasr.engine_status import read_engines
from megasr.errors import ConflictError, InvalidParameterError, MegaSRError, RateLimitedError
from megasr.imaging.encode import default_output_format
from megasr.jobs import ImageInfo, JobPayload, UpscaleParams, new_job_id
from megasr.queue import AUTO_QUEUE, enqueue_upscale
from megasr.service import idempotency
from megasr.service.context import Gateway
from megasr.service.images import inspect_image
from megasr.service.limits import check_capacity, track_in_flight
from megasr.service.records import JobRecord, load_record, save_record
from megasr.service.uploads import Upload, check_declared_length, read_upload
from megasr.storage import content_type_for, input_key


@dataclass(frozen=True)
class Submitted:
    job_id: str
    replayed: bool  # an Idempotency-Key retry: the job is the first request's


@dataclass(frozen=True)
class SubmitRequest:
    tenant: str
    content_type: str | None
    content_length: str | None
    idempotency_key: str | None
    body: AsyncIterator[bytes]


async def submit(gw: Gateway, request: SubmitRequest) -> Submitted:
    """Check, store and queue one upscale; counts the outcome in the metrics."""
    engine = "unknown"
    try:
        settings = gw.settings
        check_declared_length(request.content_length, settings.max_upload_bytes)
        await run_sync(check_capacity, gw.redis, gw.queues, settings, request.tenant)
        upload = await read_upload(request.content_type, request.body, settings.max_upload_bytes)
        params = UpscaleParams.parse(upload.fields)
        if params.webhook_url is not None:  # refused now, not after the job ran
            await run_sync(gw.notifier.dispatcher.policy.resolve, str(params.webhook_url))
        runs_on, engine = await run_sync(_resolve_engine, gw, params.engine)
        info = await inspect_image(upload.image, params, settings)
        submitted = await run_sync(_store_and_enqueue, gw, request, upload, params, info, runs_on)
    except MegaSRError as error:
        gw.metrics.jobs_submitted.labels(engine, _outcome(error)).inc()
        raise
    outcome = "replayed" if submitted.replayed else "accepted"
    gw.metrics.jobs_submitted.labels(engine, outcome).inc()
    return submitted


def _resolve_engine(gw: Gateway, name: str) -> tuple[str, str]:
    """The engine the job runs on, whose queue it goes to, and its metric label.

    ``auto`` is the default the live workers announce; before any has announced itself, the
    job waits in the queue every worker serves with its own default (:data:`AUTO_QUEUE`). An
    engine no live worker serves is refused.
    """
    catalog = read_engines(gw.redis)
    served = {info.name for info in catalog.engines}
    engine = name if name != "auto" else catalog.default or AUTO_QUEUE
    if engine in served:
        return engine, engine
    if served:
        choices = ", ".join(["auto", *sorted(served)])
        raise InvalidParameterError(f"engine {name!r} is not served here; choose one of {choices}")
    # No worker has announced itself yet: queue it, but keep the labels bounded.
    return engine, AUTO_QUEUE if engine == AUTO_QUEUE else "other"


def _store_and_enqueue(
    gw: Gateway,
    request: SubmitRequest,
    upload: Upload,
    params: UpscaleParams,
    info: ImageInfo,
    engine: str,
) -> Submitted:
    job_id = new_job_id()
    key = request.idempotency_key
    if key is not None:
        fingerprint = idempotency.fingerprint(upload.image, params.model_dump(mode="json"))
        earlier = idempotency.claim(
            gw.redis, request.tenant, key, fingerprint, job_id, idempotency.CLAIM_TTL_S
        )
        if earlier is not None:
            if load_record(gw.redis, earlier) is None:
                raise ConflictError("a request with this Idempotency-Key is still in progress")
            return Submitted(job_id=earlier, replayed=True)
    stored_key = input_key(job_id, info.format)
    try:
        with contextlib.ExitStack() as claim:
            if key is not None:
                claim.enter_context(idempotency.ClaimKeeper(gw.redis, request.tenant, key))
            _store(gw, request, upload, params, info, job_id, stored_key, engine)
    except BaseException:
        # Undo what can be undone; a cleanup that fails too must not hide the first error.
        with contextlib.suppress(Exception):
            gw.storage.delete(stored_key)
        if key is not None:
            with contextlib.suppress(Exception):
                idempotency.release(gw.redis, request.tenant, key)
        raise
    _confirm(gw, request, job_id)
    return Submitted(job_id=job_id, replayed=False)


def _store(
    gw: Gateway,
    request: SubmitRequest,
    upload: Upload,
    params: UpscaleParams,
    info: ImageInfo,
    job_id: str,
    stored_key: str,
    engine: str,
) -> None:
    """The input object, the ownership record, then the RQ job, on ``engine``'s queue."""
    output_format = params.output_format or default_output_format(info.format)
    gw.storage.put(stored_key, upload.image, content_type_for(info.format))
    created_at = datetime.now(UTC).isoformat()
    save_record(gw.redis, gw.settings, job_id, JobRecord(request.tenant, created_at))
    payload = JobPayload(
        job_id=job_id,
        tenant=request.tenant,
        engine=engine,
        params=params.model_copy(update={"output_format": output_format}).model_dump(mode="json"),
        input_key=stored_key,
        input=info.model_dump(),
        created_at=created_at,
    )
    enqueue_upscale(gw.queues, payload)


def _confirm(gw: Gateway, request: SubmitRequest, job_id: str) -> None:
    """The job is queued: count it in flight, keep its Idempotency-Key for the retention, and
    wait until Redis has it on disk (see :mod:`megasr.service.durability`); one pipeline."""
    settings = gw.settings
    with gw.redis.pipeline(transaction=False) as pipe:
        track_in_flight(pipe, settings, request.tenant, job_id)
        if request.idempotency_key is not None:
            idempotency.keep(pipe, request.tenant, request.idempotency_key, settings.result_ttl_s)
        waited = gw.durability.wait_in(gw.redis, pipe)
        replies = pipe.execute(raise_on_error=False)
    if waited:
        gw.durability.check(replies[-1])


def _outcome(error: MegaSRError) -> str:
    if isinstance(error, RateLimitedError):
        return "rate_limited"
    if error.status >= 500:
        return "unavailable"
    return "rejected"
