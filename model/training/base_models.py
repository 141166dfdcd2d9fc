"""The base models a training recipe starts from, named by hub id and revision, fetched into
local folders for ``megasr model init``.

``megasr model init`` loads local folders or hub ids (the branch the hub calls ``main``); a
recipe that is to mean one thing names a commit. This module downloads each named model at
its revision with ``huggingface_hub`` into ``OUT/<role>`` and hands back the folders, so the
checkpoint is built from exactly the weights the config names, and offline thereafter.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from pydantic import Field

from megasr.errors import InvalidParameterError
from megasr.model.config_files import ConfigRecord

ROLES = ("sd", "clip", "depth", "seg")


class HubModel(ConfigRecord):
    id: str = Field(min_length=1)
    """The hub repository, ``owner/name``."""
    revision: str = "main"
    """A commit hash (what makes the recipe reproducible), a tag or a branch."""

    def __str__(self) -> str:
        return f"{self.id}@{self.revision}"


class BaseModelsSection(ConfigRecord):
    """Which SD-2-base, CLIP, depth and segmentation models ``model init`` starts from."""

    sd: HubModel
    clip: HubModel
    depth: HubModel
    seg: HubModel


def fetch_base_models(base: BaseModelsSection, out: Path) -> dict[str, Path]:
    """Download every base model at its revision into ``out/<role>``; their folders.

    A failure is one line naming the model; the hub client's own retry warnings are kept
    quiet so that it stays one line.
    """
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        return _fetch(base, out)
    finally:
        hub_logger.setLevel(level)


def _fetch(base: BaseModelsSection, out: Path) -> dict[str, Path]:
    folders = {}
    for role in ROLES:
        model: HubModel = getattr(base, role)
        folder = out / role
        try:
            snapshot_download(model.id, revision=model.revision, local_dir=folder)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise InvalidParameterError(
                f"cannot fetch base_models.{role} ({model}): {reason or type(error).__name__}"
            ) from error
        folders[role] = folder
    return folders
