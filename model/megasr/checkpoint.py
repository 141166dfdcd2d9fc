"""The MegaSR checkpoint: one self-contained directory (layout in docs/megasr-checkpoint.md).

::

    megasr.json               MegaSRConfig: format_version, architecture, inference defaults,
                              extractor settings, where the base components came from
    adapter.safetensors       the U-Net's CSMs and MSFMs (+ a shared Connector); trainable
    controlnet/               the MegaSR ControlNet, its CSMs and MSFMs included: a diffusers
                              folder of MegaSRControlNetModel (weights variant "megasr");
                              trainable
    unet/ vae/ text_encoder/ tokenizer/ scheduler/
                              SD-2-base, copied in diffusers/transformers format; frozen
    extractors/               HED, depth, segmentation, CLIP vision and the tag vocabulary;
                              frozen

Base components are copied, not referenced: a checkpoint then loads offline on any machine
it is moved to, and training only ever rewrites ``controlnet/`` and ``adapter.safetensors``.
Every file is written readable by all (0644, folders 0755), whatever the umask and the
libraries' own temporary-file modes, so a checkpoint mounted into a pod reads under any UID.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.errors import EngineError
from megasr.model.extractors import ExtractorConfig, build_extractors
from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.components import MegaSRModel, build_tiny_model
from megasr.model.megasr.config import MegaSRConfig, ModulesConfig
from megasr.model.megasr.denoiser import MegaSRDenoiser
from megasr.model.megasr.networks import (
    WEIGHTS_VARIANT,
    MegaSRControlNetModel,
    MegaSRUNet2DConditionModel,
)

CONFIG_FILE = "megasr.json"
ADAPTER_FILE = "adapter.safetensors"
CONTROLNET_DIR = "controlnet"
EXTRACTORS_DIR = "extractors"
SCHEDULER_DIR = "scheduler"
SCHEDULER_FILE = "scheduler_config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONTROLNET_WEIGHTS = f"{CONTROLNET_DIR}/diffusion_pytorch_model.{WEIGHTS_VARIANT}.safetensors"
UNET_DIR = "unet"
BASE_DIRS = (UNET_DIR, "vae", "text_encoder", "tokenizer", SCHEDULER_DIR)
TRAINABLE_PARTS = (CONTROLNET_DIR, ADAPTER_FILE)
FROZEN_PARTS = (UNET_DIR, "vae", "text_encoder", EXTRACTORS_DIR)
ADAPTER_OWNERS = ("unet.", "connector.")
"""The parts of the denoiser's adapter state kept in ``adapter.safetensors``; the ControlNet's
modules travel with the ControlNet."""
FILE_MODE, DIR_MODE = 0o644, 0o755


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
        unet = MegaSRUNet2DConditionModel.from_pretrained(sources.sd, subfolder=UNET_DIR)
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
    _save_unet(model.denoiser.unet, out_dir / UNET_DIR)
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
    publish(out_dir)
    return config


def save_trained_weights(denoiser: MegaSRDenoiser, out_dir: Path) -> None:
    """Write what training changes: the MegaSR ControlNet and the U-Net's adapter state."""
    denoiser.controlnet.save_pretrained(out_dir / CONTROLNET_DIR)
    adapter = {
        key: value.contiguous().cpu()
        for key, value in denoiser.adapter_state_dict().items()
        if key.startswith(ADAPTER_OWNERS)
    }
    save_file(adapter, out_dir / ADAPTER_FILE, metadata={"format": "megasr-adapter"})
    publish(out_dir / CONTROLNET_DIR)
    publish(out_dir / ADAPTER_FILE)


def publish(path: Path) -> None:
    """Make ``path`` (a file, or a folder and everything in it) readable by every user.

    safetensors and the Hugging Face savers write through private temporary files (0600);
    a checkpoint is read by other users and pods, so files end up 0644 and folders 0755.
    """
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        item.chmod(DIR_MODE if item.is_dir() else FILE_MODE)


def _save_unet(unet: MegaSRUNet2DConditionModel, directory: Path) -> None:
    """The frozen U-Net as a plain diffusers U-Net folder (its MegaSR modules live in the
    adapter file), so that ``UNet2DConditionModel.from_pretrained`` reads it as what it is."""
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads(unet.to_json_string())
    config.pop("megasr", None)
    config["_class_name"] = UNet2DConditionModel.__name__
    (directory / UNet2DConditionModel.config_name).write_text(json.dumps(config, indent=2) + "\n")
    base = {
        key: value.detach().contiguous().cpu()
        for key, value in unet.state_dict().items()
        if not is_adapter_key(key)
    }
    save_file(base, directory / WEIGHTS_FILE, metadata={"format": "pt"})


def read_config(checkpoint_dir: Path) -> MegaSRConfig:
    path = checkpoint_dir / CONFIG_FILE
    if not path.is_file():
        raise EngineError(f"{checkpoint_dir} is not a MegaSR checkpoint: {CONFIG_FILE} is missing")
    return MegaSRConfig.from_json(path.read_text())


def latent_multiple(checkpoint_dir: Path) -> int:
    """What latent sides must be multiples of, from the U-Net's config (no weights loaded)."""
    require_parts(checkpoint_dir, (UNET_DIR,))
    unet_config = UNet2DConditionModel.load_config(checkpoint_dir / UNET_DIR)
    return 2 ** (len(unet_config["block_out_channels"]) - 1)


def load_checkpoint(
    checkpoint_dir: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MegaSRModel:
    """Load a checkpoint from local files only, frozen for inference, on ``device``.

    Strict about the new modules: every adapter key of the configured architecture must be
    in ``adapter.safetensors`` (a missing one would silently sample with an untrained module).
    """
    config = read_config(checkpoint_dir)
    require_parts(checkpoint_dir, (*BASE_DIRS, CONTROLNET_DIR, ADAPTER_FILE, EXTRACTORS_DIR))
    local = {"local_files_only": True, "torch_dtype": dtype}
    try:
        unet = MegaSRUNet2DConditionModel.from_pretrained(checkpoint_dir / UNET_DIR, **local)
        controlnet = _load_controlnet(checkpoint_dir / CONTROLNET_DIR, local)
        vae = AutoencoderKL.from_pretrained(checkpoint_dir / "vae", **local)
        text_encoder = CLIPTextModel.from_pretrained(checkpoint_dir / "text_encoder", **local)
        tokenizer = CLIPTokenizer.from_pretrained(checkpoint_dir / "tokenizer", **local)
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot load the MegaSR checkpoint {checkpoint_dir}: {error}") from error
    denoiser = MegaSRDenoiser(unet, controlnet, config.modules).to(dtype=dtype)
    try:
        denoiser.load_adapter_state_dict(load_file(checkpoint_dir / ADAPTER_FILE), ADAPTER_OWNERS)
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


def _load_controlnet(directory: Path, local: dict) -> MegaSRControlNetModel:
    """The MegaSR ControlNet with every weight from the folder; a missing one is an error
    (diffusers would only warn and leave it uninitialised)."""
    controlnet, info = MegaSRControlNetModel.from_pretrained(
        directory, output_loading_info=True, **local
    )
    missing = sorted(info["missing_keys"])
    if missing:
        raise EngineError(
            f"{directory} lacks {len(missing)} weight(s) of the MegaSR ControlNet "
            f"(first: {missing[0]})"
        )
    return controlnet


def require_parts(checkpoint_dir: Path, parts: tuple[str, ...]) -> None:
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
