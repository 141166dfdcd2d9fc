"""``POST /v1/upscale``: from a streamed form to a queued job.

Cheap refusals come first (declared length, this process's upload caps, rate and capacity
limits), then the body is read under its limit and deadlines, the fields and the image are
checked, and only then is anything written: the input object, then in one Redis transaction
the ownership record, the RQ job and the kept Idempotency-Key. A failure after the key was
claimed releases the claim and the stored input.
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
from megasr.service.upload_gate import Upload as UploadPlace
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
        declared = check_declared_length(request.content_length, settings.max_upload_bytes)
        # The upload keeps its place until it is stored: its bytes are in memory until then.
        with gw.uploads.admit(declared) as place:
            await run_sync(check_capacity, gw.redis, gw.queues, settings, request.tenant)
            upload = await _read_form(gw, request, place)
            params = UpscaleParams.parse(upload.fields)
            if params.webhook_url is not None:  # refused now, not after the job ran
                await run_sync(gw.notifier.dispatcher.policy.resolve, str(params.webhook_url))
            runs_on, engine = await run_sync(_resolve_engine, gw, params.engine)
            info = await inspect_image(upload.image, params, settings)
            submitted = await run_sync(
                _store_and_enqueue, gw, request, upload, params, info, runs_on
            )
    except MegaSRError as error:
        gw.metrics.jobs_submitted.labels(engine, _outcome(error)).inc()
        raise
    outcome = "replayed" if submitted.replayed else "accepted"
    gw.metrics.jobs_submitted.labels(engine, outcome).inc()
    return submitted


async def _read_form(gw: Gateway, request: SubmitRequest, place: UploadPlace) -> Upload:
    """The form, read under the upload's deadlines and byte reservation."""
    async with contextlib.aclosing(gw.uploads.body(place, request.body)) as body:
        return await read_upload(request.content_type, body, gw.settings.max_upload_bytes)


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
    """The input object, then in one transaction the ownership record, the RQ job on
    ``engine``'s queue and the Idempotency-Key kept for the retention: a Redis that fails
    mid-way leaves all three or none, never a queued job whose key lapses (and so runs
    again on a retry) or a kept key without its job."""
    settings = gw.settings
    output_format = params.output_format or default_output_format(info.format)
    gw.storage.put(stored_key, upload.image, content_type_for(info.format))
    created_at = datetime.now(UTC).isoformat()
    payload = JobPayload(
        job_id=job_id,
        tenant=request.tenant,
        engine=engine,
        params=params.model_copy(update={"output_format": output_format}).model_dump(mode="json"),
        input_key=stored_key,
        input=info.model_dump(),
        created_at=created_at,
    )
    with gw.redis.pipeline(transaction=True) as pipe:
        pipe.multi()  # RQ queues its writes into this transaction instead of its own
        save_record(pipe, settings, job_id, JobRecord(request.tenant, created_at))
        enqueue_upscale(gw.queues, payload, pipeline=pipe)
        if request.idempotency_key is not None:
            idempotency.keep(pipe, request.tenant, request.idempotency_key, settings.result_ttl_s)
        pipe.execute()


def _confirm(gw: Gateway, request: SubmitRequest, job_id: str) -> None:
    """The job is queued: count it in flight and wait until Redis has it on disk (see
    :mod:`megasr.service.durability`); WAITAOF goes in the same pipeline as the in-flight
    write, on whose connection it waits, and the log's order covers the transaction before."""
    with gw.redis.pipeline(transaction=False) as pipe:
        track_in_flight(pipe, gw.settings, request.tenant, job_id)
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
