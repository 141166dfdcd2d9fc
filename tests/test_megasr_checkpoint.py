"""MegaSR checkpoints: init from local base components, tiny preset, round trip, info, CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
from megasr_tiny import inputs, one_thread, randomise_new_modules
from safetensors.torch import load_file, save_file

from megasr.cli import model_cmd
from megasr.errors import EngineError, InvalidParameterError
from megasr.model.extractors import tiny_clip_tokenizer, tiny_extractors
from megasr.model.megasr.adapter import is_adapter_key
from megasr.model.megasr.checkpoint import (
    ADAPTER_FILE,
    CONFIG_FILE,
    CONTROLNET_DIR,
    BaseSources,
    init_checkpoint,
    init_tiny_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from megasr.model.megasr.checkpoint_info import checkpoint_info
from megasr.model.megasr.components import RestoreInput, build_tiny_model
from megasr.model.megasr.config import FORMAT_VERSION, MegaSRConfig
from megasr.model.megasr.csm import LGWAM
from megasr.model.megasr.networks import MegaSRControlNetModel
from megasr.model.megasr.presets import SD_SCHEDULER, TINY_UNET, TINY_VAE, tiny_text_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple:
    """A tiny model whose new modules and ControlNet moved off their initial values, saved."""
    with one_thread():
        model = build_tiny_model(seed=3)
        randomise_new_modules(model.denoiser, std=0.1)
        with torch.no_grad():
            model.denoiser.controlnet.controlnet_mid_block.weight.normal_(std=0.1)
        directory = tmp_path_factory.mktemp("trained")
        save_checkpoint(model, directory)
        return model.freeze(), directory


def _restore(model, seed: int = 5) -> torch.Tensor:
    lr = torch.linspace(0, 1, 3 * 12 * 16).reshape(3, 12, 16)
    options = replace(model.config.inference, steps=2)
    (request,) = model.prepare([RestoreInput(lr, (48, 64), seed=seed, options=options)])
    return model.pipeline().restore_one(request)


def test_save_and_load_give_identical_weights_and_outputs(trained):
    model, directory = trained
    loaded = load_checkpoint(directory)
    for part in ("denoiser", "vae", "text_encoder", "extractors"):
        saved, read = getattr(model, part).state_dict(), getattr(loaded, part).state_dict()
        assert saved.keys() == read.keys()
        assert all(torch.equal(saved[k], read[k]) for k in saved), part
    assert loaded.config.modules == model.config.modules
    args = inputs(1, 8, 8)
    args["conditions"].image_tokens = torch.randn(1, 17, model.config.modules.clip_width)
    # Bit-identical weights; outputs agree to float rounding only, because weights read from
    # a memory-mapped file are not aligned like freshly allocated ones and the CPU kernels
    # then sum in another order (about 1e-6).
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.denoiser(**args), model.denoiser(**args), atol=1e-5, rtol=0
        )
    torch.testing.assert_close(_restore(loaded), _restore(model), atol=1e-4, rtol=0)


def test_loading_refuses_an_adapter_with_a_missing_key(trained, tmp_path):
    _, directory = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in directory.iterdir():
        (broken / item.name).symlink_to(item)
    state = load_file(directory / ADAPTER_FILE)
    dropped = next(k for k in state if ".msfm." in k)
    del state[dropped]
    (broken / ADAPTER_FILE).unlink()
    save_file(state, broken / ADAPTER_FILE)
    with pytest.raises(EngineError, match="1 missing"):
        load_checkpoint(broken)


def test_loading_refuses_a_controlnet_with_a_missing_module_weight(trained, tmp_path):
    _, directory = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in directory.iterdir():
        if item.name != CONTROLNET_DIR:
            (broken / item.name).symlink_to(item)
    (broken / CONTROLNET_DIR).mkdir()
    for item in (directory / CONTROLNET_DIR).iterdir():
        if item.suffix == ".safetensors":
            state = load_file(item)
            del state[next(k for k in state if ".processor.lgwam." in k)]
            save_file(state, broken / CONTROLNET_DIR / item.name, metadata={"format": "pt"})
        else:
            (broken / CONTROLNET_DIR / item.name).symlink_to(item)
    with pytest.raises(EngineError, match=r"lacks 1 weight\(s\) of the MegaSR ControlNet"):
        load_checkpoint(broken)


def test_the_controlnet_round_trips_with_diffusers_and_plain_loading_fails_loudly(trained):
    model, directory = trained
    folder = directory / CONTROLNET_DIR
    loaded = MegaSRControlNetModel.from_pretrained(folder)
    original = model.denoiser.controlnet
    # The MegaSR modules are in the ConfigMixin config and come back installed.
    assert loaded.config["megasr"] == original.config["megasr"]
    assert loaded.installation == original.installation
    assert loaded.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in original.state_dict().items())
    assert json.loads((folder / "config.json").read_text())["_class_name"] == (
        "MegaSRControlNetModel"
    )
    # Plain diffusers would load a ControlNet without its CSMs and MSFMs: it must not load.
    with pytest.raises(OSError, match="no file named diffusion_pytorch_model"):
        ControlNetModel.from_pretrained(folder)
    with pytest.raises(OSError, match="no file named diffusion_pytorch_model"):
        ControlNetModel.from_pretrained(directory, subfolder=CONTROLNET_DIR)
    # The frozen U-Net is stored as what it is, a plain SD U-Net.
    unet = UNet2DConditionModel.from_pretrained(directory / "unet")
    assert "megasr" not in unet.config and type(unet) is UNet2DConditionModel


def test_checkpoint_files_are_readable_by_every_user(trained):
    _, directory = trained
    modes = {path: path.stat().st_mode & 0o777 for path in [directory, *directory.rglob("*")]}
    assert {mode for path, mode in modes.items() if path.is_file()} == {0o644}
    assert {mode for path, mode in modes.items() if path.is_dir()} == {0o755}


def test_info_counts_trainable_and_frozen_parameters(trained):
    model, directory = trained
    info = checkpoint_info(directory)
    denoiser = model.denoiser
    trainable = sum(p.numel() for p in denoiser.trainable_parameters().values())
    unet_base = sum(p.numel() for n, p in denoiser.unet.named_parameters() if not is_adapter_key(n))
    # Stored tensors: parameters plus persistent buffers (normalisation statistics).
    frozen = unet_base + sum(
        t.numel()
        for module in (model.vae, model.text_encoder, model.extractors)
        for t in module.state_dict().values()
    )
    assert info.format_version == FORMAT_VERSION
    assert info.preset == "tiny"
    assert (info.trainable, info.frozen) == (trainable, frozen)
    assert info.parameters["unet"] == unet_base
    text = info.to_text()
    assert f"format version  {FORMAT_VERSION}" in text and f"{trainable:,}" in text


def test_info_lists_the_modules_of_every_block_with_their_gates(trained):
    model, directory = trained
    info = checkpoint_info(directory)
    # Tiny U-Net: one transformer down, one in the middle, two up; its ControlNet: down + mid.
    assert [b.network for b in info.blocks].count("unet") == 4
    assert [b.network for b in info.blocks].count("controlnet") == 2
    adapter = model.denoiser.adapter_state_dict()
    for network in ("unet", "controlnet"):
        blocks = [b for b in info.blocks if b.network == network]
        csm = sum(
            v.numel() for k, v in adapter.items() if k.startswith(network) and ".processor." in k
        )
        msfm = sum(v.numel() for k, v in adapter.items() if k.startswith(network) and ".msfm." in k)
        assert (sum(b.csm for b in blocks), sum(b.msfm for b in blocks)) == (csm, msfm)
    lgwams = {n: m for n, m in model.denoiser.named_modules() if isinstance(m, LGWAM)}
    first = next(b for b in info.blocks if b.network == "unet")
    name = next(n for n in lgwams if n.startswith(f"unet.{first.block}."))
    gate = torch.sigmoid(lgwams[name].gate)
    assert first.lgwam == sum(p.numel() for p in lgwams[name].parameters())
    assert first.gate == pytest.approx((gate.mean().item(), gate.min().item(), gate.max().item()))
    assert f"{first.block}" in info.to_text() and f"{first.gate[0]:.4f}" in info.to_text()


def test_config_is_versioned_and_strict(trained, tmp_path):
    _, directory = trained
    data = json.loads((directory / CONFIG_FILE).read_text())
    assert MegaSRConfig.from_json(json.dumps(data)).format_version == FORMAT_VERSION
    for change, message in (
        ({"format_version": FORMAT_VERSION + 1}, "format"),
        ({"surprise": 1}, "unknown keys"),
        ({"inference": {**data["inference"], "sampler": "euler"}}, "sampler"),
        ({"modules": {**data["modules"], "guidance_channels": "64"}}, "guidance_channels"),
    ):
        with pytest.raises(EngineError, match=message):
            MegaSRConfig.from_json(json.dumps({**data, **change}))


def test_init_builds_a_checkpoint_from_local_base_folders(tmp_path):
    sd = tmp_path / "sd2"
    torch.manual_seed(0)
    UNet2DConditionModel(**TINY_UNET).save_pretrained(sd / "unet")
    AutoencoderKL(**TINY_VAE).save_pretrained(sd / "vae")
    tokenizer = tiny_clip_tokenizer()
    tiny_text_encoder(tokenizer).save_pretrained(sd / "text_encoder")
    tokenizer.save_pretrained(sd / "tokenizer")
    DDIMScheduler(**SD_SCHEDULER).save_pretrained(sd / "scheduler")
    extractors = tmp_path / "extractors"
    tiny_extractors(seed=1).save_pretrained(extractors)
    sources = BaseSources(
        sd=str(sd),
        clip=str(extractors / "clip"),
        depth=str(extractors / "depth"),
        segmentation=str(extractors / "segmentation"),
        hed=str(extractors / "hed.safetensors"),
    )

    out = tmp_path / "megasr"
    config = init_checkpoint(sources, out)
    model = load_checkpoint(out)

    assert config.sources["sd"] == str(sd)
    assert config.modules.clip_width == model.extractors.clip_width
    unet, controlnet = model.denoiser.unet, model.denoiser.controlnet
    for name, param in controlnet.down_blocks.named_parameters():
        if not is_adapter_key(f".{name}"):
            assert torch.equal(param, unet.down_blocks.get_parameter(name)), name
    assert all(
        not p.any()
        for n, p in model.denoiser.adapter_state_dict().items()
        if n.endswith("proj.weight")
    )


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
    assert (
        "preset          tiny" in described and "trainable" in described and "frozen" in described
    )
    assert load_checkpoint(out).config.preset == "tiny"


def test_cli_refuses_incomplete_or_mixed_sources(tmp_path):
    with pytest.raises(InvalidParameterError, match="--sd, --clip, --depth, --seg"):
        _cli("model", "init", "--out", str(tmp_path / "x"))
    with pytest.raises(InvalidParameterError, match="--sd"):
        _cli("model", "init", "--preset", "tiny", "--sd", "x", "--out", str(tmp_path / "y"))
    with pytest.raises(EngineError, match="not a MegaSR checkpoint"):
        _cli("model", "info", str(tmp_path))


def test_tiny_checkpoints_are_reproducible_from_their_seed(tmp_path):
    init_tiny_checkpoint(tmp_path / "a", seed=4)
    init_tiny_checkpoint(tmp_path / "b", seed=4)
    for name in (
        "unet/diffusion_pytorch_model.safetensors",
        "controlnet/diffusion_pytorch_model.megasr.safetensors",
        ADAPTER_FILE,
    ):
        a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(Path(tmp_path / "a" / CONFIG_FILE).read_text(), str)
