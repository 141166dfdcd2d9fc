"""Segmentation guidance: class probabilities rendered to a fixed colour palette.

ControlNet's segmentation maps are the argmax class painted with the ADE20K colours. MegaSR
needs the same kind of 3-channel map, with two decisions of this project:

- Soft rendering: each pixel is the probability-weighted mean of the class colours, not the
  colour of the argmax. It keeps the model's uncertainty at region borders instead of
  jagged steps, it changes smoothly as the input does, and it is differentiable, which the
  output-level fine-tuning of the extractors (KL on class probabilities) relies on.
- A generated palette (:func:`class_palette`) instead of a hand-written colour table, so any
  number of classes gets fixed, distinct colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForSemanticSegmentation, PreTrainedModel

from megasr.model.extractors.pretrained import PixelSpec, load_model


def class_palette(num_classes: int) -> Tensor:
    """Fixed colours (num_classes, 3) in [0, 1], the same on every machine and run.

    The bits of the class index are dealt out round-robin to red, green and blue, starting
    at each channel's most significant bit (the PASCAL VOC construction). Classes whose
    indices differ in their low bits, the neighbours in a label list, therefore differ in
    the high bits of a colour and look clearly different. Class 0 is black; indices below
    2**24 all get distinct colours.
    """
    colours = torch.zeros(num_classes, 3)
    for index in range(num_classes):
        code, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= (code & 1) << shift
                code >>= 1
        colours[index] = torch.tensor(rgb, dtype=torch.float32) / 255.0
    return colours


class SegmentationExtractor(nn.Module):
    """A semantic segmentation model, its input convention and its palette."""

    def __init__(self, model: PreTrainedModel, pixels: PixelSpec) -> None:
        super().__init__()
        self.model = model
        self.pixels = pixels
        self.register_buffer("palette", class_palette(model.config.num_labels), persistent=False)

    @classmethod
    def from_pretrained(cls, source: str) -> SegmentationExtractor:
        return cls(
            load_model(AutoModelForSemanticSegmentation, source, "segmentation"),
            PixelSpec.from_pretrained(source, "segmentation"),
        )

    def forward(self, images: Sequence[Tensor]) -> list[Tensor]:
        """One palette map (3, H, W) in [0, 1] per RGB image (3, H, W) in [0, 1], any sizes.

        The model sees every image at its input size in one batch. The colours are mixed at
        the model's output resolution and the 3-channel result is resized to each image:
        resizing is linear, so this equals mixing resized probabilities, without a
        (classes, H, W) tensor at full size.
        """
        logits = self.model(pixel_values=self.pixels(images, self.model.dtype)).logits
        probabilities = logits.float().softmax(dim=1)
        colours = torch.einsum("bkhw,kc->bchw", probabilities, self.palette.float())
        return [
            F.interpolate(colour[None], size=image.shape[-2:], mode="bilinear")[0].clamp(0, 1)
            for colour, image in zip(colours, images, strict=True)
        ]
