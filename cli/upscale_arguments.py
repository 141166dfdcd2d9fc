"""The flags every upscaling command takes, defined once so they read alike: on this
machine (``megasr upscale``) and through a service (``megasr client upscale``)."""

from __future__ import annotations

import argparse
from typing import get_args

from megasr.jobs import ColorFix

# The attributes add_diffusion_arguments sets, by their request field names.
DIFFUSION_FIELDS = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "color_fix")


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scale`` or ``--width``/``--height``, as :class:`megasr.imaging.sizing.OutputSize`."""
    size = parser.add_argument_group("output size (default: --scale 4)")
    size.add_argument("--scale", type=float, help="scale factor, 1 to 8")
    size.add_argument("--width", type=int, help="output width in pixels")
    size.add_argument("--height", type=int, help="output height in pixels")


def add_diffusion_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation options of the megasr engine, named as in ``DIFFUSION_FIELDS``."""
    diffusion = parser.add_argument_group(
        "diffusion options (the megasr engine; other engines ignore them)",
        "Left out, each is the checkpoint's inference default.",
    )
    diffusion.add_argument("--prompt", help="text describing the image")
    diffusion.add_argument("--negative-prompt", help="what to steer away from")
    diffusion.add_argument("--steps", type=int, help="sampling steps, 1 or more")
    diffusion.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance, 0 or more"
    )
    diffusion.add_argument("--seed", type=int, help="noise seed, 0 or more")
    diffusion.add_argument("--color-fix", choices=get_args(ColorFix), help="colour correction")
