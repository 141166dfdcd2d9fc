"""A MegaSR checkpoint of format 2 (before the diffusers pipeline layout), rebuilt from its
manifest in ``tests/data/megasr-format2``.

The manifest was written by the code that made format-2 checkpoints (commit 6385302): every
JSON and text file of a tiny checkpoint verbatim, and for every tensor of its safetensors
files the name, shape and dtype, with the values themselves for integer tensors and the
mean, standard deviation and minimum for float ones. :func:`write_format2` writes the same
layout back with float values drawn from those statistics, seeded by the tensor's name, so
the checkpoint is the same on every run; ``expected.npy`` is what that code's ``megasr``
engine made of ``lr.npy`` with this checkpoint (seed 3, 2 steps).
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURE = Path(__file__).parent / "data" / "megasr-format2"
MANIFEST = "manifest.json"
FILES = "files"


def synthesized(name: str, entry: dict) -> torch.Tensor:
    """The tensor ``name`` of the manifest: exact for integers, drawn for floats."""
    dtype = getattr(torch, entry["dtype"])
    if "values" in entry:
        return torch.tensor(entry["values"], dtype=dtype).reshape(entry["shape"])
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    values = torch.randn(entry["shape"], generator=generator, dtype=torch.float64)
    values = entry["mean"] + entry["std"] * values
    if entry["min"] >= 0:
        values = values.abs()
    return values.to(dtype)


def write_format2(out: Path) -> Path:
    """A format-2 checkpoint at ``out``, rebuilt from the manifest."""
    shutil.copytree(FIXTURE / FILES, out)
    manifest = json.loads((FIXTURE / MANIFEST).read_text())
    for file, tensors in manifest.items():
        state = {key: synthesized(f"{file}:{key}", entry) for key, entry in tensors.items()}
        save_file(state, out / file, metadata={"format": "pt"})
    return out
