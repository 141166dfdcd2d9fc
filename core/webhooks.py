"""Signed webhooks on a job's terminal status.

The body is the job's public JSON; ``X-MegaSR-Signature: sha256=<hex>`` is the HMAC-SHA256 of
the exact body bytes under the shared ``webhook_secret``, so a receiver recomputes it over the
raw body before parsing. Deliveries run on a small thread pool, never in a worker's batch
loop or a gateway request: a slow receiver must hold up neither. A failed delivery (no
connection, a timeout, 5xx or 429) is retried with doubling backoff; other answers are final.
Redirects are not followed: a webhook goes only where the client said.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

SIGNATURE_HEADER = "X-MegaSR-Signature"
EVENT_HEADER = "X-MegaSR-Event"

logger = logging.getLogger("megasr.webhooks")


def sign(body: bytes, secret: str) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


class WebhookSender:
    """Delivers webhooks in the background with retries; :meth:`close` waits for them."""

    def __init__(
        self,
        secret: str | None,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        self._secret = secret
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="megasr-webhook")

    def send(self, url: str, event: str, body: bytes) -> None:
        """Queue one delivery of ``body`` to ``url``; ``event`` is e.g. ``job.succeeded``."""
        self._pool.submit(self._deliver, url, event, body)

    def close(self) -> None:
        """Wait for every queued delivery, retries included (bounded by attempts x timeout)."""
        self._pool.shutdown(wait=True)

    def _deliver(self, url: str, event: str, body: bytes) -> bool:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "megasr",
            EVENT_HEADER: event,
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            retryable = self._post(url, body, headers)
            if retryable is None:
                return True
            if not retryable or attempt == self._attempts:
                break
            time.sleep(delay)
            delay *= 2
        logger.warning("webhook %s to %s not delivered after %d attempt(s)", event, url, attempt)
        return False

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bool | None:
        """None when delivered, else whether the failure is worth another attempt."""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=self._timeout_s) as response:
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            logger.info("webhook to %s answered %d", url, exc.code)
            return exc.code >= 500 or exc.code == 429
        except (urllib.error.URLError, OSError) as exc:
            logger.info("webhook to %s failed: %s", url, exc)
            return True
