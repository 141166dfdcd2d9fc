"""Object storage for inputs and results: one interface, a local directory or S3."""

from megasr.storage.base import Storage, content_type_for, input_key, output_key
from megasr.storage.factory import create_storage
from megasr.storage.local import LocalStorage
from megasr.storage.s3 import S3Storage

__all__ = [
    "LocalStorage",
    "S3Storage",
    "Storage",
    "content_type_for",
    "create_storage",
    "input_key",
    "output_key",
]
