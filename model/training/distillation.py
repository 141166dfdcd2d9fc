"""The loop both prior-guided fine-tunings share: a student on degraded LR images learns to
answer as its frozen teacher answers on the HR images.

Each step crops a batch of HR photographs, degrades it on the device with the Real-ESRGAN
model (drawn from the seed and the step, so a run is repeatable), and takes one AdamW step
on the student's loss under autocast. Every ``checkpoint_every`` steps (and at the last) a
resume point is written (the trainable weights, AdamW's moments, the fp16 loss scaler), so
a killed run loses at most that many steps: sample ``n`` and the degradation of step ``s``
are functions of the seed alone, so a resumed run ends with the same weights, bit for bit,
as one that never stopped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from megasr.errors import InvalidParameterError
from megasr.model.degradation import RealESRGANDegradation
from megasr.model.degradation.draws import derived_generator
from megasr.model.training.data import SampleNumbers, TrainingCrops, collate
from megasr.model.training.train_state import (
    load_state,
    prune_states,
    resume_point,
    save_state,
    state_dir,
)

RESUME_CHOICES = ("latest", "none")


class Student(Protocol):
    """What :func:`distill` trains: an ``nn.Module`` with a loss and a writer."""

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def to(self, *args: object, **kwargs: object) -> nn.Module: ...
    def loss(self, hr: Tensor, lr: Tensor) -> Tensor: ...
    def save(self, out: Path) -> None: ...


@dataclass(frozen=True)
class DistillOptions:
    """The optimisation of a fine-tuning run."""

    steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 100
    keep: int = 2
    """Resume points kept; older ones are deleted."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name} must be at least 1")
        if self.learning_rate <= 0 or self.workers < 0:
            raise InvalidParameterError("learning_rate must be positive and workers >= 0")


@dataclass(frozen=True)
class DistillKey:
    """What must match between the run that wrote a resume point and the run resuming it."""

    seed: int
    batch_size: int
    crop: int
    objective: str


@dataclass
class DistillReport:
    """What a run did: its steps (from ``first_step``), the losses at its start and end."""

    first_step: int
    steps: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    skipped: list[str] = field(default_factory=list)


def distill(
    student: Student,
    crops: TrainingCrops,
    degradation: RealESRGANDegradation,
    options: DistillOptions,
    device: torch.device,
    dtype: torch.dtype,
    states: Path,
    key: DistillKey,
    resume: str = "latest",
    quiet: bool = False,
) -> DistillReport:
    """Fine-tune ``student`` in place up to step ``options.steps``, from the resume point in
    ``states`` that ``resume`` names (``latest``, ``none`` or a folder)."""
    student.to(device)
    trainable = {name: p for name, p in student.named_parameters() if p.requires_grad}
    params = list(trainable.values())
    optimizer = torch.optim.AdamW(
        params, lr=options.learning_rate, weight_decay=options.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    parts = {"optimizer": optimizer, **({"scaler": scaler} if scaler.is_enabled() else {})}
    first = _resume(states, resume, key, trainable, parts)
    if first > options.steps:
        raise InvalidParameterError(f"the resume point is at step {first}, past --steps")
    loader = DataLoader(
        crops,
        batch_size=options.batch_size,
        sampler=SampleNumbers(first, options.batch_size),
        num_workers=options.workers,
        collate_fn=collate,
    )
    losses: list[float] = []
    skipped: list[str] = []
    start = time.perf_counter()
    bar = tqdm(total=options.steps, initial=first, desc="fine-tuning", unit="step",
               disable=quiet, file=sys.stderr, mininterval=_interval())  # fmt: skip
    for step, batch in zip(range(first, options.steps), loader, strict=False):
        _note_skipped(batch["skipped"], skipped, bar)
        hr = batch["hr"].to(device)
        lr = degradation(hr, derived_generator(options.seed, step))
        with autocast(device, dtype):
            loss = student.loss(hr, lr)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        bar.update()
        done = step + 1
        if done % options.checkpoint_every == 0 or done == options.steps:
            save_state(state_dir(states, done), done, key, trainable, parts)
            prune_states(states, options.keep)
    bar.close()
    window = max(1, len(losses) // 10)
    return DistillReport(
        first_step=first,
        steps=len(losses),
        seconds=time.perf_counter() - start,
        first_loss=sum(losses[:window]) / window if losses else None,
        last_loss=sum(losses[-window:]) / window if losses else None,
        skipped=skipped,
    )


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Autocast in ``dtype`` (float32: none)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _resume(states: Path, resume: str, key: DistillKey, trainable: dict, parts: dict) -> int:
    """The step the run starts at, after loading the resume point ``resume`` names."""
    source = resume_point(states, resume, "(--resume latest), delete it, or write elsewhere")
    return 0 if source is None else load_state(source, key, trainable, parts)


def _interval() -> float:
    """Redraw the bar often on a terminal, every 30 s into a log file."""
    return 0.1 if sys.stderr.isatty() else 30.0


def _note_skipped(paths: Sequence[str], skipped: list[str], bar: tqdm) -> None:
    for path in paths:
        if path not in skipped:
            skipped.append(path)
            bar.write(f"megasr train: skipped {path}", file=sys.stderr)
