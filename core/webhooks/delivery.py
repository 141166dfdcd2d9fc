"""Webhook delivery: each attempt a signed POST to a checked, pinned address; retries from
the durable outbox in Redis.

An attempt resolves the URL's host, checks every address (:mod:`megasr.webhooks.targets`),
connects to the checked address itself (the host name still goes in ``Host`` and in TLS),
and sends the body with the Standard Webhooks headers (:mod:`megasr.webhooks.signature`) under
the tenant's secret. Redirects are never followed: a 3xx is a final failure, so a receiver
cannot bounce the request to an address the check would refuse. A 2xx is delivered; no
connection, a timeout, 408, 429 or 5xx is retried with doubling backoff up to
``webhook_attempts``; anything else is final. No HTTP proxy is used.

:class:`WebhookDispatcher` drains the outbox from a thread of its own, with a few delivery
threads, so neither a worker's batch loop nor a gateway request ever waits for a receiver.
It wakes at once for deliveries queued in its own process and polls for the others (every
second, or sooner when a retry comes due). Logs name a delivery's origin (scheme, host,
port), never its path or query, which may carry a receiver's token.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from redis import Redis

from megasr import __version__
from megasr.settings import Settings
from megasr.webhooks.outbox import Delivery, WebhookOutbox
from megasr.webhooks.signature import signature_headers
from megasr.webhooks.targets import (
    RefusedTargetError,
    Target,
    TargetPolicy,
    UnresolvedTargetError,
    origin_of,
)

EVENT_HEADER = "X-MegaSR-Event"
POLL_S = 1.0
DELIVERY_THREADS = 4
_RETRYABLE_STATUS = frozenset({408, 429})

logger = logging.getLogger("megasr.webhooks.delivery")


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: delivered, or why not and whether another try may help."""

    delivered: bool
    retryable: bool = False
    reason: str = ""


def post_once(
    policy: TargetPolicy, url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> Attempt:
    """POST ``body`` to ``url`` once, at the address the policy checked."""
    try:
        target = policy.resolve(url)
    except RefusedTargetError as exc:
        return Attempt(False, retryable=False, reason=exc.detail)
    except UnresolvedTargetError as exc:
        return Attempt(False, retryable=True, reason=exc.detail)
    connection = _pinned_connection(target, timeout_s)
    try:
        connection.request("POST", target.path, body=body, headers=headers)
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return Attempt(False, retryable=True, reason=f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
    if 200 <= status < 300:
        return Attempt(True)
    if 300 <= status < 400:
        return Attempt(False, retryable=False, reason=f"HTTP {status}: redirects are not followed")
    retryable = status >= 500 or status in _RETRYABLE_STATUS
    return Attempt(False, retryable=retryable, reason=f"HTTP {status}")


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Speaks to ``host`` but connects to the address that was checked, not a fresh lookup."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with the host name for SNI and certificate checks."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout_s)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _pinned_connection(target: Target, timeout_s: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout_s)
    return _PinnedHTTPConnection(target, timeout_s)


class WebhookDispatcher:
    """Drains the outbox: claims due deliveries, attempts them, settles each outcome."""

    def __init__(self, settings: Settings, policy: TargetPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or TargetPolicy(settings.webhook_allowed_networks)
        self.outbox: WebhookOutbox | None = None
        # A claim outlives the slowest attempt (connect + read timeouts) with room to spare.
        self.lease_s = 2 * settings.webhook_timeout_s + 30
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="megasr-webhook")
        self._busy = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, connection: Redis) -> None:
        """Start draining the outbox in ``connection``'s Redis (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            self.outbox = WebhookOutbox(connection, self.settings.queue_name)
            self._thread = threading.Thread(
                target=self._run, name="megasr-webhook-outbox", daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        """A delivery was queued: look at the outbox now, not at the next poll."""
        self._wake.set()

    def close(self) -> None:
        """Stop claiming, and wait for the attempts in flight; what is left waits in Redis."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        unreachable = False
        while not self._stopped.is_set():
            try:
                delay = self._dispatch_due()
            except Exception as exc:  # Redis away for a while: the outbox keeps everything
                if not unreachable:  # once per outage, not once a second
                    logger.warning("webhook outbox unreachable: %s", exc)
                unreachable, delay = True, POLL_S
            else:
                if unreachable:
                    logger.info("webhook outbox reachable again")
                unreachable = False
            self._wake.wait(delay)
            self._wake.clear()

    def _dispatch_due(self) -> float:
        """Start the due deliveries there is room for; returns how long to wait next."""
        assert self.outbox is not None
        with self._lock:
            free = DELIVERY_THREADS - self._busy
        if free <= 0:
            return POLL_S  # a finishing attempt wakes the loop
        ids = self.outbox.claim(self.lease_s, free)
        for delivery_id in ids:
            with self._lock:
                self._busy += 1
            self._pool.submit(self._deliver, delivery_id)
        if len(ids) == free:
            return POLL_S  # every thread busy: a finishing attempt wakes the loop
        due = self.outbox.next_due()
        if due is None:
            return POLL_S
        return min(POLL_S, max(0.01, due - time.time()))

    def _deliver(self, delivery_id: str) -> None:
        assert self.outbox is not None
        delivery = None
        try:
            delivery = self.outbox.load(delivery_id)
            if delivery is not None:
                self._settle(delivery, self._attempt(delivery))
        except Exception as exc:
            logger.exception("webhook delivery %s failed to run", delivery_id)
            if delivery is not None:  # an attempt like any other, so its count still bounds it
                self._settle_failed_run(delivery, exc)
        finally:
            with self._lock:
                self._busy -= 1
            self._wake.set()

    def _settle_failed_run(self, delivery: Delivery, error: Exception) -> None:
        """Settle an attempt that failed inside the dispatcher (else the lease runs out and
        the delivery comes due again, never counted towards its dead letter)."""
        try:
            self._settle(delivery, Attempt(False, True, f"internal error: {type(error).__name__}"))
        except Exception:  # Redis is away: the lease runs out and it comes due again
            logger.exception("cannot settle webhook delivery %s", delivery.id)

    def _attempt(self, delivery: Delivery) -> Attempt:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"megasr/{__version__}",
            EVENT_HEADER: delivery.event,
            **signature_headers(
                self.settings.webhook_secret_for(delivery.tenant), delivery.id, delivery.body
            ),
        }
        return post_once(
            self.policy, delivery.url, delivery.body, headers, self.settings.webhook_timeout_s
        )

    def _settle(self, delivery: Delivery, attempt: Attempt) -> None:
        assert self.outbox is not None
        origin = origin_of(delivery.url)
        if attempt.delivered:
            self.outbox.delivered(delivery.id)
            return
        if attempt.retryable and delivery.attempts < self.settings.webhook_attempts:
            delay = self.backoff_s(delivery.attempts)
            logger.info(
                "webhook %s of job %s to %s: %s; retry in %.1f s",
                delivery.event, delivery.job_id, origin, attempt.reason, delay,
            )  # fmt: skip
            self.outbox.retry_at(delivery.id, time.time() + delay, attempt.reason)
            return
        logger.warning(
            "webhook %s of job %s to %s not delivered after %d attempt(s): %s",
            delivery.event, delivery.job_id, origin, delivery.attempts, attempt.reason,
        )  # fmt: skip
        self.outbox.dead(delivery.id, attempt.reason, self.settings.expired_record_ttl_s)

    def backoff_s(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts: doubling, capped."""
        settings = self.settings
        return min(settings.webhook_max_backoff_s, settings.webhook_backoff_s * 2 ** (attempts - 1))
