"""The MegaSR checkpoint a training run keeps up to date in ``OUTPUT/model``.

It is a complete checkpoint (``megasr model info`` reads it, the ``megasr`` engine serves it):
the frozen parts come from the starting checkpoint once, hard-linked where the file system
allows (SD-2-base is 5 GB) and copied elsewhere; the trained parts (the ControlNet and the
adapter) are rewritten at every checkpoint, each file through a rename, so a reader sees
either the previous version of a file or the new one. The config records where the weights
came from and after how many steps.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from megasr.files import write_atomic
from megasr.model.megasr.checkpoint import (
    CONFIG_FILE,
    TRAINABLE_PARTS,
    read_config,
    save_trained_weights,
)
from megasr.model.megasr.denoiser import MegaSRDenoiser


def export_model(denoiser: MegaSRDenoiser, start: Path, out: Path, step: int) -> None:
    """Write ``denoiser``'s trained parts into the checkpoint at ``out`` (made from ``start``)."""
    config = read_config(start)
    if not (out / CONFIG_FILE).is_file():
        shutil.copytree(
            start,
            out,
            ignore=shutil.ignore_patterns(CONFIG_FILE, *TRAINABLE_PARTS),
            copy_function=_link_or_copy,
            dirs_exist_ok=True,
        )
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_trained_weights(denoiser, staging)
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = out / file.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sources = {**config.sources, "trained_from": str(start), "trained_steps": str(step)}
    write_atomic(out / CONFIG_FILE, replace(config, sources=sources).to_json().encode())


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
