"""A worker serves at once and swaps a background compile in without failing or repeating
a job (issue 18, "serve at once").

A real ``megasr worker`` process on a real Redis runs :class:`GatedTinyRealESRGAN` with the
default backend (``auto``): it is ready, and takes jobs, while its inductor package builds in
a child process that the test holds at a gate. Jobs run eagerly; the test opens the gate
and sends more while the compile ends, then more once the package is on disk, which the
first engine call after it swaps in. The test reads the events from the worker's log, its
metrics and the package file, never from the clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from rq.job import JobStatus
from tiny_realesrgan import GATE_ENV, TinyRealESRGAN
from worker_support import Cluster, WorkerProcess, value, wait_for

from megasr.embedded_redis import EmbeddedRedis
from megasr.model.upscaler import plan_image_tiles
from megasr.settings import Settings
from megasr.worker.upscale_job import TILE_BUCKET

ENGINE = "tiny-realesrgan"
COMPILE_DEADLINE_S = 900.0  # a real compile of the tiny network on a busy 2-core machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("background-compile")
    with EmbeddedRedis(root / "redis") as redis:
        yield Cluster(root, redis)


def log_text(worker: WorkerProcess, cluster: Cluster) -> str:
    return (cluster.root / f"{worker.name}.log").read_text(errors="replace")


def test_a_background_compile_swaps_in_without_failing_or_repeating_a_job(
    cluster: Cluster, coffee: np.ndarray, tmp_path: Path
) -> None:
    gate = tmp_path / "compile-gate"
    gate.touch()
    packages = tmp_path / "cache" / "compiled"
    env = {
        "MEGASR_WORKER_ENGINES": json.dumps(["tiny_realesrgan:GatedTinyRealESRGAN"]),
        "MEGASR_BACKEND": "auto",
        "MEGASR_DTYPE": "float32",  # compiled, within one 8-bit level of eager float32
        "MEGASR_CACHE_DIR": str(packages.parent),
        "MEGASR_TILE": "32",
        GATE_ENV: str(gate),
    }
    photos = [np.ascontiguousarray(coffee[100 + 8 * i : 140 + 8 * i, 200:248]) for i in range(3)]
    worker = WorkerProcess(cluster, "compile", "compile-worker", env=env)

    def run(pixels: np.ndarray) -> str:
        return cluster.submit_one("compile", cluster.payload(pixels, engine=ENGINE)).id

    def finish(job_ids: list[str]) -> None:
        for job_id in job_ids:
            cluster.wait_status(job_id, JobStatus.FINISHED, JobStatus.FAILED)

    try:
        worker.wait_ready()  # ready while its compile is held at the gate
        log = log_text(worker, cluster)
        assert "compiling float32 with inductor in the background" in log
        assert "taking jobs while inductor compiles in the background" in log
        eager = [run(p) for p in photos]
        finish(eager)
        assert not packages.exists() and "swapped in" not in log_text(worker, cluster)

        gate.unlink()  # the compile may end now, while these jobs run
        overlapping = [run(p) for p in photos]
        wait_for(lambda: list(packages.glob("*.pt2")), "the package", COMPILE_DEADLINE_S)
        compiled = [run(p) for p in photos]  # the first engine call swaps the package in
        finish(overlapping + compiled)
        metrics = worker.metrics()
    finally:
        worker.stop()

    job_ids = eager + overlapping + compiled
    assert [cluster.status(j) for j in job_ids] == [JobStatus.FINISHED] * len(job_ids)
    spec = TinyRealESRGAN(Settings(tile=32)).tile_spec
    tiles_each = [len(plan_image_tiles(40, 48, spec, fit=True, bucket=TILE_BUCKET))] * 3
    ran = value(metrics, "megasr_tiles_processed_total", engine=ENGINE)
    assert ran == 3 * sum(tiles_each)  # every job's tiles ran once: none failed or repeated
    assert value(metrics, "megasr_jobs_finished_total", engine=ENGINE, status="retried") == 0
    log = log_text(worker, cluster)
    assert log.count("inductor ready after") == 1 and "swapped in" in log
    assert "staying eager" not in log
    for before, after in zip(eager, compiled, strict=True):
        difference = cluster.output(cluster.job(before)) - cluster.output(cluster.job(after))
        assert np.abs(difference).max() <= 1  # eager and compiled float32: one 8-bit level
