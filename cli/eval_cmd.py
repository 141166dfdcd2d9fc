"""``megasr eval``: score engines against bicubic on an image set, as a paper's table.

megasr eval --engine realesrgan-x4plus --hr HR/ --degrade realesrgan --seed 0
megasr eval --hr HR/ --lr LR/ --metrics psnr,ssim,lpips --format csv -o table.csv
megasr eval --lr real-photos/                 # no ground truth: no-reference metrics
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from megasr.errors import InvalidParameterError
from megasr.files import write_atomic
from megasr.imaging.image import IMAGE_SUFFIXES
from megasr.settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from megasr.model.evaluation.dataset import EvalImage
    from megasr.model.evaluation.evaluate import MethodScores, MetricColumn, SaveOutput

FORMATS = ("md", "csv", "json")


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help="score engines and bicubic on an image set",
        description=(
            "Upscale every LR image with each engine and with bicubic interpolation (always "
            "included, the floor), score the results, and print one table row per method."
        ),
    )
    parser.add_argument(
        "--engine",
        action="append",
        dest="engines",
        metavar="ENGINE",
        help="engine to evaluate, repeatable (default: auto)",
    )
    parser.add_argument("--model", type=Path, default=None, help="MegaSR checkpoint folder")
    parser.add_argument("--hr", type=Path, metavar="DIR", help="ground-truth HR images")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--lr", type=Path, metavar="DIR", help="LR inputs, named as the HR files")
    source.add_argument(
        "--degrade",
        choices=("bicubic", "realesrgan"),
        default=None,
        help="make the LR inputs from --hr (default: bicubic)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --degrade realesrgan")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor, 2 to 8 (default 4)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric names (default: every one that can run here)",
    )
    parser.add_argument("--format", choices=FORMATS, default="md", dest="table_format")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="table file (default: stdout)"
    )
    parser.add_argument(
        "--save-images",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write LR and outputs here",
    )
    parser.add_argument("--tile", type=int, default=None, help="engine tile side in pixels")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megasr.imaging.image import ImageLimits
    from megasr.model.engines.registry import resolve_engine_name
    from megasr.model.evaluation.dataset import load_images
    from megasr.model.evaluation.evaluate import Evaluation, metric_columns
    from megasr.model.evaluation.report import FORMATS as WRITERS

    _check(args)
    settings = _settings(args)
    engines = list(
        dict.fromkeys(resolve_engine_name(e, settings) for e in args.engines or ["auto"])
    )
    names = (
        None if args.metrics is None else [n.strip() for n in args.metrics.split(",") if n.strip()]
    )
    columns = metric_columns(names, with_reference=args.hr is not None)
    degradation = args.degrade or "bicubic"
    images = load_images(
        _image_files(args.hr),
        _image_files(args.lr),
        args.scale,
        degradation,
        args.seed,
        ImageLimits(settings.max_upload_bytes, settings.max_input_pixels),
    )
    evaluation = Evaluation(
        dataset=(args.hr or args.lr).resolve().name,
        setting=_setting(args, degradation),
        scale=args.scale,
        images=[image.name for image in images],
        columns=columns,
        rows=_score(args, settings, engines, images, columns),
    )
    table = WRITERS[args.table_format](evaluation)
    if args.output is None:
        sys.stdout.write(table)
    else:
        write_atomic(args.output, table.encode())
    return 0


def _score(
    args: argparse.Namespace,
    settings: Settings,
    engines: list[str],
    images: list[EvalImage],
    columns: list[MetricColumn],
) -> list[MethodScores]:
    """The bicubic floor, then each engine, loaded one at a time."""
    from megasr.model.engines.registry import load_engine
    from megasr.model.evaluation.evaluate import BICUBIC, bicubic, engine_method, evaluate_method

    save = None if args.save_images is None else _image_saver(args.save_images, images)
    rows = [evaluate_method(BICUBIC, bicubic, images, columns, args.scale, save)]
    for name in engines:
        _status(f"evaluating {name} on {len(images)} images", args.quiet)
        method = engine_method(load_engine(name, settings), settings.max_batch_tiles)
        rows.append(evaluate_method(name, method, images, columns, args.scale, save))
    return rows


def _check(args: argparse.Namespace) -> None:
    if args.hr is None and args.lr is None:
        raise InvalidParameterError("give --hr (ground truth), --lr (inputs) or both")
    if args.degrade is not None and args.hr is None:
        raise InvalidParameterError("--degrade makes LR images from --hr; give --hr")
    if not 2 <= args.scale <= 8:
        raise InvalidParameterError(f"--scale must be between 2 and 8, got {args.scale}")


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.with_overrides(
        megasr_model=args.model, device=args.device, dtype=args.dtype, tile=args.tile
    )


def _setting(args: argparse.Namespace, degradation: str) -> str:
    if args.lr is not None:
        return "LR images given" + ("" if args.hr is not None else ", no ground truth")
    if degradation == "realesrgan":
        return f"LR by the Real-ESRGAN second-order degradation, seed {args.seed}"
    return "LR by MATLAB bicubic downscaling"


def _image_files(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    if not folder.is_dir():
        raise InvalidParameterError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InvalidParameterError(f"{folder}: no image files in this folder")
    return files


def _image_saver(folder: Path, images: list[EvalImage]) -> SaveOutput:
    """Write the inputs (``lr/``, ``hr/``) now and every output later, as PNG, by method."""
    import numpy as np

    from megasr.imaging.encode import encode_image

    def png(path: Path, pixels: np.ndarray) -> None:
        write_atomic(path, encode_image(pixels.astype(np.float32) / 255.0, None, "png"))

    for image in images:
        png(folder / "lr" / f"{image.name}.png", image.lr)
        if image.hr is not None:
            png(folder / "hr" / f"{image.name}.png", image.hr)

    def save(method: str, name: str, output: np.ndarray) -> None:
        png(folder / method / f"{name}.png", output)

    return save


def _status(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"megasr eval: {message}", file=sys.stderr)
