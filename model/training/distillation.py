"""The loop both prior-guided fine-tunings share: a student on degraded LR images learns to
answer as its frozen teacher answers on the HR images.

Each step crops a batch of HR photographs, degrades it on the device with the Real-ESRGAN
model (drawn from the seed and the step, so a run is repeatable), and takes one AdamW step
on the student's loss under autocast. Held-out images, degraded the same way from the seed
and their names, are measured before the first step and after the last, so a run reports
what it changed on images it never trained on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
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
from megasr.model.evaluation.degradations import image_generator
from megasr.model.training.data import SampleNumbers, TrainingCrops, center_crop, collate


class Student(Protocol):
    """What :func:`distill` trains: an ``nn.Module`` with a loss, distances and a writer."""

    def parameters(self) -> Sequence[nn.Parameter]: ...
    def to(self, *args: object, **kwargs: object) -> nn.Module: ...
    def loss(self, hr: Tensor, lr: Tensor) -> Tensor: ...
    def distances(self, hr: Tensor, lr: Tensor) -> dict[str, float]: ...
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
    held_out_side: int = 512
    """Held-out images are centre-cropped to at most this side (and to multiples of 4)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "held_out_side"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"{name} must be at least 1")
        if self.learning_rate <= 0 or self.workers < 0:
            raise InvalidParameterError("learning_rate must be positive and workers >= 0")


@dataclass
class DistillReport:
    """What a run did: losses at its start and end, held-out distances before and after."""

    steps: int
    seconds: float
    first_loss: float
    last_loss: float
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def distill(
    student: Student,
    crops: TrainingCrops,
    degradation: RealESRGANDegradation,
    options: DistillOptions,
    device: torch.device,
    dtype: torch.dtype,
    held_out: Sequence[tuple[str, Tensor]] = (),
    quiet: bool = False,
) -> DistillReport:
    """Fine-tune ``student`` in place for ``options.steps`` steps."""
    student.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=options.learning_rate, weight_decay=options.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    pairs = _held_out_pairs(held_out, degradation, options, device)
    before = _measure(student, pairs, device, dtype, "held-out before", quiet)
    loader = DataLoader(
        crops,
        batch_size=options.batch_size,
        sampler=SampleNumbers(0, options.batch_size),
        num_workers=options.workers,
        collate_fn=collate,
    )
    losses: list[float] = []
    skipped: list[str] = []
    start = time.perf_counter()
    bar = tqdm(total=options.steps, desc="fine-tuning", unit="step", disable=quiet, file=sys.stderr)
    for step, batch in zip(range(options.steps), loader, strict=False):
        _note_skipped(batch["skipped"], skipped, bar)
        hr = batch["hr"].to(device)
        lr = degradation(hr, derived_generator(options.seed, step))
        with _autocast(device, dtype):
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
    bar.close()
    seconds = time.perf_counter() - start
    window = max(1, len(losses) // 10)
    return DistillReport(
        steps=len(losses),
        seconds=seconds,
        first_loss=sum(losses[:window]) / window,
        last_loss=sum(losses[-window:]) / window,
        before=before,
        after=_measure(student, pairs, device, dtype, "held-out after", quiet),
        skipped=skipped,
    )


def _held_out_pairs(
    images: Sequence[tuple[str, Tensor]],
    degradation: RealESRGANDegradation,
    options: DistillOptions,
    device: torch.device,
) -> list[tuple[Tensor, Tensor]]:
    """(HR, LR) of every held-out image; the LR is drawn from the seed and the image's name."""
    scale = degradation.config.scale
    pairs = []
    for name, image in images:
        hr = center_crop(image, options.held_out_side, scale)[None].to(device)
        pairs.append((hr, degradation(hr, image_generator(options.seed, name))))
    return pairs


def _measure(
    student: Student,
    pairs: list[tuple[Tensor, Tensor]],
    device: torch.device,
    dtype: torch.dtype,
    label: str,
    quiet: bool,
) -> dict[str, float]:
    """Mean of each distance over the held-out images (none: an empty dict)."""
    totals: dict[str, float] = {}
    shown = tqdm(pairs, desc=label, unit="image", disable=quiet or not pairs, file=sys.stderr)
    for hr, lr in shown:
        with _autocast(device, dtype):
            for name, value in student.distances(hr, lr).items():
                totals[name] = totals.get(name, 0.0) + value
    return {name: total / len(pairs) for name, total in totals.items()}


def _autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _note_skipped(paths: list[str], skipped: list[str], bar: tqdm) -> None:
    for path in paths:
        if path not in skipped:
            skipped.append(path)
            bar.write(f"megasr train: skipped {path}", file=sys.stderr)
