"""``megasr upscale INPUT... -o OUT``: upscale files or folders of images on this machine."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from megasr.cli.upscale_arguments import add_diffusion_arguments, add_size_arguments
from megasr.errors import ImageTooLargeError, InvalidParameterError, MegaSRError
from megasr.files import write_atomic
from megasr.imaging.encode import OUTPUT_FORMATS, default_output_format, normalize_format
from megasr.imaging.image import IMAGE_SUFFIXES, ImageLimits
from megasr.imaging.sizing import OutputSize
from megasr.settings import Backend, Settings

if TYPE_CHECKING:
    from megasr.model.engines.base import GenerationOptions
    from megasr.model.upscaler import Upscaler


@dataclass(frozen=True)
class Request:
    """What every image of one run is asked for."""

    size: OutputSize
    output_format: str | None
    quality: int | None
    limits: ImageLimits
    max_output_pixels: int
    quiet: bool
    options: GenerationOptions


@dataclass(frozen=True)
class Job:
    """One input file and where its result goes."""

    source: Path
    output: Path  # a file, or the folder for a file named after the source
    is_file: bool


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "upscale",
        help="upscale images on this machine",
        description="Upscale image files (or every image in a folder) and write the results.",
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="output folder, or a file name when there is one input file",
    )
    add_size_arguments(parser)
    parser.add_argument("--engine", default=None, help="auto, realesrgan-x4plus or megasr")
    parser.add_argument("--model", type=Path, default=None, help="MegaSR checkpoint folder")
    parser.add_argument(
        "--format",
        dest="output_format",
        default=None,
        help=f"{', '.join(OUTPUT_FORMATS)} (default: the input's, else png)",
    )
    parser.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality, 1 to 100")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="engine tile side in pixels (megasr: its latent tile, in output pixels)",
    )
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument(
        "--backend",
        default=None,
        choices=get_args(Backend),
        help="how realesrgan-x4plus runs: eager, inductor (torch.compile), auto",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_diffusion_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    request = _request(args, settings)
    jobs = plan_jobs(args.inputs, args.output)

    from megasr.model.engines.registry import load_engine
    from megasr.model.upscaler import Upscaler

    engine = load_engine(settings.engine, settings)
    upscaler = Upscaler(engine)
    failures = 0
    with _progress(len(jobs), "images", args.quiet) as images:
        for job in jobs:
            try:
                _upscale_one(job, upscaler, request)
            except MegaSRError as error:
                failures += 1
                images.write(f"megasr: error: {job.source}: {error.detail}", file=sys.stderr)
                continue  # the bar counts written images: a refused one is not done
            images.update(1)
    return 1 if failures else 0


def plan_jobs(inputs: list[Path], output: Path) -> list[Job]:
    """Expand folders, check that every input exists, and decide each output path."""
    sources: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InvalidParameterError(f"{path}: no image files in this folder")
            sources.extend(found)
        elif path.is_file():
            sources.append(path)
        else:
            raise InvalidParameterError(f"{path}: no such file or folder")
    single_file = len(sources) == 1 and not inputs[0].is_dir() and output.suffix != ""
    if single_file and not output.is_dir():
        return [Job(sources[0], output, is_file=True)]
    if output.exists() and not output.is_dir():
        raise InvalidParameterError(f"{output}: exists and is not a folder")
    stems = [s.stem for s in sources]
    if len(set(stems)) != len(stems):
        raise InvalidParameterError("two inputs share a file name; use separate output folders")
    return [Job(s, output, is_file=False) for s in sources]


def _upscale_one(job: Job, upscaler: Upscaler, request: Request) -> None:
    from megasr.imaging.decode import decode_image
    from megasr.imaging.encode import encode_image

    image = decode_image(_read(job.source, request.limits), request.limits)
    if job.is_file:
        fmt = request.output_format or normalize_format(job.output.suffix.lstrip("."))
        target = job.output
    else:
        fmt = request.output_format or default_output_format(image.source_format)
        target = job.output / f"{job.source.stem}{OUTPUT_FORMATS[fmt].extension}"
    if target.resolve() == job.source.resolve():
        raise InvalidParameterError("the output would overwrite the input; choose another -o")
    with _progress(None, upscaler.progress_unit, request.quiet, leave=False) as bar:

        def on_progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = upscaler.upscale(
            image,
            request.size,
            request.max_output_pixels,
            on_progress=on_progress,
            options=request.options,
        )
    data = encode_image(
        result.rgb,
        result.alpha,
        fmt,
        quality=request.quality,
        bit_depth=result.bit_depth,
        grayscale=result.grayscale,
    )
    write_atomic(target, data)


def _settings(args: argparse.Namespace) -> Settings:
    engine = "megasr" if args.model is not None and args.engine is None else args.engine
    return Settings.with_overrides(
        engine=engine,
        megasr_model=args.model,
        device=args.device,
        dtype=args.dtype,
        tile=args.tile,
        backend=args.backend,
    )


def _request(args: argparse.Namespace, settings: Settings) -> Request:
    if args.scale is not None and (args.width is not None or args.height is not None):
        raise InvalidParameterError("give either --scale or --width/--height, not both")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise InvalidParameterError("--quality must be between 1 and 100")
    from megasr.model.engines.base import GenerationOptions

    return Request(
        size=OutputSize(scale=args.scale, width=args.width, height=args.height),
        output_format=None if args.output_format is None else normalize_format(args.output_format),
        quality=args.quality,
        limits=ImageLimits(settings.max_upload_bytes, settings.max_input_pixels),
        max_output_pixels=settings.max_output_pixels,
        quiet=args.quiet,
        options=GenerationOptions.of(args),
    )


def _read(path: Path, limits: ImageLimits) -> bytes:
    """Read a file, refusing one over the byte limit before reading it whole."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"{size} bytes is over the limit of {limits.max_bytes} bytes")
        return path.read_bytes()
    except OSError as error:
        raise InvalidParameterError(f"cannot read the file: {error.strerror}") from error


def _progress(total: int | None, unit: str, quiet: bool, leave: bool = True):
    """A bar on stderr; none with --quiet or when stderr is no terminal (a log, a pipe)."""
    from tqdm import tqdm

    hidden = quiet or not sys.stderr.isatty()
    return tqdm(total=total, unit=f" {unit}", disable=hidden, leave=leave, file=sys.stderr)
