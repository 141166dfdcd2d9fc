"""The mutation fuzzer (tests/multipart_fuzz.py) against a real gateway process on loopback:
a few hundred generated uploads, every answer checked. The long run is
``bench/edge_fuzz.py``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multipart_fuzz import CASES_PER_BATCH, Tally, cases, fuzz_gateway, run_batch, small_png

from megasr.queue import EmbeddedRedis

BATCHES = 40


@pytest.fixture(scope="module")
def fuzzed_gateway(redis_server: EmbeddedRedis, tmp_path_factory) -> Iterator[tuple[int, Path]]:
    root = Path(tmp_path_factory.mktemp("edge-fuzz"))
    with fuzz_gateway(redis_server.url, root, queue="edge-fuzz") as gateway:
        yield gateway, root / "data" / "objects"


def test_mutated_uploads_get_no_5xx_no_hang_and_only_problem_refusals(fuzzed_gateway):
    gateway, objects = fuzzed_gateway
    image = small_png()
    tally = Tally()

    @given(batch=st.lists(cases(image), min_size=CASES_PER_BATCH, max_size=CASES_PER_BATCH))
    @settings(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(batch) -> None:
        assert run_batch(gateway.port, batch, objects, tally) == []

    check()
    print(f"edge fuzz: {tally.cases} cases, answers {dict(tally.statuses)}")
    assert tally.cases >= BATCHES * CASES_PER_BATCH
    assert gateway.process.poll() is None
    # The run reached the outcomes it is about, not one kind of answer only.
    assert tally.statuses[202] and tally.statuses[400] and tally.statuses[422]
    assert tally.kinds["malformed-request"] and tally.kinds["request-timeout"]
