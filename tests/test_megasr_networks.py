"""The MegaSR U-Net and ControlNet as diffusers models: every processor API of diffusers keeps
the CSMs working or raises, the config and the files round-trip every new module, loading is
strict, and plain diffusers classes refuse MegaSR weights."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention_processor import (
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor2_0,
    SlicedAttnProcessor,
)
from megasr_tiny import TINY, denoiser_and_plain, inputs, plain_forward, randomise_new_modules
from safetensors.torch import load_file, save_file

from megasr.model.megasr.adapter import count_modules
from megasr.model.megasr.csm import LGWAM, CSMAttention
from megasr.model.megasr.networks import MegaSRControlNetModel, MegaSRUNet2DConditionModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def trained():
    """A denoiser whose new modules are off their identity, and its inputs and output."""
    denoiser, unet, controlnet = denoiser_and_plain()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    with torch.no_grad():
        before = denoiser(**args)
        plain = plain_forward(unet, controlnet, args)
    assert (before - plain).abs().max() > 1e-2  # the CSMs and MSFMs change the output
    return denoiser, args, before


def _forward(denoiser, args) -> torch.Tensor:
    with torch.no_grad():
        return denoiser(**args)


def _csms(net) -> list[CSMAttention]:
    return [m for m in net.modules() if isinstance(m, CSMAttention)]


def _processors(net) -> set[type]:
    return {type(p) for p in net.attn_processors.values()}


# -- one test per diffusers processor API -------------------------------------------------------


def test_set_attn_processor_with_a_plain_processor_keeps_the_csms(trained):
    denoiser, args, before = trained
    for net in (denoiser.unet, denoiser.controlnet):
        net.set_attn_processor(AttnProcessor())
        assert _processors(net) == {AttnProcessor} and len(_csms(net)) > 0
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


def test_set_attn_processor_with_an_ip_adapter_processor_is_refused_before_any_change(trained):
    denoiser, args, before = trained
    unet = denoiser.unet
    ip = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=32)
    processors = {name: AttnProcessor() for name in unet.attn_processors}
    csm_layer = next(name for name in processors if name.endswith("attn2.processor"))
    processors[csm_layer] = ip
    with pytest.raises(ValueError, match="IPAdapterAttnProcessor2_0 cannot run a MegaSR CSM"):
        unet.set_attn_processor(processors)
    assert _processors(unet) == {AttnProcessor2_0}  # not one layer changed
    torch.testing.assert_close(_forward(denoiser, args), before, atol=0, rtol=0)


def test_attention_set_processor_on_one_layer_is_guarded_too(trained):
    denoiser, args, before = trained
    layer = _csms(denoiser.unet)[0]
    with pytest.raises(ValueError, match="cannot run a MegaSR CSM"):
        layer.set_processor(IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=32))
    layer.set_processor(AttnProcessor())  # a plain processor: the CSM runs through it
    assert isinstance(layer.processor, AttnProcessor)
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("slice_size", ["auto", "max", 2])
def test_set_attention_slice_keeps_the_csms(trained, slice_size):
    denoiser, args, before = trained
    for net in (denoiser.unet, denoiser.controlnet):
        net.set_attention_slice(slice_size)
        assert _processors(net) == {SlicedAttnProcessor}
        assert (
            len(_csms(net))
            == {"unet": 4, "controlnet": 2}["unet" if net is denoiser.unet else "controlnet"]
        )
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


def test_set_default_attn_processor_keeps_the_csms(trained):
    denoiser, args, before = trained
    for net in (denoiser.unet, denoiser.controlnet):
        net.set_default_attn_processor()
        assert _processors(net) == {AttnProcessor}
    assert count_modules(denoiser.unet) == {"csm": 4, "msfm": 4}
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


def test_fused_projections_keep_the_csms_and_unfusing_restores_the_processors(trained):
    """The U-Net fuses every projection (the CSM's image branch then reads its layer's fused
    key/value projection); diffusers' ControlNet fuses only its newer attention classes, none
    of which SD has, so there the call changes nothing. Either way the output stays."""
    denoiser, args, before = trained
    for net in (denoiser.unet, denoiser.controlnet):
        net.fuse_qkv_projections()
    assert _processors(denoiser.unet) == {FusedAttnProcessor2_0}
    assert all(layer.fused_projections for layer in _csms(denoiser.unet))
    assert count_modules(denoiser.controlnet) == {"csm": 2, "msfm": 2}
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)
    for net in (denoiser.unet, denoiser.controlnet):
        net.unfuse_qkv_projections()
        assert _processors(net) == {AttnProcessor2_0}
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


def test_xformers_attention_raises_where_it_cannot_run_and_leaves_the_csms(trained):
    """xformers needs its package and a CUDA device (neither is here): diffusers raises before
    touching a layer. Where it runs, ``XFormersAttnProcessor`` is plain attention, which the
    CSM runs through (it is in the accepted set, checked here)."""
    denoiser, args, before = trained
    with pytest.raises((ModuleNotFoundError, ValueError)):
        denoiser.unet.enable_xformers_memory_efficient_attention()
    assert _processors(denoiser.unet) == {AttnProcessor2_0}
    torch.testing.assert_close(_forward(denoiser, args), before, atol=0, rtol=0)
    from diffusers.models.attention_processor import XFormersAttnProcessor

    _csms(denoiser.unet)[0].set_processor(XFormersAttnProcessor())  # accepted, not run here


# -- the config and the files -------------------------------------------------------------------


@pytest.mark.parametrize("network", ["unet", "controlnet"])
def test_from_config_rebuilds_every_module(network):
    denoiser, _, _ = denoiser_and_plain(
        config=replace(TINY, connector="shared"), controlnet_msfm=False
    )
    net = getattr(denoiser, network)
    rebuilt = type(net).from_config(net.config)
    assert count_modules(rebuilt) == count_modules(net)
    assert rebuilt.state_dict().keys() == net.state_dict().keys()
    assert rebuilt.modules_config == net.modules_config
    assert rebuilt.config.msfm == (network == "unet")


@pytest.mark.parametrize("network", ["unet", "controlnet"])
def test_save_and_from_pretrained_round_trip_every_weight(trained, network, tmp_path):
    denoiser, _, _ = trained
    net = getattr(denoiser, network)
    net.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == type(net).__name__
    assert config["csm"] is True and config["clip_width"] == TINY.clip_width
    loaded = type(net).from_pretrained(tmp_path)
    saved = net.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    assert len([k for k in saved if ".csm." in k or ".msfm." in k]) > 0


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_loading_with_a_missing_or_unexpected_megasr_weight_is_an_error(trained, tmp_path, change):
    denoiser, _, _ = trained
    denoiser.controlnet.save_pretrained(tmp_path)
    state = load_file(tmp_path / WEIGHTS)
    if change == "missing":
        del state[next(k for k in state if ".csm.lgwam." in k)]
    else:
        state["down_blocks.0.attentions.0.msfm.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"1 {change}"):
        MegaSRControlNetModel.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("plain", "megasr"),
    [
        (ControlNetModel, "MegaSRControlNetModel"),
        (UNet2DConditionModel, "MegaSRUNet2DConditionModel"),
    ],
)
def test_a_plain_diffusers_load_of_megasr_weights_fails_naming_the_megasr_class(
    trained, tmp_path, plain, megasr
):
    """Whatever file or variant a plain class is pointed at, the config's MegaSR block names
    stop it before it loads a network without its CSMs and MSFMs."""
    denoiser, _, _ = trained
    net = denoiser.controlnet if plain is ControlNetModel else denoiser.unet
    net.save_pretrained(tmp_path / "model" / "part")
    net.save_pretrained(tmp_path / "variant", variant="fp32")
    for attempt in (
        lambda: plain.from_pretrained(tmp_path / "model" / "part"),
        lambda: plain.from_pretrained(tmp_path / "model", subfolder="part"),
        lambda: plain.from_pretrained(tmp_path / "variant", variant="fp32"),
        lambda: plain.from_config(net.config),
    ):
        with pytest.raises(ValueError, match=f"{megasr}.CrossAttnDownBlock2D does not exist"):
            attempt()
    assert type(net).from_pretrained(tmp_path / "variant", variant="fp32") is not None


def test_a_zero_gate_gives_exactly_the_base_pipeline():
    """LGWAM's gate g is read back and driven to sigmoid(g) = 0: with trained (random) ``W``
    and the MSFMs off, the CSM adds exactly nothing, so the output equals plain SD +
    ControlNet bit for bit."""
    denoiser, unet, controlnet = denoiser_and_plain()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    args["conditions"].hed = args["conditions"].depth = args["conditions"].seg = None
    with torch.no_grad():
        plain = plain_forward(unet, controlnet, args)
    gated_on = _forward(denoiser, args)
    assert (gated_on - plain).abs().max() > 1e-3  # the visual branch matters when open
    lgwams = [m for m in denoiser.modules() if isinstance(m, LGWAM)]
    assert len(lgwams) == 6
    with torch.no_grad():
        for lgwam in lgwams:
            assert lgwam.proj.weight.abs().max() > 0  # W is not what closes the branch
            lgwam.gate.fill_(-float("inf"))
    assert all(torch.sigmoid(m.gate).max().item() == 0.0 for m in lgwams)
    assert torch.equal(_forward(denoiser, args), plain)


def test_a_megasr_network_is_built_from_a_plain_one_at_identity():
    denoiser, unet, controlnet = denoiser_and_plain()
    args = inputs(2, 8, 12)
    with torch.no_grad():
        plain = plain_forward(unet, controlnet, args)
    torch.testing.assert_close(_forward(denoiser, args), plain, atol=1e-5, rtol=0)
    assert isinstance(denoiser.unet, MegaSRUNet2DConditionModel)
    with pytest.raises(ValueError, match=r"name them 'MegaSRUNet2DConditionModel\.CrossAttn"):
        MegaSRUNet2DConditionModel(**{**dict(unet.config), "csm": True})
