"""How much a prior-guided fine-tune helps, against the two controls a reviewer asks for.

Every photo is centre-cropped, degraded once (from the seed and its name, the training
degradation) and upscaled bicubically, as MegaSR feeds its extractors. The target of every
measure is the pretrained extractor on the HR photo. Rows:

- ``pretrained``: the untouched extractor on the LR photo;
- ``recalibrated``: the same outputs through a monotone remap with one or two parameters
  (a temperature and class biases for segmentation) fitted on the *training* photos
  (:mod:`megasr.model.training.calibration`);
- each candidate (a fine-tuned extractor) on the LR photo.

Measures, on the held-out photos only:

- HED: ODS (the threshold that maximises F over the training photos, applied unchanged),
  OIS, precision and recall at the ODS threshold, all with thinned edges matched one to one
  (:mod:`megasr.model.training.edge_matching`), and the mean absolute difference of the
  probabilities;
- depth: the scale-and-shift-invariant L1 (each map minus its median over its mean absolute
  deviation), and after a least-squares scale and shift onto the target, the absolute
  relative error and the share of pixels within a factor 1.25 (δ<1.25), on the model's own
  output (relative inverse depth for MiDaS-family models);
- segmentation: the mIoU of the most likely classes (intersections and unions summed over
  the photos, averaged over the classes present in either map), the share of pixels whose
  class agrees, and the KL divergence from the target's class probabilities.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from megasr.model.degradation import RealESRGANDegradation
from megasr.model.evaluation.degradations import image_generator
from megasr.model.training.calibration import (
    Remap,
    fit_class_remap,
    fit_logit_remap,
    fit_power_remap,
)
from megasr.model.training.data import center_crop
from megasr.model.training.edge_matching import (
    THRESHOLDS,
    EdgeCounts,
    at_threshold,
    best_threshold,
    edge_counts,
    per_image_best,
    reference_edges,
)
from megasr.model.training.inputs import upscale_to

Predict = Callable[[Tensor], Tensor]
"""An extractor's raw output (edges, depth or class logits) of RGB images in [0, 1]."""

DELTA = 1.25


@dataclass(frozen=True)
class Photo:
    """One evaluation photo: the HR crop, its degraded LR, and the LR upscaled to the HR size
    (what the dense extractors see)."""

    name: str
    hr: Tensor
    lr: Tensor
    lr_up: Tensor


@dataclass
class Row:
    """One line of the comparison: a name and its measures on the held-out photos."""

    name: str
    scores: dict[str, float]
    note: str = ""


def degraded_photos(
    images: Sequence[tuple[str, Tensor]],
    degradation: RealESRGANDegradation,
    seed: int,
    side: int,
    device: torch.device,
) -> list[Photo]:
    """Each (name, (3, H, W)) image centre-cropped to ``side``, degraded from the seed and
    its name, and upscaled back."""
    photos = []
    for name, image in images:
        hr = center_crop(image, side, degradation.config.scale)[None].to(device)
        lr = degradation(hr, image_generator(seed, name))
        photos.append(Photo(name, hr, lr, upscale_to(lr, hr)))
    return photos


class Measures(Protocol):
    """The measures of one kind of extractor, holding the targets of both photo sets."""

    def scores(self, train: list[Tensor], held_out: list[Tensor]) -> dict[str, float]: ...
    def fit(self, train: list[Tensor]) -> Remap: ...


@dataclass
class PGFTEvaluation:
    """Candidates against the pretrained and recalibrated controls on the same photos."""

    kind: str
    reference: Predict
    train: list[Photo]
    held_out: list[Photo]
    autocast: Callable[[], AbstractContextManager]
    quiet: bool = False
    measures: Measures = field(init=False)

    def __post_init__(self) -> None:
        train = self._run(self.reference, self.train, "targets (training photos)", hr=True)
        held = self._run(self.reference, self.held_out, "targets (held-out photos)", hr=True)
        self.measures = MEASURES[self.kind](train, held, self.quiet)

    def controls(self) -> list[Row]:
        """The pretrained extractor on the LR photos, as is and recalibrated."""
        train = self._run(self.reference, self.train, "pretrained (training photos)")
        held = self._run(self.reference, self.held_out, "pretrained (held-out photos)")
        remap = self.measures.fit(train)
        return [
            Row("pretrained", self.measures.scores(train, held)),
            Row(
                "recalibrated",
                self.measures.scores([remap(o) for o in train], [remap(o) for o in held]),
                note=str(remap),
            ),
        ]

    def row(self, name: str, predict: Predict) -> Row:
        """A candidate extractor on the LR photos."""
        train = self._run(predict, self.train, f"{name} (training photos)")
        held = self._run(predict, self.held_out, f"{name} (held-out photos)")
        return Row(name, self.measures.scores(train, held))

    @torch.no_grad()
    def _run(self, predict: Predict, photos: list[Photo], label: str, hr: bool = False) -> list:
        outputs = []
        shown = tqdm(photos, desc=label, unit="photo", disable=self.quiet, file=sys.stderr)
        for photo in shown:
            with self.autocast():
                outputs.append(predict(photo.hr if hr else photo.lr_up).float().cpu())
        return outputs


class EdgeMeasures:
    """ODS / OIS with thinned, one-to-one matched edges, and the MAE (module docstring).

    Matching at 49 thresholds takes seconds a photo, so it draws its own progress bar."""

    def __init__(self, train: list[Tensor], held_out: list[Tensor], quiet: bool = False) -> None:
        self.train_maps, self.held_maps, self.quiet = train, held_out, quiet
        self.train_edges = [reference_edges(_plane(m)) for m in train]
        self.held_edges = [reference_edges(_plane(m)) for m in held_out]

    def scores(self, train: list[Tensor], held_out: list[Tensor]) -> dict[str, float]:
        fitted = self._counts(train, self.train_edges, "matching edges (training photos)")
        index = best_threshold(fitted)
        held = self._counts(held_out, self.held_edges, "matching edges (held-out photos)")
        ods = at_threshold(held, index)
        mae = [(o - r).abs().mean() for o, r in zip(held_out, self.held_maps, strict=True)]
        return {
            "ods_f": ods.f,
            "ods_precision": ods.precision,
            "ods_recall": ods.recall,
            "ois_f": per_image_best(held).f,
            "mae": float(torch.stack(mae).mean()),
            "threshold": float(THRESHOLDS[index]),
        }

    def fit(self, train: list[Tensor]) -> Remap:
        return fit_logit_remap(train, self.train_maps)

    def _counts(self, maps: list[Tensor], edges: list, label: str) -> list[EdgeCounts]:
        pairs = tqdm(list(zip(maps, edges, strict=True)), desc=label, unit="photo",
                     disable=self.quiet, file=sys.stderr)  # fmt: skip
        return [edge_counts(_plane(m), e) for m, e in pairs]


class DepthMeasures:
    """Scale-and-shift-invariant L1, absolute relative error and δ<1.25 after alignment."""

    def __init__(self, train: list[Tensor], held_out: list[Tensor], quiet: bool = False) -> None:
        self.train_maps, self.held_maps = train, held_out

    def scores(self, train: list[Tensor], held_out: list[Tensor]) -> dict[str, float]:
        per_image = [_depth_scores(o, r) for o, r in zip(held_out, self.held_maps, strict=True)]
        return {name: sum(s[name] for s in per_image) / len(per_image) for name in per_image[0]}

    def fit(self, train: list[Tensor]) -> Remap:
        return fit_power_remap(train, self.train_maps, lambda o, r: float(ssi_l1(o, r)))


class SegmentationMeasures:
    """mIoU and agreement of the most likely classes, KL of the class probabilities."""

    def __init__(self, train: list[Tensor], held_out: list[Tensor], quiet: bool = False) -> None:
        self.train_logits, self.held_logits = train, held_out

    def scores(self, train: list[Tensor], held_out: list[Tensor]) -> dict[str, float]:
        classes = self.held_logits[0].shape[1]
        intersection = torch.zeros(classes)
        union = torch.zeros(classes)
        agree = pixels = 0.0
        divergence = []
        for output, target in zip(held_out, self.held_logits, strict=True):
            predicted, actual = output.argmax(1).flatten(), target.argmax(1).flatten()
            same = predicted == actual
            intersection += torch.bincount(actual[same], minlength=classes).float()
            union += (
                torch.bincount(predicted, minlength=classes)
                + torch.bincount(actual, minlength=classes)
            ).float()
            agree += float(same.sum())
            pixels += same.numel()
            divergence.append(float(class_kl(output, target)))
        union -= intersection
        present = union > 0
        return {
            "miou": float((intersection[present] / union[present]).mean()),
            "agreement": agree / pixels,
            "kl": sum(divergence) / len(divergence),
        }

    def fit(self, train: list[Tensor]) -> Remap:
        return fit_class_remap(train, self.train_logits)


MEASURES: dict[str, Callable[[list[Tensor], list[Tensor], bool], Measures]] = {
    "hed": EdgeMeasures,
    "depth": DepthMeasures,
    "seg": SegmentationMeasures,
}
COLUMNS = {
    "hed": (("ods_f", "ODS F"), ("ods_precision", "P"), ("ods_recall", "R"),
            ("ois_f", "OIS F"), ("mae", "MAE"), ("threshold", "thr")),
    "depth": (("ssi_l1", "SSI L1"), ("absrel", "AbsRel"), ("delta1", "δ<1.25")),
    "seg": (("miou", "mIoU"), ("agreement", "agree"), ("kl", "KL")),
    "clip": (("token_mse", "tokenMSE"), ("cosine", "cosine")),
}  # fmt: skip


def format_rows(kind: str, rows: Sequence[Row]) -> str:
    """The rows as an aligned text table, the notes (the fitted remaps) below it."""
    columns = COLUMNS[kind]
    width = max(len(row.name) for row in rows) + 2
    lines = [f"  {'':<{width}}" + "".join(f"{title:>9}" for _, title in columns)]
    for row in rows:
        values = "".join(f"{row.scores[key]:>9.4f}" for key, _ in columns)
        lines.append(f"  {row.name:<{width}}{values}")
    lines += [f"  {row.name}: {row.note}" for row in rows if row.note]
    return "\n".join(lines)


def ssi_l1(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean |difference| of relative depth maps (B, h, w) after each is centred on its median
    and divided by its mean absolute deviation (MiDaS's scale-and-shift-invariant L1)."""
    return (_normalised(student) - _normalised(teacher)).abs().mean()


def class_kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) over the classes of logits (B, C, h, w), averaged over pixels."""
    log_student = F.log_softmax(student.float(), dim=1)
    log_teacher = F.log_softmax(teacher.float(), dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()


def _normalised(depth: Tensor) -> Tensor:
    flat = depth.float().flatten(1)
    centred = flat - flat.median(dim=1, keepdim=True).values
    return centred / centred.abs().mean(dim=1, keepdim=True).clamp_min(1e-6)


def _depth_scores(output: Tensor, target: Tensor) -> dict[str, float]:
    """One image's depth measures; the output is aligned to the target by least squares."""
    o, t = output.float().flatten(), target.float().flatten()
    design = torch.stack((o, torch.ones_like(o)), dim=1)
    scale_shift = torch.linalg.lstsq(design, t[:, None]).solution
    aligned = (design @ scale_shift)[:, 0]
    valid = t > 1e-6 * t.abs().max().clamp_min(1e-12)
    aligned, t = aligned[valid].clamp_min(1e-6 * float(t.abs().max())), t[valid]
    ratio = torch.maximum(aligned / t, t / aligned)
    return {
        "ssi_l1": float(ssi_l1(output, target)),
        "absrel": float(((aligned - t).abs() / t).mean()),
        "delta1": float((ratio < DELTA).float().mean()),
    }


def _plane(edges: Tensor):
    """A (1, 1, H, W) edge map as a NumPy (H, W) array."""
    return edges[0, 0].numpy()
