"""Engine construction: names (from :mod:`megasr.engine_catalog`), ``auto`` and families.

Engine modules are imported only when their engine is built, so listing engines or
resolving ``auto`` costs no model code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from megasr.engine_catalog import (
    AUTO,
    CATALOG,
    DEFAULT_ENGINE,
    MEGASR_ENGINE,
    engine_names,
    variant_for,
    variants,
)
from megasr.errors import EngineError, InvalidParameterError
from megasr.model.engines.base import Engine
from megasr.settings import Settings

ENGINE_NAMES = tuple(engine_names())


def resolve_engine_name(name: str, settings: Settings) -> str:
    """``auto`` is ``megasr`` when a MegaSR checkpoint is configured, else the offline default."""
    if name == AUTO:
        return MEGASR_ENGINE if settings.megasr_model is not None else DEFAULT_ENGINE
    if name not in ENGINE_NAMES:
        choices = ", ".join((AUTO, *CATALOG))
        raise InvalidParameterError(f"unknown engine {name!r}; choose one of {choices}")
    return name


def worker_engine_specs(specs: Iterable[str], settings: Settings) -> list[str]:
    """What a worker told to serve ``specs`` loads: each family's variants in its place,
    ``auto`` resolved, ``module:Class`` paths kept; no engine twice."""
    expanded: list[str] = []
    for spec in specs:
        names = [spec] if ":" in spec else variants(resolve_engine_name(spec, settings))
        expanded += [name for name in names if name not in expanded]
    return expanded


def create_engine(name: str, settings: Settings, factor: float = math.inf) -> Engine:
    """Build (not load) the engine ``name`` (``auto`` resolved first); a family builds the
    variant that runs ``factor`` (by default its largest native scale)."""
    name = variant_for(resolve_engine_name(name, settings), factor)
    if name == MEGASR_ENGINE:
        if settings.megasr_model is None:
            raise EngineError(
                "the megasr engine needs a checkpoint (--model or MEGASR_MEGASR_MODEL)"
            )
        from megasr.model.engines.megasr_engine import MegaSREngine

        return MegaSREngine(settings.megasr_model, settings)
    from megasr.model.engines.realesrgan import RealESRGANEngine

    return RealESRGANEngine(settings, model=name)


def load_engine(
    name: str, settings: Settings, warmup: bool = False, factor: float = math.inf
) -> Engine:
    """Build ``name`` (for ``factor``) and load it on the configured device and dtype."""
    from megasr.model.device import engine_placement

    engine = create_engine(name, settings, factor)
    device, dtype = engine_placement(settings)
    engine.load(device, dtype)
    if warmup:
        engine.warmup()
    return engine
