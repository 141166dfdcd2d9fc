"""Typed configuration records read from TOML or YAML files, with one-line errors.

Training runs are described by files (a recipe is worth keeping next to its results), and
the degradation model has dozens of numbers. Both are pydantic models derived from
:class:`ConfigRecord`: frozen, unknown keys refused (a misspelt key would otherwise be a
silently ignored setting), values checked on load. :func:`read_config_file` turns a file
into such a record and every problem into an :class:`InvalidParameterError` of one line
that names the file and the dotted key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from megasr.errors import InvalidParameterError

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")

RecordT = TypeVar("RecordT", bound="ConfigRecord")


class ConfigRecord(BaseModel):
    """A frozen, strict record: unknown keys are errors, numbers are not silently strings."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def read_config_file(path: Path, record: type[RecordT]) -> RecordT:
    """``record`` from a ``.toml``, ``.yaml`` or ``.yml`` file."""
    return parse_config(load_mapping(path), record, str(path))


def load_mapping(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML or YAML file."""
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise InvalidParameterError(
            f"{path}: a config file must end in {', '.join(CONFIG_SUFFIXES)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InvalidParameterError(f"{path}: cannot read the config: {error.strerror}") from error
    data = _parse_toml(text, path) if path.suffix.lower() == ".toml" else _parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{path}: the config must be a table of settings")
    return data


def parse_config(data: dict[str, Any], record: type[RecordT], source: str) -> RecordT:
    """Validate parsed data; the first problem becomes the error, with its dotted key."""
    try:
        return record.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        more = error.error_count() - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise InvalidParameterError(f"{source}: {where}: {message}{suffix}") from error


def _parse_toml(text: str, path: Path) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidParameterError(f"{path}: not valid TOML: {error}") from error


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError as error:
        raise InvalidParameterError(
            f"{path}: YAML configs need PyYAML: pip install 'megasr[train]' (or use TOML)"
        ) from error
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise InvalidParameterError(f"{path}: not valid YAML: {reason}") from error
