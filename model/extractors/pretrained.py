"""Load ``transformers`` vision components from a local directory or a hub id.

Hugging Face image processors work on PIL images one at a time on the CPU; the extractors get
batches of tensors already on the accelerator. So only the processor's *convention* is read
from ``preprocessor_config.json`` (input size, mean, std) and applied in torch by
:class:`PixelSpec`. Decision: the whole image is resized (stretched) to the model's input
size, never centre-cropped, because every pixel of an image being upscaled matters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel
from transformers.image_processing_base import ImageProcessingMixin

from megasr.errors import EngineError

ModelT = TypeVar("ModelT", bound=PreTrainedModel)
PROCESSOR_FILE = "preprocessor_config.json"


def load_model(auto_class: type[ModelT], source: str, role: str) -> ModelT:
    """A frozen model in eval mode, or an :class:`EngineError` that names the role."""
    try:
        model = auto_class.from_pretrained(source)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise EngineError(f"cannot load the {role} model from {source!r}: {reason}") from error
    return model.eval().requires_grad_(False)


@dataclass(frozen=True)
class PixelSpec:
    """The input a vision model expects: a fixed size and a per-channel normalisation."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, source: str, role: str) -> PixelSpec:
        """Read ``preprocessor_config.json`` of a local directory or hub id."""
        try:
            config, _ = ImageProcessingMixin.get_image_processor_dict(source)
        except (OSError, ValueError) as error:
            raise EngineError(
                f"no image processor config for the {role} model {source!r}"
            ) from error
        return cls.from_processor_config(config, f"{role} model {source!r}")

    @classmethod
    def from_processor_config(cls, config: dict[str, Any], name: str) -> PixelSpec:
        height, width = _input_size(config, name)
        if config.get("do_normalize", True):
            mean, std = config.get("image_mean"), config.get("image_std")
            if mean is None or std is None or len(mean) != 3 or len(std) != 3:
                raise EngineError(f"the {name} has no 3-channel image_mean and image_std")
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(height, width, tuple(map(float, mean)), tuple(map(float, std)))

    def save_pretrained(self, directory: Path) -> None:
        """Write the convention as a minimal processor config that this class reads back."""
        config = {
            "size": {"height": self.height, "width": self.width},
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }
        (directory / PROCESSOR_FILE).write_text(json.dumps(config, indent=2) + "\n")

    def __call__(self, images: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
        """RGB images in [0, 1] (each (3, H, W), any sizes, or a (B, 3, H, W) batch) -> the
        model's ``pixel_values`` (B, 3, height, width) in ``dtype``: one batch for one pass."""
        pixels = torch.cat(
            [
                F.interpolate(
                    image[None].float(),
                    size=(self.height, self.width),
                    mode="bicubic",
                    antialias=True,
                )
                for image in images
            ]
        ).clamp(0.0, 1.0)
        mean = torch.tensor(self.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(dtype)


def _input_size(config: dict[str, Any], name: str) -> tuple[int, int]:
    """Height and width the processor would hand the model (its crop if it crops)."""
    size = config.get("crop_size") if config.get("do_center_crop") else config.get("size")
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise EngineError(f"the {name} has no usable input size in its processor config")
