"""The v1 API over real HTTP, against a real Redis: submissions, refusals, tenants,
idempotency, cancel, limits and the problem+json shape of every error."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from rq.job import Job
from rq.job import JobStatus as RQStatus
from service_support import KEY_A, KEY_B, png_bytes, wait_until

from megasr.cancellation import is_cancel_requested
from megasr.jobs import UpscaleParams
from megasr.queue import JOB_SERIALIZER
from megasr.service import idempotency
from megasr.service.views import public_status

PROBLEM = "application/problem+json"


def submit(gateway, image: bytes, headers=KEY_A, **fields):
    data = {key: str(value) for key, value in fields.items()}
    files = {"image": ("photo.png", image, "image/png")}
    return gateway.http.post("/v1/upscale", files=files, data=data, headers=headers)


def assert_problem(response, status: int, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if kind is not None:
        assert body["type"] == f"urn:megasr:problem:{kind}"
    return body


def test_submit_queues_a_job_with_its_parameters(gateway, photo):
    response = submit(gateway, photo, scale=2)

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["queue_position"] == 0
    assert job["input"] == {"width": 96, "height": 64, "format": "png"}
    assert job["params"]["scale"] == 2.0
    assert job["params"]["output_format"] == "png"  # the input's format
    assert job["params"]["engine"] == "auto"
    assert len(job["id"]) >= 20
    assert gateway.queued() == [job["id"]]

    second = submit(gateway, photo, width=200, output_format="webp").json()
    again = gateway.http.get(f"/v1/jobs/{second['id']}", headers=KEY_A).json()
    assert again["queue_position"] == 1
    assert again["params"]["width"] == 200
    assert again["params"]["scale"] is None
    assert again["params"]["output_format"] == "webp"

    stored = gateway.app.state.gateway.storage.get(f"inputs/{job['id']}/input.png")
    assert stored == photo


def test_job_payload_matches_the_worker_contract(gateway, photo):
    job_id = submit(gateway, photo, scale=3).json()["id"]

    job = Job.fetch(job_id, connection=gateway.redis, serializer=JOB_SERIALIZER)
    (payload,) = job.args
    assert job.func_name == "megasr.worker.tasks.upscale"
    assert payload["job_id"] == job_id
    assert payload["tenant"] == "tenant-a"
    assert payload["input_key"] == f"inputs/{job_id}/input.png"
    assert payload["input"] == {"width": 96, "height": 64, "format": "png"}
    assert payload["params"]["scale"] == 3.0
    assert job.retries_left == gateway.settings.max_retries
    assert job.result_ttl == gateway.settings.result_ttl_s


def test_not_an_image_is_400(gateway):
    assert_problem(submit(gateway, b"this is plain text, not pixels"), 400, "invalid-image")


def test_truncated_image_is_400(gateway, photo):
    assert_problem(submit(gateway, photo[: len(photo) // 2]), 400, "invalid-image")


def test_unsupported_format_is_415(gateway, coffee):
    buffer = io.BytesIO()
    Image.fromarray(coffee[:32, :32]).save(buffer, "PCX")
    assert_problem(submit(gateway, buffer.getvalue()), 415, "unsupported-format")


def test_too_many_bytes_is_413(gateway):
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = png_bytes(noise)  # incompressible: well over the 300 kB limit
    assert len(big) > gateway.settings.max_upload_bytes
    assert_problem(submit(gateway, big), 413, "image-too-large")


def test_too_many_bytes_without_content_length_is_413(gateway):
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(40):
            yield b"\0" * 16384
        yield f"\r\n--{boundary}--\r\n".encode()

    response = gateway.http.post(
        "/v1/upscale",
        content=body(),
        headers={**KEY_A, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(response, 413, "image-too-large")


def test_too_many_pixels_is_413(start_gateway, photo):
    gateway = start_gateway(max_input_pixels=5000)  # the photo has 6144
    assert_problem(submit(gateway, photo), 413, "image-too-large")


def test_output_over_the_pixel_limit_is_413(start_gateway, photo):
    gateway = start_gateway(max_output_pixels=100_000)  # 8x the photo is 393,216 pixels
    assert_problem(submit(gateway, photo, scale=8), 413, "image-too-large")


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"scale": 9}, "scale"),
        ({"scale": "big"}, "scale"),
        ({"scale": 2, "width": 100}, "scale or width"),
        ({"output_format": "gif"}, "output_format"),
        ({"quality": 0}, "quality"),
        ({"color_fix": "sepia"}, "color_fix"),
        ({"webhook_url": "not a url"}, "webhook_url"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_fields_are_422(gateway, photo, fields, names):
    body = assert_problem(submit(gateway, photo, **fields), 422, "invalid-parameter")
    assert names in body["detail"]
    assert len(gateway.queued()) == 0


def test_a_form_without_an_image_is_422(gateway):
    response = gateway.http.post("/v1/upscale", data={"scale": "2"}, files={}, headers=KEY_A)
    assert_problem(response, 422, "invalid-parameter")


def test_an_engine_no_worker_serves_is_422(gateway, photo):
    from megasr.engine_status import EngineState, publish_engines

    publish_engines(gateway.redis, "w1", {"realesrgan-x4plus": EngineState.READY}, ttl_s=60)

    body = assert_problem(submit(gateway, photo, engine="nope"), 422, "invalid-parameter")
    assert "realesrgan-x4plus" in body["detail"]
    assert submit(gateway, photo, engine="realesrgan-x4plus").status_code == 202
    engines = gateway.http.get("/v1/engines", headers=KEY_A).json()
    assert [(e["name"], e["state"], e["workers"]) for e in engines["engines"]] == [
        ("realesrgan-x4plus", "ready", 1)
    ]


def test_api_keys_are_required_and_checked(gateway, photo):
    missing = assert_problem(submit(gateway, photo, headers={}), 401, "unauthorized")
    assert "API key" in missing["detail"]
    unknown = submit(gateway, photo, headers={"Authorization": "Bearer nope"})
    assert_problem(unknown, 401, "unauthorized")
    assert unknown.headers["www-authenticate"].startswith("Bearer")
    assert len(gateway.queued()) == 0


def test_another_tenants_job_is_404(gateway, photo):
    job_id = submit(gateway, photo, headers=KEY_A).json()["id"]

    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ]:
        assert_problem(gateway.http.request(method, path, headers=KEY_B), 404, "not-found")
    assert gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A).status_code == 200
    assert len(gateway.queued()) == 1  # B's DELETE canceled nothing


def test_unknown_job_is_404(gateway):
    assert_problem(gateway.http.get("/v1/jobs/nothing-here", headers=KEY_A), 404, "not-found")


def test_same_idempotency_key_gives_one_job(gateway, photo):
    headers = {**KEY_A, "Idempotency-Key": "order-42"}
    first = submit(gateway, photo, headers=headers, scale=2)
    second = submit(gateway, photo, headers=headers, scale=2)

    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len(gateway.queued()) == 1

    other = submit(gateway, photo, headers=headers, scale=3)
    body = assert_problem(other, 422, "invalid-parameter")
    assert "Idempotency-Key" in body["detail"]

    # Keys are per tenant: B's "order-42" is B's own.
    other_tenant = submit(gateway, photo, headers={**KEY_B, "Idempotency-Key": "order-42"})
    assert other_tenant.json()["id"] != first.json()["id"]
    assert len(gateway.queued()) == 2


def test_an_accepted_idempotency_key_is_kept_for_the_retention(gateway, photo):
    submit(gateway, photo, headers={**KEY_A, "Idempotency-Key": "kept"})

    ttl = gateway.redis.ttl(idempotency.idempotency_key("tenant-a", "kept"))
    assert gateway.settings.result_ttl_s - 60 < ttl <= gateway.settings.result_ttl_s


def test_a_crashed_submissions_claim_lapses_within_seconds(gateway, photo):
    """A gateway that died mid-submission leaves a claim and no job: 409 until the claim's
    short TTL lapses, then the key is free again."""
    name = idempotency.idempotency_key("tenant-a", "crashed")
    same = idempotency.fingerprint(photo, UpscaleParams.parse({}).model_dump(mode="json"))
    idempotency.claim(gateway.redis, "tenant-a", "crashed", same, "gone", idempotency.CLAIM_TTL_S)
    headers = {**KEY_A, "Idempotency-Key": "crashed"}

    assert_problem(submit(gateway, photo, headers=headers), 409, "conflict")
    assert 0 < gateway.redis.pttl(name) <= idempotency.CLAIM_TTL_S * 1000
    gateway.redis.delete(name)  # what the TTL does
    assert submit(gateway, photo, headers=headers).status_code == 202


def test_a_claim_is_renewed_while_its_submission_runs(gateway, monkeypatch):
    monkeypatch.setattr(idempotency, "CLAIM_TTL_S", 0.3)
    name = idempotency.idempotency_key("tenant-a", "slow")
    idempotency.claim(gateway.redis, "tenant-a", "slow", "fp", "job", idempotency.CLAIM_TTL_S)

    with idempotency.ClaimKeeper(gateway.redis, "tenant-a", "slow"):
        # Left to itself it lapses in 150 ms; the keeper renews it to 300 every 100 ms.
        gateway.redis.pexpire(name, 150)
        wait_until(lambda: gateway.redis.pttl(name) > 200, "a renewal")


def test_a_failed_submission_releases_its_claim_and_shows_no_path(start_gateway, photo, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage folder should be")
    gateway = start_gateway(data_dir=blocked)
    headers = {**KEY_A, "Idempotency-Key": "fails"}

    body = assert_problem(submit(gateway, photo, headers=headers), 503, "service-unavailable")

    assert str(tmp_path) not in json.dumps(body) and "/" not in body["detail"]
    assert not gateway.redis.exists(idempotency.idempotency_key("tenant-a", "fails"))
    assert len(gateway.queued()) == 0


def test_cancel_a_queued_job(gateway, photo):
    job_id = submit(gateway, photo).json()["id"]

    response = gateway.http.delete(f"/v1/jobs/{job_id}", headers=KEY_A)

    assert response.status_code == 202
    assert response.json()["status"] == "canceled"
    assert len(gateway.queued()) == 0
    job = Job.fetch(job_id, connection=gateway.redis, serializer=JOB_SERIALIZER)
    assert job.get_status() == RQStatus.CANCELED
    assert is_cancel_requested(gateway.redis, job_id)
    assert gateway.http.delete(f"/v1/jobs/{job_id}", headers=KEY_A).status_code == 202
    assert_problem(gateway.http.get(f"/v1/jobs/{job_id}/result", headers=KEY_A), 409, "conflict")


def test_a_job_rq_dropped_reads_expired(gateway, photo):
    job_id = submit(gateway, photo).json()["id"]
    Job.fetch(job_id, connection=gateway.redis, serializer=JOB_SERIALIZER).delete()

    assert gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A).json()["status"] == "expired"
    assert_problem(gateway.http.get(f"/v1/jobs/{job_id}/result", headers=KEY_A), 404)
    assert_problem(gateway.http.delete(f"/v1/jobs/{job_id}", headers=KEY_A), 409, "conflict")
    assert_problem(gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_B), 404)


@pytest.mark.parametrize(
    ("rq_status", "public"),
    [
        (RQStatus.QUEUED, "queued"),
        (RQStatus.SCHEDULED, "queued"),
        (RQStatus.DEFERRED, "queued"),
        (RQStatus.STARTED, "running"),
        (RQStatus.FINISHED, "succeeded"),
        (RQStatus.FAILED, "failed"),
        (RQStatus.STOPPED, "failed"),
        (RQStatus.CANCELED, "canceled"),
        (None, "expired"),
    ],
)
def test_rq_status_maps_to_public_status(rq_status, public):
    assert public_status(rq_status, cancel_requested=False) == public
    assert public_status(rq_status, cancel_requested=True) == "canceled"


def test_request_rate_limit_is_429_with_retry_after(start_gateway):
    gateway = start_gateway(rate_limit_per_minute=3)
    answers = [gateway.http.get("/v1/engines", headers=KEY_A) for _ in range(4)]

    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [a.headers["ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
    body = assert_problem(answers[3], 429, "rate-limited")
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60
    assert body["retry_after"] == int(answers[3].headers["retry-after"])
    assert gateway.http.get("/v1/engines", headers=KEY_B).status_code == 200  # B is apart


def test_jobs_in_flight_limit_frees_up_when_a_job_ends(start_gateway, photo):
    gateway = start_gateway(max_jobs_in_flight=1, busy_retry_after_s=7)
    first = submit(gateway, photo).json()["id"]

    refused = submit(gateway, photo)
    assert_problem(refused, 429, "rate-limited")
    assert refused.headers["retry-after"] == "7"
    assert submit(gateway, photo, headers=KEY_B).status_code == 202  # per tenant

    gateway.http.delete(f"/v1/jobs/{first}", headers=KEY_A)
    assert submit(gateway, photo).status_code == 202


def test_queue_depth_limit_is_429(start_gateway, photo):
    gateway = start_gateway(max_queue_depth=2)
    assert submit(gateway, photo).status_code == 202
    assert submit(gateway, photo, headers=KEY_B).status_code == 202
    refused = submit(gateway, photo)
    body = assert_problem(refused, 429, "rate-limited")
    assert "queue is full" in body["detail"]
    assert len(gateway.queued()) == 2


def test_unknown_routes_and_methods_are_problems(gateway):
    assert_problem(gateway.http.get("/v2/whatever"), 404)
    wrong = gateway.http.put("/v1/engines", headers=KEY_A)
    assert_problem(wrong, 405)
    assert wrong.headers["allow"] == "GET"


def test_health_and_readiness(gateway):
    assert gateway.http.get("/healthz").json() == {"status": "ok"}
    ready = gateway.http.get("/readyz").json()
    assert ready == {"status": "ready", "checks": {"redis": "ok", "storage": "ok"}}


def test_metrics_show_the_documented_names(gateway, photo):
    submit(gateway, photo)
    submit(gateway, b"garbage")
    gateway.http.get("/v1/jobs/nope", headers=KEY_A)

    text = gateway.http.get("/metrics").text

    assert 'megasr_http_requests_total{method="POST",route="/v1/upscale",status="202"} 1.0' in text
    assert 'megasr_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}' in text
    assert 'megasr_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text
    assert 'megasr_jobs_submitted_total{engine="auto",outcome="accepted"} 1.0' in text
    assert 'megasr_jobs_submitted_total{engine="auto",outcome="rejected"} 1.0' in text
    assert "megasr_queue_depth 1.0" in text
    assert "nope" not in text  # no raw paths, no job ids


def test_openapi_documents_the_v1_api(gateway):
    schema = gateway.http.get("/openapi.json").json()

    upload = schema["paths"]["/v1/upscale"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"]
    assert {"image", "scale", "width", "engine", "output_format"} <= set(form["properties"])
    assert {"202", "400", "413", "415", "422", "429", "503"} <= set(upload["responses"])
    assert set(schema["paths"]["/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert "/v1/jobs/{job_id}/result" in schema["paths"]
    assert "Problem" in schema["components"]["schemas"]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    assert "swagger" in gateway.http.get("/docs").text.lower()


def test_cors_allows_configured_origins_only(start_gateway):
    gateway = start_gateway(cors_origins=["http://app.example"])
    preflight = gateway.http.options(
        "/v1/upscale",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"

    simple = gateway.http.get("/v1/engines", headers={**KEY_A, "Origin": "http://app.example"})
    exposed = simple.headers["access-control-expose-headers"]
    assert "Location" in exposed and "Retry-After" in exposed and "RateLimit-Remaining" in exposed

    stranger = gateway.http.get("/v1/engines", headers={**KEY_A, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers


def test_web_page_is_served(gateway):
    page = gateway.http.get("/")
    assert page.status_code == 200
    assert 'id="file-input"' in page.text
    assert gateway.http.get("/static/app.js").status_code == 200


def test_the_page_has_an_icon_for_every_browser(gateway):
    page = gateway.http.get("/").text
    svg = gateway.http.get("/static/icon.svg")
    ico = gateway.http.get("/favicon.ico")

    assert '<link rel="icon" href="/static/icon.svg" type="image/svg+xml">' in page
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert ico.status_code == 200 and ico.headers["content-type"] == "image/x-icon"
    with Image.open(io.BytesIO(ico.content)) as icon:
        assert icon.format == "ICO" and {(16, 16), (32, 32), (48, 48)} <= icon.info["sizes"]
