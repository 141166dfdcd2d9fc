"""The MegaSR checkpoint: one self-contained directory (layout in docs/megasr-checkpoint.md).

::

    megasr.json               MegaSRConfig: format_version, architecture, inference defaults,
                              extractor settings, where the base components came from
    adapter.safetensors       CSM + MSFM of both networks (+ a shared Connector); trainable
    controlnet/               the ControlNet's own weights (diffusers folder); trainable
    unet/ vae/ text_encoder/ tokenizer/ scheduler/
                              SD-2-base, copied in diffusers/transformers format; frozen
    extractors/               HED, depth, segmentation, CLIP vision and the tag vocabulary;
                              frozen

Base components are copied, not referenced: a checkpoint then loads offline on any machine
it is moved to, and training only ever rewrites ``controlnet/`` and ``adapter.safetensors``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.errors import EngineError
from megasr.model.extractors import ExtractorConfig, build_extractors
from megasr.model.megasr.adapter import DiffusionNet, is_adapter_key
from megasr.model.megasr.components import MegaSRModel, build_tiny_model
from megasr.model.megasr.config import MegaSRConfig, ModulesConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser

CONFIG_FILE = "megasr.json"
ADAPTER_FILE = "adapter.safetensors"
CONTROLNET_DIR = "controlnet"
EXTRACTORS_DIR = "extractors"
SCHEDULER_DIR = "scheduler"
SCHEDULER_FILE = "scheduler_config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
BASE_DIRS = ("unet", "vae", "text_encoder", "tokenizer", SCHEDULER_DIR)
TRAINABLE_PARTS = (CONTROLNET_DIR, ADAPTER_FILE)
FROZEN_PARTS = ("unet", "vae", "text_encoder", EXTRACTORS_DIR)


@dataclass(frozen=True)
class BaseSources:
    """Where ``init`` takes the base components: local directories or hub ids."""

    sd: str
    clip: str
    depth: str
    segmentation: str
    hed: str = "bundled"
    tagger: Literal["clip", "none"] = "clip"


def init_checkpoint(
    sources: BaseSources, out_dir: Path, modules: ModulesConfig | None = None
) -> MegaSRConfig:
    """Build a fresh MegaSR checkpoint from base components and write it to ``out_dir``.

    The ControlNet is copied from the U-Net and the new modules start at identity, so the
    checkpoint samples like SD-2 steered by an untrained ControlNet until it is trained.
    """
    extractors = build_extractors(
        ExtractorConfig(
            hed=sources.hed,
            depth=sources.depth,
            segmentation=sources.segmentation,
            clip=sources.clip,
            tagger=sources.tagger,
        ),
        "cpu",
        torch.float32,
    )
    modules = replace(modules or ModulesConfig(), clip_width=extractors.clip_width)
    try:
        unet = UNet2DConditionModel.from_pretrained(sources.sd, subfolder="unet")
        model = MegaSRModel(
            config=MegaSRConfig(modules=modules, sources=_provenance(sources)),
            denoiser=MegaSRDenoiser.from_unet(unet, modules),
            vae=AutoencoderKL.from_pretrained(sources.sd, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(sources.sd, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(sources.sd, subfolder="tokenizer"),
            scheduler_config=dict(DDPMScheduler.load_config(sources.sd, subfolder=SCHEDULER_DIR)),
            extractors=extractors,
        )
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot load Stable Diffusion from {sources.sd!r}: {error}") from error
    return save_checkpoint(model, out_dir)


def init_tiny_checkpoint(out_dir: Path, seed: int = 0) -> MegaSRConfig:
    """A tiny random checkpoint of every component, built in code with no downloads."""
    return save_checkpoint(build_tiny_model(seed), out_dir)


def save_checkpoint(model: MegaSRModel, out_dir: Path) -> MegaSRConfig:
    """Write every part of ``model``; returns the config as written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_base_weights(model.denoiser.unet, out_dir / "unet")
    model.vae.save_pretrained(out_dir / "vae")
    model.text_encoder.save_pretrained(out_dir / "text_encoder")
    model.tokenizer.save_pretrained(out_dir / "tokenizer")
    (out_dir / SCHEDULER_DIR).mkdir(exist_ok=True)
    (out_dir / SCHEDULER_DIR / SCHEDULER_FILE).write_text(
        json.dumps(model.scheduler_config, indent=2) + "\n"
    )
    extractors = model.extractors.save_pretrained(out_dir / EXTRACTORS_DIR)
    config = replace(model.config, extractors=extractors)
    save_trained_weights(model.denoiser, out_dir)
    (out_dir / CONFIG_FILE).write_text(config.to_json())
    return config


def save_trained_weights(denoiser: MegaSRDenoiser, out_dir: Path) -> None:
    """Write what training changes: the ControlNet and the adapter state."""
    _save_base_weights(denoiser.controlnet, out_dir / CONTROLNET_DIR)
    adapter = {k: v.contiguous().cpu() for k, v in denoiser.adapter_state_dict().items()}
    save_file(adapter, out_dir / ADAPTER_FILE, metadata={"format": "megasr-adapter"})


def _save_base_weights(net: DiffusionNet, directory: Path) -> None:
    """A diffusers folder of ``net`` without the new modules, so ``from_pretrained`` reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    net.save_config(directory)
    base = {
        key: value.detach().contiguous().cpu()
        for key, value in net.state_dict().items()
        if not is_adapter_key(key)
    }
    save_file(base, directory / WEIGHTS_FILE)


def read_config(checkpoint_dir: Path) -> MegaSRConfig:
    path = checkpoint_dir / CONFIG_FILE
    if not path.is_file():
        raise EngineError(f"{checkpoint_dir} is not a MegaSR checkpoint: {CONFIG_FILE} is missing")
    return MegaSRConfig.from_json(path.read_text())


def latent_multiple(checkpoint_dir: Path) -> int:
    """What latent sides must be multiples of, from the U-Net's config (no weights loaded)."""
    _require(checkpoint_dir, ("unet",))
    unet_config = UNet2DConditionModel.load_config(checkpoint_dir / "unet")
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def load_checkpoint(
    checkpoint_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MegaSRModel:
    """Load a checkpoint from local files only, frozen for inference, on ``device``.

    Strict about the new modules: every adapter key of the configured architecture must be
    in ``adapter.safetensors`` (a missing one would silently sample with an untrained module).
    """
    config = read_config(checkpoint_dir)
    _require(checkpoint_dir, (*BASE_DIRS, CONTROLNET_DIR, ADAPTER_FILE, EXTRACTORS_DIR))
    local = {"local_files_only": True, "torch_dtype": dtype}
    try:
        unet = UNet2DConditionModel.from_pretrained(checkpoint_dir / "unet", **local)
        controlnet = ControlNetModel.from_pretrained(checkpoint_dir / CONTROLNET_DIR, **local)
        vae = AutoencoderKL.from_pretrained(checkpoint_dir / "vae", **local)
        text_encoder = CLIPTextModel.from_pretrained(checkpoint_dir / "text_encoder", **local)
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint_dir / "tokenizer", **local)
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot load the MegaSR checkpoint {checkpoint_dir}: {error}") from error
    denoiser = MegaSRDenoiser(unet, controlnet, config.modules).to(dtype=dtype)
    try:
        denoiser.load_adapter_state_dict(load_file(checkpoint_dir / ADAPTER_FILE))
    except KeyError as error:
        raise EngineError(f"{checkpoint_dir / ADAPTER_FILE}: {error.args[0]}") from error
    extractors = build_extractors(
        config.extractors, device, dtype, root=checkpoint_dir / EXTRACTORS_DIR
    )
    scheduler_config = json.loads((checkpoint_dir / SCHEDULER_DIR / SCHEDULER_FILE).read_text())
    model = MegaSRModel(
        config, denoiser, vae, text_encoder, tokenizer, scheduler_config, extractors
    )
    return model.to(device).freeze()


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``megasr model info`` prints; counted from file headers, nothing is loaded.

    Counts are elements of the stored tensors: parameters, plus the few persistent buffers
    (normalisation statistics) some extractors keep.
    """

    path: Path
    format_version: int
    preset: str
    parameters: dict[str, int]
    trainable: int
    frozen: int
    sources: dict[str, str]

    def to_text(self) -> str:
        lines = [
            f"MegaSR checkpoint {self.path}",
            f"format version  {self.format_version}",
            f"preset          {self.preset}",
            "parameters:",
        ]
        for name, count in self.parameters.items():
            role = "trainable" if name in TRAINABLE_PARTS else "frozen"
            lines.append(f"  {name:<22}{count:>15,}  {role}")
        lines.append(f"  {'all trainable':<22}{self.trainable:>15,}")
        lines.append(f"  {'all frozen':<22}{self.frozen:>15,}")
        lines += [f"source {name}: {source}" for name, source in sorted(self.sources.items())]
        return "\n".join(lines)


def checkpoint_info(checkpoint_dir: Path) -> CheckpointInfo:
    config = read_config(checkpoint_dir)
    parts = (*TRAINABLE_PARTS, *FROZEN_PARTS)
    _require(checkpoint_dir, parts)
    counts = {part: _count_parameters(checkpoint_dir / part) for part in parts}
    return CheckpointInfo(
        path=checkpoint_dir,
        format_version=config.format_version,
        preset=config.preset,
        parameters=counts,
        trainable=sum(counts[p] for p in TRAINABLE_PARTS),
        frozen=sum(counts[p] for p in FROZEN_PARTS),
        sources=config.sources,
    )


def _count_parameters(path: Path) -> int:
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())  # noqa: SIM118
    return total


def _require(checkpoint_dir: Path, parts: tuple[str, ...]) -> None:
    missing = [part for part in parts if not (checkpoint_dir / part).exists()]
    if missing:
        raise EngineError(f"MegaSR checkpoint {checkpoint_dir} lacks {', '.join(missing)}")


def _provenance(sources: BaseSources) -> dict[str, str]:
    return {
        "sd": sources.sd,
        "clip": sources.clip,
        "depth": sources.depth,
        "segmentation": sources.segmentation,
        "hed": sources.hed,
    }
