"""The Debian packages some tests need, and what a test does when one is absent.

The rest of the suite needs only what ``pip install -e '.[dev]'`` installs; these few tests
drive programs or read data that only Debian packages ship. On a machine without one, each
such test skips with a reason that names the package (``pytest -ra``, the project's default,
prints it); in CI (``CI=true``) it fails instead, because ``.ci/run`` installs every package
listed here and a skip there would hide a broken install. Mark a test with
``@pytest.mark.system_package("name")``, or call :func:`require` for the path.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"


@dataclass(frozen=True)
class SystemPackage:
    """``provides`` is a command on PATH, or the absolute path of a file the package installs."""

    name: str
    provides: str
    used_for: str

    def location(self) -> str | None:
        if os.path.isabs(self.provides):
            return self.provides if Path(self.provides).is_file() else None
        return shutil.which(self.provides)

    @property
    def reason(self) -> str:
        return (
            f"needs Debian's {self.name} for {self.used_for} ({self.provides} not found): "
            f"apt-get install {self.name}; .ci/run installs it"
        )


PACKAGES = {
    package.name: package
    for package in (
        SystemPackage("chromium", "chromium", "the web page tests (headless browser)"),
        SystemPackage(
            "opencv-doc",
            "/usr/share/doc/opencv-doc/examples/data/rubberwhale1.png",
            "the BRISQUE model files and the reference images of the quality metrics",
        ),
        SystemPackage("prometheus", "promtool", "checking the alert rules and Prometheus config"),
    )
}


def require(name: str) -> str:
    """Where package ``name`` provides what a test needs; skips the test (fails it in CI)
    when it is not installed."""
    package = PACKAGES[name]
    found = package.location()
    if found is None:
        if IN_CI:
            pytest.fail(package.reason)
        pytest.skip(package.reason)
    return found
