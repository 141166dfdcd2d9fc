"""Random draws of the degradation model, all from one explicit CPU generator.

Parameters (kernel shapes, noise levels, JPEG qualities, resize factors) are drawn on the
CPU whatever device the images are on, so a seed gives the same degradation on every
machine; only the noise fields themselves are drawn on the images' device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def derived_generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded from several integers (a seed, a step, an image's hash...).

    NumPy's ``SeedSequence`` mixes them, so neighbouring keys (step 1 and step 2, seed 0
    with step 1 and seed 1 with step 0) give unrelated streams.
    """
    state = np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))


def uniform(bounds: tuple[float, float], count: int, generator: torch.Generator) -> Tensor:
    """``count`` float64 values uniform in [low, high)."""
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def chance(probability: float, count: int, generator: torch.Generator) -> Tensor:
    """``count`` booleans, each True with ``probability``."""
    return torch.rand(count, generator=generator, dtype=torch.float64) < probability


def choice(values: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` elements of ``values`` drawn uniformly with replacement."""
    return values[torch.randint(len(values), (count,), generator=generator)]


def integers(bounds: tuple[int, int], count: int, generator: torch.Generator) -> Tensor:
    """``count`` integers uniform in the closed range [low, high]."""
    return torch.randint(bounds[0], bounds[1] + 1, (count,), generator=generator)


def child_seed(generator: torch.Generator) -> int:
    """A seed for another generator (the noise fields on the images' device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))
