"""The engines this project ships: their names, what each is for, and which variant of a
family runs a request.

The gateway lists engines and routes jobs without loading any model, the CLI and the client
name them, and the model registry builds them; all of them read the names here. A *family*
is one engine to the user that has a model per native scale (``realesr-animevideov3`` has
x2, x3 and x4 graphs); a request names the family, and :func:`variant_for` picks the
variant by the factor asked for, never a model of another family (``auto`` stays the photo
model at every scale). Workers load every variant of a family they are told to serve, and
announce the variants; :func:`public_name` folds them back into the family for listings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

AUTO = "auto"
DEFAULT_ENGINE = "realesrgan-x4plus"
MEGASR_ENGINE = "megasr"


@dataclass(frozen=True)
class CatalogEntry:
    """One engine as users see it; ``variants`` maps native scales to the engines that run
    them, for a family (empty: the entry is an engine itself)."""

    name: str
    description: str
    variants: dict[int, str] = field(default_factory=dict)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            DEFAULT_ENGINE,
            "Real-ESRGAN x4plus: photos and other real-world pictures, x4 (the default)",
        ),
        CatalogEntry(
            "realesrgan-x4plus-anime",
            "Real-ESRGAN x4plus anime: anime and illustrations, x4, a quarter of x4plus's size",
        ),
        CatalogEntry(
            "realesr-animevideov3",
            "Real-ESRGAN anime video v3: fast, for anime frames and cartoons, x2, x3 or x4",
            {scale: f"realesr-animevideov3-x{scale}" for scale in (2, 3, 4)},
        ),
        CatalogEntry(
            "realsr-df2k",
            "RealSR DF2K: photos, trained on estimated camera blur and noise, x4",
        ),
        CatalogEntry(
            MEGASR_ENGINE,
            "MegaSR: a diffusion model guided by the picture's content (needs a checkpoint)",
        ),
    )
}

_FAMILY_OF = {
    variant: entry.name for entry in CATALOG.values() for variant in entry.variants.values()
}


def engine_names() -> list[str]:
    """Every name a request may give besides ``auto``: entries and their variants."""
    return [*CATALOG, *_FAMILY_OF]


def public_name(engine: str) -> str:
    """The family a variant belongs to; any other name as it is."""
    return _FAMILY_OF.get(engine, engine)


def describe(engine: str) -> str | None:
    """The one-line description of ``engine`` (or of its family); None for an engine of a
    deployment's own."""
    entry = CATALOG.get(public_name(engine))
    return None if entry is None else entry.description


def variants(engine: str) -> list[str]:
    """The engines that serve ``engine``: a family's variants, else the name itself."""
    entry = CATALOG.get(engine)
    return list(entry.variants.values()) if entry and entry.variants else [engine]


def variant_for(engine: str, factor: float, available: Iterable[str] | None = None) -> str:
    """The engine that runs a request of ``engine`` at ``factor`` (output over input side).

    A family runs at the smallest native scale that reaches ``factor`` (so x2 at x1.5 or x2,
    x3 at x2.5), else at its largest; ``available`` limits the choice to the variants some
    worker serves (where it leaves none, all count). Any other name runs as it is.
    """
    entry = CATALOG.get(engine)
    if entry is None or not entry.variants:
        return engine
    allowed = set(available or ())
    scales = sorted(s for s, name in entry.variants.items() if name in allowed)
    scales = scales or sorted(entry.variants)
    scale = next((s for s in scales if s >= factor - 1e-9), scales[-1])
    return entry.variants[scale]
