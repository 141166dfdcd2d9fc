"""What a benchmark ran on, for the report: a number means little without its machine."""

from __future__ import annotations

import os
import platform

import torch

from megasr.model.cpu_isa import cpu_model, describe_isa
from megasr.model.device import cpu_has_native_bf16


def describe_machine(device: torch.device) -> dict[str, str]:
    """CPU model and cores, torch and its threads, and the GPU when one is used."""
    facts = {
        "cpu": cpu_model(),
        "logical_cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa": describe_isa(),
        "cpu_native_bfloat16": "yes" if cpu_has_native_bf16() else "no",
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
