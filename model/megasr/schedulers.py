"""The samplers a request can choose, built from the base model's scheduler configuration."""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from megasr.errors import InvalidParameterError
from megasr.model.megasr.config import Sampler

SAMPLERS: tuple[Sampler, ...] = ("ddpm", "ddim", "dpm-solver++")


def make_scheduler(sampler: Sampler, base_config: dict[str, Any]) -> SchedulerMixin:
    """A fresh scheduler; each image gets its own, since multistep solvers keep history."""
    if sampler == "ddpm":
        return DDPMScheduler.from_config(base_config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(base_config)
    if sampler == "dpm-solver++":
        return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++")
    raise InvalidParameterError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
