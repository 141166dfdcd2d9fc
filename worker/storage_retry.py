"""The worker's storage: patient with a back end that cannot be reached for a while.

An object store that is restarting, or a data folder that is briefly unwritable, is not the
job's fault, and a job retried at once would fail the same way and spend its retries within
a second. So the worker retries a storage call that raises
:class:`~megasr.errors.ServiceUnavailableError` with doubling waits (from 0.1 s up to 5 s),
for up to ``patience_s`` (``MEGASR_STORAGE_RETRY_S``), holding the job (its lease stays
renewed); only then does the error reach the job, which RQ retries or fails. Other errors (a
missing object, a bad key) are final at once. The gateway does not wait: it answers 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from megasr.errors import ServiceUnavailableError
from megasr.storage import Storage

logger = logging.getLogger("megasr.worker.storage")

T = TypeVar("T")

FIRST_WAIT_S = 0.1
LONGEST_WAIT_S = 5.0


class RetryingStorage:
    """A :class:`~megasr.storage.Storage` that retries unreachable-storage errors."""

    def __init__(
        self, storage: Storage, patience_s: float, on_retry: Callable[[], object] = lambda: None
    ) -> None:
        self.storage = storage
        self.patience_s = patience_s
        self.on_retry = on_retry

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._patiently(self.storage.put, key, data, content_type)

    def get(self, key: str) -> bytes:
        return self._patiently(self.storage.get, key)

    def exists(self, key: str) -> bool:
        return self._patiently(self.storage.exists, key)

    def delete(self, key: str) -> None:
        self._patiently(self.storage.delete, key)

    def url(self, key: str, expires_s: int) -> str | None:
        return self.storage.url(key, expires_s)  # signs locally: nothing to reach

    def __getattr__(self, name: str) -> object:
        """Whatever else the back end offers, as it is (the worker reads and writes only)."""
        return getattr(self.storage, name)

    def _patiently(self, call: Callable[..., T], *args: object) -> T:
        deadline = time.monotonic() + self.patience_s
        wait = FIRST_WAIT_S
        while True:
            try:
                return call(*args)
            except ServiceUnavailableError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                logger.warning("storage unavailable (%s); retrying in %.1f s", exc.detail, wait)
                self.on_retry()
                time.sleep(min(wait, left))
                wait = min(wait * 2, LONGEST_WAIT_S)
