"""The layers of docs/architecture.md, enforced: import-linter's contracts in pyproject.toml.

import-linter reads a package from one folder, while the source tree keeps the parts side by
side (``core/`` is ``megasr``, ``model/`` is ``megasr.model``, ...). So each test lays the
parts out as pip installs them, in a temporary folder, by the ``package-dir`` table of
pyproject.toml, and runs ``lint-imports`` there. The contracts must hold on the real code and
must break on a deliberate upward import: a contract that cannot fail proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"


def installed_layout(target: Path) -> Path:
    """Copy every package folder to where it lands in site-packages; the folder to import from."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in sorted(package_dir.items(), key=lambda item: item[0].count(".")):
        shutil.copytree(
            ROOT / folder,
            target.joinpath(*name.split(".")),
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    return target


def lint_imports(site: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--no-cache", str(PYPROJECT)],
        cwd=site,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return installed_layout(tmp_path / "site")


def test_every_contract_holds_on_the_code(site: Path) -> None:
    result = lint_imports(site)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("megasr/settings.py", "import megasr.worker.tasks", "then the core BROKEN"),
        ("megasr/imaging/resize.py", "import megasr.cli.main", "then the core BROKEN"),
        ("megasr/model/tiler.py", "import megasr.service.app", "then the core BROKEN"),
        ("megasr/service/api.py", "import megasr.worker.tasks", "then the core BROKEN"),
        ("megasr/service/api.py", "import torch", "never imports torch or the model BROKEN"),
        ("megasr/jobs.py", "import torch", "no machine-learning library BROKEN"),
        ("megasr/model/engines/base.py", "import megasr.model.training.data", "benchmarks BROKEN"),
    ],
)
def test_an_upward_import_breaks_a_contract(
    site: Path, module: str, line: str, contract: str
) -> None:
    path = site / module
    path.write_text(path.read_text() + f"\n{line}  # a deliberate upward import\n")

    result = lint_imports(site)

    assert result.returncode == 1, result.stdout
    assert contract in result.stdout
