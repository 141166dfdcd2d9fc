"""The gateway's security promises over real HTTP: headers on every answer, tenants kept
apart on every job route, no secret in the logs, no 500 when a client hangs up."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
from loopback import wait_until
from prometheus_client.parser import text_string_to_metric_families
from rq.job import Job
from service_support import KEY_A, KEY_B, Gateway, create_bucket

from megasr.jobs import META_OUTPUT
from megasr.queue import JOB_SERIALIZER
from megasr.storage import output_key

COMMON = {"x-content-type-options": "nosniff", "x-frame-options": "DENY"}


def submit(gateway: Gateway, photo: bytes, headers=KEY_A):
    files = {"image": ("photo.png", photo, "image/png")}
    return gateway.http.post("/v1/upscale", files=files, headers=headers)


def assert_common_headers(response) -> str:
    for name, value in COMMON.items():
        assert response.headers[name] == value, (response.request.url, name)
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    return policy


def test_the_web_page_has_a_strict_content_security_policy(gateway) -> None:
    policy = assert_common_headers(gateway.http.get("/"))

    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"  # local storage: results come from here


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/engines", 200),
        ("GET", "/v1/jobs/nothing-here", 404),
        ("POST", "/v1/upscale", 422),
        ("GET", "/healthz", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/no-such-route", 404),
        ("PUT", "/v1/engines", 405),
    ],
)
def test_every_answer_carries_the_headers(gateway, method, path, status) -> None:
    response = gateway.http.request(method, path, headers=KEY_A)

    assert response.status_code == status
    assert assert_common_headers(response).startswith("default-src 'none'")
    assert "strict-transport-security" not in response.headers  # plain HTTP


def test_hsts_goes_with_https_answers_when_configured(start_gateway) -> None:
    gateway = start_gateway(hsts_max_age_s=31536000)
    behind_tls = {"X-Forwarded-Proto": "https"}  # what a TLS-terminating proxy sends

    assert gateway.http.get("/healthz", headers=behind_tls).headers[
        "strict-transport-security"
    ] == ("max-age=31536000")
    assert "strict-transport-security" not in gateway.http.get("/healthz").headers


def test_the_page_may_fetch_results_from_the_object_store(start_gateway) -> None:
    gateway = start_gateway(
        storage_backend="s3",
        s3_endpoint_url="http://seaweedfs:8333",
        s3_public_endpoint_url="https://images.example.test:9443",
    )
    policy = gateway.http.get("/").headers["content-security-policy"]
    assert "connect-src 'self' https://images.example.test:9443;" in policy


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/result")])
def test_another_tenants_job_is_not_found_on_every_route(gateway, photo, method, suffix):
    job_id = submit(gateway, photo).json()["id"]

    theirs = gateway.http.request(method, f"/v1/jobs/{job_id}{suffix}", headers=KEY_B)
    unknown = gateway.http.request(method, f"/v1/jobs/{uuid.uuid4().hex}{suffix}", headers=KEY_B)
    anonymous = gateway.http.request(method, f"/v1/jobs/{job_id}{suffix}")

    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"] == f"no job {job_id}"  # the same as for no job at all
    assert anonymous.status_code == 401
    assert gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A).json()["status"] == "queued"


def test_keys_and_presigned_urls_never_reach_the_logs(
    make_settings, s3_endpoint, photo, caplog
) -> None:
    key = "sk-live-" + uuid.uuid4().hex
    settings = make_settings(
        api_keys={key: "tenant-a"},
        storage_backend="s3",
        s3_bucket=f"logs-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test-secret-access-key",
    )
    caplog.set_level(logging.INFO)
    gateway = Gateway(settings, access_log=True)
    create_bucket(gateway.app.state.gateway.storage)
    gateway.start()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        job_id = submit(gateway, photo, headers=auth).json()["id"]
        finish_as_a_worker_would(gateway, job_id, photo)
        redirect = gateway.http.get(f"/v1/jobs/{job_id}/result", headers=auth)
        gateway.http.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": key})
        gateway.http.get("/v1/engines", headers={"X-API-Key": key + "-wrong"})
    finally:
        gateway.stop()

    presigned = redirect.headers["location"]
    assert redirect.status_code == 307 and "X-Amz-Signature=" in presigned
    logged = caplog.text
    assert f"/v1/jobs/{job_id}/result" in logged  # the access log did run
    for secret in (key, presigned, presigned.split("X-Amz-Signature=")[1], "test-secret"):
        assert secret not in logged


def finish_as_a_worker_would(gateway: Gateway, job_id: str, data: bytes) -> None:
    """Store a result and mark the job finished through RQ, as a worker does (no worker runs
    in this test: it is about what the gateway logs)."""
    key = output_key(job_id, "png")
    gateway.app.state.gateway.storage.put(key, data, "image/png")
    job = Job.fetch(job_id, connection=gateway.redis, serializer=JOB_SERIALIZER)
    job.meta[META_OUTPUT] = {
        "width": 96, "height": 64, "format": "png", "bytes": len(data), "key": key,
    }  # fmt: skip
    job.save_meta()
    job.set_status("finished")


def test_a_client_that_hangs_up_mid_upload_gets_no_500_and_stores_nothing(gateway, photo):
    boundary = "cut-short"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
            + f"Content-Length: {len(head) + len(photo) + 64}\r\n\r\n".encode()
            + head
            + photo[: len(photo) // 2]
        )

    def statuses() -> dict[str, float]:
        text = gateway.http.get("/metrics").text
        return {
            sample.labels["status"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "megasr_http_requests"
            for sample in family.samples
            if sample.labels.get("route") == "/v1/upscale" and sample.name.endswith("_total")
        }

    wait_until(lambda: statuses(), "the cut request to be counted")
    assert statuses() == {"400": 1.0}
    assert len(gateway.queued()) == 0
    objects = gateway.settings.data_dir / "objects"
    assert not objects.exists() or not any(objects.rglob("*.*"))
