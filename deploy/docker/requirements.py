"""Print the project's runtime requirements, one per line, less the packages named.

The gateway image installs the project with ``pip install --no-deps`` on top of this list
with ``torch`` (and the weights package) left out, so it never carries a multi-GB CUDA
stack it must not import. The list comes from pyproject.toml itself, so a dependency added
there reaches both images without anyone editing the Dockerfile.

    python requirements.py pyproject.toml [--without NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503 name: ``Pillow_HEIF`` and ``pillow-heif`` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name at the start of a PEP 508 requirement string."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize(match.group(1))


def runtime_requirements(pyproject: Path, without: list[str]) -> list[str]:
    """``[project] dependencies`` minus ``without``; every excluded name must be a dependency.

    The check keeps the exclusion list honest: a renamed or dropped dependency fails the
    build instead of leaving a stale name that silently excludes nothing.
    """
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    excluded = {normalize(name) for name in without}
    unknown = excluded - {requirement_name(r) for r in dependencies}
    if unknown:
        raise ValueError(f"not dependencies of the project: {', '.join(sorted(unknown))}")
    return [r for r in dependencies if requirement_name(r) not in excluded]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--without", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    try:
        lines = runtime_requirements(args.pyproject, args.without)
    except ValueError as error:
        print(f"requirements.py: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
