"""How many uploads one gateway process reads at once, how many of their bytes it holds, and how
long each may take: the bounds that keep its memory the same whatever clients do.

An upload is admitted before its body is read. It takes one of ``max_concurrent_uploads``
places and reserves its declared ``Content-Length`` out of ``max_upload_bytes_in_flight``
(a chunked body reserves as its bytes arrive); both are given back when the submission ends,
stored or refused, since until then the image is in the gateway's memory. Past either cap
the answer is 503 with a ``Retry-After`` that says when the upload is expected to fit: the
uploads held end (or become doomed, below) at their rates so far, soonest first, until both a
place and the bytes are free.

The body must arrive within ``upload_timeout_s`` of admission, with no pause longer than
``upload_idle_timeout_s``; past either the upload is cut (408). A client that trickles its
body can so hold a place for the upload deadline at most. So that such clients cannot keep
everyone else out for that long, an upload that arrives when every place is taken may take
the place of one that is *doomed*: at the rate its body has come so far (measured over
:data:`RATE_WINDOW_S` at least) it would need well over the time it has left, so it would be
cut at its deadline anyway.

Everything here runs on the event loop's thread, so the counts need no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

from megasr.errors import RequestTimeoutError, ServiceUnavailableError
from megasr.service.prometheus import GatewayMetrics
from megasr.settings import Settings

# A rate measured over less than this says little: an upload read for less is never doomed.
RATE_WINDOW_S = 1.0
# Doomed: at its rate so far it would need this many times the time it has left. Not 1: a
# gateway short of CPU reads every upload slower than it comes, and must not evict for that.
DOOMED_FACTOR = 2.0


@dataclass(eq=False)
class Upload:
    """One admitted upload: what it reserved, what it has received, and its deadline."""

    declared: int | None
    deadline: float
    reserved: int = 0
    received: int = 0
    reading_since: float | None = None  # its body's first read (its rate's clock)
    reading: bool = True
    evicted: bool = False
    wait_scope: anyio.CancelScope | None = field(default=None, repr=False)  # set while waiting

    def doomed(self, now: float) -> bool:
        """Still reading a declared length that, at the rate it has come so far (measured
        over :data:`RATE_WINDOW_S` at least), needs more than :data:`DOOMED_FACTOR` times
        the time left before its deadline."""
        since = self.reading_since
        if not self.reading or self.declared is None or since is None:
            return False
        if now - since < RATE_WINDOW_S:
            return False
        return self.finish_s(now) - now > DOOMED_FACTOR * (self.deadline - now)

    def finish_s(self, now: float) -> float:
        """When its declared body will have come at its rate so far (inf: nothing yet)."""
        if not self.received or self.declared is None or self.reading_since is None:
            return math.inf
        return self.reading_since + self.declared * (now - self.reading_since) / self.received

    def frees_by(self, now: float) -> float:
        """When its place is expected to be free: when its body will have come at its rate so
        far if that is before its deadline; otherwise when that rate first makes it doomed (a
        newcomer may take its place then); its deadline at the latest, now at the earliest."""
        if not self.reading:
            return now  # storing: done in moments
        if self.declared is None:
            return self.deadline  # chunked: no end to estimate, and never doomed
        since = self.reading_since if self.reading_since is not None else now
        finish = self.finish_s(now)
        if finish <= self.deadline:
            return max(finish, now)
        # doomed once finish - t > DOOMED_FACTOR * (deadline - t), and judged after the window
        doomed_at = (DOOMED_FACTOR * self.deadline - finish) / (DOOMED_FACTOR - 1)
        return min(max(doomed_at, since + RATE_WINDOW_S, now), self.deadline)


class UploadGate:
    """The per-process caps and deadlines of uploads (see the module docstring)."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self.max_uploads = settings.max_concurrent_uploads
        self.max_bytes = settings.max_upload_bytes_in_flight
        self.timeout_s = settings.upload_timeout_s
        self.idle_timeout_s = settings.upload_idle_timeout_s
        self.metrics = metrics
        self.uploads: set[Upload] = set()
        self.reserved = 0

    @contextmanager
    def admit(self, declared_length: int | None) -> Iterator[Upload]:
        """Hold a place (and the declared bytes) for one upload until the block ends."""
        now = time.monotonic()
        need = declared_length or 0
        while not self._room(len(self.uploads), self.reserved, need):
            victim = self._most_doomed(now)
            if victim is None:
                raise self._busy(now, need)
            self._evict(victim)
        upload = Upload(declared_length, now + self.timeout_s, reserved=need)
        self._add(upload)
        try:
            yield upload
        finally:
            self._remove(upload)

    async def body(self, upload: Upload, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` under ``upload``'s deadlines; a chunked body reserves as it comes."""
        iterator = chunks.__aiter__()
        upload.reading_since = time.monotonic()
        while True:
            chunk = await self._next(upload, iterator)
            if upload.evicted:  # evicted while the chunk was on its way
                raise self._cut(upload)
            if chunk is None:
                break
            upload.received += len(chunk)
            if upload.received > upload.reserved:
                self._grow(upload, upload.received - upload.reserved)
            yield chunk
        upload.reading = False

    async def _next(self, upload: Upload, iterator: AsyncIterator[bytes]) -> bytes | None:
        """The next chunk, or None at the end; 408 past a deadline or when evicted."""
        if upload.evicted:
            raise self._cut(upload)
        wait_s = min(self.idle_timeout_s, upload.deadline - time.monotonic())
        with anyio.move_on_after(max(wait_s, 0)) as scope:
            upload.wait_scope = scope
            try:
                return await iterator.__anext__()
            except StopAsyncIteration:
                return None
            finally:
                upload.wait_scope = None
        raise self._cut(upload)

    def _cut(self, upload: Upload) -> RequestTimeoutError:
        if upload.evicted:
            reason = "evicted"
            detail = (
                f"the upload came too slowly to end before its {self.timeout_s:g} s deadline, "
                "and the gateway needed its place"
            )
        elif time.monotonic() >= upload.deadline:
            reason = "timeout"
            detail = f"the upload did not arrive within {self.timeout_s:g} s"
        else:
            reason = "idle"
            detail = f"the upload paused for more than {self.idle_timeout_s:g} s"
        self.metrics.uploads_refused.labels(reason).inc()
        return RequestTimeoutError(detail)

    def fits_by(self, now: float, need: int, excluding: Upload | None = None) -> float:
        """When an upload of ``need`` bytes is expected to fit beside the others (all but
        ``excluding``): they free in the order :meth:`Upload.frees_by` expects, until there are
        both a place and the bytes; the Retry-After of a 503."""
        held = sorted(
            (upload.frees_by(now), upload.reserved)
            for upload in self.uploads
            if upload is not excluding
        )
        count, reserved, when = len(held), sum(size for _, size in held), now
        for frees, size in held:
            if self._room(count, reserved, need):
                break
            count, reserved, when = count - 1, reserved - size, frees
        return when

    def _room(self, count: int, reserved: int, need: int) -> bool:
        """Whether an upload of ``need`` bytes fits beside ``count`` uploads holding
        ``reserved``. One upload alone always fits, so a byte cap under the upload limit
        cannot refuse all."""
        return count < self.max_uploads and (not count or reserved + need <= self.max_bytes)

    def _grow(self, upload: Upload, extra: int) -> None:
        need = upload.reserved + extra
        others = len(self.uploads) - 1, self.reserved - upload.reserved
        if not self._room(*others, need):
            raise self._busy(time.monotonic(), need, excluding=upload)
        upload.reserved += extra
        self.reserved += extra
        self._publish()

    def _most_doomed(self, now: float) -> Upload | None:
        doomed = [upload for upload in self.uploads if upload.doomed(now)]
        return max(doomed, key=lambda upload: upload.finish_s(now), default=None)

    def _evict(self, upload: Upload) -> None:
        """Give ``upload``'s place away now; its reader is cut (408) at once."""
        upload.evicted = True
        self._remove(upload)
        if upload.wait_scope is not None:
            upload.wait_scope.cancel()

    def _busy(
        self, now: float, need: int, excluding: Upload | None = None
    ) -> ServiceUnavailableError:
        """503 (counted as refused ``busy``); Retry-After is when the upload is expected to fit
        (:meth:`fits_by`), a second at least and the upload deadline at most."""
        self.metrics.uploads_refused.labels("busy").inc()
        retry_s = max(1, math.ceil(self.fits_by(now, need, excluding) - now))
        return ServiceUnavailableError(
            f"the gateway is reading {len(self.uploads)} uploads ({self.reserved} bytes), its "
            f"limit of {self.max_uploads} uploads or {self.max_bytes} bytes at once; retry in "
            f"{retry_s} s",
            public=True,
            retry_after_s=retry_s,
        )

    def _add(self, upload: Upload) -> None:
        self.uploads.add(upload)
        self.reserved += upload.reserved
        self._publish()

    def _remove(self, upload: Upload) -> None:
        if upload in self.uploads:
            self.uploads.discard(upload)
            self.reserved -= upload.reserved
            self._publish()

    def _publish(self) -> None:
        self.metrics.uploads_in_flight.set(len(self.uploads))
        self.metrics.upload_bytes_in_flight.set(self.reserved)
