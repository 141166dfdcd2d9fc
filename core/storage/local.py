"""Storage in a local directory: the default, and what `megasr serve` uses."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from megasr.errors import NotFoundError, ServiceUnavailableError
from megasr.files import write_atomic
from megasr.storage.base import CHUNK_SIZE, KEY_FOLDERS, check_key, is_project_key


class LocalStorage:
    """Objects as files under ``root``; writes go to a temporary file renamed into place,
    so a reader never sees half an object."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        try:
            write_atomic(self.path(key), data)
        except OSError as exc:
            raise ServiceUnavailableError(f"cannot write {key} to {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no stored object {key}") from exc

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            handle = self.path(key).open("rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"no stored object {key}") from exc
        return _chunks(handle, chunk_size)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def url(self, key: str, expires_s: int) -> str | None:
        return None

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ping-"):
                pass
        except OSError as exc:
            raise ServiceUnavailableError(f"storage directory {self.root} unusable: {exc}") from exc

    def sweep(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        removed = 0
        paths = (path for folder in KEY_FOLDERS for path in (self.root / folder).glob("*/*"))
        for path in paths:
            key = path.relative_to(self.root).as_posix()
            if is_project_key(key) and path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
                _remove_if_empty(path.parent)
        return removed


def _chunks(handle, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()
