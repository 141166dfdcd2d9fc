"""MegaSR's frozen extractors as a component of a diffusers pipeline.

``DiffusionPipeline`` loads and saves a component through the ``from_pretrained`` and
``save_pretrained`` of a diffusers (or transformers) base class. The extractors are several
models of their own (HED, depth, segmentation, CLIP and the tag vocabulary, each in its own
format, :meth:`~megasr.model.extractors.Extractors.save_pretrained`), so this class is a
``ModelMixin`` by type, with loading and saving of its own: the folder holds those files and
``extractors.json``, the :class:`~megasr.model.extractors.ExtractorConfig` that names them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import ModelMixin

from megasr.errors import EngineError
from megasr.model.extractors import ExtractorConfig, Extractors, build_extractors

CONFIG_FILE = "extractors.json"


class MegaSRExtractors(Extractors, ModelMixin):
    """:class:`~megasr.model.extractors.Extractors`, loadable as a pipeline component."""

    @classmethod
    def of(cls, extractors: Extractors) -> MegaSRExtractors:
        """The same models as a pipeline component."""
        parts = (extractors.hed, extractors.depth, extractors.segmentation, extractors.clip)
        return cls(*parts, extractors.tagger)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **_: Any,
    ) -> MegaSRExtractors:
        """Load a folder written by :meth:`save_pretrained` (local files only, on the CPU);
        the other keyword arguments of diffusers' loaders do not apply and are ignored."""
        directory = Path(pretrained_model_name_or_path, subfolder or "")
        path = directory / CONFIG_FILE
        if not path.is_file():
            raise EngineError(f"{directory} holds no MegaSR extractors ({CONFIG_FILE} is missing)")
        config = ExtractorConfig.from_dict(json.loads(path.read_text()))
        dtype = torch_dtype or torch.float32
        return cls.of(build_extractors(config, "cpu", dtype, root=directory))

    def save_pretrained(self, save_directory: str | os.PathLike, **_: Any) -> None:
        directory = Path(save_directory)
        config = Extractors.save_pretrained(self, directory)
        (directory / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
