"""Shared fixtures: real photographs, loaded from packages the tests already depend on; and
the ``system_package`` marker (:mod:`system_packages`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "system_package(name): needs a Debian package (tests/system_packages.py); skips "
        "with the package named when it is absent, fails in CI",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    from system_packages import require

    for mark in item.iter_markers("system_package"):
        require(*mark.args)


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """scikit-image's CC0 photograph of a coffee cup, (400, 600, 3) uint8."""
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def megasr_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session, for converted weights and fetched assets.

    Tests never touch the user's real cache, and each run proves the conversions work from
    nothing. Subprocesses (the CLI, workers) inherit it through the environment.
    """
    path = tmp_path_factory.mktemp("megasr-cache")
    os.environ["MEGASR_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def eager_backend() -> None:
    """Engines run eager unless a test asks for another backend: ``auto`` would compile the
    full x4plus network with inductor in every process that loads it, tens of seconds each.
    The backends are tested on their own (tests/test_backends.py), on a tiny network."""
    os.environ.setdefault("MEGASR_BACKEND", "eager")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-tensor tests: they gain nothing from a second,
    and on a CPU busy with other work OpenMP's barrier waits cost seconds per call."""
    from megasr_tiny import one_thread

    with one_thread():
        yield
