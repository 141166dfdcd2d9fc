"""LPIPS, the learned perceptual image patch similarity (Zhang et al., CVPR 2018), v0.1.

Deep features of both images, unit-normalised along channels at five depths of an ImageNet
classifier, differences squared, weighted per channel by linear heads trained on human
judgements (BAPPS), averaged over space and summed over depths. Lower is more similar.

Two halves of weights: the linear heads ship in the ``lpips`` wheel on the package index and
are fetched like the NIQE model; the ImageNet backbone (torchvision's AlexNet or VGG16, in
torchvision's ``features.N`` layout) ships nowhere reachable, so LPIPS runs only when that
file is in the ``metric_weights_dir`` setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from megasr.errors import EngineError
from megasr.model.quality.psnr import comparable_pair
from megasr.model.weights.pypi_asset import fetch_package_file
from megasr.settings import get_settings

Backbone = Literal["alex", "vgg"]
HEADS_REQUIREMENT = "lpips==0.1.4"

# Channel statistics LPIPS normalises its [-1, 1] inputs with (ImageNet's, rescaled).
_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class BackboneSpec:
    """A torchvision ``features`` stack as (kind, arguments) rows, and where LPIPS taps it."""

    file: str
    layers: tuple[tuple, ...]
    taps: tuple[int, ...]  # indices of the ReLUs whose outputs are compared
    heads_sha256: str


def _vgg16_layers() -> tuple[tuple, ...]:
    """torchvision's VGG16 ``features`` up to the last ReLU (its final pooling is never used)."""
    layers: list[tuple] = []
    channels = 3
    for width in (64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512):
        if width == 0:
            layers.append(("pool", 2, 2))
        else:
            layers += [("conv", channels, width, 3, 1, 1), ("relu",)]
            channels = width
    return tuple(layers)


BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        file="alexnet-owt-7be5be79.pth",
        layers=(
            ("conv", 3, 64, 11, 4, 2),
            ("relu",),
            ("pool", 3, 2),
            ("conv", 64, 192, 5, 1, 2),
            ("relu",),
            ("pool", 3, 2),
            ("conv", 192, 384, 3, 1, 1),
            ("relu",),
            ("conv", 384, 256, 3, 1, 1),
            ("relu",),
            ("conv", 256, 256, 3, 1, 1),
            ("relu",),
        ),
        taps=(1, 4, 7, 9, 11),
        heads_sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ),
    "vgg": BackboneSpec(
        file="vgg16-397923af.pth",
        layers=_vgg16_layers(),
        taps=(3, 8, 15, 22, 29),
        heads_sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ),
}


class LPIPSNetwork(nn.Module):
    """Backbone ``features`` plus one 1x1 linear head per tapped depth."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.features = nn.Sequential(*(_layer(row) for row in spec.layers))
        self.taps = spec.taps
        widths = [_channels_before(spec.layers, tap) for tap in spec.taps]
        self.heads = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in widths)

    def forward(self, image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Distances for (N, 3, H, W) batches in [-1, 1]: one value per pair."""
        batch = torch.cat([image, reference]).sub(_SHIFT).div(_SCALE)
        total = torch.zeros(len(image))
        depth = 0
        for index, layer in enumerate(self.features[: self.taps[-1] + 1]):
            batch = layer(batch)
            if index in self.taps:
                ours, theirs = _unit(batch).chunk(2)
                total = total + self.heads[depth]((ours - theirs) ** 2).mean(dim=(1, 2, 3))
                depth += 1
        return total


def _layer(row: tuple) -> nn.Module:
    kind, *args = row
    if kind == "conv":
        channels_in, channels_out, kernel, stride, padding = args
        return nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=padding)
    if kind == "pool":
        return nn.MaxPool2d(kernel_size=args[0], stride=args[1])
    return nn.ReLU()


def _channels_before(layers: tuple[tuple, ...], index: int) -> int:
    return next(row[2] for row in reversed(layers[:index]) if row[0] == "conv")


def _unit(features: torch.Tensor) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


def unavailable_reason(backbone: Backbone = "alex", weights_dir: Path | None = None) -> str | None:
    """Why LPIPS cannot run here, or None when the backbone weights are in place."""
    folder = weights_dir or get_settings().metric_weights_dir
    file = BACKBONES[backbone].file
    if folder is None or not (folder / file).is_file():
        where = folder if folder is not None else "metric_weights_dir"
        return f"needs torchvision's ImageNet {file} in {where}, which no package ships"
    return None


@cache
def load_network(backbone: Backbone, weights_dir: Path, cache_dir: Path) -> LPIPSNetwork:
    """The network with the backbone from ``weights_dir`` and the heads from the index."""
    spec = BACKBONES[backbone]
    network = LPIPSNetwork(spec)
    state = torch.load(weights_dir / spec.file, map_location="cpu", weights_only=True)
    features = {key: value for key, value in state.items() if key.startswith("features.")}
    member = f"lpips/weights/v0.1/{backbone}.pth"
    heads_path = fetch_package_file(HEADS_REQUIREMENT, member, cache_dir, spec.heads_sha256)
    heads = torch.load(heads_path, map_location="cpu", weights_only=True)
    features |= {f"heads.{depth}.weight": heads[f"lin{depth}.model.1.weight"] for depth in range(5)}
    try:
        network.load_state_dict(features)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise EngineError(f"{spec.file} is not torchvision's layout: {first_line}") from exc
    return network.eval().requires_grad_(False)


def lpips(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    crop: int = 0,
    backbone: Backbone = "alex",
    weights_dir: Path | None = None,
) -> float:
    """LPIPS v0.1 between two RGB images, after cropping ``crop`` pixels off each border."""
    reason = unavailable_reason(backbone, weights_dir)
    if reason is not None:
        raise EngineError(f"LPIPS is not available: {reason}")
    settings = get_settings()
    network = load_network(backbone, weights_dir or settings.metric_weights_dir, settings.cache_dir)
    first, second = comparable_pair(image, reference, crop=crop, y_channel=False)
    with torch.inference_mode():
        distance = network(_tensor(first), _tensor(second))
    return float(distance[0])


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) or gray (H, W) on 0..255 as a (1, 3, H, W) float32 tensor in [-1, 1]."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    array = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    return torch.from_numpy(array).unsqueeze(0) / 127.5 - 1
