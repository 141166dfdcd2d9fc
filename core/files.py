"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The rename is atomic on POSIX, so on any failure (full disk, a crash, Ctrl-C) ``path`` is
    either absent or the previous complete file, and the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    # os.open with 0o666 lets the umask decide the mode, as for any file the user writes.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(path: Path, fill: Callable[[Path], None]) -> None:
    """Make ``path`` a folder written by ``fill`` (given an empty folder), all or nothing.

    ``fill`` writes into a temporary sibling; only when it returns is the sibling renamed to
    ``path`` (a previous folder there is moved aside first and removed after). A failure
    leaves any previous ``path`` as it was and no temporary folder behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
    tmp.mkdir()
    try:
        fill(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
