"""Resume points of MegaSR training: everything that makes step ``s + 1`` what it would have
been had the run never stopped.

A resume point holds the trainable weights only (the frozen U-Net, VAE and encoders are
the starting checkpoint's and never change), the optimizer's moments, the learning-rate
schedule, the EMA and the fp16 loss scaler when they exist, and the step. The data stream
and every random draw are functions of the seed and the step (see
:mod:`megasr.model.training.data`), so no random-generator state needs saving. Each point
is written to a temporary folder and renamed, so a crash mid-save leaves the previous
points intact and never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from megasr.errors import InvalidParameterError

STATE_FORMAT = 1
STATE_FILE = "state.json"
WEIGHTS_FILE = "trainable.safetensors"
PREFIX = "step-"


class RunKey(Protocol):
    """A frozen dataclass of what must match between the run that wrote a resume point and
    the run that resumes it (its fields are compared by name)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


@dataclass(frozen=True)
class ResumeKey:
    """MegaSR training's :class:`RunKey`: the global batch and its split."""

    seed: int
    batch_size: int
    micro_batch_size: int
    world_size: int


def state_dir(states: Path, step: int) -> Path:
    return states / f"{PREFIX}{step:08d}"


def save_state(
    target: Path,
    step: int,
    key: RunKey,
    trainable: dict[str, nn.Parameter],
    parts: dict[str, Any],
) -> None:
    """Write a resume point; ``parts`` are objects with ``state_dict`` (optimizer, ...)."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    weights = {name: param.detach().float().cpu().contiguous() for name, param in trainable.items()}
    save_file(weights, staging / WEIGHTS_FILE)
    for name, part in parts.items():
        torch.save(part.state_dict(), staging / f"{name}.pt")
    record = {"format": STATE_FORMAT, "step": step, "key": key.__dict__, "parts": sorted(parts)}
    (staging / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def load_state(
    source: Path, key: RunKey, trainable: dict[str, nn.Parameter], parts: dict[str, Any]
) -> int:
    """Restore a resume point into the live objects; returns its step."""
    record = read_record(source)
    if record["key"] != key.__dict__:
        raise InvalidParameterError(
            f"{source} was written with {record['key']}; resuming it needs the same "
            f"{', '.join(key.__dict__)}, not {key.__dict__}"
        )
    missing = sorted(set(parts) - set(record["parts"]))
    if missing:
        raise InvalidParameterError(f"{source} has no {', '.join(missing)} to resume from")
    weights = load_file(source / WEIGHTS_FILE)
    if set(weights) != set(trainable):
        raise InvalidParameterError(f"{source} does not hold this model's trainable weights")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name])
    for name, part in parts.items():
        part.load_state_dict(torch.load(source / f"{name}.pt", weights_only=True))
    return int(record["step"])


def read_record(source: Path) -> dict[str, Any]:
    path = source / STATE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidParameterError(f"{source} is not a resume point: {error}") from error
    if record.get("format") != STATE_FORMAT:
        raise InvalidParameterError(f"{source}: resume point format {record.get('format')!r}")
    return record


def resume_point(states: Path, option: str, advice: str) -> Path | None:
    """The resume point ``option`` names: ``latest`` (the newest in ``states``, if any),
    ``none`` (no point; refused, with ``advice``, when ``states`` holds some) or a folder."""
    if option == "none":
        if latest_state(states) is not None:
            raise InvalidParameterError(
                f"{states} holds resume points of another run: resume it {advice}"
            )
        return None
    return latest_state(states) if option == "latest" else Path(option)


def latest_state(states: Path) -> Path | None:
    """The complete resume point with the highest step, if any."""
    points = sorted(p for p in states.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())
    return points[-1] if points else None


def prune_states(states: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest resume points."""
    points = sorted(p for p in states.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file())
    for old in points[:-keep]:
        shutil.rmtree(old)
