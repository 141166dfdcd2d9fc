"""One typed settings object for every part of the project.

Values come from, in order of precedence: keyword arguments, ``MEGASR_*`` environment
variables, then an optional TOML file named by ``MEGASR_SETTINGS_FILE``. With nothing set the
project runs locally: caches and data under the user's directories, the default engine, the
best device present.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "float32", "bfloat16", "float16"]


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("megasr"))


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("megasr"))


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(env_prefix="MEGASR_", extra="ignore")

    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted weights.")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Local storage.")

    # Image limits, checked before a full decode.
    max_upload_bytes: int = Field(50 * 1024 * 1024, gt=0)
    max_input_pixels: int = Field(40_000_000, gt=0)
    max_output_pixels: int = Field(400_000_000, gt=0)

    # Engines.
    engine: str = "auto"
    megasr_model: Path | None = Field(None, description="A MegaSR checkpoint directory.")
    device: Device = "auto"
    dtype: Precision = "auto"
    tile: int = Field(0, ge=0, description="Engine input tile side in pixels; 0 = engine default.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file = os.environ.get("MEGASR_SETTINGS_FILE")
        if settings_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(settings_file)))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
