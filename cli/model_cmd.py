"""``megasr model init|info|convert``: build a MegaSR checkpoint, describe one, or convert one
of the earlier layout.

A checkpoint is a saved diffusers pipeline (``MegaSRPipeline.from_pretrained`` loads it).
``init --preset tiny`` needs nothing from outside (tiny random weights for smoke tests);
``init`` with ``--sd --clip --depth --seg`` copies real base components (local directories,
or hub ids where a hub is reachable) into a self-contained checkpoint, and ``--controlnet``
starts its ControlNet from a pretrained SD-2 ControlNet instead of a copy of the U-Net.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megasr.errors import InvalidParameterError

PRESETS = ("sd2-base", "tiny")
BASE_OPTIONS = ("sd", "clip", "depth", "seg")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "model", help="build or inspect a MegaSR checkpoint", description=__doc__
    )
    actions = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    init = actions.add_parser(
        "init",
        help="build a MegaSR checkpoint from base components (or a tiny random one)",
        description="ControlNet copied from the U-Net, new modules at identity.",
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="checkpoint folder")
    init.add_argument("--preset", choices=PRESETS, default="sd2-base")
    init.add_argument("--seed", type=int, default=0, help="weights seed of the tiny preset")
    base = init.add_argument_group("base components (sd2-base preset): local folder or hub id")
    base.add_argument("--sd", help="Stable Diffusion 2 base, diffusers layout")
    base.add_argument("--clip", help="CLIP model (vision tokens and tagger)")
    base.add_argument("--depth", help="depth estimation model (transformers)")
    base.add_argument("--seg", help="semantic segmentation model (transformers)")
    base.add_argument("--hed", default="bundled", help="HED weights: bundled, .h5 or .safetensors")
    base.add_argument("--tagger", choices=("clip", "none"), default="clip")
    base.add_argument(
        "--controlnet",
        metavar="PATH_OR_ID",
        help="start the ControlNet from this SD-2 ControlNet in diffusers layout (a "
        "ControlNetModel folder or hub id, e.g. SeeSR's released ControlNet) instead of a copy "
        "of the U-Net: its weights mapped by name, the MegaSR modules added zero-gated",
    )
    init.set_defaults(func=run_init)

    convert = actions.add_parser(
        "convert",
        help="convert a checkpoint of the earlier layout (megasr.json, adapter.safetensors) "
        "into a pipeline checkpoint",
    )
    convert.add_argument("old", type=Path, metavar="OLD", help="the format-2 checkpoint")
    convert.add_argument("new", type=Path, metavar="NEW", help="the folder to write")
    convert.set_defaults(func=run_convert)

    info = actions.add_parser(
        "info",
        help="print a checkpoint's parts, sizes, and its new modules per block with their gates",
    )
    info.add_argument("checkpoint", type=Path, metavar="DIR")
    info.set_defaults(func=run_info)


def run_init(args: argparse.Namespace) -> int:
    from megasr.model.megasr.checkpoint import (
        BaseSources,
        init_checkpoint,
        init_tiny_checkpoint,
    )
    from megasr.model.megasr.checkpoint_info import checkpoint_info

    given = [name for name in BASE_OPTIONS if getattr(args, name)]
    if args.preset == "tiny":
        if given or args.controlnet:
            dropped = [*given, "controlnet"] if args.controlnet else given
            raise InvalidParameterError(
                f"--preset tiny builds every component itself; drop --{', --'.join(dropped)}"
            )
        init_tiny_checkpoint(args.out, seed=args.seed)
    else:
        missing = [name for name in BASE_OPTIONS if not getattr(args, name)]
        if missing:
            raise InvalidParameterError(
                f"model init needs --{', --'.join(missing)} (or --preset tiny)"
            )
        sources = BaseSources(
            sd=args.sd,
            clip=args.clip,
            depth=args.depth,
            segmentation=args.seg,
            hed=args.hed,
            tagger=args.tagger,
            controlnet=args.controlnet,
        )
        init_checkpoint(sources, args.out)
    print(checkpoint_info(args.out).to_text())
    return 0


def run_info(args: argparse.Namespace) -> int:
    from megasr.model.megasr.checkpoint_info import checkpoint_info

    print(checkpoint_info(args.checkpoint).to_text())
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from megasr.model.megasr.checkpoint_info import checkpoint_info
    from megasr.model.megasr.convert import convert_checkpoint

    convert_checkpoint(args.old, args.new)
    print(checkpoint_info(args.new).to_text())
    return 0
