"""The Python client against a real gateway: every refusal comes back as its typed error."""

from __future__ import annotations

import pytest
from service_support import KEY_A, free_port

from megasr.client import Client
from megasr.errors import (
    AuthenticationError,
    ConflictError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidParameterError,
    JobFailedError,
    MegaSRError,
    NotFoundError,
    RateLimitedError,
    ServiceUnavailableError,
)
from megasr.jobs import JobStatus
from megasr.problems import error_from_problem, problem


@pytest.fixture
def client(gateway):
    with Client(gateway.url, api_key="key-a") as client:
        yield client


def test_submit_get_and_cancel(client, gateway, photo):
    job = client.submit(photo, scale=2, output_format="jpeg")

    assert job.status is JobStatus.QUEUED
    assert job.params["output_format"] == "jpeg"
    assert client.get(job.id).input.width == 96
    assert client.cancel(job.id).status is JobStatus.CANCELED
    assert len(gateway.queued()) == 0


def test_submit_from_a_path_sends_an_idempotency_key(client, gateway, photo, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(photo)

    first = client.submit(path, idempotency_key="same")
    again = client.submit(path, idempotency_key="same")

    assert first.id == again.id
    assert len(gateway.queued()) == 1


def test_wait_raises_job_failed_for_a_canceled_job(client, photo):
    job = client.submit(photo)
    client.cancel(job.id)
    seen = []

    with pytest.raises(JobFailedError, match="canceled"):
        client.wait(job.id, on_progress=seen.append)

    assert [view.status for view in seen] == [JobStatus.CANCELED]


@pytest.mark.parametrize("image", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 30])
def test_bad_images_are_invalid_image_errors(client, image):
    with pytest.raises(InvalidImageError) as caught:
        client.submit(image)
    assert caught.value.status == 400


def test_parameters_are_checked_before_sending(client, gateway, photo):
    with pytest.raises(InvalidParameterError, match="scale"):
        client.submit(photo, scale=20)
    assert gateway.http.get("/metrics").text.count('route="/v1/upscale"') == 0


def test_too_large_and_unknown_jobs_are_typed(start_gateway, photo):
    gateway = start_gateway(max_input_pixels=100)
    with Client(gateway.url, api_key="key-a") as client:
        with pytest.raises(ImageTooLargeError):
            client.submit(photo)
        with pytest.raises(NotFoundError):
            client.get("no-such-job")
        with pytest.raises(NotFoundError):
            client.download("no-such-job")


def test_no_result_yet_is_a_conflict(client, photo):
    job = client.submit(photo)
    with pytest.raises(ConflictError):
        client.download(job.id)


def test_a_bad_key_is_an_authentication_error(gateway, photo):
    with Client(gateway.url, api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.submit(photo)


def test_rate_limits_carry_retry_after(start_gateway, photo):
    gateway = start_gateway(max_queue_depth=1, busy_retry_after_s=9)
    with Client(gateway.url, api_key="key-a", retries=0) as client:
        client.submit(photo)
        with pytest.raises(RateLimitedError) as caught:
            client.submit(photo)
    assert caught.value.retry_after_s == 9


def test_a_full_queue_is_waited_for_as_retry_after_says(start_gateway, photo):
    """The second submit gets 429 with Retry-After: 9; while the client waits, the first job
    is canceled, and the repeated submit (same Idempotency-Key) is accepted."""
    gateway = start_gateway(max_queue_depth=1, busy_retry_after_s=9)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        gateway.http.delete(f"/v1/jobs/{first.id}", headers=KEY_A)

    with Client(gateway.url, api_key="key-a", sleep=sleep) as client:
        first = client.submit(photo)
        second = client.submit(photo, scale=2)

    assert waits == [9.0]
    assert second.id != first.id and len(gateway.queued()) == 1


def test_wait_polls_less_often_while_nothing_changes(gateway, photo):
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            gateway.http.delete(f"/v1/jobs/{job.id}", headers=KEY_A)

    with Client(gateway.url, api_key="key-a", sleep=sleep) as client:
        job = client.submit(photo)  # no worker: it stays queued until canceled
        with pytest.raises(JobFailedError, match="canceled"):
            client.wait(job.id, poll_interval_s=0.5)

    assert waits == pytest.approx([0.5, 0.75, 1.125, 1.6875, 2.53125, 3.796875, 5.0, 5.0])


def test_an_unreachable_service_is_unavailable_after_the_retries(photo):
    waits: list[float] = []
    client = Client(f"http://127.0.0.1:{free_port()}", retries=3, sleep=waits.append)
    with client, pytest.raises(ServiceUnavailableError, match="cannot reach"):
        client.submit(photo)
    assert waits == [1.0, 2.0, 4.0]


def test_problems_map_back_to_their_errors():
    assert isinstance(
        error_from_problem(problem(400, "x", "d", "invalid-image")), InvalidImageError
    )
    limited = error_from_problem({**problem(429, "x", "d", "rate-limited"), "retry_after": 3})
    assert isinstance(limited, RateLimitedError)
    assert limited.retry_after_s == 3
    # A plain HTTP problem falls back on its status; an unknown one on the base error.
    assert isinstance(error_from_problem(problem(404, "Not Found", "gone")), NotFoundError)
    teapot = error_from_problem(problem(418, "I'm a teapot", "short and stout"))
    assert type(teapot) is MegaSRError
    assert teapot.status == 418
    assert teapot.detail == "short and stout"
