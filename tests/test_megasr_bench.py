"""The GPU benchmark's model building (on the meta device) and its refusal without a GPU."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from megasr.model.megasr.adapter import adapter_parameters


def _bench_script(repo_root, name: str):
    """A script of bench/ (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, repo_root / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(repo_root):
    return _bench_script(repo_root, "megasr_gpu")


def test_full_size_model_has_the_sd2_base_parameter_counts(bench):
    model = bench.build_model("meta")
    counts = bench.parameter_counts(model)
    assert round(counts["unet"] / 1e6, 1) == 865.9  # model.md, SD-2-base
    assert round(counts["controlnet"] / 1e6, 1) == 364.2
    # The new modules: tens of millions each; model.md expects 80-130 M together.
    assert 80e6 <= counts["csm"] + counts["msfm"] <= 130e6
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    new = sum(p.numel() for p in adapter_parameters(model).values())
    assert new == counts["csm"] + counts["msfm"]
    assert next(model.parameters()).dtype == torch.bfloat16


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_without_cuda_it_stops_at_once_with_a_clear_message(bench, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["megasr_gpu.py"])
    assert bench.main() == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sampling_bench(repo_root):
    return _bench_script(repo_root, "megasr_sampling")


def test_the_step_cache_saves_flops_of_the_full_size_model_after_the_first_step(sampling_bench):
    flops = sampling_bench.measure_flops(8)  # on the meta device: shapes only, no compute
    assert flops["first_step"] == flops["uncached"]  # the first step fills the cache
    assert flops["later_steps"] < 0.9 * flops["uncached"]


def test_the_transfer_counter_counts_host_tensors_sent_to_a_device(sampling_bench):
    moves = sampling_bench.DeviceMoves()
    with moves:
        torch.zeros(10).to("cpu")  # a move to "the device", even where that is the host
        torch.zeros(10).to(torch.float16)  # a cast, not a move
        torch.zeros(4).to(device=torch.device("cpu"), dtype=torch.float64)
        moves.step_done()
    assert moves.per_step == [40 + 16]
    assert torch.Tensor.to is moves._original  # put back
