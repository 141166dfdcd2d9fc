"""Both storage back ends through the one interface: a local directory and a real S3 API
(moto's server on loopback)."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from service_support import create_bucket

from megasr.errors import InvalidParameterError, NotFoundError, ServiceUnavailableError
from megasr.settings import Settings
from megasr.storage import LocalStorage, S3Storage, create_storage, input_key, output_key

PUBLIC_ENDPOINT = "https://images.example.test:9443"
SECRET = "test-secret"


@pytest.fixture
def local(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects")


@pytest.fixture
def s3(s3_endpoint) -> S3Storage:
    storage = S3Storage(
        bucket=f"b-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_endpoint,
        access_key_id="test",
        secret_access_key=SECRET,
    )
    create_bucket(storage)
    return storage


@pytest.fixture(params=["local", "s3"])
def storage(request):
    return request.getfixturevalue(request.param)


def test_keys_follow_the_contract():
    assert input_key("abc", "jpeg") == "inputs/abc/input.jpg"
    assert output_key("abc", "webp") == "outputs/abc/output.webp"


def test_put_get_stream_exists_delete(storage, photo):
    key = output_key("job1", "png")
    assert not storage.exists(key)

    storage.put(key, photo, "image/png")

    assert storage.exists(key)
    assert storage.get(key) == photo
    assert b"".join(storage.stream(key, chunk_size=1000)) == photo
    storage.put(key, b"replaced", "image/png")
    assert storage.get(key) == b"replaced"
    storage.delete(key)
    assert not storage.exists(key)
    storage.delete(key)  # deleting twice is fine
    with pytest.raises(NotFoundError):
        storage.get(key)
    storage.ping()


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "inputs/../../x", "a//b", ""])
def test_keys_that_could_escape_are_refused(local, key):
    with pytest.raises(InvalidParameterError):
        local.put(key, b"x", "image/png")


def test_local_writes_leave_no_temporary_files(local, photo):
    local.put("inputs/j/input.png", photo, "image/png")
    assert sorted(p.name for p in (local.root / "inputs/j").iterdir()) == ["input.png"]
    assert local.url("inputs/j/input.png", 60) is None  # served by the gateway


def test_sweep_removes_only_old_objects(storage):
    storage.put("outputs/old/output.png", b"old", "image/png")
    if isinstance(storage, LocalStorage):
        past = time.time() - 7200
        os.utime(storage.path("outputs/old/output.png"), (past, past))
        storage.put("outputs/new/output.png", b"new", "image/png")
        assert storage.sweep(older_than_s=3600) == 1
        assert storage.exists("outputs/new/output.png")
    else:  # moto stamps objects with the real time: everything is older than "-1 s ago"
        assert storage.sweep(older_than_s=-1) == 1
    assert not storage.exists("outputs/old/output.png")


def test_the_sweep_of_a_shared_bucket_touches_only_the_projects_objects(s3_endpoint, photo):
    """Another application's objects share the bucket, some named like ours: none goes."""
    storage = S3Storage(
        bucket=f"shared-{uuid.uuid4().hex[:12]}",
        endpoint_url=s3_endpoint,
        access_key_id="test",
        secret_access_key=SECRET,
        prefix="megasr/",
    )
    create_bucket(storage)
    theirs = [
        "backups/db.tar",
        "inputs/j1/input.png",  # our layout, but outside our prefix
        "megasr/notes.txt",
        "megasr/inputs/readme.txt",  # inside our prefix, but not a key of ours
    ]
    for name in theirs:
        storage.client.put_object(Bucket=storage.bucket, Key=name, Body=b"not megasr's")
    storage.put("inputs/j1/input.png", photo, "image/png")
    storage.put("outputs/j1/output.png", photo, "image/png")

    assert storage.client.head_object(Bucket=storage.bucket, Key="megasr/inputs/j1/input.png")
    assert storage.sweep(older_than_s=-1) == 2  # moto stamps real times: all are "old"

    left = storage.client.list_objects_v2(Bucket=storage.bucket)["Contents"]
    assert sorted(item["Key"] for item in left) == sorted(theirs)


def test_the_local_sweep_touches_only_the_projects_files(local, photo):
    local.put("outputs/j1/output.png", photo, "image/png")
    stray = [local.root / "notes" / "a" / "b.txt", local.root / "inputs" / "j2" / "keep.txt"]
    for path in stray:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not megasr's")

    assert local.sweep(older_than_s=-1) == 1
    assert all(path.exists() for path in stray)


@pytest.mark.parametrize("prefix", ["../x", "a//b", "inputs/"])
def test_a_prefix_that_could_confuse_the_store_is_refused(s3_endpoint, prefix):
    with pytest.raises(InvalidParameterError):
        S3Storage(bucket="b", endpoint_url=s3_endpoint, prefix=prefix)


def test_presigned_url_downloads_the_object(s3, photo):
    s3.put("outputs/j/output.png", photo, "image/png")
    url = s3.url("outputs/j/output.png", expires_s=600)

    response = httpx.get(url)

    assert response.status_code == 200
    assert response.content == photo
    assert response.headers["content-type"] == "image/png"


def test_presigned_url_is_signed_for_the_public_endpoint(s3_endpoint):
    # moto does not check signatures, so recompute SigV4 for the host the browser will use.
    storage = S3Storage(
        bucket="results",
        endpoint_url=s3_endpoint,
        public_endpoint_url=PUBLIC_ENDPOINT,
        access_key_id="test",
        secret_access_key=SECRET,
    )
    url = storage.url("outputs/j/output.png", expires_s=600)

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_ENDPOINT
    assert parts.path == "/results/outputs/j/output.png"
    query = dict(parse_qsl(parts.query))
    assert query["X-Amz-SignedHeaders"] == "host"
    signature = query.pop("X-Amz-Signature")
    assert signature == sigv4_query_signature(parts.path, query, parts.netloc)
    internal_host = urlsplit(s3_endpoint).netloc
    assert signature != sigv4_query_signature(parts.path, query, internal_host)


def sigv4_query_signature(path: str, query: dict[str, str], host: str) -> str:
    """AWS Signature V4 of a presigned S3 GET, computed from the spec (no botocore)."""
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    canonical_request = "\n".join(
        ["GET", quote(path), canonical_query, f"host:{host}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    amz_date = query["X-Amz-Date"]
    scope = query["X-Amz-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + SECRET).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def test_a_missing_bucket_is_unavailable_not_missing(s3_endpoint):
    storage = S3Storage(
        bucket="no-such-bucket", endpoint_url=s3_endpoint, access_key_id="t", secret_access_key="t"
    )
    with pytest.raises(ServiceUnavailableError):
        storage.ping()


def test_settings_pick_the_back_end(tmp_path, s3_endpoint):
    local = create_storage(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStorage)
    assert local.root == tmp_path / "objects"
    s3 = create_storage(
        Settings(storage_backend="s3", s3_bucket="bkt", s3_endpoint_url=s3_endpoint)
    )
    assert isinstance(s3, S3Storage)
    assert s3.bucket == "bkt"
