"""``megasr data prepare`` on a folder of real photographs with broken files among them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megasr.cli.main import main
from megasr.model.training.data import find_images


@pytest.fixture
def lsdir_like(tmp_path, coffee) -> Path:
    """An LSDIR-style tree (numbered subfolders of PNGs and a JPEG), one image too small,
    a file of garbage and a JPEG cut in half."""
    root = tmp_path / "HR"
    (root / "0001000").mkdir(parents=True)
    (root / "0002000").mkdir()
    Image.fromarray(coffee).save(root / "0001000" / "0000001.png")  # 600x400
    Image.fromarray(coffee[:200, :300]).save(root / "0001000" / "0000002.png")
    Image.fromarray(coffee[100:, 50:]).save(root / "0002000" / "0000003.jpg", quality=95)
    Image.fromarray(coffee[:50, :50]).save(root / "0002000" / "0000004.png")  # too small
    return root


def _break(root: Path) -> None:
    (root / "0002000" / "0000005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    whole = (root / "0002000" / "0000003.jpg").read_bytes()
    (root / "0002000" / "0000006.jpg").write_bytes(whole[: len(whole) // 2])


def _prepare(root: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "prepare", "--src", str(root), "--out", str(out), "--crop", "128",
            "--val-fraction", "0.2", "--quiet", *extra]  # fmt: skip


def test_prepare_cuts_crops_holds_images_out_and_writes_checksums(lsdir_like, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(_prepare(lsdir_like, out)) == 0
    printed = capsys.readouterr().out
    assert "1 too small, left out" in printed and "0000004.png" in printed
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["sources"] == 4 and summary["val_images"] == 1
    assert summary["train_images"] == 2 and summary["broken"] == []
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    files = {record["file"] for record in records}
    assert files == {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert sum(f.startswith("val/") for f in files) == 1
    assert len(files) - 1 == summary["train_crops"]
    for record in records:
        with Image.open(out / record["file"]) as image:
            assert image.size == (128, 128) and image.mode == "RGB"
    # A crop is the source's pixels at its box, exactly (PNG sources are lossless).
    png = next(r for r in records if r["source"].endswith("0000001.png") and "train/" in r["file"])
    top, left, side, _ = png["box"]
    source = np.asarray(Image.open(png["source"]))[top : top + side, left : left + side]
    assert np.array_equal(np.asarray(Image.open(out / png["file"])), source)
    # 20 % of 4 drew none here, so the image with the lowest draw is held out ...
    assert [f for f in files if f.startswith("val/")] == ["val/HR/0002000/0000003.png"]
    # ... and the grid reaches the far borders: a 600x400 image gives 5 x 4 crops of 128.
    assert sum("0000001_" in f for f in files) == 20
    assert main(["data", "verify", str(out)]) == 0
    assert f"{len(files)} files match" in capsys.readouterr().out
    assert len(find_images([out / "train"])) == summary["train_crops"]  # what training reads


def test_broken_files_stop_the_command_with_counts_and_write_nothing(lsdir_like, tmp_path, capsys):
    _break(lsdir_like)
    out = tmp_path / "prepared"
    assert main(_prepare(lsdir_like, out)) == 1
    error = capsys.readouterr().err.strip()
    assert "2 of 6 source files cannot be decoded, nothing was written" in error
    assert "0000005.png" in error and "0000006.jpg" in error and "--skip-broken" in error
    assert len(error.splitlines()) == 1
    assert not out.exists() and list(tmp_path.glob(".prepared*")) == []
    assert main(_prepare(lsdir_like, out, "--skip-broken")) == 0
    summary = json.loads((out / "dataset.json").read_text())
    assert len(summary["broken"]) == 2 and summary["train_images"] + summary["val_images"] == 3
    assert main(_prepare(lsdir_like, out)) == 1  # an existing set is never overwritten
    assert "exists and is not empty" in capsys.readouterr().err


def test_verify_finds_a_file_that_changed(lsdir_like, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(_prepare(lsdir_like, out)) == 0
    victim = next((out / "train").rglob("*.png"))
    Image.new("RGB", (128, 128)).save(victim)
    assert main(["data", "verify", str(out)]) == 1
    assert "sha256 differs from the manifest" in capsys.readouterr().err


def test_the_split_is_fixed_by_the_seed_and_the_names(lsdir_like, tmp_path):
    held = []
    for run in ("a", "b"):
        assert main(_prepare(lsdir_like, tmp_path / run, "--workers", "2")) == 0
        held.append(sorted(p.name for p in (tmp_path / run / "val").rglob("*.png")))
    assert held[0] == held[1] and held[0]
