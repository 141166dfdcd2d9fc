"""MegaSR checkpoints (saved pipelines): round trip, strict loading, info, init from local base
parts and from a pretrained ControlNet, the CLI, and the conversion of the earlier layout."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from megasr_legacy import FIXTURE, write_format2
from megasr_tiny import inputs, one_thread, randomise_new_modules
from safetensors.torch import load_file, save_file

from megasr.cli import model_cmd
from megasr.errors import EngineError, InvalidParameterError
from megasr.model.engines.base import GenerationOptions, ImageTask
from megasr.model.engines.megasr_engine import MegaSREngine
from megasr.model.extractors import tiny_clip_tokenizer, tiny_extractors
from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.checkpoint import (
    CONFIG_FILE,
    CONTROLNET_DIR,
    BaseSources,
    init_checkpoint,
    init_tiny_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from megasr.model.megasr.checkpoint_info import checkpoint_info
from megasr.model.megasr.csm import LGWAM
from megasr.model.megasr.pipeline import MegaSRPipeline, RestoreInput
from megasr.model.megasr.presets import (
    SD_SCHEDULER,
    TINY_CONTROLNET_EMBEDDING,
    TINY_UNET,
    TINY_VAE,
    build_tiny_pipeline,
    tiny_text_encoder,
)
from megasr.settings import Settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    """A tiny model whose new modules and ControlNet moved off their initial values, saved."""
    with one_thread():
        model = build_tiny_pipeline(seed=3)
        randomise_new_modules(model.denoiser, std=0.1)
        with torch.no_grad():
            model.denoiser.controlnet.controlnet_mid_block.weight.normal_(std=0.1)
        directory = tmp_path_factory.mktemp("trained")
        save_checkpoint(model, directory)
        return model.freeze(), directory


def _restore(model: MegaSRPipeline, seed: int = 5) -> torch.Tensor:
    lr = torch.linspace(0, 1, 3 * 12 * 16).reshape(3, 12, 16)
    options = replace(model.inference, steps=2)
    (request,) = model.prepare([RestoreInput(lr, (48, 64), seed=seed, options=options)])
    return model.restore_one(request)


def _linked_copy(directory: Path, into: Path, rewrite: str) -> Path:
    """``directory`` with every file linked except those under ``rewrite``, copied."""
    for item in directory.rglob("*"):
        target = into / item.relative_to(directory)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.relative_to(directory).parts[0] == rewrite:
            target.write_bytes(item.read_bytes())
        else:
            target.symlink_to(item)
    return into


def test_save_and_load_give_identical_weights_and_outputs(trained):
    model, directory = trained
    loaded = load_checkpoint(directory)
    for part in ("unet", "controlnet", "vae", "text_encoder", "extractors"):
        saved, read = getattr(model, part).state_dict(), getattr(loaded, part).state_dict()
        assert saved.keys() == read.keys()
        assert all(torch.equal(saved[k], read[k]) for k in saved), part
    assert loaded.denoiser.modules_config == model.denoiser.modules_config
    assert loaded.inference == model.inference and loaded.config.preset == "tiny"
    args = inputs(1, 8, 8)
    args["conditions"].image_tokens = torch.randn(1, 17, model.denoiser.modules_config.clip_width)
    # Bit-identical weights; outputs agree to float rounding only, because weights read from
    # a memory-mapped file are not aligned like freshly allocated ones and the CPU kernels
    # then sum in another order (about 1e-6).
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.denoiser(**args), model.denoiser(**args), atol=1e-5, rtol=0
        )
    torch.testing.assert_close(_restore(loaded), _restore(model), atol=1e-4, rtol=0)


def test_loading_refuses_a_unet_with_a_missing_module_weight(trained, tmp_path):
    _, directory = trained
    broken = _linked_copy(directory, tmp_path / "broken", "unet")
    state = load_file(broken / "unet" / WEIGHTS)
    del state[next(k for k in state if ".msfm." in k)]
    save_file(state, broken / "unet" / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(EngineError, match=r"MegaSRUNet2DConditionModel: 1 missing"):
        load_checkpoint(broken)


def test_checkpoint_files_are_readable_by_every_user(trained):
    _, directory = trained
    modes = {path: path.stat().st_mode & 0o777 for path in [directory, *directory.rglob("*")]}
    assert {mode for path, mode in modes.items() if path.is_file()} == {0o644}
    assert {mode for path, mode in modes.items() if path.is_dir()} == {0o755}


def test_the_checkpoint_is_a_diffusers_pipeline(trained):
    _, directory = trained
    index = json.loads((directory / CONFIG_FILE).read_text())
    assert index["_class_name"] == "MegaSRPipeline"
    assert index["unet"] == ["megasr.model.megasr.networks", "MegaSRUNet2DConditionModel"]
    assert index["controlnet"] == ["megasr.model.megasr.networks", "MegaSRControlNetModel"]
    assert index["inference"]["steps"] == 4 and index["preset"] == "tiny"
    pipe = MegaSRPipeline.from_pretrained(directory)
    assert {"unet", "controlnet", "vae", "extractors"} <= set(pipe.components)


def test_info_counts_trainable_and_frozen_parameters_and_the_modules(trained):
    model, directory = trained
    info = checkpoint_info(directory)
    denoiser = model.denoiser
    trainable = sum(p.numel() for p in denoiser.trainable_parameters().values())
    unet_base = sum(p.numel() for n, p in denoiser.unet.named_parameters() if not is_adapter_key(n))
    frozen = unet_base + sum(
        t.numel()
        for module in (model.vae, model.text_encoder, model.extractors)
        for t in module.state_dict().values()
    )
    assert info.preset == "tiny"
    assert (info.trainable, info.frozen) == (trainable, frozen)
    assert info.modules == {"unet": {"csm": 4, "msfm": 4}, "controlnet": {"csm": 2, "msfm": 2}}
    text = info.to_text()
    assert f"{trainable:,}" in text and "modules: unet 4 CSM, 4 MSFM" in text


def test_info_lists_the_modules_of_every_block_with_their_gates(trained):
    model, directory = trained
    info = checkpoint_info(directory)
    # Tiny U-Net: one transformer down, one in the middle, two up; its ControlNet: down + mid.
    assert [b.network for b in info.blocks].count("unet") == 4
    assert [b.network for b in info.blocks].count("controlnet") == 2
    for network in ("unet", "controlnet"):
        params = dict(getattr(model.denoiser, network).named_parameters())
        blocks = [b for b in info.blocks if b.network == network]
        csm = sum(v.numel() for k, v in params.items() if ".csm." in k)
        msfm = sum(v.numel() for k, v in params.items() if ".msfm." in k)
        assert (sum(b.csm for b in blocks), sum(b.msfm for b in blocks)) == (csm, msfm)
    lgwams = {n: m for n, m in model.denoiser.named_modules() if isinstance(m, LGWAM)}
    first = next(b for b in info.blocks if b.network == "unet")
    name = next(n for n in lgwams if n.startswith(f"unet.{first.block}."))
    gate = torch.sigmoid(lgwams[name].gate)
    assert first.lgwam == sum(p.numel() for p in lgwams[name].parameters())
    assert first.gate == pytest.approx((gate.mean().item(), gate.min().item(), gate.max().item()))
    assert f"{first.block}" in info.to_text() and f"{first.gate[0]:.4f}" in info.to_text()


def test_info_refuses_a_network_whose_module_weights_are_not_stored(trained, tmp_path):
    _, directory = trained
    broken = _linked_copy(directory, tmp_path / "broken", CONTROLNET_DIR)
    state = load_file(broken / CONTROLNET_DIR / WEIGHTS)
    state = {k: v for k, v in state.items() if ".msfm." not in k}
    save_file(state, broken / CONTROLNET_DIR / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(EngineError, match=r"lacks the weights of \d+ MegaSR module tensors"):
        checkpoint_info(broken)


def _sd_folder(root: Path) -> Path:
    sd = root / "sd2"
    torch.manual_seed(0)
    UNet2DConditionModel(**TINY_UNET).save_pretrained(sd / "unet")
    AutoencoderKL(**TINY_VAE).save_pretrained(sd / "vae")
    tokenizer = tiny_clip_tokenizer()
    tiny_text_encoder(tokenizer).save_pretrained(sd / "text_encoder")
    tokenizer.save_pretrained(sd / "tokenizer")
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(sd / "scheduler")
    return sd


def _sources(root: Path, **changes) -> BaseSources:
    extractors = root / "extractors"
    tiny_extractors(seed=1).save_pretrained(extractors)
    return BaseSources(
        sd=str(root / "sd2"),
        clip=str(extractors / "clip"),
        depth=str(extractors / "depth"),
        segmentation=str(extractors / "segmentation"),
        hed=str(extractors / "hed.safetensors"),
        **changes,
    )


def test_init_builds_a_checkpoint_from_local_base_folders(tmp_path):
    sd = _sd_folder(tmp_path)
    config = init_checkpoint(_sources(tmp_path), tmp_path / "megasr")
    model = load_checkpoint(tmp_path / "megasr")

    assert config.sources["sd"] == str(sd)
    assert model.denoiser.modules_config.clip_width == model.extractors.clip_width
    unet, controlnet = model.denoiser.unet, model.denoiser.controlnet
    for name, param in controlnet.down_blocks.named_parameters():
        if not is_adapter_key(f".{name}"):
            assert torch.equal(param, unet.down_blocks.get_parameter(name)), name
    lgwam_weights = [p for n, p in model.denoiser.named_parameters() if ".lgwam.proj.weight" in n]
    assert len(lgwam_weights) == 6 and all(not p.any() for p in lgwam_weights)


def test_init_starts_the_controlnet_from_a_pretrained_one_in_diffusers_layout(tmp_path):
    """``--controlnet``: a tiny ControlNetModel saved with save_pretrained (real diffusers
    layout, here with a layer of its own, as SeeSR's has) gives the MegaSR ControlNet its
    weights, name for name; the MegaSR modules start zero-gated, so the new ControlNet
    computes what the pretrained one computes; the unused weights are named."""
    _sd_folder(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "sd2" / "unet")
    torch.manual_seed(7)
    pretrained = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=TINY_CONTROLNET_EMBEDDING
    )
    for name, param in pretrained.named_parameters():
        if name.startswith(("controlnet_", "down_blocks.0.attentions")):
            torch.nn.init.normal_(param, std=0.1)  # trained: not a copy of the U-Net
    pretrained.save_pretrained(tmp_path / "controlnet")
    state = load_file(tmp_path / "controlnet" / WEIGHTS)
    state["down_blocks.0.attentions.0.image_attention.weight"] = torch.ones(2)
    save_file(state, tmp_path / "controlnet" / WEIGHTS, metadata={"format": "pt"})

    assert _cli(
        "model", "init", "--out", str(tmp_path / "megasr"), "--controlnet",
        str(tmp_path / "controlnet"), *_source_args(_sources(tmp_path)),
    ) == 0  # fmt: skip
    model = load_checkpoint(tmp_path / "megasr")
    controlnet = model.denoiser.controlnet
    for name, param in pretrained.state_dict().items():
        assert torch.equal(controlnet.state_dict()[name], param), name
    args = inputs(1, 8, 8)
    args["conditions"].image_tokens = torch.randn(1, 17, controlnet.config.clip_width)
    common = {"encoder_hidden_states": args["text_embeddings"], "return_dict": False}
    with torch.no_grad():
        ours = controlnet(
            args["latents"],
            args["timesteps"],
            controlnet_cond=args["control"],
            cross_attention_kwargs={"megasr": args["conditions"]},
            **common,
        )
        theirs = pretrained(args["latents"], args["timesteps"], controlnet_cond=args["control"],
                            **common)  # fmt: skip
    for a, b in zip([*ours[0], ours[1]], [*theirs[0], theirs[1]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert model.config.sources["controlnet_unused_weights"] == (
        "1 (first: down_blocks.0.attentions.0.image_attention.weight)"
    )


def test_init_refuses_a_controlnet_that_does_not_fit_the_unet(tmp_path):
    _sd_folder(tmp_path)
    other = UNet2DConditionModel(**{**TINY_UNET, "cross_attention_dim": 16})
    wrong = ControlNetModel.from_unet(other, conditioning_embedding_out_channels=(8, 16))
    wrong.save_pretrained(tmp_path / "wrong")
    sources = _sources(tmp_path, controlnet=str(tmp_path / "wrong"))
    with pytest.raises(EngineError, match="does not fit the U-Net: cross_attention_dim differ"):
        init_checkpoint(sources, tmp_path / "megasr")


def _source_args(sources: BaseSources) -> list[str]:
    return ["--sd", sources.sd, "--clip", sources.clip, "--depth", sources.depth,
            "--seg", sources.segmentation, "--hed", sources.hed]  # fmt: skip


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="megasr")
    model_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_builds_a_tiny_checkpoint_and_describes_it(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert _cli("model", "init", "--preset", "tiny", "--out", str(out), "--seed", "2") == 0
    built = capsys.readouterr().out
    assert _cli("model", "info", str(out)) == 0
    described = capsys.readouterr().out
    assert built == described
    assert "preset          tiny" in described and "trainable" in described
    assert load_checkpoint(out).config.preset == "tiny"


def test_cli_refuses_incomplete_or_mixed_sources(tmp_path):
    with pytest.raises(InvalidParameterError, match="--sd, --clip, --depth, --seg"):
        _cli("model", "init", "--out", str(tmp_path / "x"))
    with pytest.raises(InvalidParameterError, match="--sd"):
        _cli("model", "init", "--preset", "tiny", "--sd", "x", "--out", str(tmp_path / "y"))
    with pytest.raises(InvalidParameterError, match="--controlnet"):
        _cli("model", "init", "--preset", "tiny", "--controlnet", "x", "--out", str(tmp_path))
    with pytest.raises(EngineError, match="not a MegaSR checkpoint"):
        _cli("model", "info", str(tmp_path))


def test_a_checkpoint_of_the_earlier_layout_is_refused_with_the_command_then_converted(
    tmp_path, capsys
):
    """The format-2 fixture (written by the code before the pipeline) is refused by the
    engine with the command to run; converted, it restores its recorded image bit for bit."""
    old = write_format2(tmp_path / "old")
    with pytest.raises(EngineError, match=f"megasr model convert {old} NEW_DIR"):
        MegaSREngine(old, Settings())
    assert _cli("model", "convert", str(old), str(tmp_path / "new")) == 0
    assert "modules: unet 4 CSM, 4 MSFM" in capsys.readouterr().out
    engine = MegaSREngine(tmp_path / "new", Settings())
    engine.load(torch.device("cpu"))
    lr = torch.from_numpy(np.load(FIXTURE / "lr.npy"))
    (restored,) = engine.restore([ImageTask(lr, (48, 64), GenerationOptions(seed=3, steps=2))])
    assert torch.equal(restored, torch.from_numpy(np.load(FIXTURE / "expected.npy")))
    with pytest.raises(EngineError, match="already holds a checkpoint"):
        _cli("model", "convert", str(old), str(tmp_path / "new"))


def test_tiny_checkpoints_are_reproducible_from_their_seed(tmp_path):
    init_tiny_checkpoint(tmp_path / "a", seed=4)
    init_tiny_checkpoint(tmp_path / "b", seed=4)
    for name in (f"unet/{WEIGHTS}", f"controlnet/{WEIGHTS}", f"vae/{WEIGHTS}"):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
