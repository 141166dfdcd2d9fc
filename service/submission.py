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

from megasr.engine_catalog import AUTO, engine_names, public_name, variant_for
from megasr.engine_status import EngineState, read_engines
from megasr.errors import (
    ConflictError,
    InvalidParameterError,
    MegaSRError,
    RateLimitedError,
    ServiceUnavailableError,
)
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
            route = await run_sync(_resolve_engine, gw, params.engine)
            engine = route.label
            info = await inspect_image(upload.image, params, settings)
            runs_on = route.engine_for(params, info)
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


@dataclass(frozen=True)
class Route:
    """Where a job goes: ``engine`` (a family until the image's size picks its variant) and
    its metric label; ``variants`` are a family's variants that some worker serves."""

    engine: str
    label: str
    variants: list[str] | None = None

    def engine_for(self, params: UpscaleParams, info: ImageInfo) -> str:
        """The engine whose queue the job goes to: a family's variant for the factor asked."""
        factor = params.output_size().factor(info.width, info.height)
        return variant_for(self.engine, factor, self.variants)


def _resolve_engine(gw: Gateway, name: str) -> Route:
    """The engine the job runs on and its metric label.

    ``auto`` is the default the live workers announce; while none has one (no worker has
    announced itself, or every one is still loading), the job waits in the queue every
    worker serves with its own default (:data:`AUTO_QUEUE`). A named engine is queued while
    its workers load, and before any worker announced itself. An engine no live worker
    serves or loads is refused, naming those that are; one that failed to load on every
    worker is a 503 with the reason.
    """
    catalog = read_engines(gw.redis)
    if name == AUTO and catalog.default is None:
        return Route(AUTO_QUEUE, AUTO_QUEUE)
    engine = catalog.default if name == AUTO else name
    announced = {entry.name: entry for entry in catalog.engines}
    entry = announced.get(public_name(engine))
    if entry is None and announced:
        served = [e.name for e in catalog.engines if e.state is not EngineState.FAILED]
        if not served:
            raise InvalidParameterError(f"engine {name!r} is not served here, nor any other")
        choices = ", ".join([AUTO, *served])
        raise InvalidParameterError(f"engine {name!r} is not served here; choose one of {choices}")
    if entry is None:  # no worker has announced itself yet: queue it, with a bounded label
        return Route(engine, public_name(engine) if engine in engine_names() else "other")
    if entry.state is EngineState.FAILED:
        raise ServiceUnavailableError(
            f"engine {entry.name!r} failed to load on every worker: {entry.detail}", public=True
        )
    return Route(engine, entry.name, entry.variants)


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
