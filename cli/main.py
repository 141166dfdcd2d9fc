"""The ``megasr`` command: one sub-command module per group, registered here.

Every command turns the project's typed errors into one line on stderr and a non-zero exit
status; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from megasr import __version__
from megasr.cli import (
    bench_cmd,
    client_cmd,
    data_cmd,
    eval_cmd,
    model_cmd,
    serve_cmd,
    train_cmd,
    upscale_cmd,
    worker_cmd,
)
from megasr.errors import MegaSRError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megasr", description="Real-world image super-resolution: CLI, service and tools."
    )
    parser.add_argument("--version", action="version", version=f"megasr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        upscale_cmd,
        serve_cmd,
        worker_cmd,
        client_cmd,
        model_cmd,
        train_cmd,
        data_cmd,
        eval_cmd,
        bench_cmd,
    ):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):  # no progress output, the libraries' included
        from megasr.model.loading_bars import hide_loading_bars

        hide_loading_bars()
    try:
        return int(args.func(args) or 0)
    except MegaSRError as error:
        print(f"megasr: error: {error.detail}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("megasr: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
