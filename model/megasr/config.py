"""The MegaSR configuration: every decision of the design behind a typed field.

The paper leaves several choices open (model.md marks them "decision:"). Each one is a field
here so that it can be changed when the paper's text is checked, and so that a checkpoint
records the exact architecture it was trained with: :class:`ModulesConfig` travels in the
``config.json`` of each MegaSR network, :class:`InferenceConfig` in the pipeline's
``model_index.json`` (docs/megasr-checkpoint.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from megasr.errors import EngineError

Sampler = Literal["ddpm", "ddim", "dpm-solver++"]
ColorFix = Literal["adain", "wavelet", "none"]
ConnectorMode = Literal["per_block", "shared"]
StartMode = Literal["lr", "noise"]


@dataclass(frozen=True)
class ModulesConfig:
    """The architecture of the new modules (CSM, MSFM) of one network.

    A MegaSR U-Net or ControlNet takes these fields as constructor arguments (and records them
    in its ``config.json``), together with ``csm`` and ``msfm``, which say whether that network
    carries the modules at all.
    """

    clip_width: int = 1024
    """Width of the CLIP vision tokens ``e_i`` that the Connector maps to cross-attention width."""
    connector: ConnectorMode = "per_block"
    """One Connector inside every CSM (as the figure draws it) or one shared by all blocks of
    the network."""
    lgwam_bias: bool = True
    """Whether LGWAM's zero-initialised ``W`` has a (zero-initialised) bias."""
    guidance_channels: int = 64
    """C_g: channels of the stage-1 region guidance ``G_r``."""
    guidance_norm_groups: int = 32
    """GroupNorm groups of stage 1 (must divide ``guidance_channels``)."""
    se_reduction: int = 4
    """Channel reduction of the squeeze-and-excitation attention in stage 1."""
    saft_hidden: int = 64
    """Channels of the shared SAFT MLP (conv3x3 + SiLU) before the gamma and beta convs."""
    saft_kernel_size: int = 3
    """Kernel of the SAFT gamma and beta convolutions (3 or 1)."""
    feature_norm_groups: int = 32
    """Groups of the parameter-free GroupNorm of stage 2 (the U-Net's own ``norm_num_groups``)."""
    msfm_residual: bool = True
    """``F + ZeroConv1x1(F_h + F_r)`` (identity at init); False gives the figure's ``F_h + F_r``."""
    guidance_antialias: bool = True
    """Antialias the bilinear downsizing of ``G_h`` and ``G_d``, so thin edges survive."""

    def __post_init__(self) -> None:
        if self.connector not in get_args(ConnectorMode):
            raise EngineError(f"connector must be one of {get_args(ConnectorMode)}")
        if self.saft_kernel_size % 2 == 0:
            raise EngineError(f"saft_kernel_size must be odd, got {self.saft_kernel_size}")
        if self.guidance_channels % self.guidance_norm_groups:
            raise EngineError(
                f"guidance_norm_groups {self.guidance_norm_groups} does not divide "
                f"guidance_channels {self.guidance_channels}"
            )
        if self.guidance_channels < self.se_reduction:
            raise EngineError("se_reduction must not exceed guidance_channels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InferenceConfig:
    """Defaults of the sampling pipeline; a request may override the per-request ones."""

    sampler: Sampler = "ddpm"
    steps: int = 50
    guidance_scale: float = 5.5
    negative_prompt: str = "dotted, noise, blur, lowres, smooth"
    added_prompt: str = "clean, high-resolution, 8k"
    color_fix: ColorFix = "adain"
    start: StartMode = "lr"
    """``lr``: the LR latent noised to the first timestep (SeeSR); ``noise``: pure noise."""
    conditioning_scale: float = 1.0
    seed: int = 0
    latent_tile: int = 96
    """Side of the denoiser's latent tiles (x8 pixels); a larger image is tiled in latent space."""
    latent_tile_overlap: int = 32
    tile_sigma: float = 0.25
    """Standard deviation of the Gaussian tile weights, as a fraction of the tile side."""
    vae_tile: int = 96
    """VAE encode/decode tile side in latents (x8 pixels): one denoiser tile, not split."""
    vae_tile_overlap: int = 32
    vae_shared_norm: bool = True
    """Normalise every VAE tile with the GroupNorm statistics of the whole image, so tiles do
    not drift apart in colour and contrast."""
    vae_norm_view: int = 128
    """Longest side, in latents, of the whole-image view those statistics are measured on: an
    image up to it (1024 px) gets its exact statistics, a larger one those of a shrunk view."""
    step_cache_mb: int = 16384
    """Memory for work that is the same at every step (MSFM modulation, CSM keys and values),
    computed once per batch of tiles; batches past the budget recompute it. 0 turns it off."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise EngineError(f"steps must be at least 1, got {self.steps}")
        for tile, overlap in (
            (self.latent_tile, self.latent_tile_overlap),
            (self.vae_tile, self.vae_tile_overlap),
        ):
            if tile < 1 or not 0 <= overlap < tile:
                raise EngineError(f"tile {tile} with overlap {overlap} is not a valid tiling")
        if self.tile_sigma <= 0:
            raise EngineError(f"tile_sigma must be positive, got {self.tile_sigma}")
        if self.vae_norm_view < 1:
            raise EngineError(f"vae_norm_view must be at least 1, got {self.vae_norm_view}")
        if self.step_cache_mb < 0:
            raise EngineError(f"step_cache_mb must not be negative, got {self.step_cache_mb}")


def inference_config_from_dict(data: Any) -> InferenceConfig:
    """An :class:`InferenceConfig` from JSON data, refusing unknown keys and wrong types."""
    return _from_dict(InferenceConfig, data, "inference")


def modules_config_from_dict(data: Any) -> ModulesConfig:
    """A :class:`ModulesConfig` from JSON data, with the same checks as a checkpoint config."""
    return _from_dict(ModulesConfig, data, "modules")


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from JSON data, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise EngineError(f"{where} must be a JSON object")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise EngineError(f"{where} has unknown keys: {', '.join(unknown)}")
    values = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise EngineError(f"{where}: {error}") from error


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if is_dataclass(hint):
        return _from_dict(hint, value, where)
    if origin is Literal:
        if value not in get_args(hint):
            choices = ", ".join(map(repr, get_args(hint)))
            raise EngineError(f"{where} is {value!r}; expected one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise EngineError(f"{where} must be a list")
        return tuple(_coerce(get_args(hint)[0], item, where) for item in value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise EngineError(f"{where} must be an object of strings")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise EngineError(f"{where} must be of type {hint.__name__}, got {value!r}")
    return value
