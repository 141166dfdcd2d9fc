"""The engines one worker serves: built once, loaded on its device, warmed up, kept resident.

``settings.worker_engines`` lists what to load at start. Each entry is an engine name of the
registry (``auto`` resolves as everywhere else) or ``module:Class``, the import path of an
:class:`~megasr.model.engines.base.Engine` subclass built as ``Class(settings)``; that is how
a deployment adds an engine of its own, and how the tests run tiny networks. A job names its
engine; ``auto`` means what the registry's ``auto`` means when this worker serves it, else
the first engine in the list.

An engine on a reduced-precision fast path may produce NaN or Inf on some inputs (fp16
overflow). Engines that rerun such a batch in float32 themselves count it in a ``nan_retries``
attribute (``RealESRGANEngine`` does); for one that returns the NaN, :meth:`EngineSlot.float32`
builds a float32 twin of the same engine the first time it happens, and keeps it.

An engine is ready, and announced, as soon as it can run eagerly; one that compiles a faster
backend does so in the background and swaps it in between engine calls (``RealESRGANEngine``
on a CPU), so no job waits for a compile. The log says when each engine loads, is ready (and
on which backend), and when a background compile is swapped in, with times.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from megasr.engine_status import EngineState
from megasr.errors import EngineError
from megasr.model.device import engine_placement
from megasr.model.engines.base import Engine, TileSpec
from megasr.model.engines.registry import (
    create_engine,
    resolve_engine_name,
    worker_engine_specs,
)
from megasr.settings import Settings

logger = logging.getLogger("megasr.worker.engines")


def build_engine(spec: str, settings: Settings) -> Engine:
    """An unloaded engine from a registry name or a ``module:Class`` path."""
    if ":" not in spec:
        return create_engine(spec, settings)
    module_name, _, class_name = spec.partition(":")
    try:
        engine_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"cannot import engine {spec!r}: {exc}") from exc
    if not (isinstance(engine_class, type) and issubclass(engine_class, Engine)):
        raise EngineError(f"{spec!r} is not an Engine subclass")
    return engine_class(settings)


def _backend_note(engine: Engine) -> str:
    """How a ready engine runs, for the log: its backend, and whether a faster one is still
    compiling in the background (it swaps itself in between engine calls when ready)."""
    backend = getattr(engine, "backend", None)
    if backend is None:
        return ""
    if getattr(engine, "background", None) is not None:
        return f" ({backend}; taking jobs while inductor compiles in the background)"
    return f" ({backend})"


def free_device_cache(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a smaller batch can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class EngineSlot:
    """One resident engine and how to rebuild it in float32."""

    name: str
    spec: str
    engine: Engine
    device: torch.device
    dtype: torch.dtype | None
    settings: Settings
    _float32: Engine | None = field(default=None, repr=False)

    @property
    def tile_spec(self) -> TileSpec:
        return self.engine.tile_spec

    @property
    def dtype_name(self) -> str:
        return "auto" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def can_retry_in_float32(self) -> bool:
        return self.dtype != torch.float32

    def float32(self) -> Engine:
        """The float32 twin, loaded on first use."""
        if self._float32 is None:
            logger.warning("engine %s: loading a float32 copy for NaN/Inf retries", self.name)
            twin = build_engine(self.spec, self.settings)
            twin.load(self.device, torch.float32)
            self._float32 = twin
        return self._float32


class EnginePool:
    """The worker's engines by name, loaded and warmed up by :meth:`load`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # dtype None lets each engine take its fast path; a named one is forced on every engine.
        self.device, self.dtype = engine_placement(settings)
        self.slots: dict[str, EngineSlot] = {}
        self.states: dict[str, EngineState] = {}
        self.details: dict[str, str] = {}
        self.ready = False

    @property
    def default(self) -> str | None:
        """The engine ``auto`` runs on this worker."""
        if not self.slots:
            return None
        preferred = resolve_engine_name("auto", self.settings)
        return preferred if preferred in self.slots else next(iter(self.slots))

    def load(self, on_change: Callable[[], None] | None = None) -> EnginePool:
        """Build, load and warm up every engine in ``settings.worker_engines``.

        ``states`` follows each engine through loading to ready (or failed, with a reason in
        ``details``); ``on_change`` is called after each step, so the worker can announce it.
        """
        notify = on_change or (lambda: None)
        for spec in worker_engine_specs(self.settings.worker_engines, self.settings):
            engine = build_engine(spec, self.settings)
            self.states[engine.name] = EngineState.LOADING
            notify()
            logger.info(
                "loading engine %s on %s (%d CPU threads)",
                engine.name,
                self.device,
                torch.get_num_threads(),
            )
            started = time.monotonic()
            try:
                engine.load(self.device, self.dtype)
                engine.warmup()
            except Exception as exc:
                self.states[engine.name] = EngineState.FAILED
                self.details[engine.name] = str(exc)
                notify()
                raise EngineError(f"engine {engine.name} failed to load: {exc}") from exc
            self.slots[engine.name] = EngineSlot(
                engine.name, spec, engine, self.device, self.dtype, self.settings
            )
            self.states[engine.name] = EngineState.READY
            logger.info(
                "engine %s ready in %.1f s%s",
                engine.name,
                time.monotonic() - started,
                _backend_note(engine),
            )
        if not self.slots:
            raise EngineError("no engines configured: set MEGASR_WORKER_ENGINES")
        self.ready = True
        notify()
        return self

    def get(self, name: str) -> EngineSlot:
        """The slot a job's ``engine`` parameter asks for."""
        if name == "auto":
            name = self.default or name
        slot = self.slots.get(name)
        if slot is None:
            served = ", ".join(self.slots) or "none"
            raise EngineError(f"engine {name!r} is not served by this worker (it serves {served})")
        return slot
