"""Storage in an S3-compatible bucket (AWS, SeaweedFS, MinIO, Ceph, GCS interop) via boto3.

Two clients: one talks to ``endpoint_url`` (what the service reaches, often an in-cluster
name), the other only signs URLs for ``public_endpoint_url`` (what browsers reach). A SigV4
signature covers the host, so a URL signed for the internal name and rewritten afterwards
would be refused; signing with the public endpoint from the start is the only way.

Every key is stored under ``prefix`` (``s3_key_prefix``, empty by default), so the service
can share a bucket: the retention sweep lists only ``{prefix}inputs/`` and
``{prefix}outputs/`` and deletes only keys of the project's own form in them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from megasr.errors import InvalidParameterError, NotFoundError, ServiceUnavailableError
from megasr.settings import Settings
from megasr.storage.base import CHUNK_SIZE, KEY_FOLDERS, check_key, is_project_key

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    """Objects in ``bucket``; results handed out as presigned GET URLs."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
    ) -> None:
        self.bucket = bucket
        self.prefix = _checked_prefix(prefix)
        self.client = _client(endpoint_url, region, access_key_id, secret_access_key)
        self.signer = _client(
            public_endpoint_url or endpoint_url, region, access_key_id, secret_access_key
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        secret = settings.s3_secret_access_key
        return cls(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            prefix=settings.s3_key_prefix,
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with _translated(key):
            self.client.put_object(
                Bucket=self.bucket, Key=self._name(key), Body=data, ContentType=content_type
            )

    def get(self, key: str) -> bytes:
        with _translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
            return response["Body"].read()

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with _translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        return response["Body"].iter_chunks(chunk_size)

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def url(self, key: str, expires_s: int) -> str:
        return self.signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=expires_s,
        )

    def ping(self) -> None:
        try:
            self._head_bucket()
        except NotFoundError as exc:
            raise ServiceUnavailableError(f"bucket {self.bucket} does not exist") from exc

    def _head_bucket(self) -> None:
        with _translated(self.bucket):
            self.client.head_bucket(Bucket=self.bucket)

    def sweep(self, older_than_s: float) -> int:
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, tz=UTC)
        removed = 0
        paginator = self.client.get_paginator("list_objects_v2")
        with _translated(self.bucket):
            for folder in KEY_FOLDERS:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + folder):
                    old = [
                        {"Key": item["Key"]}
                        for item in page.get("Contents", [])
                        if item["LastModified"] < cutoff
                        and is_project_key(item["Key"].removeprefix(self.prefix))
                    ]
                    if old:
                        self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": old})
                        removed += len(old)
        return removed

    def _name(self, key: str) -> str:
        """The object name of ``key`` in the bucket."""
        return self.prefix + check_key(key)


def _checked_prefix(prefix: str) -> str:
    """``prefix`` with one trailing slash (or empty); refused when it could confuse a store."""
    if not prefix:
        return ""
    cleaned = prefix.strip("/") + "/"
    check_key(cleaned.rstrip("/"))  # the same characters as a key, no "..", no "//"
    if cleaned.startswith(KEY_FOLDERS):
        raise InvalidParameterError(f"s3_key_prefix {prefix!r} must not start with {KEY_FOLDERS}")
    return cleaned


def _client(
    endpoint_url: str | None, region: str, access_key_id: str | None, secret: str | None
) -> BaseClient:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=config,
    )


@contextmanager
def _translated(key: str) -> Iterator[None]:
    """Turn boto3's errors into the storage interface's: missing -> 404, else -> 503."""
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            raise NotFoundError(f"no stored object {key}") from exc
        raise ServiceUnavailableError(f"object storage refused {key}: {code}") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailableError(f"object storage unreachable: {exc}") from exc
