"""Schemathesis against the gateway's ASGI app: requests generated from its own OpenAPI
document, valid and invalid, and every answer checked against that document.

Bounded: a few dozen cases per operation, all in-process over ASGI with a real Redis, so the
run takes seconds. One check is left out, with its reason: ``positive_data_acceptance``
expects every schema-valid request to succeed, but an upload's validity depends on what
OpenAPI cannot say (the image bytes must decode, ``scale`` excludes ``width``/``height``, a
``webhook_url`` must resolve to a public address), so a 4xx for such a request is right.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from service_support import API_KEYS, KEY_A

from megasr.service.app import create_app
from megasr.settings import Settings

CASES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def api_schema(redis_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    settings = Settings(
        redis_url=redis_server.url,
        data_dir=Path(tmp_path_factory.mktemp("fuzz")),
        api_keys=API_KEYS,
        queue_name="fuzz",
        max_upload_bytes=300_000,
        max_input_pixels=1_000_000,
        rate_limit_per_minute=0,
        max_jobs_in_flight=0,
        max_queue_depth=0,
    )
    app = create_app(settings)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        app.state.gateway.close()


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_answers_as_documented_and_never_5xx(api_schema) -> None:
    labels, cases = [], []
    for operation in operations(api_schema):
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=CASES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            cases.append(case.operation.label)
            case.call_and_validate(headers=KEY_A, excluded_checks=[positive_data_acceptance])

        check()
    print(f"schemathesis: {len(cases)} cases over {len(labels)} operations")
    assert "POST /v1/upscale" in labels and len(labels) >= 6
    assert len(cases) >= 4 * len(labels)
