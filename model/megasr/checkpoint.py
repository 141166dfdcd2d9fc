"""The MegaSR checkpoint: a saved :class:`~megasr.model.megasr.pipeline.MegaSRPipeline`
(layout in docs/megasr-checkpoint.md).

::

    model_index.json     the pipeline: its components, the inference defaults, the preset
                         and where the base parts came from
    unet/ controlnet/    MegaSRUNet2DConditionModel, MegaSRControlNetModel: config.json (the
                         MegaSR modules' architecture included) and weights
    vae/ text_encoder/ tokenizer/ scheduler/
                         SD-2-base, diffusers/transformers format; frozen
    extractors/          HED, depth, segmentation, CLIP and the tag vocabulary; frozen

Base components are copied, not referenced: a checkpoint then loads offline on any machine
it is moved to. Training rewrites ``unet/`` (its CSMs and MSFMs train) and ``controlnet/``.
Every file is written readable by all (0644, folders 0755), whatever the umask and the
libraries' own temporary-file modes, so a checkpoint mounted into a pod reads under any UID.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.errors import EngineError
from megasr.model.extractors import ExtractorConfig, build_extractors
from megasr.model.megasr.config import (
    InferenceConfig,
    ModulesConfig,
    inference_config_from_dict,
)
from megasr.model.megasr.controlnet_init import load_plain_controlnet
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.extractor_component import MegaSRExtractors
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel
from megasr.model.megasr.pipeline import MegaSRPipeline
from megasr.model.megasr.presets import build_tiny_pipeline

CONFIG_FILE = "model_index.json"
LEGACY_CONFIG_FILE = "megasr.json"
UNET_DIR = "unet"
CONTROLNET_DIR = "controlnet"
EXTRACTORS_DIR = "extractors"
SCHEDULER_DIR = "scheduler"
BASE_DIRS = (UNET_DIR, "vae", "text_encoder", "tokenizer", SCHEDULER_DIR)
TRAINABLE_PARTS = (CONTROLNET_DIR, UNET_DIR)
FROZEN_PARTS = ("vae", "text_encoder", EXTRACTORS_DIR)
FILE_MODE, DIR_MODE = 0o644, 0o755
HIDE_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"


@dataclass(frozen=True)
class BaseSources:
    """Where ``init`` takes the base components: local directories or hub ids.

    ``controlnet``: an SD-2 ControlNet in diffusers layout to start the MegaSR ControlNet
    from (None: copy it from the U-Net, as diffusers' ``ControlNetModel.from_unet`` does).
    """

    sd: str
    clip: str
    depth: str
    segmentation: str
    hed: str = "bundled"
    tagger: Literal["clip", "none"] = "clip"
    controlnet: str | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    """What ``model_index.json`` says beyond the components: read without loading weights."""

    preset: str
    inference: InferenceConfig
    sources: dict[str, str] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    """The whole ``model_index.json``, written back with the fields above by :meth:`to_json`."""

    def to_json(self) -> str:
        data = {
            **self.index,
            "preset": self.preset,
            "inference": asdict(self.inference),
            "sources": self.sources,
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def init_checkpoint(
    sources: BaseSources, out_dir: Path, modules: ModulesConfig | None = None
) -> CheckpointConfig:
    """Build a fresh MegaSR checkpoint from base components and write it to ``out_dir``.

    The new modules start at identity (zero-gated), so the checkpoint samples like SD-2
    steered by its ControlNet until it is trained: a ControlNet copied from the U-Net (which
    adds nothing yet), or the pretrained one ``sources.controlnet`` names.
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
    provenance = _provenance(sources)
    try:
        plain_unet = UNet2DConditionModel.from_pretrained(sources.sd, subfolder=UNET_DIR)
        unet = MegaSRUNet2DConditionModel.from_plain(plain_unet, modules)
        if sources.controlnet is None:
            controlnet = MegaSRDenoiser.from_unet(unet).controlnet
        else:
            pretrained = load_plain_controlnet(sources.controlnet, plain_unet)
            controlnet = MegaSRControlNetModel.from_plain(pretrained.controlnet, modules)
            provenance["controlnet_unused_weights"] = _unused(pretrained.unused)
        pipe = MegaSRPipeline(
            vae=AutoencoderKL.from_pretrained(sources.sd, subfolder="vae"),
            text_encoder=CLIPTextModel.from_pretrained(sources.sd, subfolder="text_encoder"),
            tokenizer=CLIPTokenizer.from_pretrained(sources.sd, subfolder="tokenizer"),
            unet=unet,
            controlnet=controlnet,
            scheduler=DDPMScheduler.from_pretrained(sources.sd, subfolder=SCHEDULER_DIR),
            extractors=MegaSRExtractors.of(extractors),
            sources=provenance,
        )
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot build MegaSR from {sources.sd!r}: {error}") from error
    return save_checkpoint(pipe, out_dir)


def init_tiny_checkpoint(out_dir: Path, seed: int = 0) -> CheckpointConfig:
    """A tiny random checkpoint of every component, built in code with no downloads."""
    return save_checkpoint(build_tiny_pipeline(seed), out_dir)


def save_checkpoint(pipe: MegaSRPipeline, out_dir: Path) -> CheckpointConfig:
    """Write every component of ``pipe`` (``save_pretrained``); returns the config written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir)
    publish(out_dir)
    return read_config(out_dir)


def save_trained_weights(denoiser: MegaSRDenoiser, out_dir: Path) -> None:
    """Write what training changes: the MegaSR U-Net (its CSMs and MSFMs) and ControlNet."""
    denoiser.unet.save_pretrained(out_dir / UNET_DIR)
    denoiser.controlnet.save_pretrained(out_dir / CONTROLNET_DIR)
    publish(out_dir / UNET_DIR)
    publish(out_dir / CONTROLNET_DIR)


def publish(path: Path) -> None:
    """Make ``path`` (a file, or a folder and everything in it) readable by every user.

    safetensors and the Hugging Face savers write through private temporary files (0600);
    a checkpoint is read by other users and pods, so files end up 0644 and folders 0755.
    """
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod(DIR_MODE if item.is_dir() else FILE_MODE)


def read_config(checkpoint_dir: Path) -> CheckpointConfig:
    """The checkpoint's ``model_index.json``; a checkpoint of the earlier layout is refused
    with the command that converts it."""
    path = checkpoint_dir / CONFIG_FILE
    if not path.is_file():
        if (checkpoint_dir / LEGACY_CONFIG_FILE).is_file():
            raise EngineError(
                f"{checkpoint_dir} is a MegaSR checkpoint of the earlier layout (format 2, "
                f"{LEGACY_CONFIG_FILE}); convert it with: megasr model convert "
                f"{checkpoint_dir} NEW_DIR"
            )
        raise EngineError(f"{checkpoint_dir} is not a MegaSR checkpoint: {CONFIG_FILE} is missing")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise EngineError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(index, dict) or index.get("_class_name") != MegaSRPipeline.__name__:
        raise EngineError(f"{checkpoint_dir} is not a MegaSR checkpoint: not a MegaSRPipeline")
    sources = index.get("sources") or {}
    if not isinstance(sources, dict):
        raise EngineError(f"{path}: sources must be an object")
    return CheckpointConfig(
        preset=str(index.get("preset", "sd2-base")),
        inference=inference_config_from_dict(index.get("inference") or {}),
        sources={str(k): str(v) for k, v in sources.items()},
        index=index,
    )


def latent_multiple(checkpoint_dir: Path) -> int:
    """What latent sides must be multiples of, from the U-Net's config (no weights loaded)."""
    require_parts(checkpoint_dir, (UNET_DIR,))
    unet_config = MegaSRUNet2DConditionModel.load_config(checkpoint_dir / UNET_DIR)
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def load_checkpoint(
    checkpoint_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MegaSRPipeline:
    """Load a checkpoint from local files only, frozen for inference, on ``device``.

    Strict about the new modules: a weight of a MegaSR network missing from its files, or one
    with no place in it, is an error (:meth:`MegaSRNetwork.from_pretrained`).
    """
    read_config(checkpoint_dir)
    require_parts(checkpoint_dir, (*BASE_DIRS, CONTROLNET_DIR, EXTRACTORS_DIR))
    if os.environ.get(HIDE_BARS) == "1":  # a quiet command (megasr.model.loading_bars)
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components..."
    try:
        pipe = MegaSRPipeline.from_pretrained(checkpoint_dir, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot load the MegaSR checkpoint {checkpoint_dir}: {error}") from error
    return pipe.to(device).freeze()


def require_parts(checkpoint_dir: Path, parts: tuple[str, ...]) -> None:
    missing = [part for part in parts if not (checkpoint_dir / part).exists()]
    if missing:
        raise EngineError(f"MegaSR checkpoint {checkpoint_dir} lacks {', '.join(missing)}")


def _unused(keys: tuple[str, ...]) -> str:
    """The ControlNet weights MegaSR had no place for, for the provenance record."""
    return f"{len(keys)}" + (f" (first: {keys[0]})" if keys else "")


def _provenance(sources: BaseSources) -> dict[str, str]:
    given = {
        "sd": sources.sd,
        "clip": sources.clip,
        "depth": sources.depth,
        "segmentation": sources.segmentation,
        "hed": sources.hed,
        "controlnet": sources.controlnet,
    }
    return {name: source for name, source in given.items() if source is not None}
