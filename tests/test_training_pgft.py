"""Prior-guided fine-tuning: HED with its real weights, depth/seg/CLIP with tiny models, LoRA,
the data pipeline under it, and the edge measures it reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from megasr_tiny import one_thread
from PIL import Image
from safetensors.torch import load_file

from megasr.cli.main import main
from megasr.model.extractors import tiny_extractors
from megasr.model.extractors.clip import ClipEncoder
from megasr.model.extractors.depth import DepthExtractor
from megasr.model.extractors.hed import HEDNet
from megasr.model.extractors.hed_weights import load_hed, save_hed
from megasr.model.extractors.segmentation import SegmentationExtractor
from megasr.model.training.data import (
    CropOptions,
    SampleNumbers,
    TrainingCrops,
    find_images,
    pair_images,
)
from megasr.model.training.lora import LoRALinear, add_lora, merge_lora
from megasr.model.training.pgft_extractors import encoder_of


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def photos(tmp_path_factory, coffee) -> Path:
    """A training folder (two crops, one in a subfolder) and a held-out folder."""
    root = tmp_path_factory.mktemp("photos")
    (root / "train" / "nested").mkdir(parents=True)
    (root / "held").mkdir()
    Image.fromarray(coffee[:120, :150]).save(root / "train" / "a.png")
    Image.fromarray(coffee[200:320, 300:450]).save(root / "train" / "nested" / "b.jpg")
    Image.fromarray(coffee[100:228, 400:528]).save(root / "held" / "c.png")
    return root


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory) -> Path:
    """Tiny depth, segmentation and CLIP models saved as transformers folders."""
    folder = tmp_path_factory.mktemp("tiny-extractors")
    tiny_extractors(seed=0).save_pretrained(folder)
    return folder


def _train(photos: Path, *args: str) -> list[str]:
    return [
        "train", *args, "--data", str(photos / "train"), "--val-data", str(photos / "held"),
        "--steps", "2", "--batch-size", "2", "--crop", "64", "--held-out-side", "64",
        "--dtype", "float32", "--quiet",
    ]  # fmt: skip


def test_hed_fine_tuning_trains_the_encoder_of_the_real_hed_only(photos, tmp_path, capsys):
    """The bounded CI run of the documented command: the real BSDS500 HED, two steps."""
    out = tmp_path / "hed.safetensors"
    assert main(_train(photos, "pgft-extractor", "--extractor", "hed", "--out", str(out))) == 0
    report = capsys.readouterr().out
    before, after = report.split("after the last step")
    assert "ODS F" in before and "OIS F" in before and "MAE" in before
    assert "recalibrated: sigmoid(" in before and "fine-tuned" not in before  # printed first
    assert all(name in after for name in ("pretrained", "recalibrated", "fine-tuned"))
    tuned = load_file(out)
    original = load_hed("bundled", Path(_cache_dir())).state_dict()
    for name, weight in tuned.items():
        same = torch.equal(weight, original[name])
        assert same == (not name.startswith("block")), name  # head frozen, encoder moved
    assert load_hed(str(out), tmp_path).widths == (64, 128, 256, 512, 512)


def test_depth_and_segmentation_fine_tuning_write_loadable_models(
    photos, tiny_sources, tmp_path, capsys
):
    for kind, folder, loader in (
        ("depth", "depth", DepthExtractor),
        ("seg", "segmentation", SegmentationExtractor),
    ):
        out = tmp_path / kind
        args = ["pgft-extractor", "--extractor", kind, "--source", str(tiny_sources / folder)]
        assert main([*_train(photos, *args), "--out", str(out)]) == 0
        measure = "δ<1.25" if kind == "depth" else "mIoU"
        assert measure in capsys.readouterr().out
        before = loader.from_pretrained(str(tiny_sources / folder)).model.state_dict()
        after = loader.from_pretrained(str(out)).model
        encoder = {f"{n}" for n, _ in encoder_of(after).named_parameters()}
        prefix = next(n for n, m in after.named_children() if m is encoder_of(after))
        for name, weight in after.state_dict().items():
            if name in before and weight.is_floating_point():
                inside = name.removeprefix(f"{prefix}.") in encoder and name.startswith(prefix)
                if not inside:
                    assert torch.equal(weight, before[name]), f"{kind}: head changed: {name}"
        assert any(
            not torch.equal(p, before[f"{prefix}.{n}"])
            for n, p in encoder_of(after).named_parameters()
        ), f"{kind}: encoder did not train"


def test_clip_fine_tuning_merges_its_lora_into_q_and_v(photos, tiny_sources, tmp_path, capsys):
    out = tmp_path / "clip"
    args = ["pgft-clip", "--source", str(tiny_sources / "clip"), "--lr", "1e-2"]
    assert main([*_train(photos, *args), "--out", str(out)]) == 0
    assert "cosine" in capsys.readouterr().out
    before = ClipEncoder.from_pretrained(str(tiny_sources / "clip")).model.state_dict()
    after = ClipEncoder.from_pretrained(str(out)).model.state_dict()
    assert after.keys() == before.keys()  # merged: a plain CLIP again
    moved = {name for name in after if not torch.equal(after[name], before[name])}
    assert moved and all(
        name.startswith("vision_model.") and ("q_proj.weight" in name or "v_proj.weight" in name)
        for name in moved
    ), moved


def test_pgft_errors_are_one_line(photos, tmp_path, capsys):
    cases = [
        (["pgft-extractor", "--extractor", "depth"], "needs --source"),
        (["pgft-extractor", "--extractor", "hed", "--out", str(tmp_path / "h.pt")], ".safetensors"),
        (["pgft-extractor", "--extractor", "seg", "--source", str(tmp_path / "none")],
         "cannot load the segmentation model"),
    ]  # fmt: skip
    for args, message in cases:
        argv = _train(photos, *args)
        if "--out" not in args:
            argv += ["--out", str(tmp_path / "out")]
        assert main(argv) == 1
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [*_train(photos, "pgft-extractor", "--extractor", "hed"), "--out", "x.safetensors"]
    argv[argv.index(str(photos / "train"))] = str(empty)
    assert main(argv) == 1
    assert "no image files in this folder" in capsys.readouterr().err


def test_crops_are_fixed_by_the_seed_and_the_sample_number(photos):
    files = find_images([photos / "train"])
    assert [f.name for f in files] == ["a.png", "b.jpg"]  # recursive, fixed order
    crops = TrainingCrops(files, CropOptions(crop=64, seed=3))
    again = TrainingCrops(files, CropOptions(crop=64, seed=3))
    other = TrainingCrops(files, CropOptions(crop=64, seed=4))
    for number in range(6):
        assert torch.equal(crops[number]["hr"], again[number]["hr"])
    assert any(not torch.equal(crops[n]["hr"], other[n]["hr"]) for n in range(6))
    assert crops[0]["hr"].shape == (3, 64, 64)
    # every epoch visits every file once: samples 0 and 1 come from different photographs
    assert crops[0]["hr"].mean() != crops[1]["hr"].mean()


def test_unreadable_files_are_skipped_and_counted(photos, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    Image.open(photos / "train" / "a.png").save(folder / "good.png")
    crops = TrainingCrops(find_images([folder]), CropOptions(crop=32))
    samples = [crops[n] for n in range(4)]
    assert all(s["hr"].shape == (3, 32, 32) for s in samples)
    skipped = [path for s in samples for path in s["skipped"]]
    assert skipped and all("broken.png" in path for path in skipped)
    (folder / "good.png").unlink()
    with pytest.raises(Exception, match="none of the 1 training images can be read"):
        TrainingCrops(find_images([folder]), CropOptions(crop=32)).first_readable()


def test_paired_crops_line_up(tmp_path, coffee):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    hr = coffee[:128, :160]
    Image.fromarray(hr).save(hr_dir / "x.png")
    blocks = hr.reshape(32, 4, 40, 4, 3).astype(float).mean(axis=(1, 3))
    Image.fromarray(np.round(blocks).astype(np.uint8)).save(lr_dir / "x.png")  # 4x4 means
    options = CropOptions(crop=64, hflip=True, vflip=True, seed=1)
    crops = TrainingCrops(pair_images([hr_dir], [lr_dir]), options)
    for number in range(6):  # crops anywhere, flipped or not: the LR is the HR's block means
        sample = crops[number]
        means = torch.nn.functional.avg_pool2d(sample["hr"][None] * 255, 4)[0]
        assert (means - sample["lr"] * 255).abs().max() <= 0.5 + 1e-4


def test_small_images_are_mirrored_up_to_the_crop(tmp_path, coffee):
    Image.fromarray(coffee[:20, :30]).save(tmp_path / "small.png")
    sample = TrainingCrops(find_images([tmp_path]), CropOptions(crop=64))[0]
    assert sample["hr"].shape == (3, 64, 64)


def test_sample_numbers_split_the_stream_between_processes_and_resume():
    def take(sampler: SampleNumbers, count: int) -> list[int]:
        iterator = iter(sampler)
        return [next(iterator) for _ in range(count)]

    whole = take(SampleNumbers(0, 2), 8)
    assert whole == list(range(8))
    rank0, rank1 = take(SampleNumbers(0, 2, 2, 0), 4), take(SampleNumbers(0, 2, 2, 1), 4)
    assert sorted(rank0 + rank1) == list(range(8)) and not set(rank0) & set(rank1)
    assert take(SampleNumbers(2, 2), 4) == whole[4:]


def test_lora_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    model = _Attention()
    x = torch.randn(4, 8)
    plain = model(x)
    assert add_lora(model, ["q_proj"], rank=2, alpha=2.0) == 1
    assert isinstance(model.q_proj, LoRALinear) and torch.allclose(model(x), plain)
    torch.nn.init.normal_(model.q_proj.up.weight)
    adapted = model(x)
    merge_lora(model)
    assert isinstance(model.q_proj, torch.nn.Linear)
    assert torch.allclose(model(x), adapted, atol=1e-6)
    with pytest.raises(Exception, match="no linear layer named v_proj"):
        add_lora(model, ["v_proj"], rank=2, alpha=2.0)


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = torch.nn.Linear(8, 6), torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x) * self.k_proj(x)


def _cache_dir() -> str:
    import os

    return os.environ["MEGASR_CACHE_DIR"]


@pytest.fixture
def tiny_hed(tmp_path) -> Path:
    """A HED of the real layout at a test size, as a weights file the commands load."""
    torch.manual_seed(0)
    path = tmp_path / "tiny-hed.safetensors"
    save_hed(HEDNet((4, 8, 8, 8, 8)), path)
    return path


def test_a_resumed_fine_tuning_ends_bit_for_bit_where_an_uninterrupted_one_does(
    photos, tiny_hed, tmp_path, capsys
):
    """Killed after step 2 (its resume point) and run again: the same weights as 4 steps
    straight, with feature-level distillation on, whose objective is part of the key."""

    def run(out: Path, steps: int, *extra: str) -> str:
        args = ["pgft-extractor", "--extractor", "hed", "--source", str(tiny_hed)]
        argv = [*_train(photos, *args), "--out", str(out), "--checkpoint-every", "2"]
        argv[argv.index("--steps") + 1] = str(steps)
        assert main([*argv, "--feature-weight", "0.5", "--side-weight", "0.5", *extra]) == 0
        return capsys.readouterr().out

    run(tmp_path / "straight.safetensors", 4)
    resumed = tmp_path / "resumed.safetensors"
    assert "steps 0 to 2" in run(resumed, 2)
    assert "steps 2 to 4" in run(resumed, 4)
    expected, actual = load_file(tmp_path / "straight.safetensors"), load_file(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    states = resumed.with_name(resumed.name + ".state")
    at_two = load_file(states / "step-00000002" / "trainable.safetensors")
    at_four = load_file(states / "step-00000004" / "trainable.safetensors")
    assert any(not torch.equal(at_two[name], at_four[name]) for name in at_two)  # it trained


def test_the_progress_bar_counts_the_steps_with_the_time_left(photos, tiny_hed, tmp_path, capsys):
    """Into a log file (not a terminal) the bar is drawn at the start and the end, with the
    elapsed and remaining time tqdm derives from the steps done."""
    argv = _train(photos, "pgft-extractor", "--extractor", "hed", "--source", str(tiny_hed))
    argv.remove("--quiet")
    assert main([*argv, "--out", str(tmp_path / "hed.safetensors")]) == 0
    bars = capsys.readouterr().err
    assert re.search(r"fine-tuning: +0%.* 0/2 \[", bars)
    assert re.search(r"fine-tuning: 100%.* 2/2 \[\d\d:\d\d<\d\d:\d\d", bars)


def test_a_resume_point_of_another_recipe_is_refused(photos, tiny_hed, tmp_path, capsys):
    out = tmp_path / "hed.safetensors"
    base = [*_train(photos, "pgft-extractor", "--extractor", "hed", "--source", str(tiny_hed))]
    base += ["--out", str(out)]
    assert main(base) == 0
    capsys.readouterr()
    other = list(base)
    other[other.index("--batch-size") + 1] = "1"
    assert main(other) == 1
    error = capsys.readouterr().err.strip()
    assert "needs the same seed, batch_size, crop, objective" in error
    assert len(error.splitlines()) == 1
    assert main([*base, "--resume", "none"]) == 1
    assert "holds resume points of another run" in capsys.readouterr().err


def test_pgft_eval_compares_candidates_with_both_controls(photos, tiny_sources, tmp_path, capsys):
    """Depth and segmentation on tiny models: every row, every measure, in the JSON too."""
    for kind, folder, measures in (
        ("depth", "depth", ("ssi_l1", "absrel", "delta1")),
        ("seg", "segmentation", ("miou", "agreement", "kl")),
    ):
        source = str(tiny_sources / folder)
        tuned = tmp_path / f"{kind}-tuned"
        args = ["pgft-extractor", "--extractor", kind, "--source", source, "--lr", "1e-2"]
        assert main([*_train(photos, *args), "--out", str(tuned)]) == 0
        capsys.readouterr()
        report = tmp_path / f"{kind}.json"
        argv = [
            "train", "pgft-eval", "--extractor", kind, "--source", source,
            "--train-data", str(photos / "train"), "--val-data", str(photos / "held"),
            "--candidate", f"tuned={tuned}", "--held-out-side", "64", "--dtype", "float32",
            "--report", str(report), "--quiet",
        ]  # fmt: skip
        assert main(argv) == 0
        record = json.loads(report.read_text())
        assert [row["name"] for row in record["rows"]] == ["pretrained", "recalibrated", "tuned"]
        for row in record["rows"]:
            assert all(np.isfinite(row[measure]) for measure in measures), row
        assert record["machine"]["end"]["threads"] >= 1 and record["machine"]["start"]["cpu"]
        assert "recalibrated: " in capsys.readouterr().out


def test_pgft_eval_refuses_a_malformed_candidate(photos, capsys):
    argv = ["train", "pgft-eval", "--extractor", "hed", "--train-data", str(photos / "train"),
            "--val-data", str(photos / "held"), "--candidate", "no-equals-sign"]  # fmt: skip
    assert main(argv) == 1
    assert "expected NAME=PATH" in capsys.readouterr().err
