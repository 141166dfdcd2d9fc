"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The signed content is ``{id}.{timestamp}.{body}``: the delivery's id (the same on every retry
of one delivery, so a receiver can drop duplicates), the Unix time of this attempt, and the
exact body bytes. ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of that content;
it may hold several space-separated signatures (during a secret rotation), any of which may
match. A receiver checks the signature and that the timestamp is within a few minutes of its
own clock, which refuses a captured delivery replayed later; within that window, the id tells
a replay from a new delivery.

The secret is the tenant's (``webhook_secrets``, else ``webhook_secret``). A secret written
as ``whsec_<base64>`` is used as the Standard Webhooks libraries use it (its decoded bytes);
any other secret is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DEFAULT_TOLERANCE_S = 300
_VERSION = "v1"
_SECRET_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """A delivery whose signature or timestamp does not check out."""


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one delivery attempt."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return f"{_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(
    secret: str | None, message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers of one attempt (no signature when there is no secret)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = {ID_HEADER: message_id, TIMESTAMP_HEADER: str(stamp)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, message_id, stamp, body)
    return headers


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str:
    """Check one delivery as a receiver must; returns its ``webhook-id``.

    ``headers`` may use any letter case. Raises :class:`WebhookVerificationError` when a
    header is missing, the timestamp is more than ``tolerance_s`` from ``now`` (a replay, or
    a clock far off) or no signature matches ``body``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = lowered[ID_HEADER]
        stamp_text = lowered[TIMESTAMP_HEADER]
        signatures = lowered[SIGNATURE_HEADER]
    except KeyError as exc:
        raise WebhookVerificationError(f"missing header {exc.args[0]}") from None
    try:
        stamp = int(stamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a Unix time") from None
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - stamp:+.0f} s from now, over {tolerance_s} s"
        )
    expected = sign(secret, message_id, stamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures.split()):
        raise WebhookVerificationError("no signature matches the body")
    return message_id


def _key(secret: str) -> bytes:
    if secret.startswith(_SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(_SECRET_PREFIX))
    return secret.encode()
