"""Pick the storage back end the settings name."""

from __future__ import annotations

from megasr.settings import Settings
from megasr.storage.base import Storage
from megasr.storage.local import LocalStorage
from megasr.storage.s3 import S3Storage


def create_storage(settings: Settings) -> Storage:
    """Local files under ``data_dir/objects`` by default, S3 when ``storage_backend`` is s3."""
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings)
    return LocalStorage(settings.data_dir / "objects")
