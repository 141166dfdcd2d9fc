"""Output-level prior-guided fine-tuning (PGFT) of the dense guidance extractors.

MegaSR's extractors read the LR image (bicubic-upscaled), but were trained on clean photos.
PGFT makes each one see through the degradation: a frozen copy of the pretrained extractor
looks at the HR image and its output is the pseudo ground truth for the student, the same
network looking at the degraded LR image. The student's image encoder trains; its head
stays frozen, so the output keeps the meaning (and the scale) the rest of MegaSR expects.

- HED: binary cross-entropy of the student's edge logits against the teacher's edge
  probabilities. Encoder: the five VGG blocks; head: the side outputs and the fuse layer.
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
from megasr.model.training.edge_metrics import edge_f_score, mean_absolute_difference
from megasr.model.training.inputs import upscale_to

ExtractorKind = Literal["hed", "depth", "seg"]
EXTRACTOR_KINDS: tuple[ExtractorKind, ...] = ("hed", "depth", "seg")


class HEDStudent(nn.Module):
    """HED on the upscaled LR, taught by HED on the HR."""

    def __init__(self, hed: HEDNet) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(hed).eval().requires_grad_(False)
        self.student = hed.requires_grad_(False)
        for param in hed.encoder_parameters():
            param.requires_grad_(True)

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        with torch.no_grad():
            target = torch.sigmoid(self.teacher(caffe_input(hr)).float())
        logits = self.student(caffe_input(upscale_to(lr, hr)))
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    @torch.no_grad()
    def distances(self, hr: Tensor, lr: Tensor) -> dict[str, float]:
        """HED(LR) against the pretrained HED(HR): mean |difference| and the edge F-score."""
        reference = self.teacher.edges(hr).float()
        prediction = self.student.edges(upscale_to(lr, hr)).float()
        return {
            "mae": mean_absolute_difference(prediction, reference),
            "edge_f": edge_f_score(prediction, reference),
        }

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

    def _outputs(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """The student's raw output on the LR and the teacher's on the HR, float32."""
        pixels, model = self.extractor.pixels, self.extractor.model
        with torch.no_grad():
            teacher = self._raw(self.teacher(pixel_values=pixels(hr, model.dtype)))
        student = self._raw(model(pixel_values=pixels(upscale_to(lr, hr), model.dtype)))
        return student.float(), teacher.float()

    @staticmethod
    def _raw(output: Any) -> Tensor:
        raise NotImplementedError


class DepthStudent(_TransformersStudent):
    """Depth: scale-and-shift-invariant L1 between the relative depth maps."""

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        return _ssi_l1(*self._outputs(hr, lr))

    @torch.no_grad()
    def distances(self, hr: Tensor, lr: Tensor) -> dict[str, float]:
        return {"ssi_l1": float(_ssi_l1(*self._outputs(hr, lr)))}

    @staticmethod
    def _raw(output: Any) -> Tensor:
        return output.predicted_depth


class SegmentationStudent(_TransformersStudent):
    """Segmentation: KL divergence between the class probabilities."""

    def loss(self, hr: Tensor, lr: Tensor) -> Tensor:
        return _kl(*self._outputs(hr, lr))

    @torch.no_grad()
    def distances(self, hr: Tensor, lr: Tensor) -> dict[str, float]:
        student, teacher = self._outputs(hr, lr)
        agreement = (student.argmax(1) == teacher.argmax(1)).float().mean()
        return {"kl": float(_kl(student, teacher)), "agreement": float(agreement)}

    @staticmethod
    def _raw(output: Any) -> Tensor:
        return output.logits


ExtractorStudent = HEDStudent | DepthStudent | SegmentationStudent


def load_student(kind: ExtractorKind, source: str, cache_dir: Path) -> ExtractorStudent:
    """The student of ``kind`` from ``source``: HED weights (``bundled``, ``.h5`` or
    ``.safetensors``), or a ``transformers`` model folder or hub id for depth and seg."""
    if kind == "hed":
        return HEDStudent(load_hed(source, cache_dir))
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


def _ssi_l1(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean |difference| of the maps (B, h, w) after each is centred on its median and
    divided by its mean absolute deviation (MiDaS's scale-and-shift-invariant L1)."""
    return (_ssi(student) - _ssi(teacher)).abs().mean()


def _ssi(depth: Tensor) -> Tensor:
    flat = depth.flatten(1)
    centred = flat - flat.median(dim=1, keepdim=True).values
    return centred / centred.abs().mean(dim=1, keepdim=True).clamp_min(1e-6)


def _kl(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) over classes, averaged over pixels."""
    log_student = F.log_softmax(student, dim=1)
    log_teacher = F.log_softmax(teacher, dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(1).mean()
