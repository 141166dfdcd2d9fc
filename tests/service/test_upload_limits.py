"""The gateway's bounds on uploads over real sockets: the body deadlines, the caps on uploads
and bytes in flight, slow clients beside a normal one, and the framing refusals.

Deadlines are set short through the settings; nothing here sleeps to wait: the slow clients
pace themselves (that is what they are), and the test waits on answers and on the gateway's
own gauges."""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import pytest
from multipart_fuzz import Answer, closed_by_peer, read_answer, trickle
from redis import Redis
from service_support import KEY_A, wait_until

from megasr.client import Client
from megasr.queue import EngineQueues
from megasr.service.prometheus import GatewayMetrics
from megasr.service.upload_gate import Upload, UploadGate
from megasr.settings import Settings

BOUNDARY = "slow-b0undary"
PROBLEM = b"application/problem+json"
SLOW_BODY_BYTES = 100_000  # what a slow client declares; it never sends that much


def head(declared: int, extra: str = "") -> bytes:
    """A request head and the start of an image part: the rest is up to the client."""
    return (
        "POST /v1/upscale HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer key-a\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {declared}\r\n{extra}\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    ).encode()


def exchange(gateway, data: bytes, timeout_s: float = 20.0) -> Answer:
    """Send ``data`` on a new connection; the answer, and whether the gateway then closed."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=timeout_s) as sock:
        sock.sendall(data)
        answer = read_answer(sock, deadline=started + timeout_s, started=started)
        answer.closed = closed_by_peer(sock)
        return answer


def problem(answer: Answer, status: int, kind: str) -> dict:
    assert answer.status == status, (answer.status, answer.note, answer.body)
    assert answer.content_type == PROBLEM
    body = json.loads(answer.body)
    assert body["status"] == status
    assert body["type"] == f"urn:megasr:problem:{kind}"
    return body


def gauge(gateway, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def refused(gateway, reason: str) -> float:
    return gauge(gateway, f'megasr_uploads_refused_total{{reason="{reason}"}}')


def port_of(gateway) -> int:
    return int(gateway.url.rsplit(":", 1)[1])


def test_a_body_shorter_than_its_length_is_cut_at_the_idle_deadline(start_gateway):
    gateway = start_gateway(upload_idle_timeout_s=0.3, upload_timeout_s=30)

    answer = exchange(gateway, head(SLOW_BODY_BYTES) + b"\x89PNG")

    assert "paused for more than 0.3 s" in problem(answer, 408, "request-timeout")["detail"]
    assert answer.closed
    assert refused(gateway, "idle") == 1
    assert gauge(gateway, "megasr_uploads_in_flight") == 0


def test_a_trickling_body_is_cut_at_the_upload_deadline(start_gateway):
    gateway = start_gateway(upload_idle_timeout_s=5, upload_timeout_s=0.6)

    answer = trickle(port_of(gateway), head(SLOW_BODY_BYTES), interval_s=0.05, timeout_s=20)

    assert "did not arrive within 0.6 s" in problem(answer, 408, "request-timeout")["detail"]
    assert answer.closed
    assert refused(gateway, "timeout") == 1


def test_past_the_byte_cap_an_upload_is_503_with_retry_after(start_gateway, photo):
    gateway = start_gateway(max_upload_bytes_in_flight=150_000, upload_timeout_s=30)
    port = port_of(gateway)
    with socket.create_connection(("127.0.0.1", port)) as holder:
        # Reserves 100 kB, sends most of it at once and waits: at that rate it is never doomed
        # within the test, however long a busy machine takes, so its place is not given away.
        holder.sendall(head(SLOW_BODY_BYTES) + b"\0" * 60_000)
        wait_until(lambda: gauge(gateway, "megasr_uploads_in_flight") == 1, "the first upload")

        answer = exchange(gateway, head(SLOW_BODY_BYTES))

        body = problem(answer, 503, "service-unavailable")
        assert "150000 bytes" in body["detail"]
        assert 1 <= int(answer.headers[b"retry-after"]) <= 30  # never past the held deadline
        assert answer.closed
        # A small upload still fits beside the held one.
        small = gateway.http.post(
            "/v1/upscale", files={"image": ("a.png", photo, "image/png")}, headers=KEY_A
        )
        assert small.status_code == 202, small.text
    assert refused(gateway, "busy") == 1


def test_slow_clients_over_the_cap_do_not_keep_a_normal_client_out(start_gateway, photo):
    cap, slow = 3, 8
    gateway = start_gateway(max_concurrent_uploads=cap, upload_timeout_s=4, upload_idle_timeout_s=2)
    port = port_of(gateway)
    with ThreadPoolExecutor(slow) as pool:
        trickling = [
            pool.submit(trickle, port, head(SLOW_BODY_BYTES), 0.1, 30) for _ in range(slow)
        ]
        wait_until(lambda: gauge(gateway, "megasr_uploads_in_flight") == cap, "the slow ones")

        with Client(gateway.url, api_key="key-a") as client:
            jobs = [client.submit(photo, scale=2) for _ in range(3)]

        answers = [future.result() for future in trickling]
    assert all(job.status == "queued" for job in jobs)
    statuses = sorted(answer.status for answer in answers)
    assert set(statuses) <= {408, 503}, [(a.status, a.note) for a in answers]
    assert statuses.count(503) >= slow - cap  # refused at once: no place for them
    for answer in answers:
        assert answer.content_type == PROBLEM and answer.closed
    cut = refused(gateway, "evicted") + refused(gateway, "timeout") + refused(gateway, "idle")
    assert cut == statuses.count(408) >= 1
    assert gauge(gateway, "megasr_uploads_in_flight") == 0


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        # The last part never closed: before, its scale was dropped and the job ran at 4.
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="scale"\r\n\r\n2',
            "ended before its closing boundary",
        ),
        (f"--{BOUNDARY}--\r\n" + "e" * 5000, "after its closing boundary"),
    ],
)
def test_a_form_that_does_not_end_whole_is_400_and_queues_nothing(gateway, photo, body, detail):
    image_part = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + photo
        + b"\r\n"
    )
    payload = image_part + body.encode()
    response = gateway.http.post(
        "/v1/upscale",
        content=payload,
        headers={**KEY_A, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM.decode()
    assert detail in response.json()["detail"]
    assert gateway.queued() == []


def test_a_boundary_over_70_characters_is_400(gateway):
    response = gateway.http.post(
        "/v1/upscale",
        content=b"--" + b"b" * 257 + b"--\r\n",
        headers={**KEY_A, "Content-Type": "multipart/form-data; boundary=" + "b" * 257},
    )
    assert response.status_code == 400
    assert response.json()["type"] == "urn:megasr:problem:malformed-request"
    assert "257 characters" in response.json()["detail"]


def test_content_length_with_transfer_encoding_is_refused(gateway):
    request = (
        b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-a\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )

    answer = exchange(gateway, request)

    assert (
        "Content-Length and Transfer-Encoding"
        in problem(answer, 400, "malformed-request")["detail"]
    )
    assert answer.closed


def test_only_an_upload_that_cannot_end_in_time_gives_way():
    upload = Upload(declared=1_000_000, deadline=100.0)
    assert not upload.doomed(50.0)  # its body is not being read yet: no rate to judge
    upload.reading_since, upload.received = 50.0, 10
    assert not upload.doomed(50.5)  # a rate over half a second says little
    assert upload.doomed(51.0)  # 10 B/s: a day to go, 49 s left
    upload.received = 20_000  # 20 kB/s: 49 s to go, 49 s left; a busy gateway may be why
    assert not upload.doomed(51.0)
    upload.reading = False  # read whole, being stored
    upload.received = 10
    assert not upload.doomed(51.0)
    assert not Upload(declared=None, deadline=100.0, reading_since=0.0).doomed(99.0)  # chunked


def test_an_upload_frees_its_place_when_it_ends_or_can_be_taken():
    half_way = Upload(declared=1_000_000, deadline=100.0, reading_since=50.0, received=500_000)
    assert half_way.frees_by(51.0) == pytest.approx(52.0)  # half in a second: one more to go
    # At 425 kB in 51 s it ends at 120, past its deadline; doomed from 80 (40 s to go, 20 left).
    late = Upload(declared=1_000_000, deadline=100.0, reading_since=0.0, received=425_000)
    assert late.frees_by(51.0) == pytest.approx(80.0)
    for now, doomed in ((79.9, False), (80.1, True)):  # its bytes still coming at that rate
        late.received = round(425_000 * now / 51)
        assert late.doomed(now) == doomed
    young = Upload(declared=1_000_000, deadline=100.0, reading_since=50.5, received=10)
    assert young.frees_by(51.0) == 51.5  # doomed once its rate is judged
    assert young.doomed(51.6)
    short = Upload(declared=1_000_000, deadline=10.0, reading_since=9.5, received=10)
    assert short.frees_by(9.6) == 10.0  # its deadline at the latest
    storing = Upload(declared=1_000_000, deadline=100.0, reading_since=0.0, reading=False)
    assert storing.frees_by(51.0) == 51.0
    assert Upload(declared=None, deadline=100.0, reading_since=0.0).frees_by(51.0) == 100.0


def _hold(gate: UploadGate, stack: ExitStack, declared: int, finish_at: float) -> Upload:
    """An upload in ``gate`` half read at t=10, on course to end at ``finish_at``."""
    upload = stack.enter_context(gate.admit(declared))
    upload.deadline, upload.received = 1000.0, declared // 2
    upload.reading_since = 10.0 - (finish_at - 10.0)  # half came in as long as is left
    return upload


def test_retry_after_is_when_enough_places_and_bytes_are_expected_to_free():
    settings = Settings(max_concurrent_uploads=3, max_upload_bytes_in_flight=300)
    gate = UploadGate(settings, GatewayMetrics(EngineQueues(settings, Redis())))
    with ExitStack() as stack:
        first = _hold(gate, stack, declared=100, finish_at=12.0)
        _hold(gate, stack, declared=100, finish_at=15.0)
        assert gate.fits_by(10.0, need=100) == 10.0  # a place and 100 bytes are free now
        last = _hold(gate, stack, declared=100, finish_at=20.0)
        assert gate.fits_by(10.0, need=10) == pytest.approx(12.0)  # the first place
        assert gate.fits_by(10.0, need=200) == pytest.approx(15.0)  # 200 bytes must free
        assert gate.fits_by(10.0, need=10**6) == pytest.approx(20.0)  # alone, it fits
        # A chunked upload growing past the cap waits for the others only.
        assert gate.fits_by(10.0, need=250, excluding=last) == pytest.approx(15.0)
        assert gate.fits_by(10.0, need=150, excluding=first) == pytest.approx(15.0)
