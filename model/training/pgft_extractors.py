"""Output-level prior-guided fine-tuning (PGFT) of the dense guidance extractors.

MegaSR's extractors read the LR image (bicubic-upscaled), but were trained on clean photos.
PGFT makes each one see through the degradation: a frozen copy of the pretrained extractor
looks at the HR image and its output is the pseudo ground truth for the student, the same
network looking at the degraded LR image. The student's image encoder trains; its head
stays frozen, so the output keeps the meaning (and the scale) the rest of MegaSR expects.

- HED: binary cross-entropy of the student's edge logits against the teacher's edge
  probabilities. Encoder: the five VGG blocks; head: the side outputs and the fuse layer.
  Optionally distilled at the feature level too (``side_weight``: the same BCE on each of
  the five side outputs; ``feature_weight``: each block's features against the teacher's
  on the HR image, a squared error relative to the teacher's mean square), so the student
  is told where on the way to the edges it went wrong, not only how strong they came out.
- Depth: scale-and-shift-invariant L1 (MiDaS): each map is centred on its median and
  divided by its mean absolute deviation before the L1, since relative depth models only
  mean something up to scale and shift. Encoder: the ViT / backbone; head: neck and head.
- Segmentation: KL divergence from the teacher's class probabilities to the student's.
  Encoder: the backbone (SegFormer's encoder, UperNet's backbone); head: the decode heads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megasr.errors import EngineError
from megasr.files import replace_directory
from megasr.model.extractors.depth import DepthExtractor
from megasr.model.extractors.hed import HEDNet, caffe_input
from megasr.model.extractors.hed_weights import load_hed, save_hed
from megasr.model.extractors.segmentation import SegmentationExtractor
from megasr.model.training.inputs import upscale_to
from megasr.model.training.pgft_evaluation import class_kl, ssi_l1

ExtractorKind = Literal["hed", "depth", "seg"]
EXTRACTOR_KINDS: tuple[ExtractorKind, ...] = ("hed", "depth", "seg")


class HEDStudent(nn.Module):
    """HED on the upscaled LR, taught by HED on the HR."""

    def __init__(self, hed: HEDNet, side_weight: float = 0.0, feature_weight: float = 0.0) -> None:
        super().__init__()
        if side_weight < 0 or feature_weight < 0:
            raise EngineError("the side-output and feature weights must be at least 0")
        self.teacher = copy.deepcopy(hed).eval().requires_grad_(False)
        self.student = hed.requires_grad_(False)
        for param in hed.encoder_parameters():
            param.requires_grad_(True)
        self.side_weight, self.feature_weight = side_weight, feature_weight

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        student_input = caffe_input(upscale_to(lr, hr))
        if not self.side_weight and not self.feature_weight:
            with torch.no_grad():
                target = torch.sigmoid(self.teacher(caffe_input(hr)).float())
            return _bce(self.student(student_input), target)
        with torch.no_grad():
            teacher_features, teacher_sides, teacher_fused = self.teacher.stages(caffe_input(hr))
        features, sides, fused = self.student.stages(student_input)
        loss = _bce(fused, torch.sigmoid(teacher_fused.float()))
        if self.side_weight:
            side_losses = [
                _bce(side, torch.sigmoid(target.float()))
                for side, target in zip(sides, teacher_sides, strict=True)
            ]
            loss = loss + self.side_weight * torch.stack(side_losses).mean()
        if self.feature_weight:
            feature_losses = [
                (feature.float() - target.float()).pow(2).mean()
                / target.float().pow(2).mean().clamp_min(1e-12)
                for feature, target in zip(features, teacher_features, strict=True)
            ]
            loss = loss + self.feature_weight * torch.stack(feature_losses).mean()
        return loss

    @torch.no_grad()
    def reference(self, images: Tensor) -> Tensor:
        """The pretrained HED's edge probabilities (B, 1, H, W)."""
        return self.teacher.edges(images)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """The student's edge probabilities (B, 1, H, W)."""
        return self.student.edges(images)

    def save(self, out: Path) -> None:
        """A ``.safetensors`` file that ``--hed`` of ``megasr model init`` loads."""
        if out.suffix != ".safetensors":
            raise EngineError(f"{out}: fine-tuned HED weights are written as .safetensors")
        save_hed(self.student, out)


class _TransformersStudent(nn.Module):
    """A ``transformers`` extractor on the upscaled LR, taught by its frozen copy on the HR."""

    def __init__(self, extractor: DepthExtractor | SegmentationExtractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.teacher = copy.deepcopy(extractor.model).eval().requires_grad_(False)
        _train_encoder_only(extractor.model)

    def save(self, out: Path) -> None:
        """A model folder that ``--depth`` / ``--seg`` of ``megasr model init`` load."""

        def fill(folder: Path) -> None:
            self.extractor.model.save_pretrained(folder)
            self.extractor.pixels.save_pretrained(folder)

        replace_directory(out, fill)

    @torch.no_grad()
    def reference(self, images: Tensor) -> Tensor:
        """The pretrained model's raw output (depth map or class logits)."""
        pixels = self.extractor.pixels
        return self._raw(self.teacher(pixel_values=pixels(images, self.teacher.dtype)))

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """The student's raw output (depth map or class logits)."""
        return self._student(images)

    def _student(self, images: Tensor) -> Tensor:
        model = self.extractor.model
        return self._raw(model(pixel_values=self.extractor.pixels(images, model.dtype)))

    def _outputs(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """The student's raw output on the LR and the teacher's on the HR, float32."""
        teacher = self.reference(hr)
        return self._student(upscale_to(lr, hr)).float(), teacher.float()

    @staticmethod
    def _raw(output: Any) -> Tensor:
        raise NotImplementedError


class DepthStudent(_TransformersStudent):
    """Depth: scale-and-shift-invariant L1 between the relative depth maps."""

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        return ssi_l1(*self._outputs(hr, lr))

    @staticmethod
    def _raw(output: Any) -> Tensor:
        return output.predicted_depth


class SegmentationStudent(_TransformersStudent):
    """Segmentation: KL divergence between the class probabilities."""

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        return class_kl(*self._outputs(hr, lr))

    @staticmethod
    def _raw(output: Any) -> Tensor:
        return output.logits


ExtractorStudent = HEDStudent | DepthStudent | SegmentationStudent


def load_student(
    kind: ExtractorKind,
    source: str,
    cache_dir: Path,
    side_weight: float = 0.0,
    feature_weight: float = 0.0,
) -> ExtractorStudent:
    """The student of ``kind`` from ``source``: HED weights (``bundled``, ``.h5`` or
    ``.safetensors``), or a ``transformers`` model folder or hub id for depth and seg.
    Feature-level distillation (``side_weight``, ``feature_weight``) is HED's only."""
    if kind == "hed":
        return HEDStudent(load_hed(source, cache_dir), side_weight, feature_weight)
    if side_weight or feature_weight:
        raise EngineError("side-output and feature distillation are implemented for HED only")
    if kind == "depth":
        return DepthStudent(DepthExtractor.from_pretrained(source))
    if kind == "seg":
        return SegmentationStudent(SegmentationExtractor.from_pretrained(source))
    raise EngineError(f"unknown extractor {kind!r}; choose one of {', '.join(EXTRACTOR_KINDS)}")


def encoder_of(model: nn.Module) -> nn.Module:
    """The image encoder of a ``transformers`` dense-prediction model (the rest is its head):
    ``backbone`` where there is one (UperNet, Depth Anything, DPT with a backbone), else the
    base model (DPT's ViT, SegFormer's encoder)."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(base, nn.Module) and base is not model:
        return base
    raise EngineError(f"cannot tell the image encoder of {type(model).__name__} from its head")


def _train_encoder_only(model: nn.Module) -> None:
    model.requires_grad_(False)
    encoder_of(model).requires_grad_(True)


def _bce(logits: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target)
