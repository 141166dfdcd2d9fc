"""Installing MegaSR's new modules into a diffusers U-Net or ControlNet, and their state.

Installation only adds: processors on the attention layers and an ``msfm`` submodule (with
its forward hook) on each transformer. Pretrained keys keep their names, and the new ones
all contain ``.processor.`` or ``.msfm.``, which is how the adapter state is told apart from
the base weights.
"""

from __future__ import annotations

from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.csm import CSMProcessor, PlainAttnProcessor, check_supported
from megasr.model.megasr.msfm import MSFM, apply_msfm

ADAPTER_MARKERS = (".processor.", ".msfm.")

DiffusionNet = UNet2DConditionModel | ControlNetModel


def install_modules(
    net: DiffusionNet, config: ModulesConfig, *, csm: bool, msfm: bool, shared_connector: bool
) -> None:
    """Give every attention layer a MegaSR processor and every transformer an MSFM.

    Every attention layer gets a processor that accepts the ``megasr`` key, even where the
    module is switched off, so diffusers never drops the conditions with a warning.
    """
    if any(isinstance(m, Transformer2DModel) and hasattr(m, "msfm") for m in net.modules()):
        raise ValueError("MegaSR modules are already installed in this network")
    connector_width = None if shared_connector else config.clip_width
    for attn in [m for m in net.modules() if isinstance(m, Attention)]:
        if csm and attn.is_cross_attention:
            check_supported(attn)
            attn.set_processor(
                CSMProcessor(
                    attn.out_dim, attn.cross_attention_dim, connector_width, config.lgwam_bias
                )
            )
        else:
            attn.set_processor(PlainAttnProcessor())
    if not msfm:
        return
    for transformer in [m for m in net.modules() if isinstance(m, Transformer2DModel)]:
        transformer.msfm = MSFM(transformer.out_channels, config)
        transformer.register_forward_hook(apply_msfm, with_kwargs=True)


def is_adapter_key(key: str) -> bool:
    return any(marker in key for marker in ADAPTER_MARKERS)


def adapter_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    """The new modules' parameters of ``net``, by name."""
    return {name: p for name, p in net.named_parameters() if is_adapter_key(name)}


def count_modules(net: nn.Module) -> dict[str, int]:
    """How many CSM processors and MSFMs ``net`` holds (a check that installation is whole)."""
    return {
        "csm": sum(isinstance(m, CSMProcessor) for m in net.modules()),
        "msfm": sum(isinstance(m, MSFM) for m in net.modules()),
    }
