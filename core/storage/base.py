"""The storage interface and the object keys every back end uses.

Keys are ``inputs/{job_id}/input.{ext}`` and ``outputs/{job_id}/output.{ext}``; nothing
else is ever written, and the retention sweep removes nothing else (:func:`is_project_key`),
so a bucket or folder shared with other data is safe. Missing
objects raise :class:`~megasr.errors.NotFoundError`; a back end that cannot be reached raises
:class:`~megasr.errors.ServiceUnavailableError`, so the gateway answers 404 or 503 without
knowing which back end it talks to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from megasr.errors import InvalidParameterError

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*$")
_PROJECT_KEY = re.compile(
    r"^(inputs/[A-Za-z0-9_-]+/input|outputs/[A-Za-z0-9_-]+/output)\.[a-z0-9]+$"
)
KEY_FOLDERS = ("inputs/", "outputs/")  # the only folders keys live in
_EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}
_CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}

CHUNK_SIZE = 256 * 1024


def input_key(job_id: str, image_format: str) -> str:
    return f"inputs/{job_id}/input.{_extension(image_format)}"


def output_key(job_id: str, image_format: str) -> str:
    return f"outputs/{job_id}/output.{_extension(image_format)}"


def content_type_for(image_format: str) -> str:
    """The MIME type of an image format name (``png``, ``jpeg``, ...)."""
    name = image_format.lower()
    return _CONTENT_TYPES.get(name, f"image/{name}")


def check_key(key: str) -> str:
    """Refuse keys that could escape a directory or confuse an object store."""
    if not _KEY_PATTERN.match(key) or ".." in key.split("/"):
        raise InvalidParameterError(f"invalid storage key {key!r}")
    return key


def is_project_key(key: str) -> bool:
    """Whether ``key`` has the form of an input or output key, the only ones a sweep removes."""
    return bool(_PROJECT_KEY.match(key))


def _extension(image_format: str) -> str:
    name = image_format.lower()
    return _EXTENSIONS.get(name, name)


@runtime_checkable
class Storage(Protocol):
    """Where the gateway puts inputs and the worker puts results."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any object there, all or nothing."""

    def get(self, key: str) -> bytes:
        """The object's bytes."""

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The object's bytes in chunks, for responses that should not hold it whole."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    def url(self, key: str, expires_s: int) -> str | None:
        """A URL a client can GET the object from directly, or None (serve it yourself)."""

    def ping(self) -> None:
        """Raise ServiceUnavailableError when the back end cannot be reached."""

    def sweep(self, older_than_s: float) -> int:
        """Remove objects older than ``older_than_s``; returns how many went."""
