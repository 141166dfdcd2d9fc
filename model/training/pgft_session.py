"""What one PGFT command sets up around its work: the device, the degradation, the photos
it measures on, and the record of the machine every figure is printed with.

The machine matters on a shared CPU: a figure of time means nothing without the CPU, the
thread count and the load average it was taken at, so the JSON report of every run carries
them (at its start and its end).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from megasr.errors import InvalidParameterError
from megasr.files import write_atomic
from megasr.model.config_files import read_config_file
from megasr.model.degradation import DegradationConfig, RealESRGANDegradation
from megasr.model.device import resolve_device, resolve_dtype, use_cpu_threads
from megasr.model.training.data import load_held_out
from megasr.model.training.distillation import autocast
from megasr.model.training.pgft_evaluation import (
    PGFTEvaluation,
    Photo,
    Row,
    degraded_photos,
    format_rows,
)

CALIBRATION_PHOTOS = 64
"""Training photos that choose the ODS threshold and fit the recalibration: enough to pin
two parameters (or a hundred class biases) down, few enough that a large training set does
not make every run measure for an hour."""


@dataclass
class PGFTSession:
    """The shared context of ``megasr train pgft-*``."""

    device: torch.device
    dtype: torch.dtype
    degradation: RealESRGANDegradation
    seed: int
    side: int
    quiet: bool
    machine: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(
        cls,
        device: str,
        dtype: str,
        degradation: Path | None,
        seed: int,
        side: int,
        quiet: bool,
        threads: int,
    ) -> PGFTSession:
        """Apply the thread count, resolve the device and precision, read the degradation."""
        use_cpu_threads(threads)
        resolved = resolve_device(device)
        config = DegradationConfig()
        if degradation is not None:
            config = read_config_file(degradation, DegradationConfig)
        session = cls(
            resolved, resolve_dtype(dtype, resolved), RealESRGANDegradation(config), seed, side,
            quiet,
        )  # fmt: skip
        session.machine = {"start": machine_record()}
        return session

    def photos(self, folders: Sequence[Path], role: str, most: int | None = None) -> list[Photo]:
        """The readable photos of ``folders`` (at most ``most``, evenly spaced), cropped and
        degraded for measuring."""
        images, unreadable = load_held_out(folders, most=most)
        for line in unreadable:
            print(f"megasr train: skipped {role} {line}", file=sys.stderr)
        if not images:
            raise InvalidParameterError(f"the {role} folders hold no readable images")
        return degraded_photos(images, self.degradation, self.seed, self.side, self.device)

    def evaluation(
        self, kind: str, student: Any, train: Sequence[Path], held_out: Sequence[Path]
    ) -> PGFTEvaluation:
        """The comparison of ``kind`` on these photo sets, targets from ``student``'s
        frozen teacher (the pretrained extractor)."""
        student.to(self.device)
        return PGFTEvaluation(
            kind,
            student.reference,
            self.photos(train, "training photo", most=CALIBRATION_PHOTOS),
            self.photos(held_out, "held-out photo"),
            partial(autocast, self.device, self.dtype),
            self.quiet,
        )

    def distances(self, student: Any, photos: list[Photo], name: str) -> Row:
        """CLIP: the student's mean distances to the teacher over ``photos``."""
        student.to(self.device)
        totals: dict[str, float] = {}
        for photo in photos:
            with autocast(self.device, self.dtype):
                for key, value in student.distances(photo.hr, photo.lr).items():
                    totals[key] = totals.get(key, 0.0) + value
        return Row(name, {key: total / len(photos) for key, total in totals.items()})

    def describe(self) -> str:
        return f"{self.device}, {self.dtype}, {torch.get_num_threads()} threads"

    def report(self, kind: str, rows: Sequence[Row], path: Path | None, extra: dict) -> str:
        """The rows as text; with ``path``, also the figures and the machine as JSON."""
        self.machine["end"] = machine_record()
        if path is not None:
            record = {
                "kind": kind,
                "rows": [{"name": r.name, **r.scores, "note": r.note} for r in rows],
                "seed": self.seed,
                "side": self.side,
                "dtype": str(self.dtype).removeprefix("torch."),
                "machine": self.machine,
                **extra,
            }
            write_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
        return format_rows(kind, rows) if rows else ""


def machine_record() -> dict[str, Any]:
    """The CPU, the thread count, the load average and the time, as a figure needs them."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
