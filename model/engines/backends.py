"""How an engine runs its network: eager PyTorch, or compiled by ``torch.compile``'s inductor.

Eager runs each layer as its own library call: on the CPU a oneDNN convolution, then the
concatenation, the leaky ReLU, the scaled residual add each as a separate pass over memory.
For Real-ESRGAN x4plus (a 128-pixel tile, bfloat16 on a CPU with AMX) those passes took
about 40 % of the time next to the convolutions (docs/benchmarks.md). Inductor compiles the
same network into oneDNN convolutions with the pointwise work fused into generated C++
loops, which removes most of those passes; the numerics are the eager path's up to the
order of rounding.

The price is a compile on first use (one to two minutes for the full network on 2 cores),
which is why ``auto`` compiles only an engine that is warmed up to serve (the worker). Its
artefacts are cached on disk (``<cache_dir>/inductor``, unless ``TORCHINDUCTOR_CACHE_DIR``
is set), so a later process that sees the same shape loads them instead of compiling again.

Inductor needs a C++ compiler on the CPU. Where it has none, or a compile fails, the engine
runs eager and says why once (a warning on the ``megasr.model.engines.backends`` logger):
the result is the same image, only slower.

Freezing (``torch._inductor.config.freezing``) is left off: with it, inductor 2.13's
in-place fusion of a convolution with the residual add gave wrong outputs for RRDBNet with
two or more blocks (max abs error 0.8 against eager), and it measured no faster here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "inductor")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"

Forward = Callable[[torch.Tensor], torch.Tensor]


def inductor_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device`` here, or None when it can (on the CPU: a
    working C++ compiler, found the way inductor itself looks for one)."""
    if device.type != "cpu":
        return None  # CUDA needs Triton; a failure shows on the first call and falls back
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, OSError, RuntimeError) as error:
        return f"no working C++ compiler for torch.compile's inductor ({error})"
    return None


def resolve_backend(name: str, device: torch.device, serving: bool = False) -> str:
    """``eager`` or ``inductor`` for the setting ``name`` on ``device``.

    ``auto`` is inductor only for an engine that ``serving`` many images (the worker, which
    warms its engines up before it takes jobs) on a CPU that can compile: there the compile
    is paid once, at start-up, and every tile after it runs faster. A one-off command (an
    upscale, an evaluation) stays eager, since on 2 cores the compile (one to two minutes)
    costs more than it saves on a few images; ``inductor`` asks for it anyway. CUDA is eager
    (measured in eager only, by ``bench/gpu.py``). ``inductor`` asked for where it cannot
    compile falls back to eager with a warning that says why.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "eager" or (name == "auto" and (device.type != "cpu" or not serving)):
        return "eager"
    reason = inductor_unavailable(device)
    if reason is None:
        return "inductor"
    if name == "inductor":
        logger.warning("backend inductor unavailable, running eager: %s", reason)
    else:
        logger.info("backend auto runs eager: %s", reason)
    return "eager"


def use_compile_cache(cache_dir: Path) -> None:
    """Keep inductor's compiled artefacts under ``cache_dir`` (an explicit env var wins)."""
    os.environ.setdefault(CACHE_ENV, str(cache_dir / "inductor"))


def compile_forward(forward: Forward) -> Forward:
    """``forward`` compiled by inductor once for every input size (dynamic shapes).

    Tiles change size with the image (a small image runs as one tile of its own size), and
    a static compile would compile each new size again, in the middle of a job: 51 s for the
    full network's second size on 2 cores. The one dynamic compile took 107 s against 58 s
    for a static one, and its code ran 3 to 6 % slower than the static code (and 1.14 to
    1.30x faster than eager) on 212 and 276-pixel inputs (docs/benchmarks.md)."""
    return torch.compile(forward, backend="inductor", dynamic=True)


class FallbackForward:
    """The compiled forward until it fails to compile, then the eager one, for good.

    A compile can fail where the availability check could not tell (a compiler that cannot
    build oneDNN's headers, a full disk for the cache); the caller still gets its image.
    """

    def __init__(self, compiled: Forward, eager: Forward) -> None:
        self._compiled: Forward | None = compiled
        self._eager = eager

    @property
    def compiled(self) -> bool:
        """Whether calls still go to the compiled forward."""
        return self._compiled is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self._eager(x)
        try:
            return self._compiled(x)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            first_line = str(error).strip().splitlines()[0]
            logger.warning("inductor failed to compile, running eager from now on: %s", first_line)
            self._compiled = None
            return self._eager(x)
