"""Converted weights, cached on disk as safetensors.

Converting the ncnn weights takes a fraction of a second, but a worker may start many times
and several may start at once, so the result is written once and reused. The file records
the sha256 of the source it came from and of its own tensors: a cache built from other
weights, or damaged on disk, is detected on load and rebuilt rather than trusted. Writes go
to a temporary file that is renamed into place, so a reader never sees half a file, and two
processes converting at once both end with a whole one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SOURCE_SHA256_KEY = "source_sha256"
TENSORS_SHA256_KEY = "tensors_sha256"


def cached_state_dict(
    path: Path,
    source_sha256: str,
    convert: Callable[[], Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """The state dict cached at ``path`` for ``source_sha256``, converting on a miss.

    ``convert`` runs only when the file is absent, unreadable, from another source, or its
    tensors no longer match the checksum it was written with.
    """
    state = _read_valid(path, source_sha256)
    if state is not None:
        return state
    state = {name: tensor.contiguous() for name, tensor in convert().items()}
    _write_atomic(path, state, source_sha256)
    return state


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A checksum of names, dtypes, shapes and bytes, independent of dict order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy())
    return digest.hexdigest()


def _read_valid(path: Path, source_sha256: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        logger.warning("rebuilding unreadable weights cache %s: %s", path, exc)
        return None
    if metadata.get(SOURCE_SHA256_KEY) != source_sha256:
        logger.warning("rebuilding weights cache %s: it was built from other weights", path)
        return None
    if metadata.get(TENSORS_SHA256_KEY) != tensors_sha256(state):
        logger.warning("rebuilding weights cache %s: its tensors fail their checksum", path)
        return None
    return state


def _write_atomic(path: Path, state: dict[str, torch.Tensor], source_sha256: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {SOURCE_SHA256_KEY: source_sha256, TENSORS_SHA256_KEY: tensors_sha256(state)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
