"""Converting a MegaSR checkpoint of the earlier layout (format 2) into a saved pipeline.

Format 2 kept ``megasr.json`` (architecture, inference defaults, extractor settings, sources),
a plain SD U-Net in ``unet/`` with its new modules in ``adapter.safetensors`` (keys
``unet.<layer>.processor.…`` for the CSMs, ``unet.<transformer>.msfm.…``, ``connector.…`` for
a shared Connector) and the ControlNet whole in ``controlnet/`` (its modules under the same
names, weights variant ``megasr``). The CSMs were attention processors then; they are
modules of their cross-attention now (``<layer>.csm.…``), and a shared Connector belongs to
each network (``shared_connector.…``). Every weight is carried over, and every weight of the
new networks must come from the old files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from megasr.errors import EngineError
from megasr.model.extractors import ExtractorConfig, build_extractors
from megasr.model.megasr.checkpoint import (
    CONFIG_FILE,
    LEGACY_CONFIG_FILE,
    CheckpointConfig,
    save_checkpoint,
)
from megasr.model.megasr.config import ModulesConfig, modules_config_from_dict
from megasr.model.megasr.extractor_component import MegaSRExtractors
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel
from megasr.model.megasr.pipeline import MegaSRPipeline

LEGACY_VERSION = 2
PLACEMENTS = ("csm_in_unet", "csm_in_controlnet", "msfm_in_unet", "msfm_in_controlnet")
LEGACY_CONTROLNET_WEIGHTS = "diffusion_pytorch_model.megasr.safetensors"


def convert_checkpoint(old: Path, new: Path) -> CheckpointConfig:
    """Write the format-2 checkpoint at ``old`` as a pipeline checkpoint at ``new``."""
    if (new / CONFIG_FILE).exists():
        raise EngineError(f"{new} already holds a checkpoint; choose an empty folder")
    data = _legacy_config(old)
    placements = {name: bool(data["modules"].pop(name)) for name in PLACEMENTS}
    embedding = tuple(data["modules"].pop("controlnet_embedding_channels"))
    modules = modules_config_from_dict(data["modules"])
    adapter = load_file(old / "adapter.safetensors")
    shared = {f"shared_{k}": v for k, v in adapter.items() if k.startswith("connector.")}
    unet = MegaSRUNet2DConditionModel.from_plain(
        UNet2DConditionModel.from_pretrained(old / "unet"),
        modules,
        placements["csm_in_unet"],
        placements["msfm_in_unet"],
    )
    unet_modules = {
        _renamed(key.removeprefix("unet.")): value
        for key, value in adapter.items()
        if key.startswith("unet.")
    }
    _load_exactly(
        unet, {**unet.state_dict(), **unet_modules, **shared}, old / "adapter.safetensors"
    )
    controlnet = _controlnet(old / "controlnet", modules, placements, embedding)
    controlnet_state = {_renamed(k): v for k, v in load_file(_controlnet_weights(old)).items()}
    _load_exactly(controlnet, {**controlnet_state, **shared}, old / "controlnet")
    extractors = build_extractors(
        ExtractorConfig.from_dict(data["extractors"]), "cpu", torch.float32, root=old / "extractors"
    )
    pipe = MegaSRPipeline(
        vae=AutoencoderKL.from_pretrained(old / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(old / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(old / "tokenizer"),
        unet=unet,
        controlnet=controlnet,
        scheduler=DDPMScheduler.from_pretrained(old / "scheduler"),
        extractors=MegaSRExtractors.of(extractors),
        inference=data["inference"],
        preset=data["preset"],
        sources={**data["sources"], "converted_from": str(old)},
    )
    return save_checkpoint(pipe, new)


def _legacy_config(old: Path) -> dict[str, Any]:
    path = old / LEGACY_CONFIG_FILE
    if not path.is_file():
        raise EngineError(f"{old} is not a MegaSR checkpoint of format 2 ({path.name} is missing)")
    data = json.loads(path.read_text())
    if data.get("format_version") != LEGACY_VERSION:
        raise EngineError(
            f"{path}: format {data.get('format_version')!r}; this converts format {LEGACY_VERSION}"
        )
    return data


def _renamed(key: str) -> str:
    """A format-2 weight name as the MegaSR networks name it now."""
    return key.replace(".processor.", ".csm.")


def _controlnet(
    folder: Path, modules: ModulesConfig, placements: dict[str, bool], embedding: tuple[int, ...]
) -> MegaSRControlNetModel:
    config = json.loads((folder / "config.json").read_text())
    config.pop("megasr", None)
    config["conditioning_embedding_out_channels"] = embedding
    return MegaSRControlNetModel.from_plain_config(
        config, modules, placements["csm_in_controlnet"], placements["msfm_in_controlnet"]
    )


def _controlnet_weights(old: Path) -> Path:
    path = old / "controlnet" / LEGACY_CONTROLNET_WEIGHTS
    if not path.is_file():
        raise EngineError(f"{old} lacks controlnet/{LEGACY_CONTROLNET_WEIGHTS}")
    return path


def _load_exactly(network: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` into ``network``: every weight of it, and nothing else."""
    expected = network.state_dict().keys()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise EngineError(
            f"{source} does not fit the converted {type(network).__name__}: {len(missing)} "
            f"missing (first: {missing[:2]}), {len(unexpected)} unexpected "
            f"(first: {unexpected[:2]})"
        )
    network.load_state_dict(state)
