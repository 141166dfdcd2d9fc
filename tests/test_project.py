"""The project's own promises: packaging covers every package, CI runs the README's command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path


def _pyproject(repo_root: Path) -> dict:
    return tomllib.loads((repo_root / "pyproject.toml").read_text())


def test_every_package_folder_is_packaged(repo_root: Path) -> None:
    """A package missing from pyproject works in an editable install and breaks in a wheel."""
    setup = _pyproject(repo_root)["tool"]["setuptools"]
    dirs = setup["package-dir"]
    declared = set(setup["packages"])
    found = set()
    for package, folder in dirs.items():
        for init in (repo_root / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(repo_root / folder)
            found.add(".".join([package, *relative.parts]))
    # a mapped subpackage (megasr.model) is also found under its parent's folder only if nested
    assert found == declared


def _readme_command(repo_root: Path, marker: str) -> str:
    text = (repo_root / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)?\n(.+?)\n```", text, re.S)
    assert match, f"README has no {marker} block"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command(repo_root: Path) -> None:
    command = _readme_command(repo_root, "test-command")
    ci_lines = (repo_root / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines


def test_readme_starts_with_the_two_commands(repo_root: Path) -> None:
    text = (repo_root / "README.md").read_text()
    first_blocks = re.findall(r"```(?:bash|sh)?\n(.+?)\n```", text, re.S)[:2]
    assert first_blocks == [
        _readme_command(repo_root, "run-command"),
        _readme_command(repo_root, "test-command"),
    ]


def test_ci_installs_and_the_readme_names_every_system_package(repo_root: Path) -> None:
    """The Debian packages some tests need (tests/system_packages.py): CI installs them all,
    and the README tells a user which ones the full suite uses."""
    from system_packages import PACKAGES

    ci = (repo_root / ".ci" / "run").read_text()
    (install,) = re.findall(r"^apt-get install .*$", ci, re.M)
    installed = {word for word in install.split() if not word.startswith(("-", ">"))}
    readme = (repo_root / "README.md").read_text()
    assert installed - {"apt-get", "install"} == set(PACKAGES)
    assert all(f"`{name}`" in readme for name in PACKAGES)
