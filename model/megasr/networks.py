"""The U-Net and the ControlNet of MegaSR: diffusers models that carry their CSMs and MSFMs.

Installing the new modules only adds: a processor on every attention layer (a CSM on the
cross-attentions) and an ``msfm`` submodule with a forward hook on every transformer, so the
pretrained keys keep their names and ``from_unet`` still copies strictly (it runs before
anything is installed). What these subclasses add to diffusers' classes:

- the installation is recorded in the model's own config (``megasr``, a ConfigMixin entry),
  so ``save_pretrained`` / ``from_pretrained`` of :class:`MegaSRControlNetModel` round-trip
  the whole network, new modules included, with diffusers' own machinery;
- its weights are saved under the ``megasr`` weights variant, so plain
  ``ControlNetModel.from_pretrained`` on a MegaSR ControlNet folder fails loudly (no file
  named ``diffusion_pytorch_model.safetensors``) instead of loading a ControlNet that has
  silently lost its CSMs and MSFMs;
- diffusers' processor calls cannot drop the CSMs: ``set_default_attn_processor`` keeps them
  and resets the other layers, ``fuse_qkv_projections`` fuses the self-attentions only (the
  CSMs cache their keys and values instead), and ``set_attn_processor`` refuses to replace a
  CSM by anything else, with an error that says how to remove the modules on purpose;
- the MSFM hooks are kept, and :meth:`MegaSRNetwork.uninstall_megasr` removes every module
  and hook, giving back the pretrained network.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any

from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch.utils.hooks import RemovableHandle

from megasr.errors import EngineError
from megasr.model.megasr.config import ModulesConfig, modules_config_from_dict
from megasr.model.megasr.csm import (
    CSMProcessor,
    PlainAttnProcessor,
    PlainFusedAttnProcessor,
    check_supported,
)
from megasr.model.megasr.msfm import MSFM, apply_msfm

WEIGHTS_VARIANT = "megasr"
"""diffusers weights variant of a MegaSR network: ``diffusion_pytorch_model.megasr.safetensors``."""


@dataclass(frozen=True)
class Installation:
    """Which new modules a network carries, and their architecture: the ``megasr`` config."""

    modules: ModulesConfig
    csm: bool
    msfm: bool

    @property
    def shared_connector(self) -> bool:
        return self.modules.connector == "shared"

    def to_dict(self) -> dict[str, Any]:
        # Through JSON, so tuples become lists exactly as in a config file read back.
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Installation:
        try:
            return cls(
                modules=modules_config_from_dict(data["modules"]),
                csm=bool(data["csm"]),
                msfm=bool(data["msfm"]),
            )
        except (KeyError, TypeError) as error:
            raise EngineError(f"the network's megasr config is not valid: {error}") from error


class MegaSRNetwork:
    """What the MegaSR U-Net and ControlNet share: installing, guarding and removing modules.

    A mixin placed before the diffusers class, whose config and attention layers it uses.
    """

    _megasr_hooks: list[RemovableHandle] | None = None

    @property
    def installation(self) -> Installation | None:
        data = self.config.get("megasr")
        return None if data is None else Installation.from_dict(data)

    def install_megasr(self, installation: Installation) -> None:
        """Give every attention layer a MegaSR processor and every transformer an MSFM.

        Every attention layer gets a processor that accepts the ``megasr`` key, even where the
        CSM is switched off, so diffusers never drops the conditions with a warning.
        """
        if self._megasr_hooks is not None:
            raise EngineError("MegaSR modules are already installed in this network")
        modules = installation.modules
        width = None if installation.shared_connector else modules.clip_width
        for attn in self._attention_layers():
            if installation.csm and attn.is_cross_attention:
                check_supported(attn)
                processor = CSMProcessor(
                    attn.out_dim, attn.cross_attention_dim, width, modules.lgwam_bias
                )
                attn.set_processor(processor.to(attn.to_q.weight.device))
            else:
                attn.set_processor(PlainAttnProcessor())
        hooks: list[RemovableHandle] = []
        if installation.msfm:
            for transformer in self._transformers():
                msfm = MSFM(transformer.out_channels, modules)
                transformer.msfm = msfm.to(transformer.proj_out.weight.device)
                hooks.append(transformer.register_forward_hook(apply_msfm, with_kwargs=True))
        self._megasr_hooks = hooks  # kept, so that uninstall_megasr can remove them
        self.register_to_config(megasr=installation.to_dict())

    def uninstall_megasr(self) -> None:
        """Remove every CSM, MSFM and hook: the network computes its pretrained function."""
        for hook in self._megasr_hooks or []:
            hook.remove()
        for transformer in self._transformers():
            if hasattr(transformer, "msfm"):
                del transformer.msfm
        for attn in self._attention_layers():
            attn.set_processor(AttnProcessor2_0())
        self._megasr_hooks = None
        self.register_to_config(megasr=None)

    # -- diffusers' processor calls, made safe for the CSMs ------------------------------------

    def set_attn_processor(self, processor: Any) -> None:
        """diffusers' ``set_attn_processor``, refusing to replace a CSM by anything else."""
        current = self.attn_processors
        replacing = processor if isinstance(processor, dict) else dict.fromkeys(current, processor)
        dropped = [
            name
            for name, old in current.items()
            if isinstance(old, CSMProcessor) and replacing.get(name) is not old
        ]
        if dropped:
            raise EngineError(
                f"setting attention processors would remove the trained CSM of {len(dropped)} "
                f"layer(s) (first: {dropped[0]}); call uninstall_megasr() first to remove the "
                "MegaSR modules on purpose"
            )
        super().set_attn_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Default attention everywhere but in the CSMs, which stay."""
        self.set_attn_processor(
            {
                name: old if isinstance(old, CSMProcessor) else PlainAttnProcessor()
                for name, old in self.attn_processors.items()
            }
        )

    def fuse_qkv_projections(self) -> None:
        """Fuse the query, key and value projections of the self-attentions.

        The CSM cross-attentions are left as they are: they read the separate key and value
        projections, and a sampler computes those once per batch of tiles anyway.
        """
        for attn in self._attention_layers():
            if not attn.is_cross_attention and not attn.fused_projections:
                attn.fuse_projections()
                attn.set_processor(PlainFusedAttnProcessor())

    def unfuse_qkv_projections(self) -> None:
        for attn in self._attention_layers():
            if not attn.is_cross_attention and attn.fused_projections:
                del attn.to_qkv
                attn.fused_projections = False
                attn.set_processor(PlainAttnProcessor())

    def _attention_layers(self) -> list[Attention]:
        return [m for m in self.modules() if isinstance(m, Attention)]

    def _transformers(self) -> list[Transformer2DModel]:
        return [m for m in self.modules() if isinstance(m, Transformer2DModel)]


class MegaSRUNet2DConditionModel(MegaSRNetwork, UNet2DConditionModel):
    """SD's U-Net with MegaSR's modules; its pretrained weights load as a plain U-Net's.

    A MegaSR checkpoint keeps the frozen U-Net in diffusers' plain layout (the U-Net side of
    the new modules lives in the checkpoint's adapter file, see :mod:`.checkpoint`), so this
    class loads it with ``from_pretrained`` and installs the modules afterwards.
    """


class MegaSRControlNetModel(MegaSRNetwork, ControlNetModel):
    """ControlNet with MegaSR's modules, saved and loaded whole (``megasr`` config entry and
    weights variant); ``from_unet`` copies a U-Net before anything is installed."""

    def __init__(self, *args: Any, megasr: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if megasr is not None:
            self.install_megasr(Installation.from_dict(megasr))

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> MegaSRControlNetModel:
        kwargs.setdefault("variant", WEIGHTS_VARIANT)
        return super().from_pretrained(*args, **kwargs)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("variant", WEIGHTS_VARIANT)
        super().save_pretrained(*args, **kwargs)


def _with_megasr_parameter(base: type, cls: type) -> None:
    """Give ``cls.__init__`` the signature of ``base.__init__`` plus ``megasr``.

    diffusers reads a model's config keys from its ``__init__`` signature (``from_config``);
    the subclass takes the base arguments through ``**kwargs``, so it says so explicitly.
    """
    signature = inspect.signature(base.__init__)
    parameters = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    megasr = inspect.Parameter("megasr", inspect.Parameter.KEYWORD_ONLY, default=None)
    cls.__init__.__signature__ = signature.replace(parameters=[*parameters, megasr])


_with_megasr_parameter(ControlNetModel, MegaSRControlNetModel)
