"""``megasr eval`` end to end on two small photographs: table layout, bicubic floor, formats.

Scores are checked for sane ranges and consistency between formats, never for speed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from megasr.cli.main import main
from megasr.model.evaluation.degradations import bicubic_downscale

# 48x48 crops (rows, columns) of two scikit-image photographs: a face and a cup's rim.
CROPS = {
    "astronaut": (slice(100, 148), slice(180, 228)),
    "coffee": (slice(60, 108), slice(240, 288)),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("hr")
    for name, crop in CROPS.items():
        Image.fromarray(getattr(data, name)()[crop]).save(folder / f"{name}.png")
    return folder


def run_eval(*args: str) -> int:
    return main(["eval", "--quiet", *[str(a) for a in args]])


def markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header cells and the cells of each row, by method, of a Markdown table."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return header, rows


def test_markdown_table_has_the_bicubic_floor_and_one_row_per_engine(hr_dir, tmp_path):
    out = tmp_path / "table.md"
    code = run_eval(
        "--engine", "realesrgan-x4plus", "--hr", hr_dir, "--degrade", "realesrgan",
        "--seed", "3", "--metrics", "psnr,ssim,piqe,lpips", "-o", out,
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    header, rows = markdown_rows(text)
    assert header == ["Method", "PSNR (dB)↑", "SSIM↑", "PIQE↓", "LPIPS↓"]
    assert list(rows) == ["bicubic", "realesrgan-x4plus"]
    assert "Real-ESRGAN second-order degradation, seed 3" in text
    assert "(2 images)" in text
    for cells in rows.values():
        psnr, ssim, piqe = (float(c) for c in cells[:3])
        assert 12 < psnr < 45 and 0 < ssim < 1 and 0 <= piqe <= 100
        assert cells[3] == "n/a"  # no LPIPS weights in the test environment
    assert "- LPIPS: not available: " in text
    assert text.count("**") >= 2 * 3  # one best value in bold per metric column


def test_json_and_csv_agree_and_hold_every_image(hr_dir, tmp_path):
    paths = {fmt: tmp_path / f"table.{fmt}" for fmt in ("json", "csv")}
    for fmt, path in paths.items():
        assert run_eval("--hr", hr_dir, "--metrics", "psnr,ssim", "--format", fmt, "-o", path) == 0
    document = json.loads(paths["json"].read_text())
    assert document["scale"] == 4 and document["border_crop"] == 4
    assert document["images"] == ["astronaut", "coffee"]
    assert [m["name"] for m in document["metrics"]] == ["psnr", "ssim"]
    rows = {row["method"]: row for row in document["rows"]}
    assert list(rows) == ["bicubic", "realesrgan-x4plus"]
    for row in rows.values():
        for metric in ("psnr", "ssim"):
            values = row["per_image"][metric]
            assert sorted(values) == ["astronaut", "coffee"]
            assert math.isclose(row["mean"][metric], sum(values.values()) / 2)
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["method"] for r in table] == ["bicubic", "realesrgan-x4plus"]
    for record in table:
        assert math.isclose(float(record["psnr"]), rows[record["method"]]["mean"]["psnr"])
    # Bicubic on MATLAB-bicubic LR images is the classic setting: about 25-35 dB on photos.
    assert 22 < rows["bicubic"]["mean"]["psnr"] < 40


def test_given_lr_images_are_paired_by_name_and_outputs_saved(hr_dir, tmp_path):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for path in hr_dir.iterdir():
        lr = bicubic_downscale(np.asarray(Image.open(path)), 4)
        Image.fromarray(lr).save(lr_dir / path.name)
    saved = tmp_path / "images"
    out = tmp_path / "given.json"
    code = run_eval(
        "--hr", hr_dir, "--lr", lr_dir, "--metrics", "psnr", "--format", "json",
        "-o", out, "--save-images", saved,
    )  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    assert document["setting"] == "LR images given"
    for folder in ("lr", "hr", "bicubic", "realesrgan-x4plus"):
        sizes = {Image.open(saved / folder / f"{name}.png").size for name in CROPS}
        assert sizes == ({(12, 12)} if folder == "lr" else {(48, 48)})


def test_lr_alone_gets_no_reference_metrics_and_refuses_psnr(hr_dir, tmp_path, capsys):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for path in hr_dir.iterdir():
        Image.open(path).resize((24, 24)).save(lr_dir / path.name)
    out = tmp_path / "noref.json"
    assert run_eval("--lr", lr_dir, "--metrics", "piqe", "--format", "json", "-o", out) == 0
    document = json.loads(out.read_text())
    assert document["setting"] == "LR images given, no ground truth"
    piqe = document["rows"][1]["mean"]["piqe"]
    assert 0 <= piqe <= 100
    assert run_eval("--lr", lr_dir, "--metrics", "psnr") == 1
    assert "psnr compares with HR images" in capsys.readouterr().err


def test_mismatched_pairs_and_bad_options_are_one_line_errors(hr_dir, tmp_path, capsys):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for path in hr_dir.iterdir():
        Image.open(path).resize((16, 16)).save(lr_dir / path.name)
    assert run_eval("--hr", hr_dir, "--lr", lr_dir, "--metrics", "psnr") == 1
    assert "is not 4 times the LR 16x16" in capsys.readouterr().err
    assert run_eval("--hr", hr_dir, "--metrics", "nonsense") == 1
    assert "unknown metric 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses the two LR sources together
        run_eval("--degrade", "bicubic", "--lr", lr_dir)
    capsys.readouterr()
    assert run_eval("--hr", tmp_path / "missing") == 1
    assert "not a folder" in capsys.readouterr().err


def test_megasr_engine_from_a_tiny_checkpoint(hr_dir, tmp_path):
    from megasr.model.megasr.checkpoint import init_tiny_checkpoint

    checkpoint = tmp_path / "tiny"
    init_tiny_checkpoint(checkpoint)
    out = tmp_path / "megasr.json"
    code = run_eval(
        "--engine", "megasr", "--model", checkpoint, "--hr", hr_dir,
        "--metrics", "psnr,ssim", "--format", "json", "-o", out,
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["method"] for row in rows] == ["bicubic", "megasr"]
    # Random tiny weights restore nothing, but the output is a real image of the HR's size.
    assert 0 < rows[1]["mean"]["psnr"] < 60 and -1 <= rows[1]["mean"]["ssim"] <= 1
