"""The converted-weights cache: convert once, reuse, and rebuild what cannot be trusted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from megasr.model.weights.cache import (
    SOURCE_SHA256_KEY,
    TENSORS_SHA256_KEY,
    cached_state_dict,
    tensors_sha256,
)

SOURCE = "a" * 64


class CountingConverter:
    """A real conversion (it builds tensors) that counts how often it runs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        generator = torch.Generator().manual_seed(0)
        return {
            "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "conv.bias": torch.randn(8, generator=generator),
        }


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "weights" / "tiny.safetensors"


def test_second_load_reuses_the_cache(path: Path) -> None:
    convert = CountingConverter()
    first = cached_state_dict(path, SOURCE, convert)
    second = cached_state_dict(path, SOURCE, convert)

    assert convert.calls == 1
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata[SOURCE_SHA256_KEY] == SOURCE
    assert metadata[TENSORS_SHA256_KEY] == tensors_sha256(first)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-4] + bytes(4), id="tensor bytes changed"),
        pytest.param(lambda data: b"not a safetensors file", id="garbage"),
    ],
)
def test_corrupt_cache_is_rebuilt(path: Path, damage) -> None:
    convert = CountingConverter()
    expected = cached_state_dict(path, SOURCE, convert)
    path.write_bytes(damage(path.read_bytes()))

    rebuilt = cached_state_dict(path, SOURCE, convert)

    assert convert.calls == 2
    assert all(torch.equal(rebuilt[k], expected[k]) for k in expected)
    cached_state_dict(path, SOURCE, convert)
    assert convert.calls == 2  # the rebuilt file is whole again


def test_cache_from_another_source_is_rebuilt(path: Path) -> None:
    convert = CountingConverter()
    cached_state_dict(path, SOURCE, convert)
    cached_state_dict(path, "b" * 64, convert)

    assert convert.calls == 2
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()[SOURCE_SHA256_KEY] == "b" * 64


def test_failed_conversion_leaves_no_file(path: Path) -> None:
    def broken() -> dict[str, torch.Tensor]:
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        cached_state_dict(path, SOURCE, broken)
    assert not path.exists()
