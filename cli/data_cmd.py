"""``megasr data``: training sets in the layout ``megasr train megasr`` reads.

megasr data prepare --src LSDIR/HR --src FFHQ/images1024x1024 --out data/prepared
megasr data verify data/prepared

``prepare`` cuts HR photographs into crops, holds some images out for validation and writes
a manifest with the sha256 of every file; ``verify`` checks a prepared set against its
manifest. Details: docs/training.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "data",
        help="prepare training data (crops, validation split, manifest)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prepare = actions.add_parser(
        "prepare",
        help="cut folders of HR photographs into training crops and a validation split",
        description="Every image under each --src folder (recursively) is decoded once; "
        "a few are held out whole-image for validation (one centre crop each), the rest are "
        "cut into crops. A file that cannot be decoded stops the command before anything is "
        "written, unless --skip-broken.",
    )
    prepare.add_argument(
        "--src",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="folder of HR images, e.g. LSDIR/HR or FFHQ (repeatable)",
    )
    prepare.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="new folder for train/, val/, manifest.jsonl, dataset.json",
    )
    prepare.add_argument(
        "--crop",
        type=int,
        default=512,
        metavar="PX",
        help="crop side in pixels (default 512, the recipe's)",
    )
    prepare.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="PX",
        help="distance between crops (default: the crop side, no overlap)",
    )
    prepare.add_argument(
        "--val-fraction",
        type=float,
        default=0.01,
        metavar="F",
        help="share of source images held out for validation (default 0.01)",
    )
    prepare.add_argument(
        "--seed", type=int, default=0, help="seed of the validation split (default 0)"
    )
    prepare.add_argument(
        "--skip-broken",
        action="store_true",
        help="write the readable images and list the broken ones",
    )
    prepare.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default 0: in this process)"
    )
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    prepare.set_defaults(func=run_prepare)

    verify = actions.add_parser(
        "verify", help="check a prepared set's files against the sha256 in its manifest"
    )
    verify.add_argument("folder", type=Path, metavar="DIR", help="a folder `prepare` wrote")
    verify.set_defaults(func=run_verify)


def run_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from megasr.model.training.data_prepare import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        crop=args.crop,
        stride=args.stride or args.crop,
        val_fraction=args.val_fraction,
        seed=args.seed,
        skip_broken=args.skip_broken,
        workers=args.workers,
    )

    def progress(results):
        return tqdm(results, desc="preparing", unit="image", disable=args.quiet, file=sys.stderr)

    summary = prepare_dataset(args.src, args.out, options, progress)
    print(
        f"{summary.train_images} training images -> {summary.train_crops} crops of "
        f"{args.crop} px, {summary.val_images} validation images, in {args.out}"
    )
    for label, paths in (("too small, left out", summary.too_small),
                         ("broken, left out", summary.broken)):  # fmt: skip
        if paths:
            print(f"{len(paths)} {label}: " + "; ".join(paths[:5]))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from megasr.model.training.data_prepare import verify_dataset

    print(f"{verify_dataset(args.folder)} files match {args.folder}/manifest.jsonl")
    return 0
