"""Prior-guided fine-tuning: HED with its real weights, depth/seg/CLIP with tiny models, LoRA,
the data pipeline under it, and the edge measures it reports."""

from __future__ import annotations

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
from megasr.model.extractors.hed_weights import load_hed
from megasr.model.extractors.segmentation import SegmentationExtractor
from megasr.model.training.data import (
    CropOptions,
    SampleNumbers,
    TrainingCrops,
    find_images,
    pair_images,
)
from megasr.model.training.edge_metrics import edge_f_score
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
    assert "held-out, 1 images" in report and "edge_f" in report and "mae" in report
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
        measure = "ssi_l1" if kind == "depth" else "agreement"
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


def test_edge_f_score_forgives_small_shifts_and_not_missing_edges():
    edges = torch.zeros(1, 1, 32, 32)
    edges[..., 16, 4:28] = 1.0
    assert edge_f_score(edges, edges) == 1.0
    assert edge_f_score(torch.roll(edges, 1, dims=2), edges) == 1.0  # one pixel off
    assert edge_f_score(torch.roll(edges, 5, dims=2), edges) == 0.0
    assert edge_f_score(torch.zeros_like(edges), edges) == 0.0
    noisy = edges.clone()
    noisy[..., ::4, ::4] = 1.0  # spurious edges: precision falls
    assert 0.0 < edge_f_score(noisy, edges) < 1.0
    assert np.isclose(edge_f_score(torch.zeros_like(edges), torch.zeros_like(edges)), 1.0)


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj = torch.nn.Linear(8, 6), torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x) * self.k_proj(x)


def _cache_dir() -> str:
    import os

    return os.environ["MEGASR_CACHE_DIR"]
