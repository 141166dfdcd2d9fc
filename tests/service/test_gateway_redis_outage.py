"""Redis stopped under a running gateway: 503 problem+json, then service again once it is back."""

from __future__ import annotations

from service_support import KEY_A, Gateway

from megasr.queue import EmbeddedRedis


def test_redis_down_is_503_and_the_gateway_recovers(make_settings, tmp_path, photo):
    with EmbeddedRedis(tmp_path / "own-redis") as redis:
        gateway = Gateway(make_settings(redis_url=redis.url)).start()
        try:
            files = {"image": ("photo.png", photo, "image/png")}
            job_id = gateway.http.post("/v1/upscale", files=files, headers=KEY_A).json()["id"]

            redis.stop()
            down = gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A)
            submit_down = gateway.http.post("/v1/upscale", files=files, headers=KEY_A)
            not_ready = gateway.http.get("/readyz")
            alive = gateway.http.get("/healthz")
            redis.start()  # same port, same data directory
            back = gateway.http.get(f"/v1/jobs/{job_id}", headers=KEY_A)
            ready = gateway.http.get("/readyz")
        finally:
            gateway.stop()

    for response in (down, submit_down):
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"].isdigit()
        assert "Redis" in response.json()["detail"]
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"].startswith("failed")
    assert not_ready.json()["checks"]["storage"] == "ok"
    assert alive.status_code == 200
    assert back.status_code == 200
    assert back.json()["status"] == "queued"  # the job survived the restart
    assert ready.status_code == 200
