"""How an engine runs its network: eager PyTorch, or compiled ahead of time by inductor.

Eager runs each layer as its own library call: on the CPU a oneDNN convolution, then the
concatenation, the leaky ReLU, the scaled residual add each as a separate pass over memory.
For Real-ESRGAN x4plus (a 128-pixel tile, bfloat16 on a CPU with AMX) those passes took
about 40 % of the time next to the convolutions (docs/benchmarks.md). Inductor compiles the
same network into oneDNN convolutions with the pointwise work fused into generated C++
loops, which removes most of those passes; the numerics are the eager path's up to the
order of rounding.

The compile is AOTInductor's (``torch.export`` of the network in its dtype, with the tile's
height and width dynamic, then ``aoti_compile_and_package``): one ``.pt2`` package on disk
per network, dtype, thread count and CPU (:func:`package_path`), which any later process
loads in a fraction of a second, without tracing the network again. That is what lets a
one-off command (``megasr upscale``) use a compile that a worker or ``megasr bench
--calibrate`` made before. The compile itself (one to several minutes for the full network
on 2 cores) runs in a child process at a low priority (:class:`PackageBuild`): a worker
serves eagerly from the start and swaps the package in between engine calls once it exists,
so no job waits for it, and a compile that crashes or hangs cannot take the worker with it.

Inductor needs a C++ compiler to build a package, and none to load one. Where a build is
impossible or fails, the engine runs eager and says why once (a warning on the
``megasr.model.engines.backends`` logger): the result is the same image, only slower.

Freezing (``torch._inductor.config.freezing``) is left off: with it, inductor 2.13's
in-place fusion of a convolution with the residual add gave wrong outputs for RRDBNet with
two or more blocks (max abs error 0.8 against eager), and it measured no faster here.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from megasr.model.cpu_isa import isa_key
from megasr.model.weights.cache import tensors_sha256

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "inductor")
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
# The tile sides a package takes (padding included); outside them the engine runs eager.
MIN_SIDE, MAX_SIDE = 8, 8192
# A non-square sample, so that the export keeps height and width as two sizes (a square
# one would tie them together and a non-square tile could not use the package).
_SAMPLE_SHAPE = (1, 3, 52, 44)
# The priority of the compile's process (and of the C++ compiler it runs): below serving.
BUILD_NICENESS = 10

Forward = Callable[[torch.Tensor], torch.Tensor]
BuildTarget = Callable[[nn.Module, torch.dtype, Path, int], None]


def inductor_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot build a package for ``device`` here, or None when it can (on the
    CPU: a working C++ compiler, found the way inductor itself looks for one)."""
    if device.type != "cpu":
        return "compiled packages are built for the CPU only; CUDA runs eager"
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, OSError, RuntimeError) as error:
        return f"no working C++ compiler for torch.compile's inductor ({error})"
    return None


def resolve_backend(
    name: str, device: torch.device, compiled: bool = False, measured: str | None = None
) -> str:
    """``eager`` or ``inductor``: how an engine with the setting ``name`` runs now.

    ``inductor`` asks for the compiled network (built first if ``compiled``, a package on
    disk, is False). ``auto`` runs it only where one is already ``compiled`` and this
    machine's calibration (``measured``: the faster backend it found, None when never
    calibrated) did not find eager faster: it never makes a command wait for a compile.
    The worker compiles in the background instead (:func:`compiles_in_background`). CUDA is
    eager (measured in eager only, by ``bench/gpu.py``); ``inductor`` asked for where it
    cannot run falls back to eager with a warning that says why.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "eager":
        return "eager"
    if name == "auto":
        prefers = measured != "eager"
        return "inductor" if device.type == "cpu" and compiled and prefers else "eager"
    reason = None if compiled else inductor_unavailable(device)
    if reason is None:
        return "inductor"
    logger.warning("backend inductor unavailable, running eager: %s", reason)
    return "eager"


def compiles_in_background(name: str, device: torch.device, measured: str | None = None) -> bool:
    """Whether an engine that serves many images (a worker's, once warm) and runs eager
    now should build its package in the background: ``auto`` and ``inductor`` on a CPU that
    can compile, unless the calibration found eager faster for ``auto``."""
    if name == "eager" or (name == "auto" and measured == "eager"):
        return False
    reason = inductor_unavailable(device)
    if reason is not None and name == "auto":
        logger.info("backend auto runs eager: %s", reason)
    return reason is None


def use_compile_cache(cache_dir: Path) -> None:
    """Keep inductor's intermediate artefacts under ``cache_dir`` (an explicit env var
    wins); the packages themselves live in :func:`package_path`."""
    os.environ.setdefault(CACHE_ENV, str(cache_dir / "inductor"))


def package_path(cache_dir: Path, network: nn.Module, dtype: torch.dtype) -> Path:
    """Where the package of ``network`` (these weights) in ``dtype`` lives for this CPU, its
    ISA caps, torch and the current thread count (inductor fixes the count of its parallel
    loops at compile time)."""
    weights = tensors_sha256(network.state_dict())
    key = f"{weights}|{dtype}|{isa_key()}|{torch.get_num_threads()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    name = type(network).__name__.lower()
    return cache_dir / "compiled" / f"{name}-{str(dtype).removeprefix('torch.')}-{digest}.pt2"


class _InDtype(nn.Module):
    """The network on float32 input and output, computing in its own dtype."""

    def __init__(self, network: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(self.dtype)).float()


def build_package(network: nn.Module, dtype: torch.dtype, path: Path, threads: int) -> None:
    """Export ``network`` in ``dtype`` (weights cast once, not on every call as autocast
    does) for channels-last tiles of any size, and compile it into the package at ``path``
    (written to a temporary name and renamed, so a reader never sees half a package)."""
    import torch._inductor.config as inductor_config

    torch.set_num_threads(threads)
    inductor_config.compile_threads = 1  # one C++ compile at a time: the CPU is serving
    module = _InDtype(copy.deepcopy(network).to(dtype), dtype).eval().requires_grad_(False)
    sample = torch.rand(_SAMPLE_SHAPE).contiguous(memory_format=torch.channels_last)
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    sizes = {"x": {2: height, 3: width}}
    with torch.inference_mode():
        program = torch.export.export(module, (sample,), dynamic_shapes=sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.pt2")
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def load_package(path: Path) -> Forward:
    """The compiled network of the package at ``path``, for channels-last float32 tiles."""
    runner = torch._inductor.aoti_load_package(str(path))

    def forward(x: torch.Tensor) -> torch.Tensor:
        return runner(x.contiguous(memory_format=torch.channels_last))

    return forward


def fits_package(x: torch.Tensor) -> bool:
    """Whether a batch of tiles has the shape a package takes (one tile, sides in range)."""
    return len(x) == 1 and all(MIN_SIDE <= side <= MAX_SIDE for side in x.shape[-2:])


class PackageBuild:
    """A package built in a child process, at a low priority, polled and never waited on
    by a caller that serves (:meth:`ready`), or joined by one that asked for the compile
    (:meth:`wait`). ``target`` is :func:`build_package` or a test's stand-in for it."""

    def __init__(
        self,
        path: Path,
        network: nn.Module,
        dtype: torch.dtype,
        target: BuildTarget = build_package,
    ) -> None:
        self.path = path
        self.error: str | None = None
        self.seconds: float | None = None
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked locks
        self._process = context.Process(
            target=_build_quietly,
            args=(target, network, dtype, path, torch.get_num_threads()),
            name=f"megasr-compile-{path.stem}",
            daemon=True,
        )
        self._started = time.monotonic()
        self._process.start()

    def ready(self) -> bool:
        """True once the package exists (it appears whole, by a rename); never blocks. A
        build that ended without one sets :attr:`error`."""
        if self.seconds is not None:
            return True
        if self.error is not None:
            return False
        if self.path.is_file():
            self.seconds = time.monotonic() - self._started
            return True
        if self._process.exitcode is not None:
            self.error = f"the compile exited with status {self._process.exitcode}"
        return False

    @property
    def done(self) -> bool:
        """Whether the build has finished, either way."""
        self.ready()
        return self.seconds is not None or self.error is not None

    def wait(self) -> bool:
        """Block until the build ends; True when the package exists."""
        self._process.join()
        return self.ready()

    def stop(self) -> None:
        """End a build still running (a worker that shuts down does not wait for it)."""
        if self._process.exitcode is None:
            self._process.terminate()
            self._process.join()


def _build_quietly(
    target: BuildTarget, network: nn.Module, dtype: torch.dtype, path: Path, threads: int
) -> None:
    """The child's body: lower its priority, build, and report a failure in one line."""
    os.nice(BUILD_NICENESS)
    try:
        target(network, dtype, path, threads)
    except Exception as error:  # reported to the parent by the exit status
        last = traceback.format_exception_only(error)[-1].strip()
        print(f"megasr: compiling {path.name} failed: {last}", flush=True)
        raise SystemExit(1) from None
