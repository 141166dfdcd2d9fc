"""The job schema shared by the gateway, the worker and the client.

A job is an RQ job whose id is the public id. The gateway enqueues
``megasr.worker.tasks.upscale(payload)`` with the :class:`JobPayload` below as its one
argument; the worker alone writes the job's progress into ``job.meta`` under the ``META_*``
keys (RQ saves meta whole, so a second writer would erase the first). :class:`JobView` is the
public JSON of ``GET /v1/jobs/{id}``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, TypedDict

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationError, model_validator

from megasr.errors import InvalidParameterError
from megasr.imaging.sizing import DEFAULT_SCALE, MAX_SCALE, MIN_SCALE, OutputSize

TASK_FUNC = "megasr.worker.tasks.upscale"

# job.meta keys, written only by the worker.
META_PROGRESS = "progress"  # float in [0, 1]
META_STAGE = "stage"  # str: the stage running now
META_WORK = "work"  # {"done", "total", "unit"}: the engine work behind the progress
META_TIMINGS = "timings"  # {stage: seconds}
META_OUTPUT = "output"  # {"width", "height", "format", "bytes", "key"}
META_ERROR = "error"  # a problem object (megasr.problems)

OutputFormat = Literal["png", "jpeg", "webp"]
WorkUnit = Literal["tiles", "steps"]
ColorFix = Literal["adain", "wavelet", "none"]


def new_job_id() -> str:
    """A random, unguessable, URL-safe job id (RQ accepts letters, digits, ``-`` and ``_``)."""
    return secrets.token_urlsafe(16)


class JobStatus(StrEnum):
    """The public status of a job (RQ's statuses, folded into what a client needs)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class UpscaleParams(BaseModel):
    """What a client may ask of one upscale; the form fields of ``POST /v1/upscale``.

    With neither ``scale`` nor a size the scale is 4. ``output_format`` None means the input's
    format when it is one the service writes, else PNG (the gateway fills it in).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float | None = Field(None, ge=MIN_SCALE, le=MAX_SCALE)
    width: int | None = Field(None, ge=1, le=65535)
    height: int | None = Field(None, ge=1, le=65535)
    engine: str = Field("auto", pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    output_format: OutputFormat | None = None
    quality: int | None = Field(None, ge=1, le=100)
    prompt: str | None = Field(None, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    steps: int | None = Field(None, ge=1, le=200)
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    color_fix: ColorFix | None = None
    webhook_url: AnyHttpUrl | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Empty form fields mean "not given"; no size at all means the default scale."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None and v != ""}
        if not {"scale", "width", "height"} & data.keys():
            data["scale"] = DEFAULT_SCALE
        return data

    @model_validator(mode="after")
    def _one_size_rule(self) -> UpscaleParams:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("give either scale or width/height, not both")
        return self

    @classmethod
    def parse(cls, fields: dict[str, Any]) -> UpscaleParams:
        """Validate raw fields (form strings included); bad input raises InvalidParameterError."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidParameterError(describe_validation_error(exc)) from exc

    def output_size(self) -> OutputSize:
        return OutputSize(scale=self.scale, width=self.width, height=self.height)


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, for a 422 detail."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"] if p not in ("body", "query")) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


class ImageInfo(BaseModel):
    """An input image as the gateway probed it."""

    width: int
    height: int
    format: str


class WorkCount(BaseModel):
    """How much of a running job's engine work is done, in the units the engine counts:
    ``tiles`` for a tile engine, denoising ``steps`` for an image engine. Counts let a client
    show "tile 6 of 12" and estimate the time left from the rate, which ``progress`` alone
    (a fraction that also covers decoding and encoding) does not."""

    done: int = Field(ge=0)
    total: int = Field(ge=1)
    unit: WorkUnit


class OutputInfo(BaseModel):
    """The stored result; ``url`` is where a client downloads it."""

    width: int
    height: int
    format: str
    bytes: int
    url: str | None = None


class JobPayload(TypedDict):
    """The one argument of the RQ task, JSON-serialisable."""

    job_id: str
    tenant: str
    engine: str  # the engine it runs on, ``auto`` resolved; its queue is this engine's
    params: dict[str, Any]  # UpscaleParams.model_dump(mode="json"), output_format filled in
    input_key: str
    input: dict[str, Any]  # ImageInfo.model_dump()
    created_at: str  # ISO 8601, UTC


class JobView(BaseModel):
    """The public JSON of a job."""

    id: str
    status: JobStatus
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: float = 0.0
    stage: str | None = None
    work: WorkCount | None = None
    queue_position: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    input: ImageInfo | None = None
    output: OutputInfo | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, float] = Field(default_factory=dict)
