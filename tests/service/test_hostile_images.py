"""The hostile corpus (tests/hostile_images.py) through the real API and a real worker.

Every upload gets an answer within the client's timeout (no hang): 202, or a 4xx
problem+json; never a 5xx. The gateway checks headers only, so some damaged files are
accepted; each of those then goes through a real ``megasr worker`` (the full decode) and must
end succeeded, or failed with a 4xx problem naming the input, with the worker still alive.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hostile_images import corpus
from loopback import wait_until
from service_support import KEY_A, WorkerProcess, worker_env

PROBLEM = "application/problem+json"
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
CASES = corpus()


@pytest.fixture
def stack(start_gateway, tmp_path):
    gateway = start_gateway(
        queue_name="hostile", max_jobs_in_flight=0, max_queue_depth=0, rate_limit_per_minute=0
    )
    limits = {
        "MEGASR_MAX_UPLOAD_BYTES": str(gateway.settings.max_upload_bytes),
        "MEGASR_MAX_INPUT_PIXELS": str(gateway.settings.max_input_pixels),
        "MEGASR_MAX_RETRIES": "0",
        "MEGASR_CPU_THREADS": "1",  # tiny tiles: a second thread only spins on a busy CPU
    }
    env = worker_env(gateway.settings.redis_url, gateway.settings.data_dir, "hostile", **limits)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        yield gateway, worker.wait_ready()
    finally:
        worker.stop()


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # damaged TIFFs
def test_the_hostile_corpus_gets_no_5xx_no_crash_no_hang(stack) -> None:
    gateway, worker = stack
    answers: dict[str, int] = {}
    accepted: dict[str, str] = {}
    for name, data, filename in CASES:
        response = gateway.http.post(
            "/v1/upscale",
            headers=KEY_A,
            files={"image": (filename, data, "application/octet-stream")},
            data={"scale": "2"},
        )  # the client's 30 s timeout fails the test on a hang
        answers[name] = response.status_code
        if response.status_code == 202:
            accepted[name] = response.json()["id"]
            continue
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.headers["content-type"] == PROBLEM, name
        body = response.json()
        assert body["status"] == response.status_code and body["type"].startswith("urn:megasr")
        assert body["title"] and body["detail"], name

    def job(job_id: str) -> dict:
        return gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A).json()

    wait_until(
        lambda: all(job(job_id)["status"] in TERMINAL for job_id in accepted.values()),
        "every accepted job to end",
        timeout_s=240,
    )
    outcomes = {name: job(job_id) for name, job_id in accepted.items()}
    for name, view in outcomes.items():
        assert view["status"] in ("succeeded", "failed"), (name, view["status"])
        if view["status"] == "failed":
            assert 400 <= view["error"]["status"] < 500, (name, view["error"])
    assert worker.process.poll() is None, "the worker died"

    refused = Counter(status for status in answers.values() if status != 202)
    ended = Counter(view["status"] for view in outcomes.values())
    print(f"\nhostile corpus: {len(CASES)} cases; refused by the gateway {dict(refused)}; ")
    print(f"accepted {len(accepted)}, then {dict(ended)} in the worker")
    assert len(CASES) >= 90
    assert refused[413] >= 5 and refused[415] >= 3 and refused[400] >= 20
    assert ended["succeeded"] >= 10  # animations, 16-bit, CMYK ... do go through
