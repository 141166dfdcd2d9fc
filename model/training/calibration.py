"""Recalibration controls: monotone remaps with few parameters, fitted on training photos.

A fine-tuned extractor can move closer to its teacher in two ways: by seeing structure in the
degraded image that the pretrained network misses, or merely by answering louder or softer
(the pretrained HED on a blurred image draws the right edges, only faintly). A remap with
one or two parameters of the *untouched* pretrained output, fitted on the training photos,
does the second and cannot do the first; a fine-tune that does not beat it on held-out
photos has learned calibration, not structure.

- HED: ``sigmoid(a * logit(p) + b)`` (2 parameters), fitted to the mean absolute difference.
- Depth: ``d ** gamma`` on the per-image [0, 1] stretch (1 parameter; the measures are
  already invariant to scale and shift), fitted to the scale-and-shift-invariant L1.
- Segmentation: ``logits / T + b_c`` (temperature and one bias per class), fitted to the
  KL divergence from the teacher; the biases can move the argmax, so mIoU may change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FIT_STEPS = 300
FIT_PIXELS = 1 << 20
"""Pixels (sampled evenly) the fits read; a million pins two or a hundred parameters down."""
GAMMAS = np.exp(np.linspace(np.log(0.25), np.log(4.0), 41))


@dataclass(frozen=True)
class LogitRemap:
    """``p -> sigmoid(a * logit(p) + b)`` of edge probabilities."""

    a: float
    b: float

    def __call__(self, maps: Tensor) -> Tensor:
        return torch.sigmoid(self.a * _logit(maps) + self.b)

    def __str__(self) -> str:
        return f"sigmoid({self.a:.3f} * logit(p) + {self.b:.3f})"


@dataclass(frozen=True)
class PowerRemap:
    """``d -> stretch(d) ** gamma`` of relative depth, stretched to [0, 1] per image."""

    gamma: float

    def __call__(self, depth: Tensor) -> Tensor:
        flat = depth.float().flatten(1)
        low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        stretched = (flat - low) / (high - low).clamp_min(1e-12)
        return stretched.pow(self.gamma).view_as(depth)

    def __str__(self) -> str:
        return f"stretch(d) ** {self.gamma:.3f}"


@dataclass(frozen=True)
class ClassRemap:
    """``logits -> logits / T + b`` with one bias per class."""

    temperature: float
    bias: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        return logits.float() / self.temperature + self.bias.view(1, -1, 1, 1).to(logits.device)

    def __str__(self) -> str:
        return f"logits / {self.temperature:.3f} + b ({self.bias.numel()} class biases)"


Remap = LogitRemap | PowerRemap | ClassRemap


def fit_logit_remap(outputs: Sequence[Tensor], references: Sequence[Tensor]) -> LogitRemap:
    """The ``a > 0`` and ``b`` that minimise the mean |difference| to the references."""
    logits, reference = _logit(_pixels(outputs)), _pixels(references)
    log_a = torch.zeros((), requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.Adam([log_a, b], lr=0.05)
    for _ in range(FIT_STEPS):
        optimizer.zero_grad()
        loss = (torch.sigmoid(log_a.exp() * logits + b) - reference).abs().mean()
        loss.backward()
        optimizer.step()
    return LogitRemap(log_a.exp().item(), b.item())


def fit_power_remap(
    outputs: Sequence[Tensor],
    references: Sequence[Tensor],
    error: Callable[[Tensor, Tensor], float],
) -> PowerRemap:
    """The gamma of a log grid that minimises ``error`` summed over the images."""

    def total(gamma: float) -> float:
        remap = PowerRemap(gamma)
        return sum(error(remap(o), r) for o, r in zip(outputs, references, strict=True))

    return PowerRemap(float(min(GAMMAS, key=total)))


def fit_class_remap(outputs: Sequence[Tensor], references: Sequence[Tensor]) -> ClassRemap:
    """The temperature and class biases that minimise KL(teacher || remapped)."""
    student = _class_pixels(outputs)
    teacher = F.softmax(_class_pixels(references), dim=1)
    log_t = torch.zeros((), requires_grad=True)
    bias = torch.zeros(student.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([log_t, bias], lr=0.05)
    for _ in range(FIT_STEPS):
        optimizer.zero_grad()
        log_probs = F.log_softmax(student / log_t.exp() + bias, dim=1)
        loss = -(teacher * log_probs).sum(1).mean()  # the KL up to the teacher's entropy
        loss.backward()
        optimizer.step()
    return ClassRemap(log_t.exp().item(), bias.detach().clone())


def _logit(maps: Tensor) -> Tensor:
    return torch.logit(maps.float().clamp(1e-6, 1 - 1e-6))


def _pixels(maps: Sequence[Tensor]) -> Tensor:
    """Every map's values in one vector, thinned evenly to at most ``FIT_PIXELS``."""
    flat = torch.cat([m.float().flatten().cpu() for m in maps])
    return flat[:: max(1, flat.numel() // FIT_PIXELS)]


def _class_pixels(logits: Sequence[Tensor]) -> Tensor:
    """(pixels, classes) of (B, C, h, w) logits, thinned evenly to at most ``FIT_PIXELS``."""
    flat = torch.cat([m.float().cpu().permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in logits])
    return flat[:: max(1, flat.numel() // FIT_PIXELS)]
