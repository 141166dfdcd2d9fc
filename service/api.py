"""The v1 routes. Thin on purpose: each one authorizes, calls one function, shapes the reply."""

from __future__ import annotations

from typing import Annotated, Any

from anyio.to_thread import run_sync
from fastapi import APIRouter, Depends, Header, Request, Security
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from megasr.engine_status import EngineCatalog, read_engines
from megasr.errors import ConflictError, NotFoundError
from megasr.jobs import META_OUTPUT, JobStatus, JobView, UpscaleParams
from megasr.problems import PROBLEM_CONTENT_TYPE
from megasr.service.cancel import cancel_job
from megasr.service.context import Gateway, gateway
from megasr.service.headers import SCOPE_KEY
from megasr.service.limits import count_request
from megasr.service.submission import SubmitRequest, submit
from megasr.service.views import job_view, owned_job
from megasr.storage import content_type_for

_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")

_PROBLEM = {"content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, **_PROBLEM}
    for status, text in {
        401: "No or unknown API key.",
        404: "No such job for this tenant.",
        422: "A bad field.",
        429: "Rate limit, jobs in flight or queue depth reached; see Retry-After.",
        503: "Redis or the object storage cannot be reached; see Retry-After.",
    }.items()
}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    400: {"description": "Not an image, or not a whole multipart form.", **_PROBLEM},
    408: {"description": "The body came too slowly (the upload deadlines).", **_PROBLEM},
    409: {"description": "The Idempotency-Key's first request is in progress.", **_PROBLEM},
    413: {"description": "Bytes or pixels over the limits.", **_PROBLEM},
    415: {"description": "An image format that is not supported.", **_PROBLEM},
    503: {
        "description": "Redis or the storage cannot be reached, or this gateway process "
        "holds as many uploads as it may; see Retry-After.",
        **_PROBLEM,
    },
}


def authorized_tenant(
    request: Request,
    gw: Annotated[Gateway, Depends(gateway)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> str:
    """The caller's tenant, counted against its request rate."""
    tenant = gw.api_keys.tenant_for(bearer.credentials if bearer else api_key)
    request.scope[SCOPE_KEY] = count_request(gw.redis, gw.settings, tenant)
    return tenant


GatewayDep = Annotated[Gateway, Depends(gateway)]
TenantDep = Annotated[str, Depends(authorized_tenant)]

router = APIRouter(prefix="/v1", tags=["v1"], responses=_ERRORS)


def _upload_body_schema() -> dict[str, Any]:
    fields = UpscaleParams.model_json_schema()
    form_fields = {name: _form_field(schema) for name, schema in fields["properties"].items()}
    properties = {"image": {"type": "string", "format": "binary"}, **form_fields}
    schema = {"type": "object", "required": ["image"], "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field cannot be null, only left out: drop the ``null`` of an optional field."""
    choices = [choice for choice in schema.get("anyOf", []) if choice != {"type": "null"}]
    if len(choices) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key not in ("anyOf", "default")}
    return {**choices[0], **rest}


@router.post(
    "/upscale",
    status_code=202,
    response_model=JobView,
    responses=_UPLOAD_ERRORS,
    openapi_extra=_upload_body_schema(),
    summary="Upload an image and queue an upscale",
)
async def upscale(
    request: Request,
    gw: GatewayDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Answers 202 with the queued job and ``Location: /v1/jobs/{id}``."""
    submitted = await submit(
        gw,
        SubmitRequest(
            tenant=tenant,
            content_type=request.headers.get("content-type"),
            content_length=request.headers.get("content-length"),
            idempotency_key=idempotency_key,
            body=request.stream(),
        ),
    )
    view = await run_sync(_view, gw, tenant, submitted.job_id)
    headers = {"Location": _job_path(submitted.job_id)}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("/jobs/{job_id}", response_model=JobView, summary="A job's status and result")
def get_job(job_id: str, gw: GatewayDep, tenant: TenantDep) -> JobView:
    return _view(gw, tenant, job_id)


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=JobView,
    responses={409: {"description": "Already finished or expired.", **_PROBLEM}},
    summary="Cancel a queued or running job",
)
def delete_job(job_id: str, gw: GatewayDep, tenant: TenantDep) -> JobView:
    _, job = owned_job(gw, tenant, job_id)
    cancel_job(gw, job_id, job)
    return _view(gw, tenant, job_id)


@router.get(
    "/jobs/{job_id}/result",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        307: {"description": "Redirect to a presigned object-storage URL."},
        409: {"description": "The job has no result (yet).", **_PROBLEM},
    },
    summary="The upscaled image",
)
def get_result(job_id: str, gw: GatewayDep, tenant: TenantDep) -> Response:
    record, job = owned_job(gw, tenant, job_id)
    view = job_view(gw, job_id, record, job, result_url=_result_path(job_id))
    if view.status is JobStatus.EXPIRED:
        raise NotFoundError(f"job {job_id} has expired; its result is gone")
    if job is None or view.status is not JobStatus.SUCCEEDED or view.output is None:
        raise ConflictError(f"job {job_id} is {view.status}; there is no result")
    key = job.meta[META_OUTPUT]["key"]
    url = gw.storage.url(key, gw.settings.presigned_url_ttl_s)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    chunks = gw.storage.stream(key)
    filename = f"{job_id}.{key.rsplit('.', 1)[-1]}"
    headers = {
        "Content-Length": str(view.output.bytes),
        "Content-Disposition": f'inline; filename="{filename}"',
        "Cache-Control": "private, max-age=3600",
    }
    return StreamingResponse(
        chunks, media_type=content_type_for(view.output.format), headers=headers
    )


@router.get("/engines", response_model=EngineCatalog, summary="Engines the workers serve")
def get_engines(gw: GatewayDep, tenant: TenantDep) -> EngineCatalog:
    return read_engines(gw.redis)


def _view(gw: Gateway, tenant: str, job_id: str) -> JobView:
    record, job = owned_job(gw, tenant, job_id)
    return job_view(gw, job_id, record, job, result_url=_result_path(job_id))


def _job_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def _result_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/result"
