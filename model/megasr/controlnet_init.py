"""Starting MegaSR's ControlNet from a pretrained SD-2 ControlNet in diffusers layout.

``megasr model init --controlnet PATH_OR_ID`` reads a ``ControlNetModel`` folder (or hub id):
its ``config.json`` and its weights. Its architecture must be the U-Net's (the ControlNet's
residuals are added to the U-Net's blocks); its weights are mapped onto the MegaSR ControlNet
by name (``MegaSRControlNetModel.from_plain``) and the MegaSR modules are added at identity.
Weights the checkpoint holds for layers a diffusers ``ControlNetModel`` does not have (SeeSR's
ControlNet adds an image cross-attention, which MegaSR's CSM replaces) are left out and
named in the checkpoint's provenance, so nothing is dropped unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import ControlNetModel, UNet2DConditionModel

from megasr.errors import EngineError
from megasr.model.megasr.networks import diffusers_block

MATCHING = ("block_out_channels", "cross_attention_dim", "layers_per_block", "in_channels")


@dataclass(frozen=True)
class PretrainedControlNet:
    """A plain diffusers ControlNet and the weights of its files that it had no place for."""

    controlnet: ControlNetModel
    unused: tuple[str, ...]


def load_plain_controlnet(source: str, unet: UNet2DConditionModel) -> PretrainedControlNet:
    """The ControlNet at ``source`` with every one of its weights from the files."""
    try:
        controlnet, info = ControlNetModel.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot load a ControlNet from {source!r}: {error}") from error
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise EngineError(
            f"{source} lacks {len(missing)} weight(s) of a ControlNet (first: {missing[0]})"
        )
    different = [
        key for key in MATCHING if _plain(controlnet.config[key]) != _plain(unet.config[key])
    ]
    down = [diffusers_block(t) for t in unet.config.down_block_types]
    if list(controlnet.config.down_block_types) != down:
        different.append("down_block_types")
    if different:
        raise EngineError(
            f"the ControlNet {source} does not fit the U-Net: {', '.join(different)} differ"
        )
    return PretrainedControlNet(controlnet, tuple(sorted(info["unexpected_keys"])))


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple | list) else value
