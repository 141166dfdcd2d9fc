"""Tiny engines for the worker tests, loaded by worker processes as ``worker_engines:Class``.

:class:`TinyEngine` is a real network (an RRDBNet with one block of eight features and fixed
random weights) on top of bicubic x4, cheap enough on a CPU to run dozens of jobs in a test.
Setting ``MEGASR_TEST_HOLD`` to a path makes every engine call wait while that file exists:
a test holds a batch "in hand" for as long as it needs, with no sleeps and no timing guesses.
:class:`SteppedEngine` goes one step further: each call waits for a token the test hands out,
so a job's progress moves tile by tile exactly when the test says.

The subclasses stand in for what only a GPU does (this machine has none): running out of
device memory above a batch size, overflowing to NaN on a reduced-precision fast path, and a
sticky CUDA fault (the exact error text torch raises after an illegal memory access).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from megasr.model.engines.base import TileEngine, TileSpec
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.settings import Settings

HOLD_ENV = "MEGASR_TEST_HOLD"
GATE_ENV = "MEGASR_TEST_GATE"
LOAD_HOLD_ENV = "MEGASR_TEST_LOAD_HOLD"


class TinyEngine(TileEngine):
    name = "tiny"
    native_scale = 4

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        hold = os.environ.get(HOLD_ENV)
        self.hold = Path(hold) if hold else None

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        torch.manual_seed(0)
        self.net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval().to(device)
        self.device = device
        self.fast_path = dtype is None

    @property
    def tile_spec(self) -> TileSpec:
        return TileSpec(size=32, overlap=8)

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        while self.hold is not None and self.hold.exists():
            time.sleep(0.01)  # the test releases the call by deleting the file
        with torch.inference_mode():
            x = tiles.to(self.device, torch.float32)
            base = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
            return (base + 0.1 * torch.tanh(self.net(x))).clamp(0, 1).cpu()


class SteppedEngine(TinyEngine):
    """A slow engine on demand: while the folder ``MEGASR_TEST_GATE`` names exists, every call
    waits for a token file in it and consumes one; the test releases the calls one by one
    (with one tile per call, a job's progress then stops at each tile the test chooses).
    Without the folder it runs freely."""

    name = "tiny-stepped"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        gate = os.environ.get(GATE_ENV)
        self.gate = Path(gate) if gate else None

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        while self.gate is not None and self.gate.is_dir() and not self._take_token():
            time.sleep(0.01)  # the test hands out the next token
        return super().run(tiles)

    def _take_token(self) -> bool:
        for token in sorted(self.gate.glob("token-*")):
            token.unlink(missing_ok=True)
            return True
        return False


class SlowLoadingEngine(TinyEngine):
    """Its load waits while the file named by ``MEGASR_TEST_LOAD_HOLD`` exists: a test holds
    the worker in its loading state for as long as it needs, as a real engine's minutes of
    loading and compiling on a CPU would."""

    name = "tiny-slow"

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        hold = os.environ.get(LOAD_HOLD_ENV)
        while hold and Path(hold).exists():
            time.sleep(0.01)  # the test lets loading finish by deleting the file
        super().load(device, dtype)


class OutOfMemoryEngine(TinyEngine):
    """Raises torch's out-of-memory error for calls above two tiles, as a small GPU would."""

    name = "tiny-oom"
    max_tiles = 2

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        if len(tiles) > self.max_tiles:
            raise torch.OutOfMemoryError(f"simulated: no room for {len(tiles)} tiles")
        return super().run(tiles)


class OverflowEngine(TinyEngine):
    """Its fast path (loaded with dtype None) returns NaN, as fp16 does when it overflows."""

    name = "tiny-nan"

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        result = super().run(tiles)
        return torch.full_like(result, float("nan")) if self.fast_path else result


class SelfHealingOverflowEngine(OverflowEngine):
    """Overflows the same way, but reruns in float32 itself and counts it, as RealESRGAN does."""

    name = "tiny-nan-rerun"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.nan_retries = 0

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        result = super().run(tiles)
        if not torch.isfinite(result).all():
            self.nan_retries += 1
            result = TinyEngine.run(self, tiles)
        return result


class PickyEngine(TinyEngine):
    """Fails any call that holds an all-white tile, like a kernel that breaks on some input."""

    name = "tiny-picky"

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        if (tiles.flatten(1).amin(dim=1) == 1).any():
            raise RuntimeError("simulated kernel failure on an all-white tile")
        return super().run(tiles)


class DeviceFaultEngine(TinyEngine):
    """Any call holding an all-white tile fails as a GPU does after an illegal memory access:
    a sticky CUDA error, after which the worker must not go on."""

    name = "tiny-fault"

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        if (tiles.flatten(1).amin(dim=1) == 1).any():
            raise torch.AcceleratorError(
                "CUDA error: an illegal memory access was encountered\n"
                "CUDA kernel errors might be asynchronously reported at some other API call"
            )
        return super().run(tiles)
