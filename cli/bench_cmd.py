"""``megasr bench``: speed and memory of the engines and their peers on this machine.

megasr bench                                   # default engine, float32 and fast path
megasr bench --peers --image samples/coffee.jpg
megasr bench --engine megasr --model CKPT/ --size 64 --batches 1,2
megasr bench --calibrate                       # choose this CPU's dtype, tile and backend
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

from megasr.errors import InvalidParameterError
from megasr.files import write_atomic
from megasr.settings import Backend, Settings


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure engine speed and memory",
        description=(
            "Time each engine in float32 and on its fast path on the same tile, optionally "
            "with the default engine's peers (plain float32 PyTorch, the ncnn CPU runtime), "
            "and tiles per second by batch size."
        ),
    )
    parser.add_argument(
        "--engine",
        action="append",
        dest="engines",
        metavar="ENGINE",
        help="engine to measure, repeatable (default: auto)",
    )
    parser.add_argument("--model", type=Path, default=None, help="MegaSR checkpoint folder")
    parser.add_argument(
        "--dtypes",
        default="float32,auto",
        help="precisions per engine; auto = the engine's fast path (default: float32,auto)",
    )
    parser.add_argument("--size", type=int, default=128, help="input tile side (default 128)")
    parser.add_argument("--batches", default="1,2,4,8", help="batch sizes (default 1,2,4,8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the best counts")
    parser.add_argument("--peers", action="store_true", help="also run the default engine's peers")
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="photo to cut the tile from (default: a test pattern)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--backend",
        default=None,
        choices=get_args(Backend),
        help="how realesrgan-x4plus runs (default: the setting, auto)",
    )
    parser.add_argument("--format", choices=("md", "json"), default="md", dest="table_format")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="report file (default: stdout)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure this CPU and cache the dtype, tile and backend realesrgan-x4plus runs "
        "with (again each time it is run; --backend eager skips the compile)",
    )
    parser.add_argument(
        "--tiles",
        default=None,
        help="tile sides --calibrate tries (default 128,192,256,384)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.calibrate:
        return _calibrate(args)
    from megasr.imaging.image import ImageLimits
    from megasr.model.benchmark.benchmark import BenchConfig, pattern_image, run_benchmark
    from megasr.model.benchmark.report import FORMATS
    from megasr.model.device import resolve_device
    from megasr.model.engines.registry import resolve_engine_name
    from megasr.model.evaluation.dataset import read_rgb8

    settings = Settings.with_overrides(megasr_model=args.model, backend=args.backend)
    config = BenchConfig(
        engines=list(
            dict.fromkeys(resolve_engine_name(e, settings) for e in args.engines or ["auto"])
        ),
        dtypes=_dtypes(args.dtypes),
        size=_positive("--size", args.size),
        batches=_batches(args.batches),
        repeats=_positive("--repeats", args.repeats),
        peers=args.peers,
        device=resolve_device(args.device),
        settings=settings,
    )
    if args.image is None:
        image, input_name = pattern_image(args.size), "a seeded test pattern"
    else:
        limits = ImageLimits(settings.max_upload_bytes, settings.max_input_pixels)
        image, input_name = read_rgb8(args.image, limits), f"`{args.image.name}`"
    report = run_benchmark(config, image, input_name, progress=lambda m: _status(m, args.quiet))
    text = FORMATS[args.table_format](report)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomic(args.output, text.encode())
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    """Measure, cache the choice, and print it with what it was chosen from."""
    from megasr.model.benchmark.calibration import Calibration, calibrate
    from megasr.model.device import use_cpu_threads
    from megasr.model.engines.cpu_choice import choice_path

    settings = Settings.with_overrides(backend=args.backend)
    use_cpu_threads(settings.cpu_threads)  # the choice is per thread count
    backends = ("eager",) if settings.backend == "eager" else ("eager", "inductor")
    calibration = Calibration(backends=backends, repeats=_positive("--repeats", args.repeats))
    if args.tiles is not None:
        calibration = replace(calibration, tiles=tuple(_sizes(args.tiles, "--tiles", "sides")))
    choice = calibrate(settings, calibration, progress=lambda m: _status(m, args.quiet))
    lines = [f"CPU: {choice.isa}", f"cached in {choice_path(settings.cache_dir, choice.engine)}"]
    lines += [f"  {label}: {value:.4g}" for label, value in choice.measured.items()]
    lines.append(
        f"chosen: {choice.dtype}, {choice.tile} px tiles overlapping by {choice.overlap} px, "
        f"{choice.backend}"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _dtypes(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    allowed = ("auto", "float32", "bfloat16", "float16")
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise InvalidParameterError(f"--dtypes takes a list of {', '.join(allowed)}")
    return names


def _batches(text: str) -> list[int]:
    return _sizes(text, "--batches", "batch sizes")


def _sizes(text: str, option: str, what: str) -> list[int]:
    try:
        sizes = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise InvalidParameterError(f"{option} takes a list of integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise InvalidParameterError(f"{option} takes {what} of 1 or more")
    return sizes


def _positive(option: str, value: int) -> int:
    if value < 1:
        raise InvalidParameterError(f"{option} must be 1 or more, got {value}")
    return value


def _status(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"megasr bench: {message}", file=sys.stderr)
