"""Which queue a submit lands on, as workers announce, load and serve engines: over real HTTP
against a real Redis, with the workers' announcements written as a worker writes them."""

from __future__ import annotations

from service_support import KEY_A

from megasr.client import Client
from megasr.engine_catalog import CATALOG
from megasr.engine_status import EngineState, publish_engines
from megasr.queue import AUTO_QUEUE

LOADING, READY, FAILED = EngineState.LOADING, EngineState.READY, EngineState.FAILED
ANIME_VIDEO = ["realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesr-animevideov3-x4"]


def submit(gateway, photo: bytes, **fields):
    data = {key: str(value) for key, value in fields.items()}
    files = {"image": ("photo.png", photo, "image/png")}
    return gateway.http.post("/v1/upscale", files=files, data=data, headers=KEY_A)


def queue_of(gateway, job_id: str) -> str:
    """The engine whose queue holds ``job_id``."""
    queues = gateway.app.state.gateway.queues
    (engine,) = [q.name.rsplit(":", 1)[1] for q in queues.all() if job_id in q.job_ids]
    return engine


def test_uploads_are_queued_while_the_only_worker_is_loading(gateway, photo):
    """A loading worker has no default yet: ``auto`` waits for whichever default comes."""
    publish_engines(gateway.redis, "w1", {"realesrgan-x4plus": LOADING}, ttl_s=60)

    auto = submit(gateway, photo)
    named = submit(gateway, photo, engine="realesrgan-x4plus")
    unknown = submit(gateway, photo, engine="nope")

    assert auto.status_code == 202, auto.text
    assert queue_of(gateway, auto.json()["id"]) == AUTO_QUEUE
    assert named.status_code == 202, named.text
    assert queue_of(gateway, named.json()["id"]) == "realesrgan-x4plus"
    assert unknown.status_code == 422
    detail = unknown.json()["detail"]
    assert detail == "engine 'nope' is not served here; choose one of auto, realesrgan-x4plus"


def test_uploads_are_queued_before_any_worker_announced_itself(gateway, photo):
    auto = submit(gateway, photo)
    anime = submit(gateway, photo, engine="realesr-animevideov3", scale=3)

    assert queue_of(gateway, auto.json()["id"]) == AUTO_QUEUE
    assert queue_of(gateway, anime.json()["id"]) == "realesr-animevideov3-x3"


def test_a_family_runs_on_its_variant_for_the_scale_asked(gateway, photo):
    publish_engines(
        gateway.redis,
        "w1",
        {"realesrgan-x4plus": READY, **dict.fromkeys(ANIME_VIDEO, READY)},
        ttl_s=60,
        default="realesrgan-x4plus",
    )

    jobs = {
        (engine, size): submit(gateway, photo, engine=engine, **dict([size])).json()["id"]
        for engine, size in [
            ("realesr-animevideov3", ("scale", 2)),
            ("realesr-animevideov3", ("scale", 2.5)),
            ("realesr-animevideov3", ("width", 96 * 4)),
            ("auto", ("scale", 2)),  # the photo model at every scale
            ("realesr-animevideov3-x4", ("scale", 2)),  # a variant named is a variant run
        ]
    }

    assert [queue_of(gateway, job_id) for job_id in jobs.values()] == [
        "realesr-animevideov3-x2",
        "realesr-animevideov3-x3",
        "realesr-animevideov3-x4",
        "realesrgan-x4plus",
        "realesr-animevideov3-x4",
    ]
    listing = gateway.http.get("/v1/engines", headers=KEY_A).json()
    assert listing["default"] == "realesrgan-x4plus"
    assert listing["engines"] == [
        {
            "name": "realesr-animevideov3",
            "description": CATALOG["realesr-animevideov3"].description,
            "state": "ready",
            "workers": 1,
            "detail": None,
            "variants": ANIME_VIDEO,
        },
        {
            "name": "realesrgan-x4plus",
            "description": CATALOG["realesrgan-x4plus"].description,
            "state": "ready",
            "workers": 1,
            "detail": None,
            "variants": None,
        },
    ]


def test_a_family_is_ready_on_a_worker_once_all_its_variants_are(gateway):
    states = {ANIME_VIDEO[0]: READY, ANIME_VIDEO[1]: LOADING, ANIME_VIDEO[2]: LOADING}
    publish_engines(gateway.redis, "w1", states, ttl_s=60)

    (entry,) = gateway.http.get("/v1/engines", headers=KEY_A).json()["engines"]
    assert (entry["name"], entry["state"], entry["workers"]) == (
        "realesr-animevideov3",
        "loading",
        0,
    )


def test_an_engine_that_failed_everywhere_is_503_with_the_reason(gateway, photo):
    publish_engines(
        gateway.redis, "w1", {"realsr-df2k": FAILED}, ttl_s=60, details={"realsr-df2k": "no wheel"}
    )

    failed = submit(gateway, photo, engine="realsr-df2k")
    other = submit(gateway, photo, engine="realesrgan-x4plus")

    assert failed.status_code == 503
    assert (
        failed.json()["detail"] == "engine 'realsr-df2k' failed to load on every worker: no wheel"
    )
    assert other.status_code == 422
    assert other.json()["detail"] == "engine 'realesrgan-x4plus' is not served here, nor any other"


def test_the_python_client_lists_and_picks_engines(gateway, photo):
    publish_engines(gateway.redis, "w1", dict.fromkeys(ANIME_VIDEO, READY), ttl_s=60)

    with Client(gateway.url, api_key="key-a") as client:
        (engine,) = client.engines().engines
        job = client.submit(photo, engine="realesr-animevideov3", scale=3)

    assert engine.name == "realesr-animevideov3" and engine.variants == ANIME_VIDEO
    assert engine.description == CATALOG["realesr-animevideov3"].description
    assert job.params["engine"] == "realesr-animevideov3"
    assert queue_of(gateway, job.id) == "realesr-animevideov3-x3"
