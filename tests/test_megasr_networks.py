"""The MegaSR U-Net and ControlNet under diffusers' own calls: processors, fusion, config,
hooks, and the gate that switches the visual branch off."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from megasr_tiny import (
    TINY,
    denoiser_and_plain,
    inputs,
    plain_forward,
    randomise_new_modules,
    tiny_denoiser,
)

from megasr.errors import EngineError
from megasr.model.megasr.adapter import count_modules
from megasr.model.megasr.csm import LGWAM, CSMProcessor, PlainFusedAttnProcessor
from megasr.model.megasr.networks import Installation, MegaSRControlNetModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _forward(denoiser, args) -> torch.Tensor:
    with torch.no_grad():
        return denoiser(**args)


def test_set_default_attn_processor_keeps_the_csms_and_the_output():
    denoiser = tiny_denoiser()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    before = _forward(denoiser, args)
    for net in (denoiser.unet, denoiser.controlnet):
        csms = [p for p in net.attn_processors.values() if isinstance(p, CSMProcessor)]
        net.set_default_attn_processor()
        after = [p for p in net.attn_processors.values() if isinstance(p, CSMProcessor)]
        assert after == csms and len(csms) > 0  # the very same trained modules
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-6, rtol=0)


def test_fused_projections_keep_the_csms_and_the_output():
    denoiser = tiny_denoiser()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    before = _forward(denoiser, args)
    denoiser.unet.fuse_qkv_projections()
    denoiser.controlnet.fuse_qkv_projections()
    processors = denoiser.unet.attn_processors
    assert sum(isinstance(p, PlainFusedAttnProcessor) for p in processors.values()) == 4
    assert sum(isinstance(p, CSMProcessor) for p in processors.values()) == 4
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)
    denoiser.unet.unfuse_qkv_projections()
    assert not any(
        isinstance(p, PlainFusedAttnProcessor) for p in denoiser.unet.attn_processors.values()
    )
    assert not any(name.endswith("to_qkv.weight") for name, _ in denoiser.unet.named_parameters())
    torch.testing.assert_close(_forward(denoiser, args), before, atol=1e-5, rtol=0)


def test_replacing_a_csm_is_refused_with_a_way_out():
    denoiser = tiny_denoiser()
    with pytest.raises(
        EngineError, match=r"would remove the trained CSM of 4 layer\(s\).*uninstall"
    ):
        denoiser.unet.set_attn_processor(AttnProcessor2_0())
    assert count_modules(denoiser.unet) == {"csm": 4, "msfm": 4}  # nothing was touched


def test_uninstall_removes_every_module_and_hook_and_gives_back_the_pretrained_network():
    denoiser, unet, controlnet = denoiser_and_plain()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 12)
    plain = _forward_plain(unet, controlnet, args)
    assert (_forward(denoiser, args) - plain).abs().max() > 1e-3
    for net in (denoiser.unet, denoiser.controlnet):
        net.uninstall_megasr()
        assert count_modules(net) == {"csm": 0, "msfm": 0}
        assert all(not t._forward_hooks for t in net.modules() if hasattr(t, "proj_out"))
        assert net.config["megasr"] is None and net.installation is None
    denoiser.connector = None
    torch.testing.assert_close(_forward(denoiser, args), plain, atol=1e-5, rtol=0)


def _forward_plain(unet, controlnet, args) -> torch.Tensor:
    with torch.no_grad():
        return plain_forward(unet, controlnet, args)


def test_installing_twice_is_refused():
    denoiser = tiny_denoiser()
    with pytest.raises(EngineError, match="already installed"):
        denoiser.unet.install_megasr(Installation(TINY, csm=True, msfm=True))


def test_the_installation_round_trips_through_the_config():
    denoiser = tiny_denoiser(config=replace(TINY, msfm_in_controlnet=False))
    controlnet = denoiser.controlnet
    rebuilt = MegaSRControlNetModel.from_config(controlnet.config)
    assert rebuilt.installation == controlnet.installation
    assert rebuilt.installation.msfm is False
    assert count_modules(rebuilt) == count_modules(controlnet) == {"csm": 2, "msfm": 0}
    assert rebuilt.state_dict().keys() == controlnet.state_dict().keys()


def test_a_zero_gate_gives_exactly_the_base_pipeline():
    """LGWAM's gate g is read back and driven to sigmoid(g) = 0: with trained (random) ``W``
    and the MSFMs off, the CSM adds exactly nothing, so the output equals plain SD +
    ControlNet bit for bit."""
    denoiser, unet, controlnet = denoiser_and_plain()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    args["conditions"].hed = args["conditions"].depth = args["conditions"].seg = None
    plain = _forward_plain(unet, controlnet, args)
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
