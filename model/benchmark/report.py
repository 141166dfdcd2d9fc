"""``megasr bench`` results as Markdown tables (with the machine and ratios) or JSON.

Ratios divide speeds: "vs float32" against the same network's float32 row, and one column
per peer against that peer, so "2.00" reads "twice as fast as". They are given only between
rows that run the same network.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from megasr.model.benchmark.benchmark import BenchReport, BenchRow
from megasr.model.benchmark.timing import Measurement

MIB = 2**20


def to_markdown(report: BenchReport) -> str:
    lines = [*_machine_lines(report), "", *_speed_table(report)]
    batched = [row for row in report.rows if row.batches]
    if batched:
        lines += ["", *_batch_table(batched)]
    if report.skipped:
        lines += ["", *(f"- {reason}" for reason in report.skipped)]
    return "\n".join(lines) + "\n"


def to_json(report: BenchReport) -> str:
    document = asdict(report)
    for row, data in zip(report.rows, document["rows"], strict=True):
        data["megapixels_per_second"] = row.megapixels_per_second()
        data["batches"] = [
            {**asdict(m), "tiles_per_second": m.tiles_per_second} for m in row.batches.values()
        ]
        reference = report.reference(row.network)
        data["speedup_vs_float32"] = None if reference is None else _speedup(row, reference)
        data["speedup_vs_peers"] = {
            peer.name: _speedup(row, peer) for peer in _peers(report, row.network)
        }
    return json.dumps(document, indent=2) + "\n"


FORMATS = {"md": to_markdown, "json": to_json}


def _machine_lines(report: BenchReport) -> list[str]:
    m = report.machine
    device = m.get("gpu", m["device"])
    side = report.size
    out = report.rows[0].output_side if report.rows else side
    return [
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores; torch {m['torch']} "
        f"({m['torch_threads']} threads, CPU capability {m['cpu_capability']}, native bfloat16: "
        f"{m['cpu_native_bfloat16']}); Python {m['python']}; engines on: {device}",
        f"- Input: a {side}x{side} tile of {report.input_name}, upscaled to {out}x{out}; "
        f"best of {report.repeats} timed calls after a warm-up call",
        "- Peak memory: above the resident size before the call (CPU: the process's peak RSS; "
        "CUDA: max_memory_allocated)",
        f"- Load average (1, 5, 15 min): {report.load_before} before, {report.load_after} after",
    ]


def _speed_table(report: BenchReport) -> list[str]:
    peers = [row for row in report.rows if row.peer]
    header = ["runner", "precision", "s / tile", "output MP/s", "peak MiB", "vs float32"]
    header += [f"vs {peer.name.removesuffix(' (peer)')}" for peer in peers]
    header.append("PSNR vs float32 (dB)")
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in report.rows:
        reference = report.reference(row.network)
        cells = [
            row.name,
            row.precision,
            f"{row.single.seconds:.3f}",
            f"{row.megapixels_per_second():.3f}",
            _mib(row.single),
            "" if reference is None else f"{_speedup(row, reference):.2f}",
            *(f"{_speedup(row, p):.2f}" if p.network == row.network else "" for p in peers),
            _agreement(row, reference),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _batch_table(rows: list[BenchRow]) -> list[str]:
    batches = sorted({b for row in rows for b in row.batches})
    header = ["runner", "precision", *(f"batch {b}" for b in batches)]
    lines = [
        "Tiles per second by batch size (peak MiB):",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * len(batches),
    ]
    for row in rows:
        cells = [row.name, row.precision]
        for batch in batches:
            m = row.batches.get(batch)
            cells.append("" if m is None else f"{m.tiles_per_second:.3f} ({_mib(m)})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _peers(report: BenchReport, network: str) -> list[BenchRow]:
    return [row for row in report.rows if row.peer and row.network == network]


def _speedup(row: BenchRow, baseline: BenchRow) -> float:
    return baseline.single.seconds / row.single.seconds


def _agreement(row: BenchRow, reference: BenchRow | None) -> str:
    if reference is row:
        return "reference"
    if row.psnr_vs_float32 is None:
        return ""
    return "identical" if math.isinf(row.psnr_vs_float32) else f"{row.psnr_vs_float32:.1f}"


def _mib(measurement: Measurement) -> str:
    peak = measurement.peak_memory_bytes
    return "n/a" if peak is None else f"{peak / MIB:.0f}"
