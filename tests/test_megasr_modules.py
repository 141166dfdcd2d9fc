"""CSM and MSFM inside a tiny U-Net + ControlNet: identity at init, effect, gradients, shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from megasr_tiny import (
    TINY,
    denoiser_and_plain,
    inputs,
    plain_forward,
    randomise_new_modules,
    tiny_denoiser,
)

from megasr.model.megasr.adapter import count_modules, is_adapter_key
from megasr.model.megasr.conditions import MegaSRConditions
from megasr.model.megasr.csm import CSM
from megasr.model.megasr.msfm import MSFM, SqueezeExcitation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fresh_modules_leave_the_pretrained_model_unchanged():
    denoiser, unet, controlnet = denoiser_and_plain()
    args = inputs(2, 8, 12)
    with torch.no_grad():
        megasr = denoiser(**args)
        plain = plain_forward(unet, controlnet, args)
    assert plain.abs().max() > 0.1  # the comparison is between real, non-zero outputs
    assert (megasr - plain).abs().max().item() <= 1e-5


def test_every_attention_block_of_both_networks_gets_a_csm_and_an_msfm():
    denoiser = tiny_denoiser()
    # Tiny U-Net: one transformer down, one in the middle, two up; its ControlNet: down + mid.
    assert count_modules(denoiser.unet) == {"csm": 4, "msfm": 4}
    assert count_modules(denoiser.controlnet) == {"csm": 2, "msfm": 2}


def test_trained_lgwam_and_msfm_change_the_output_each_on_its_own():
    denoiser, unet, controlnet = denoiser_and_plain()
    args = inputs(1, 8, 8)
    with torch.no_grad():
        plain = plain_forward(unet, controlnet, args)
        randomise_new_modules(denoiser)
        both = denoiser(**args)
        csm_only = denoiser(**{**args, "conditions": replace(args["conditions"], hed=None)})
        msfm_only = denoiser(
            **{**args, "conditions": replace(args["conditions"], image_tokens=None)}
        )
        neither = denoiser(**{**args, "conditions": MegaSRConditions()})
    assert (both - plain).abs().mean() > 1e-2
    assert (csm_only - plain).abs().mean() > 1e-3
    assert (msfm_only - plain).abs().mean() > 1e-3
    assert (neither - plain).abs().max() <= 1e-5  # no conditions: both modules switched off


def test_backward_reaches_exactly_the_trainable_set():
    denoiser = tiny_denoiser()
    randomise_new_modules(denoiser)
    with torch.no_grad():  # a squeeze-excitation ReLU left dead by the draw passes no gradient
        for module in denoiser.modules():
            if isinstance(module, SqueezeExcitation):
                module.down.bias.abs_().add_(0.1)
    # Its zero-initialised output conv would hide the conditioning encoder's gradients.
    torch.nn.init.normal_(denoiser.controlnet.controlnet_cond_embedding.conv_out.weight, std=0.1)
    denoiser.set_trainable()
    denoiser(**inputs(2, 8, 8)).square().mean().backward()

    params = dict(denoiser.named_parameters())
    expected_trainable = {n for n in params if n.startswith("controlnet.")} | {
        n for n in params if n.startswith("unet.") and is_adapter_key(n)
    }
    expected_frozen = set(params) - expected_trainable
    with_grad = {n for n, p in params.items() if p.grad is not None and p.grad.abs().sum() > 0}
    requires = {n for n, p in params.items() if p.requires_grad}

    assert requires == expected_trainable == set(denoiser.trainable_parameters())
    assert with_grad == expected_trainable
    assert all(params[n].grad is None for n in expected_frozen)
    # Count both sets: every ControlNet tensor and 4 U-Net CSMs + MSFMs train, the backbone not.
    n_unet_adapter = sum(1 for n in params if n.startswith("unet.") and is_adapter_key(n))
    n_controlnet = sum(1 for n in params if n.startswith("controlnet."))
    assert len(with_grad) == n_controlnet + n_unet_adapter
    assert len(expected_frozen) == sum(1 for n in params if n.startswith("unet.")) - n_unet_adapter
    assert n_unet_adapter == 4 * (
        len(list(CSM(32, 32, TINY).parameters())) + len(list(MSFM(32, TINY).parameters()))
    )
    assert len(expected_frozen) > 0


@pytest.mark.parametrize("size", [(4, 4), (8, 12), (10, 6), (6, 16)])
def test_output_shape_follows_the_latent_at_any_aspect(size):
    denoiser = tiny_denoiser()
    randomise_new_modules(denoiser)
    with torch.no_grad():
        out = denoiser(**inputs(2, *size))
    assert out.shape == (2, 4, *size)
    assert torch.isfinite(out).all()


def test_guidance_maps_at_any_resolution_are_resized_per_block():
    denoiser = tiny_denoiser()
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 12)
    small = args["conditions"].map(lambda t: t)
    small.hed, small.depth, small.seg = (
        torch.rand(1, 1, 20, 30),
        torch.rand(1, 1, 20, 30),
        torch.rand(1, 3, 20, 30),
    )
    with torch.no_grad():
        out = denoiser(**{**args, "conditions": small})
    assert out.shape == (1, 4, 8, 12) and torch.isfinite(out).all()


def test_shared_connector_config_builds_one_connector_per_network():
    denoiser = tiny_denoiser(config=replace(TINY, connector="shared"))
    assert denoiser.unet.shared_connector is not None
    assert denoiser.controlnet.shared_connector is not None
    assert all(m.connector is None for m in denoiser.modules() if isinstance(m, CSM))
    randomise_new_modules(denoiser)
    args = inputs(1, 4, 4)
    with torch.no_grad():
        out = denoiser(**args)
        torch.nn.init.normal_(denoiser.unet.shared_connector.weight, std=0.5)
        changed = denoiser(**args)
    assert out.shape == (1, 4, 4, 4)
    assert (changed - out).abs().max() > 1e-3  # the shared Connector is on the image path
    assert "unet.shared_connector.weight" in denoiser.trainable_parameters()


def test_msfm_is_recomputed_under_gradient_checkpointing_with_the_same_gradients():
    def grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
        denoiser = tiny_denoiser()
        randomise_new_modules(denoiser)
        denoiser.set_trainable()
        recomputed: list[str] = []
        if checkpointing:

            def checkpoint(module, *args):
                recomputed.append(type(module).__name__)
                return torch.utils.checkpoint.checkpoint(
                    module.__call__, *args, use_reentrant=False
                )

            denoiser.unet.enable_gradient_checkpointing(checkpoint)
            denoiser.controlnet.enable_gradient_checkpointing(checkpoint)
        denoiser.train()
        denoiser(**inputs(1, 8, 8)).square().mean().backward()
        return {n: p.grad for n, p in denoiser.named_parameters() if p.grad is not None}, recomputed

    plain, _ = grads(False)
    checkpointed, recomputed = grads(True)
    assert recomputed.count("MSFM") == 6  # 4 in the U-Net, 2 in the ControlNet
    assert plain.keys() == checkpointed.keys()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_msfm_modulation_computes_the_model_md_equations(dtype, tolerance):
    """The step-invariant modulation (scale and shift, computed once) applied to the
    features equals model.md's MSFM written out step by step:
    ``F + ZeroConv1x1(F_n (1 + gamma_h) + beta_h + F_n (1 + gamma_r) + beta_r)``, including
    for features that hold two copies of the tiles (classifier-free guidance)."""
    torch.manual_seed(0)
    msfm = MSFM(32, replace(TINY, feature_norm_groups=32))  # SD's groups: bf16 bound as set
    for param in msfm.parameters():
        torch.nn.init.normal_(param, std=0.2)
    msfm = msfm.to(dtype)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 32, 8, 12, generator=g).to(dtype)
    hed, depth = torch.rand(1, 1, 64, 96, generator=g), torch.rand(1, 1, 64, 96, generator=g)
    seg = torch.rand(1, 3, 64, 96, generator=g)

    modulation = msfm.modulation(hed, depth, seg, features)
    assert modulation.scale.shape[0] == 1  # one row per tile, shared by both copies
    fused = msfm.modulate(features, modulation)

    with torch.no_grad():
        size = features.shape[-2:]
        h = msfm._smooth_resize(hed.to(dtype), size).expand(2, -1, -1, -1)
        d = msfm._smooth_resize(depth.to(dtype), size).expand(2, -1, -1, -1)
        s = F.interpolate(seg.to(dtype), size=size, mode="nearest-exact").expand(2, -1, -1, -1)
        normalized = msfm.norm(features)
        region = msfm.region(d, s)
        edge_gamma, edge_beta = msfm.edge_saft.modulation(h)
        region_gamma, region_beta = msfm.region_saft.modulation(region)
        by_hand = normalized * (1 + edge_gamma) + edge_beta
        by_hand = by_hand + normalized * (1 + region_gamma) + region_beta
        expected = features + msfm.out(by_hand)
    torch.testing.assert_close(fused.float(), expected.float(), atol=tolerance, rtol=tolerance)
    assert (fused - features).abs().max() > 0.1  # the modules are not at their identity


@pytest.mark.parametrize(
    ("changes", "unet", "controlnet"),
    [
        ({}, {"csm": 4, "msfm": 4}, {"csm": 2, "msfm": 2}),
        ({"unet_csm": False}, {"csm": 0, "msfm": 4}, {"csm": 2, "msfm": 2}),
        ({"controlnet_msfm": False}, {"csm": 4, "msfm": 4}, {"csm": 2, "msfm": 0}),
        (
            {"controlnet_csm": False, "unet_msfm": False},
            {"csm": 4, "msfm": 0},
            {"csm": 0, "msfm": 2},
        ),
    ],
)
def test_module_placement_choices_install_exactly_what_they_say(changes, unet, controlnet):
    denoiser, plain_unet, plain_controlnet = denoiser_and_plain(**changes)
    assert count_modules(denoiser.unet) == unet
    assert count_modules(denoiser.controlnet) == controlnet
    randomise_new_modules(denoiser)
    args = inputs(1, 8, 8)
    with torch.no_grad():
        out, plain = denoiser(**args), plain_forward(plain_unet, plain_controlnet, args)
    assert torch.isfinite(out).all() and (out - plain).abs().mean() > 1e-3


@pytest.mark.parametrize("residual", [True, False])
def test_msfm_without_the_residual_gives_the_figure_fused_features(residual):
    msfm = MSFM(32, replace(TINY, msfm_residual=residual))
    features = torch.randn(1, 32, 4, 4)
    maps = (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        out = msfm(features, *maps)
    if residual:
        torch.testing.assert_close(out, features)  # zero-initialised output convolution
    else:
        assert msfm.out is None and (out - features).abs().mean() > 1e-2
