"""The tile, dtype and backend an engine runs on this CPU, as measured here and cached.

What is fastest depends on the CPU more than on anything else: bfloat16 wins 4x and more
with AMX, wins less with AVX512-BF16 alone, and loses to float32 where oneDNN has no
bfloat16 convolution (below AVX512-BF16); the best tile size moves with the caches; inductor
helps some CPUs more than others (docs/benchmarks.md). So the choice is measured on the
machine, once, by ``megasr bench --calibrate`` (:mod:`megasr.model.benchmark.calibration`),
and written under ``<cache_dir>/cpu-choice/``, one file per engine, CPU, ISA cap, torch and
thread count (:func:`choice_path`). Engines read it when they load on the CPU; an explicit
setting (``MEGASR_TILE``, ``MEGASR_DTYPE``, ``MEGASR_BACKEND``) still wins over it, and
without a file the defaults stand.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from pydantic import TypeAdapter, ValidationError

from megasr.files import write_atomic
from megasr.model.cpu_isa import isa_key

logger = logging.getLogger(__name__)

CHOICE_DIR = "cpu-choice"


@dataclass(frozen=True)
class CpuChoice:
    """What the calibration chose, and the measurements it chose from (for the report).

    ``tile`` and ``overlap`` are input pixels; ``dtype`` names a torch dtype; ``backend`` is
    ``eager`` or ``inductor``; ``measured`` maps each candidate's label to its figure.
    """

    engine: str
    tile: int
    overlap: int
    dtype: str
    backend: str
    isa: str = ""
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def choice_path(cache_dir: Path, engine: str) -> Path:
    """The choice file of ``engine`` for this CPU, its caps, torch and thread count."""
    return cache_dir / CHOICE_DIR / f"{engine}-{isa_key()}-t{torch.get_num_threads()}.json"


def save_choice(cache_dir: Path, choice: CpuChoice) -> Path:
    path = choice_path(cache_dir, choice.engine)
    write_atomic(path, json.dumps(asdict(choice), indent=2).encode())
    return path


def load_choice(cache_dir: Path, engine: str) -> CpuChoice | None:
    """The cached choice for ``engine`` here, or None (never calibrated, or unreadable:
    a damaged file is reported and ignored, and the next calibration replaces it)."""
    path = choice_path(cache_dir, engine)
    if not path.is_file():
        return None
    try:
        return TypeAdapter(CpuChoice).validate_json(path.read_bytes())
    except (OSError, ValidationError) as error:
        logger.warning("ignoring the CPU choice in %s: %s", path, error)
        return None
