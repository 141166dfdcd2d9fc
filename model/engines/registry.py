"""Engine names, ``auto`` resolution and construction.

Engine modules are imported only when their engine is built, so listing engines or
resolving ``auto`` costs no model code.
"""

from __future__ import annotations

from megasr.errors import EngineError, InvalidParameterError
from megasr.model.engines.base import Engine
from megasr.settings import Settings

DEFAULT_ENGINE = "realesrgan-x4plus"
ENGINE_NAMES = ("realesrgan-x4plus", "megasr")


def resolve_engine_name(name: str, settings: Settings) -> str:
    """``auto`` is ``megasr`` when a MegaSR checkpoint is configured, else the offline default."""
    if name == "auto":
        return "megasr" if settings.megasr_model is not None else DEFAULT_ENGINE
    if name not in ENGINE_NAMES:
        choices = ", ".join(("auto", *ENGINE_NAMES))
        raise InvalidParameterError(f"unknown engine {name!r}; choose one of {choices}")
    return name


def create_engine(name: str, settings: Settings) -> Engine:
    """Build (not load) the engine ``name`` (``auto`` resolved first)."""
    name = resolve_engine_name(name, settings)
    if name == "megasr":
        if settings.megasr_model is None:
            raise EngineError(
                "the megasr engine needs a checkpoint (--model or MEGASR_MEGASR_MODEL)"
            )
        from megasr.model.engines.megasr_engine import MegaSREngine

        return MegaSREngine(settings.megasr_model, settings)
    from megasr.model.engines.realesrgan import RealESRGANEngine

    return RealESRGANEngine(settings)


def load_engine(name: str, settings: Settings, warmup: bool = False) -> Engine:
    """Build ``name`` and load it on the configured device and dtype (``auto`` = fast path)."""
    from megasr.model.device import engine_placement

    engine = create_engine(name, settings)
    device, dtype = engine_placement(settings)
    engine.load(device, dtype)
    if warmup:
        engine.warmup()
    return engine
