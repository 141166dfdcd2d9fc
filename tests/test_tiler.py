"""The tiler: fixed-shape tiles, reflection padding, seamless blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from megasr.imaging.resize import LANCZOS_SUPPORT, resize
from megasr.model.engines.base import TileSpec
from megasr.model.engines.realesrgan import RealESRGANEngine
from megasr.model.tiler import TileAccumulator, TileLayout, extract_tiles, plan_tiles, reflect_pad
from megasr.model.upscaler import plan_image_tiles
from megasr.settings import Settings


def local_net(seed: int = 0) -> nn.Module:
    """A small random conv net, x2, with a receptive-field radius of 4 input pixels.

    Its output at a pixel depends only on the input within 4 px, so once the blending
    window discards a tile's outer 4 px, a tiled run must equal the untiled one exactly:
    any difference is the tiler's fault.
    """
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 12, 3, padding=1),
        nn.PixelShuffle(2),
        nn.Sigmoid(),
    )
    return net.eval()


def run_tiled(image: torch.Tensor, net: nn.Module, layout: TileLayout, scale: int, batch: int):
    """What every caller of the tiler does: cut, run in batches, blend."""
    tiles = extract_tiles(image, layout)
    acc = TileAccumulator(layout, scale)
    for first in range(0, len(tiles), batch):
        acc.add(first, net(tiles[first : first + batch]))
    return acc.result()


def gradient_image(height: int, width: int) -> torch.Tensor:
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    return torch.stack([xs, ys, (xs + ys) / 2])


@pytest.mark.parametrize(("height", "width"), [(100, 140), (37, 200), (64, 64)])
def test_layout_covers_the_image_with_fixed_tiles(height: int, width: int) -> None:
    layout = plan_tiles(height, width, tile=32, overlap=8)
    tiles = extract_tiles(torch.rand(3, height, width), layout)
    assert tiles.shape == (len(layout), 3, 32, 32)
    assert layout.ys[-1] + 32 == layout.padded_height
    assert layout.xs[-1] + 32 == layout.padded_width
    assert all(b - a <= 32 - 8 for a, b in zip(layout.xs, layout.xs[1:], strict=False))


def test_small_image_is_padded_by_reflection() -> None:
    image = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)
    padded = reflect_pad(image, 5, 6)
    assert padded.shape == (1, 5, 6)
    assert padded[0, 0].tolist() == [0, 1, 2, 3, 2, 1]
    assert padded[0, 3].tolist() == padded[0, 1].tolist()  # row 3 mirrors row 1
    assert reflect_pad(torch.ones(3, 1, 1), 8, 8).shape == (3, 8, 8)  # a single pixel


@torch.inference_mode()
@pytest.mark.parametrize("kind", ["gradient", "photo"])
def test_tiled_equals_untiled_with_small_tiles(kind: str, coffee: np.ndarray) -> None:
    net = local_net()
    if kind == "gradient":
        image = gradient_image(90, 130)
    else:
        image = torch.from_numpy(coffee[:90, :130].transpose(2, 0, 1).copy()).float() / 255
    untiled = net(image[None])[0]
    layout = plan_tiles(90, 130, tile=32, overlap=16)
    assert len(layout) >= 20  # tiles much smaller than the image
    tiled = run_tiled(image, net, layout, scale=2, batch=5)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max().item() < 1e-5


@torch.inference_mode()
def test_no_seam_on_a_gradient_when_tiles_disagree() -> None:
    """Tiles whose outputs differ by a per-tile offset still blend without a step.

    Each tile is brightened by its own constant (as a network that sees different context
    would shift it); across every tile boundary the output must change smoothly, never by
    more than the largest single offset spread over the blending ramp.
    """
    image = gradient_image(64, 200)
    layout = plan_tiles(64, 200, tile=48, overlap=24)
    tiles = extract_tiles(image, layout)
    offsets = torch.linspace(0, 0.08, len(tiles))[:, None, None, None]
    acc = TileAccumulator(layout, scale=1)
    acc.add(0, (tiles + offsets).clamp(0, 1))
    out = acc.result()
    step = (out[:, :, 1:] - out[:, :, :-1]).abs().max().item()
    natural = (image[:, :, 1:] - image[:, :, :-1]).abs().max().item()
    ramp = 24 - 2 * (24 // 4)
    assert step <= natural + 0.08 / ramp * 1.01


def test_accumulator_refuses_an_incomplete_image() -> None:
    layout = plan_tiles(50, 50, tile=32, overlap=8)
    acc = TileAccumulator(layout, scale=2)
    acc.add(0, torch.zeros(1, 3, 64, 64))
    with pytest.raises(RuntimeError, match="tiles received"):
        acc.result()


@pytest.mark.parametrize("size", [(100, 75), (250, 190), (700, 520), (400, 150)])
def test_blending_into_the_output_size_equals_resizing_the_native_image(size) -> None:
    """Accumulating at the asked size (band by band) gives what blending at native scale and
    resizing the whole image gave, while holding only about one row of tiles at native scale."""
    torch.manual_seed(0)
    image = torch.rand(3, 100, 75)
    layout = plan_tiles(100, 75, tile=32, overlap=8)
    outputs = torch.nn.functional.interpolate(
        extract_tiles(image, layout), scale_factor=4, mode="bicubic", align_corners=False
    ).clamp(0, 1)
    native = TileAccumulator(layout, 4)
    native.add(0, outputs)
    expected = resize(native.result().permute(1, 2, 0).numpy(), size[1], size[0])

    banded = TileAccumulator(layout, 4, size)
    held = []
    for first in range(0, len(outputs), 3):
        banded.add(first, outputs[first : first + 3])
        held.append(banded.native_rows_held)

    assert np.abs(banded.result().permute(1, 2, 0).numpy() - expected).max() < 1e-5
    shrink = max(400 / size[0], 1.0)
    one_row_of_tiles = 32 * 4 + 2 * int(LANCZOS_SUPPORT * shrink + 1)
    assert max(held) <= one_row_of_tiles < 400


def test_accumulator_takes_tiles_in_order() -> None:
    layout = plan_tiles(50, 50, tile=32, overlap=8)
    acc = TileAccumulator(layout, scale=2, size=(30, 30))
    with pytest.raises(ValueError, match="tile 1 arrived, tile 0 was expected"):
        acc.add(1, torch.zeros(1, 3, 64, 64))


def test_a_fitted_image_up_to_whole_up_to_is_one_tile_of_its_own_size() -> None:
    spec = TileSpec(size=192, overlap=32, whole_up_to=320)
    whole = plan_image_tiles(250, 230, spec, fit=True, bucket=64)
    assert (whole.tile, len(whole)) == (256, 1)  # not four overlapping 192 px tiles
    fixed = plan_image_tiles(250, 230, spec)  # callers that do not fit keep the fixed tile
    assert (fixed.tile, len(fixed)) == (192, 4)
    larger = plan_image_tiles(330, 100, spec, fit=True, bucket=64)  # 384 > 320
    assert (larger.tile, len(larger)) == (192, 2)
    small = plan_image_tiles(40, 40, TileSpec(size=192, overlap=32), fit=True, bucket=64)
    assert (small.tile, len(small)) == (64, 1)


def test_realesrgan_runs_images_up_to_5_3_of_its_tile_whole() -> None:
    assert RealESRGANEngine(Settings()).tile_spec.whole_up_to == 320
    assert RealESRGANEngine(Settings(tile=96)).tile_spec.whole_up_to == 160
