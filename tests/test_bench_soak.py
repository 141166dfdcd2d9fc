"""The memory soak benchmark end to end on 20 jobs: real Redis, gateway and worker processes
on loopback, the tiny test engine; the table's shape, the counts and the verdict are checked,
never a memory figure (what the allocator keeps varies from run to run)."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import psutil
import pytest


@pytest.fixture(scope="module")
def bench(repo_root):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo_root / "bench"))  # its sibling modules, as when run
        yield importlib.import_module("soak_memory")


@pytest.fixture(scope="module")
def run(bench):
    """``main`` on 20 jobs: its exit status, its output, and the child processes it left."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = bench.main(
            ["--jobs", "20", "--in-flight", "5", "--warmup", "10", "--sample-every", "5"]
        )
    after = {child.pid for child in psutil.Process().children(recursive=True)}
    return status, output.getvalue(), after - before


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_every_job_succeeds_and_the_table_samples_after_warm_up(bench, run):
    status, text, _ = run
    assert status == 0, text
    assert "jobs: 20 submitted, 20 succeeded, 0 did not; 4 results downloaded" in text
    rows = table_rows(text)
    assert rows[0] == list(bench.TABLE_COLUMNS)
    body = rows[2:]
    assert [row[0] for row in body] == ["0", "10", "15", "20"]
    for row in body:
        gateway_rss, gateway_peak, worker_rss, worker_peak = (float(cell) for cell in row[1:5])
        assert 0 < gateway_rss <= gateway_peak and 0 < worker_rss <= worker_peak
    assert [float(row[5]) for row in body] == sorted(float(row[5]) for row in body)


def test_the_summary_gives_each_process_growth_and_verdict(run):
    _, text, _ = run
    for process in ("gateway", "worker"):
        line = re.search(
            rf"^{process} from 10 to 20 jobs: RSS [+-]\d+\.\d MiB \(\d\.\d{{3}}x\), "
            r"peak [+-]\d+\.\d MiB \(\d\.\d{3}x\): (NOT )?flat \(bound: peak growth under "
            r"10 MiB or 5% of the peak after warm-up\)$",
            text,
            re.MULTILINE,
        )
        assert line is not None, text


def test_redis_the_gateway_and_the_worker_are_gone_afterwards(run):
    _, _, left = run
    assert left == set()


def test_a_steady_climb_is_not_flat_and_allocator_noise_is(bench):
    config = bench.SoakConfig(jobs=300, warmup=100)
    large_worker = ((100, 1000.0), (300, 1040.0))

    def soak(gateway: list[float]) -> object:
        samples = [
            bench.Sample(jobs, rss, rss, 300.0, 300.0, float(jobs))
            for jobs, rss in zip((0, 100, 200, 300), gateway, strict=True)
        ]
        return bench.Soak(config, samples)

    leaking = soak([80.0, 90.0, 102.0, 114.0])  # 12 MiB per 100 jobs after warm-up
    noisy = soak([80.0, 90.0, 96.0, 96.0])
    assert leaking.baseline.jobs == 100
    assert leaking.growth("gateway") == pytest.approx((24.0, 114 / 90))
    assert not leaking.is_flat("gateway") and leaking.is_flat("worker")
    assert noisy.is_flat("gateway")
    # the RSS of the moment dipping at the baseline is not growth; the peak decides
    dipped = bench.Soak(
        config,
        [
            bench.Sample(100, 90, 90, 290.0, 317.0, 0.0),
            bench.Sample(300, 90, 90, 322.0, 322.0, 0.0),
        ],
    )
    assert dipped.growth("worker", "rss")[0] == pytest.approx(32.0) and dipped.is_flat("worker")
    # a large process may move by its 5 % without a leak
    before, after = (bench.Sample(jobs, 90, 90, rss, rss, 0.0) for jobs, rss in large_worker)
    large = bench.Soak(config, [before, after])
    assert large.is_flat("worker") and large.growth("worker")[0] == pytest.approx(40.0)


def test_samples_are_taken_idle_after_warm_up_and_at_the_end(bench):
    points = bench.sample_points(bench.SoakConfig(jobs=1000, warmup=100, sample_every=100))
    assert points == [0, *range(100, 1001, 100)]
    assert bench.sample_points(bench.SoakConfig(jobs=25, warmup=10, sample_every=10)) == [
        0,
        10,
        20,
        25,
    ]
