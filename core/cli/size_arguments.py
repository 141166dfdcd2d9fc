"""The output-size flags every upscaling command takes, defined once so they read alike."""

from __future__ import annotations

import argparse


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scale`` or ``--width``/``--height``, as :class:`megasr.imaging.sizing.OutputSize`."""
    size = parser.add_argument_group("output size (default: --scale 4)")
    size.add_argument("--scale", type=float, help="scale factor, 1 to 8")
    size.add_argument("--width", type=int, help="output width in pixels")
    size.add_argument("--height", type=int, help="output height in pixels")
