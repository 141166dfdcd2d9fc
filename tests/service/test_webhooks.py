"""Webhooks: refused addresses, pinned connections, signatures, the durable outbox.

Real HTTP receivers on loopback, a real Redis, the real dispatcher thread. Loopback is a
refused address, so each dispatcher here lets 127.0.0.0/8 through, as an operator would for a
private receiver; the tests of refusals use a policy without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from loopback import wait_until
from prometheus_client.parser import text_string_to_metric_families
from service_support import KEY_A
from webhook_receiver import LOOPBACK_NETWORKS, WebhookReceiver

from megasr.settings import Settings
from megasr.webhooks.delivery import WebhookDispatcher
from megasr.webhooks.outbox import Delivery, WebhookOutbox
from megasr.webhooks.signature import WebhookVerificationError, sign, verify
from megasr.webhooks.targets import RefusedTargetError, TargetPolicy

SECRETS = {"tenant-a": "secret-a"}
SHARED = "shared-secret"


def accept(attempt: int) -> tuple[int, dict[str, str]]:
    return 204, {}


@pytest.fixture
def receivers() -> Iterator[Callable[..., WebhookReceiver]]:
    started: list[WebhookReceiver] = []

    def start(answer=accept) -> WebhookReceiver:
        started.append(WebhookReceiver(answer))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


@pytest.fixture
def dispatch(redis) -> Iterator[Callable[..., tuple[WebhookDispatcher, WebhookOutbox]]]:
    """Start dispatchers on the test's Redis; each returns with its outbox, closed at the end."""
    started: list[WebhookDispatcher] = []

    def start(policy: TargetPolicy | None = None, **overrides) -> tuple:
        values = {
            "queue_name": "hooks",
            "webhook_secret": SHARED,
            "webhook_secrets": SECRETS,
            "webhook_allowed_networks": LOOPBACK_NETWORKS,
            "webhook_backoff_s": 0.01,
            "webhook_attempts": 3,
        }
        dispatcher = WebhookDispatcher(Settings(**{**values, **overrides}), policy)
        dispatcher.start(redis)
        started.append(dispatcher)
        return dispatcher, dispatcher.outbox

    yield start
    for dispatcher in started:
        dispatcher.close()


def queue_one(outbox: WebhookOutbox, url: str, tenant: str = "tenant-a", job: str = "job-1"):
    body = b'{"id": "%s", "status": "succeeded"}' % job.encode()
    return outbox.add(url, "job.succeeded", tenant, job, body)


def dead_letters(outbox: WebhookOutbox) -> list[Delivery]:
    """The deliveries given up on, oldest first, read as an operator would (docs/service.md)."""
    ids = [raw.decode() for raw in outbox.connection.zrange(outbox.dead_key, 0, -1)]
    return [d for d in map(outbox.load, ids) if d is not None]


def dead(outbox: WebhookOutbox) -> list[Delivery]:
    wait_until(lambda: dead_letters(outbox), "a dead letter", timeout_s=20)
    return dead_letters(outbox)


# -- addresses ---------------------------------------------------------------------------

REFUSED = {
    "loopback": "http://127.0.0.1:8080/hook",
    "loopback-v6": "http://[::1]/hook",
    "localhost (resolves to 127.0.0.1)": "http://localhost:8080/hook",
    "private-10": "http://10.1.2.3/hook",
    "private-172": "http://172.16.0.1/hook",
    "private-192": "http://192.168.1.10/hook",
    "unique-local-v6": "http://[fd12:3456::1]/hook",
    "link-local": "http://169.254.10.10/hook",
    "link-local-v6": "http://[fe80::1]/hook",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "metadata-v6": "http://[fd00:ec2::254]/latest/meta-data/",
    "unspecified": "http://0.0.0.0/hook",
    "unspecified-v6": "http://[::]/hook",
    "multicast": "http://224.0.0.1/hook",
    "multicast-v6": "http://[ff02::1]/hook",
    "cgnat": "http://100.64.0.1/hook",
    "broadcast": "http://255.255.255.255/hook",
    "reserved": "http://240.0.0.1/hook",
    "documentation": "http://192.0.2.1/hook",
    "ipv4-mapped-loopback": "http://[::ffff:127.0.0.1]/hook",
    "ipv4-mapped-metadata": "http://[::ffff:169.254.169.254]/hook",
    "nat64-metadata": "http://[64:ff9b::a9fe:a9fe]/hook",
    "6to4-loopback": "http://[2002:7f00:1::]/hook",
}


@pytest.mark.parametrize("url", REFUSED.values(), ids=REFUSED.keys())
def test_every_refused_address_class_is_refused(url: str) -> None:
    with pytest.raises(RefusedTargetError, match="is refused"):
        TargetPolicy().resolve(url)


@pytest.mark.parametrize(
    "url",
    ["ftp://93.184.215.14/hook", "http://user:pass@93.184.215.14/hook", "http:///hook"],
    ids=["ftp", "credentials", "no-host"],
)
def test_other_schemes_and_credentials_are_refused(url: str) -> None:
    with pytest.raises(RefusedTargetError):
        TargetPolicy().resolve(url)


def test_a_public_address_is_accepted_as_resolved() -> None:
    target = TargetPolicy().resolve("https://[2606:4700::1111]/hook?token=t")
    assert (target.address, target.port, target.path) == ("2606:4700::1111", 443, "/hook?token=t")


def test_the_allow_list_opens_private_networks_but_never_the_metadata_service() -> None:
    policy = TargetPolicy(["127.0.0.0/8", "169.254.0.0/16", "fd00::/8"])

    assert policy.resolve("http://127.0.0.1:9/hook").address == "127.0.0.1"
    assert policy.resolve("http://169.254.10.10/hook").address == "169.254.10.10"
    for metadata in ("http://169.254.169.254/", "http://[fd00:ec2::254]/"):
        with pytest.raises(RefusedTargetError, match="cloud metadata"):
            policy.resolve(metadata)


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9/hook", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"],
)
def test_the_gateway_refuses_a_refused_webhook_at_submit_with_422(gateway, photo, url) -> None:
    response = gateway.http.post(
        "/v1/upscale",
        headers=KEY_A,
        files={"image": ("photo.png", photo, "image/png")},
        data={"webhook_url": url},
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert "is refused" in response.json()["detail"]
    assert len(gateway.queued()) == 0


# -- delivery ------------------------------------------------------------------------------


def test_the_connection_goes_to_the_checked_address(dispatch, receivers) -> None:
    """The host resolves (through the policy's resolver) to the receiver's address; the
    request reaches that address with the name in Host, so nothing resolved it again (this
    machine has no DNS for the name at all)."""
    receiver = receivers()
    names = {"hooks.example": ["127.0.0.1"]}  # a stand-in for DNS, which tests cannot run
    policy = TargetPolicy(LOOPBACK_NETWORKS, resolver=lambda host, port: names[host])
    _, outbox = dispatch(policy)

    queue_one(outbox, f"http://hooks.example:{receiver.port}/hook?token=t")
    wait_until(lambda: receiver.deliveries, "the delivery")

    assert receiver.requests == [(f"hooks.example:{receiver.port}", "/hook?token=t")]


def test_a_name_that_rebinds_to_loopback_after_submit_is_refused_at_send(
    dispatch, receivers
) -> None:
    receiver = receivers()
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # DNS rebinding: public, then loopback
    policy = TargetPolicy(resolver=lambda host, port: next(answers))
    url = f"http://rebind.example:{receiver.port}/hook"
    policy.resolve(url)  # what the gateway checked at submit
    _, outbox = dispatch(policy)

    queue_one(outbox, url)

    (letter,) = dead(outbox)
    assert "loopback" in letter.last_error and letter.attempts == 1
    assert receiver.requests == []


def test_a_redirect_into_the_metadata_service_is_not_followed(dispatch, receivers) -> None:
    target = receivers()
    metadata = {"Location": "http://169.254.169.254/latest/meta-data/iam/"}
    to_metadata = receivers(lambda attempt: (307, metadata))
    to_loopback = receivers(lambda attempt: (302, {"Location": target.url}))
    _, outbox = dispatch()

    queue_one(outbox, to_metadata.url, job="job-1")
    queue_one(outbox, to_loopback.url, job="job-2")

    wait_until(lambda: len(dead_letters(outbox)) == 2, "two dead letters")
    reasons = {letter.job_id: letter.last_error for letter in dead_letters(outbox)}
    assert reasons == {
        "job-1": "HTTP 307: redirects are not followed",
        "job-2": "HTTP 302: redirects are not followed",
    }
    assert target.requests == []  # not even an allowed address is followed to


def test_deliveries_are_signed_with_the_tenants_own_secret(dispatch, receivers) -> None:
    receiver = receivers()
    _, outbox = dispatch()

    own = queue_one(outbox, receiver.url, tenant="tenant-a", job="job-a")
    shared = queue_one(outbox, receiver.url, tenant="tenant-b", job="job-b")
    wait_until(lambda: len(receiver.deliveries) == 2, "both deliveries")

    by_id = {headers["webhook-id"]: (headers, body) for headers, body in receiver.deliveries}
    assert verify(by_id[own][1], by_id[own][0], "secret-a") == own
    assert verify(by_id[shared][1], by_id[shared][0], SHARED) == shared
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(by_id[own][1], by_id[own][0], SHARED)  # another tenant's secret


def test_a_replayed_or_altered_delivery_is_refused(dispatch, receivers) -> None:
    receiver = receivers()
    _, outbox = dispatch()
    queue_one(outbox, receiver.url)
    wait_until(lambda: receiver.deliveries, "the delivery")
    ((headers, body),) = receiver.deliveries
    stamp = int(headers["webhook-timestamp"])

    assert abs(stamp - time.time()) < 60
    verify(body, headers, "secret-a", now=stamp + 299)
    with pytest.raises(WebhookVerificationError, match="over 300 s"):
        verify(body, headers, "secret-a", now=stamp + 301)  # captured and replayed later
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(body, {**headers, "webhook-timestamp": str(stamp + 250)}, "secret-a")
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(body.replace(b"succeeded", b"failed"), headers, "secret-a")
    with pytest.raises(WebhookVerificationError, match="missing header"):
        verify(body, {k: v for k, v in headers.items() if k != "webhook-id"}, "secret-a")


def test_signatures_are_standard_webhooks_ones() -> None:
    """The example of the Standard Webhooks specification, and a rotation's two signatures."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "Webhook-Timestamp": "1614265330",
        "Webhook-Signature": f"v1,b2xkLXNlY3JldC1zaWduYXR1cmU= {signature}",
    }
    assert verify(body, headers, secret, now=1614265330) == "msg_p5jXN8AQM9LWM0D4loKWxJek"


# -- the outbox ----------------------------------------------------------------------------


def test_failures_are_retried_then_dead_lettered(dispatch, receivers) -> None:
    receiver = receivers(lambda attempt: (503, {}))
    _, outbox = dispatch()

    queue_one(outbox, receiver.url)

    (letter,) = dead(outbox)
    assert (letter.attempts, letter.last_error) == (3, "HTTP 503")
    assert receiver.attempts == {"job-1": 3}
    assert outbox.pending() == 0


def test_a_refused_answer_is_final(dispatch, receivers) -> None:
    receiver = receivers(lambda attempt: (410, {}))
    _, outbox = dispatch()

    queue_one(outbox, receiver.url)

    (letter,) = dead(outbox)
    assert (letter.attempts, letter.last_error) == (1, "HTTP 410")


def test_an_attempt_that_fails_inside_the_dispatcher_still_counts(dispatch, receivers) -> None:
    """A fault in the dispatcher's own code (here a resolver that raises what no resolver
    should) settles the attempt like any failure, so the delivery is dead-lettered after
    its attempts instead of coming due again forever."""

    def broken_resolver(host: str, port: int) -> list[str]:
        raise ValueError("a resolver bug")

    receiver = receivers()
    _, outbox = dispatch(TargetPolicy(LOOPBACK_NETWORKS, resolver=broken_resolver))

    queue_one(outbox, receiver.url)

    (letter,) = dead(outbox)
    assert (letter.attempts, letter.last_error) == (3, "internal error: ValueError")
    assert receiver.deliveries == []


def test_a_delivery_outlives_the_process_that_queued_it(redis, dispatch, receivers) -> None:
    """Queued by a process that died before sending, and claimed by one that died while
    sending: a dispatcher started later delivers both (the second once its lease is over)."""
    receiver = receivers()
    outbox = WebhookOutbox(redis, "hooks")
    cut_off = queue_one(outbox, receiver.url, job="job-2")
    assert outbox.claim(lease_s=0.5, limit=1) == [cut_off]  # the crashed sender's claim
    never_sent = queue_one(outbox, receiver.url, job="job-1")

    dispatch()

    def delivered() -> bool:  # the receiver has it a moment before its sender records it
        return len(receiver.deliveries) == 2 and outbox.pending() == 0

    wait_until(delivered, "both deliveries", timeout_s=20)
    assert receiver.attempts == {"job-1": 1, "job-2": 1}
    ids = {headers["webhook-id"] for headers, _ in receiver.deliveries}
    assert ids == {never_sent, cut_off}


def test_a_delivery_id_is_queued_once_however_often_it_is_added(redis, dispatch, receivers):
    """Two processes telling the same end (or one transaction run twice) make one delivery:
    adding an id the outbox holds changes nothing."""
    receiver = receivers()
    outbox = WebhookOutbox(redis, "hooks")
    first = outbox.add(receiver.url, "job.canceled", "tenant-a", "job-3", b'{"id": "job-3"}', "m3")
    again = outbox.add(receiver.url, "job.canceled", "tenant-a", "job-3", b'{"id": "other"}', "m3")
    assert first == again == "m3" and outbox.pending() == 1

    dispatch()

    wait_until(lambda: outbox.pending() == 0 and receiver.deliveries, "the delivery")
    assert [(h["webhook-id"], body) for h, body in receiver.deliveries] == [
        ("m3", b'{"id": "job-3"}')
    ]


def test_a_delivery_added_in_a_transaction_commits_with_it(redis) -> None:
    outbox = WebhookOutbox(redis, "hooks-tx")
    with redis.pipeline() as pipeline:
        outbox.add("https://example.com/h", "job.failed", "t", "job-4", b"{}", "m4", pipeline)
        pipeline.set("hooks-tx:end", "failed")
        assert outbox.pending() == 0, "written before the transaction ran"
        pipeline.execute()
    assert outbox.pending() == 1 and outbox.load("m4").job_id == "job-4"

    with redis.pipeline() as pipeline:
        outbox.add("https://example.com/h", "job.failed", "t", "job-5", b"{}", "m5", pipeline)
        pipeline.reset()  # the transaction never ran (its process died)
    assert outbox.load("m5") is None and outbox.pending() == 1


def test_logs_name_the_receiver_but_never_its_path_or_query(dispatch, receivers, caplog) -> None:
    receiver = receivers(lambda attempt: (503, {}))
    _, outbox = dispatch()
    caplog.set_level(logging.INFO, logger="megasr.webhooks.delivery")

    queue_one(outbox, receiver.url + "?token=receiver-secret-token")
    dead(outbox)

    assert f"http://127.0.0.1:{receiver.port}" in caplog.text
    assert "receiver-secret-token" not in caplog.text and "/hook" not in caplog.text


def test_the_gateway_drains_the_outbox_and_exports_its_state(gateway) -> None:
    """A delivery any process queued is taken by the gateway's own dispatcher; the gauges
    show it given up on (loopback is refused with this gateway's settings)."""
    outbox = WebhookOutbox(gateway.redis, gateway.settings.queue_name)
    queue_one(outbox, "http://127.0.0.1:9/hook")

    def gauges() -> dict[str, float]:
        text = gateway.http.get("/metrics").text
        return {
            family.name: family.samples[0].value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("megasr_webhook")
        }

    wait_until(lambda: gauges().get("megasr_webhook_dead_letters") == 1, "the dead letter")
    assert gauges() == {"megasr_webhooks_pending": 0, "megasr_webhook_dead_letters": 1}
    (letter,) = dead_letters(outbox)
    assert "loopback" in letter.last_error
