"""The U-Net and the ControlNet of MegaSR: diffusers models built with their CSMs and MSFMs.

Each class takes diffusers' own constructor arguments plus the MegaSR ones (``csm``, ``msfm``
and the :class:`~megasr.model.megasr.config.ModulesConfig` fields), registered by
``@register_to_config`` like any diffusers argument, so ``from_config``, ``save_pretrained``
and ``from_pretrained`` round-trip the whole network, new modules included. What they add:

- **MegaSR blocks.** Every cross-attention block's transformers are
  :class:`~megasr.model.megasr.transformer.MegaSRTransformer2DModel` (a CSM as the
  cross-attention of each transformer block, an MSFM after the transformer). The config
  names such a block by its owner, ``"MegaSRControlNetModel.CrossAttnDownBlock2D"``, so a
  plain ``ControlNetModel``/``UNet2DConditionModel`` refuses a MegaSR folder or config
  (diffusers: "MegaSRControlNetModel.CrossAttnDownBlock2D does not exist.") instead of
  loading a network that silently lost its modules.
- **Strict loading.** ``from_pretrained`` fails when a weight of the network is missing from
  the files or a stored weight has no place in it (diffusers only warns).
- **Processor calls keep the CSMs.** The CSM runs both of its attentions through the layer's
  own processor, so ``set_attn_processor``, ``Attention.set_processor``,
  ``set_attention_slice``, ``set_default_attn_processor``, ``fuse_qkv_projections`` and
  xformers all keep it working; a processor that is not plain attention is refused
  (:func:`~megasr.model.megasr.csm.check_plain`) before any layer changes.
- ``from_plain`` builds a MegaSR network from a plain diffusers one: its weights, the new
  modules at identity (zero-gated).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import torch
from diffusers import ControlNetModel, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.conditions import CONDITIONS_KEY, MegaSRConditions
from megasr.model.megasr.config import ModulesConfig
from megasr.model.megasr.csm import CSMAttention, check_plain
from megasr.model.megasr.transformer import MegaSRTransformer2DModel

__all__ = ["MegaSRControlNetModel", "MegaSRUNet2DConditionModel", "ModelMixin"]
"""``ModelMixin`` included: diffusers' pipeline loader finds a component's loading method
through the base classes it looks up by name in the component's own module."""

MEGASR_BLOCKS = ("CrossAttnDownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D")
"""diffusers' cross-attention blocks: in a MegaSR network each one carries CSMs and MSFMs."""

MEGASR_ARGUMENTS = ("csm", "msfm", *(f.name for f in fields(ModulesConfig)))
"""The constructor arguments a MegaSR network adds to its diffusers class."""


def megasr_block(block_type: str | None, owner: type) -> str | None:
    """``block_type`` as a MegaSR network of class ``owner`` names it in its config."""
    plain = diffusers_block(block_type)
    return f"{owner.__name__}.{plain}" if plain in MEGASR_BLOCKS else plain


def diffusers_block(block_type: str | None) -> str | None:
    """The diffusers block a (possibly MegaSR-named) block type is built from."""
    return None if block_type is None else block_type.rsplit(".", 1)[-1]


class MegaSRNetwork:
    """What the MegaSR U-Net and ControlNet share. A mixin placed before the diffusers class."""

    config: Any
    shared_connector: nn.Linear | None

    @property
    def modules_config(self) -> ModulesConfig:
        return ModulesConfig(**{f.name: self.config[f.name] for f in fields(ModulesConfig)})

    def _install(self, owner: type, base: type, arguments: dict[str, Any]) -> None:
        """Build the diffusers network, then make its cross-attention blocks MegaSR blocks.

        The diffusers ``__init__`` is called undecorated: the MegaSR config (with MegaSR block
        names) is already registered by this class's own ``@register_to_config``, and the
        base's decorator would overwrite it with the plain names.
        """
        for key in ("down_block_types", "up_block_types"):
            if key in arguments:
                arguments[key] = tuple(self._plain_block(t, owner) for t in arguments[key])
        arguments["mid_block_type"] = self._plain_block(arguments["mid_block_type"], owner)
        megasr = {name: arguments.pop(name) for name in MEGASR_ARGUMENTS}
        base.__init__.__wrapped__(self, **arguments)
        modules = ModulesConfig(**{f.name: megasr[f.name] for f in fields(ModulesConfig)})
        for block in self._cross_attention_blocks():
            for index, transformer in enumerate(block.attentions):
                block.attentions[index] = MegaSRTransformer2DModel.like(
                    transformer, modules, megasr["csm"], megasr["msfm"]
                )
        shared = megasr["csm"] and modules.connector == "shared"
        width = arguments["cross_attention_dim"]
        self.shared_connector = nn.Linear(modules.clip_width, width) if shared else None

    @staticmethod
    def _plain_block(block_type: str | None, owner: type) -> str | None:
        plain = diffusers_block(block_type)
        if plain in MEGASR_BLOCKS and block_type != megasr_block(plain, owner):
            raise ValueError(
                f"a {owner.__name__} has MegaSR cross-attention blocks: name them "
                f"{megasr_block(plain, owner)!r}, not {block_type!r} (build one from a plain "
                f"diffusers network with {owner.__name__}.from_plain)"
            )
        return plain

    def _cross_attention_blocks(self) -> Iterator[nn.Module]:
        blocks = [*self.down_blocks, self.mid_block, *getattr(self, "up_blocks", [])]
        return (block for block in blocks if block is not None and hasattr(block, "attentions"))

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained``, failing where diffusers would only warn: on a weight
        of the network missing from the files, or a stored weight with no place in it."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, output_loading_info=True, **kwargs
        )
        missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
        if missing or unexpected:
            raise ValueError(
                f"{pretrained_model_name_or_path} does not hold the weights of this "
                f"{cls.__name__}: {len(missing)} missing (first: {missing[:2]}), "
                f"{len(unexpected)} unexpected (first: {unexpected[:2]})"
            )
        return (model, info) if wants_info else model

    @classmethod
    def from_plain_config(
        cls,
        config: dict[str, Any],
        modules: ModulesConfig,
        csm: bool = True,
        msfm: bool = True,
    ) -> Any:
        """A MegaSR network (fresh weights) with the architecture of a plain diffusers config;
        keys the class does not take (private ones, another class's) are left out."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self", *MEGASR_ARGUMENTS}
        config = {k: v for k, v in config.items() if k in known}
        for key in ("down_block_types", "up_block_types"):
            if key in config:
                config[key] = tuple(megasr_block(t, cls) for t in config[key])
        if "mid_block_type" in config:
            config["mid_block_type"] = megasr_block(config["mid_block_type"], cls)
        return cls(**config, csm=csm, msfm=msfm, **modules.to_dict())

    @classmethod
    def from_plain(
        cls, network: nn.Module, modules: ModulesConfig, csm: bool = True, msfm: bool = True
    ) -> Any:
        """A MegaSR network with the architecture and weights of the diffusers ``network``
        and fresh new modules (identity at initialisation)."""
        megasr = cls.from_plain_config(dict(network.config), modules, csm, msfm)
        copy_base_weights(megasr, network.state_dict())
        return _like(megasr, network)

    # -- diffusers' processor calls -------------------------------------------------------------

    def set_attn_processor(self, processor: Any) -> None:
        """diffusers' ``set_attn_processor``, refusing (before any layer changes) a processor
        a CSM cannot run through."""
        for name, module in self.named_modules():
            if isinstance(module, CSMAttention):
                check_plain(
                    processor[f"{name}.processor"] if isinstance(processor, dict) else processor
                )
        super().set_attn_processor(processor)

    # -- the shared Connector -------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """diffusers' forward; with a shared Connector, the image tokens of the MegaSR
        conditions go through it once (once per batch of tiles with a step cache)."""
        if self.shared_connector is None:
            return super().forward(*args, **kwargs)
        bound = inspect.signature(super().forward).bind(*args, **kwargs)
        extra = dict(bound.arguments.get("cross_attention_kwargs") or {})
        conditions: MegaSRConditions | None = extra.get(CONDITIONS_KEY)
        if conditions is not None and conditions.image_tokens is not None:
            extra[CONDITIONS_KEY] = conditions.connected(self._connect(conditions))
            bound.arguments["cross_attention_kwargs"] = extra
        return super().forward(*bound.args, **bound.kwargs)

    def _connect(self, conditions: MegaSRConditions) -> torch.Tensor:
        def connect() -> torch.Tensor:
            connector = self.shared_connector
            return connector(conditions.image_tokens.to(connector.weight.dtype))

        cache = conditions.cache
        return connect() if cache is None else cache.get(self.shared_connector, connect)


def copy_base_weights(megasr: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a plain network's weights into ``megasr``: every one of its own weights must be
    there with its shape, and only the new modules' weights may be absent."""
    result = megasr.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not is_adapter_key(key)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the weights do not fit a {type(megasr).__name__}: {len(missing)} missing "
            f"(first: {missing[:2]}), {len(result.unexpected_keys)} unexpected "
            f"(first: {result.unexpected_keys[:2]})"
        )


def _like(network: Any, model: Any) -> Any:
    """``network`` on the device and in the dtype of ``model`` (no cast when they agree:
    diffusers warns about every explicit one)."""
    network.to(model.device)
    return network if network.dtype == model.dtype else network.to(dtype=model.dtype)


def _arguments(base: type, values: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of ``base`` and the MegaSR ones, from an ``__init__``'s locals."""
    names = [*inspect.signature(base.__init__).parameters, *MEGASR_ARGUMENTS]
    return {name: values[name] for name in names if name != "self"}


class MegaSRUNet2DConditionModel(MegaSRNetwork, UNet2DConditionModel):
    """SD's U-Net with MegaSR's CSMs and MSFMs (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "MegaSRUNet2DConditionModel.CrossAttnDownBlock2D",
            "MegaSRUNet2DConditionModel.CrossAttnDownBlock2D",
            "MegaSRUNet2DConditionModel.CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "MegaSRUNet2DConditionModel.UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "MegaSRUNet2DConditionModel.CrossAttnUpBlock2D",
            "MegaSRUNet2DConditionModel.CrossAttnUpBlock2D",
            "MegaSRUNet2DConditionModel.CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-05,
        cross_attention_dim: int | tuple[int] = 1280,
        transformer_layers_per_block: int | tuple[int] | tuple[tuple] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int]] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int] = 8,
        num_attention_heads: int | tuple[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
        # MegaSR: which modules the network carries, and their architecture (ModulesConfig).
        csm: bool = True,
        msfm: bool = True,
        clip_width: int = 1024,
        connector: str = "per_block",
        lgwam_bias: bool = True,
        guidance_channels: int = 64,
        guidance_norm_groups: int = 32,
        se_reduction: int = 4,
        saft_hidden: int = 64,
        saft_kernel_size: int = 3,
        feature_norm_groups: int = 32,
        msfm_residual: bool = True,
        guidance_antialias: bool = True,
    ) -> None:
        self._install(
            MegaSRUNet2DConditionModel,
            UNet2DConditionModel,
            _arguments(UNet2DConditionModel, locals()),
        )


class MegaSRControlNetModel(MegaSRNetwork, ControlNetModel):
    """ControlNet with MegaSR's CSMs and MSFMs (see the module docstring)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "MegaSRControlNetModel.CrossAttnDownBlock2D",
            "MegaSRControlNetModel.CrossAttnDownBlock2D",
            "MegaSRControlNetModel.CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "MegaSRControlNetModel.UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-05,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
        # MegaSR: which modules the network carries, and their architecture (ModulesConfig).
        csm: bool = True,
        msfm: bool = True,
        clip_width: int = 1024,
        connector: str = "per_block",
        lgwam_bias: bool = True,
        guidance_channels: int = 64,
        guidance_norm_groups: int = 32,
        se_reduction: int = 4,
        saft_hidden: int = 64,
        saft_kernel_size: int = 3,
        feature_norm_groups: int = 32,
        msfm_residual: bool = True,
        guidance_antialias: bool = True,
    ) -> None:
        self._install(MegaSRControlNetModel, ControlNetModel, _arguments(ControlNetModel, locals()))

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        csm: bool = True,
        msfm: bool = True,
        modules: ModulesConfig | None = None,
    ) -> MegaSRControlNetModel:
        """A MegaSR ControlNet copied from ``unet`` (plain or MegaSR), as diffusers'
        ``ControlNetModel.from_unet`` copies one: the U-Net's architecture and weights (its
        input convolution, time embedding, down and middle blocks), fresh new modules (the
        U-Net's architecture of them, or ``modules``)."""
        if modules is None:
            modules = unet.modules_config if isinstance(unet, MegaSRNetwork) else ModulesConfig()
        names = set(inspect.signature(ControlNetModel.__init__).parameters)
        config = {key: unet.config[key] for key in names if key in unet.config}
        config["conditioning_embedding_out_channels"] = conditioning_embedding_out_channels
        controlnet = cls.from_plain_config(config, modules, csm, msfm)
        theirs = unet.state_dict()
        copied = {
            key: theirs[key]
            for key in controlnet.state_dict()
            if key in theirs and not is_adapter_key(key)
        }
        controlnet.load_state_dict(copied, strict=False)
        return _like(controlnet, unet)
