"""``megasr upscale INPUT... -o OUT``: upscale files or folders of images on this machine."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from megasr.cli.upscale_arguments import add_diffusion_arguments, add_size_arguments
from megasr.cli.upscale_report import UpscaleReport, advance
from megasr.engine_catalog import AUTO, CATALOG, engine_names
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
        epilog="engines:\n"
        + "\n".join(f"  {entry.name:24} {entry.description}" for entry in CATALOG.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--engine",
        default=None,
        help="auto (the default) or an engine below (megasr needs --model)",
    )
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
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar, no list of files written"
    )
    add_diffusion_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every input, then load the engine (only if one passed), then upscale each."""
    settings = _settings(args)
    request = _request(args, settings)
    if settings.engine not in (AUTO, *engine_names()):
        choices = ", ".join((AUTO, *CATALOG))
        raise InvalidParameterError(f"unknown engine {settings.engine!r}; choose one of {choices}")
    plan = plan_jobs(args.inputs, args.output)
    report = UpscaleReport(args.quiet, len(plan.jobs))
    report.not_images(plan.not_images)
    checked = [(job, info) for job in plan.jobs if (info := _check(job, request, report))]
    if checked:  # torch and the model code load from here on, only for inputs that passed
        from megasr.model.engines.base import GenerationOptions
        from megasr.model.loading_bars import hide_loading_bars

        options = GenerationOptions.of(args)
        hide_loading_bars()  # the project's own bar is the one progress display
        engines = _Engines(settings)
        for index, (job, info) in enumerate(checked, 1):
            try:
                position = f"{index}/{len(checked)}"
                _upscale_one(job, info, engines, request, options, report, position)
            except MegaSRError as error:
                report.refused(job.source, error)
    report.summary()
    return 1 if report.failed else 0


@dataclass(frozen=True)
class Plan:
    """The inputs to upscale, and the folder entries left alone (not named as images)."""

    jobs: list[Job]
    not_images: list[Path]


def plan_jobs(inputs: list[Path], output: Path) -> Plan:
    """Expand folders, check that every input exists, and decide each output path."""
    sources: list[Path] = []
    not_images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            entries = sorted(path.iterdir())
            found = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise InvalidParameterError(f"{path}: no image files in this folder")
            sources.extend(found)
            not_images.extend(p for p in entries if p not in found)
        elif path.is_file():
            sources.append(path)
        else:
            raise InvalidParameterError(f"{path}: no such file or folder")
    single_file = len(sources) == 1 and not inputs[0].is_dir() and output.suffix != ""
    if single_file and not output.is_dir():
        return Plan([Job(sources[0], output, is_file=True)], not_images)
    if output.exists() and not output.is_dir():
        raise InvalidParameterError(f"{output}: exists and is not a folder")
    stems = [s.stem for s in sources]
    if len(set(stems)) != len(stems):
        raise InvalidParameterError("two inputs share a file name; use separate output folders")
    return Plan([Job(s, output, is_file=False) for s in sources], not_images)


@dataclass(frozen=True)
class Checked:
    """What the check of an input found: its upright size and where its result goes."""

    width: int
    height: int
    target: Path
    output_format: str


def _check(job: Job, request: Request, report: UpscaleReport) -> Checked | None:
    """Read ``job``'s input and check it as the gateway checks an upload (header, limits, the
    whole file where that is cheap), and its output size and path; None (reported) if refused.
    Nothing here loads a model, so a bad input is refused in well under a second."""
    from megasr.imaging.decode import check_upload

    try:
        info = check_upload(_read(job.source, request.limits), request.limits)
        request.size.resolve(info.width, info.height, request.max_output_pixels)
        if job.is_file:
            fmt = request.output_format or normalize_format(job.output.suffix.lstrip("."))
            target = job.output
        else:
            fmt = request.output_format or default_output_format(info.format)
            target = job.output / f"{job.source.stem}{OUTPUT_FORMATS[fmt].extension}"
        if target.resolve() == job.source.resolve():
            raise InvalidParameterError("the output would overwrite the input; choose another -o")
    except MegaSRError as error:
        report.refused(job.source, error)
        return None
    return Checked(info.width, info.height, target, fmt)


class _Engines:
    """The engines of this run, each loaded on first use: a family's variant depends on the
    factor each image is enlarged by (``realesr-animevideov3`` runs x2 for a x2 request)."""

    def __init__(self, settings: Settings) -> None:
        from megasr.model.engines.registry import resolve_engine_name

        self.settings = settings
        self.name = resolve_engine_name(settings.engine, settings)
        self._upscalers: dict[str, Upscaler] = {}

    def for_factor(self, factor: float, report: UpscaleReport) -> Upscaler:
        from megasr.engine_catalog import variant_for
        from megasr.model.engines.registry import load_engine
        from megasr.model.upscaler import Upscaler

        name = variant_for(self.name, factor)
        if name not in self._upscalers:
            with report.status(f"loading {name}"):
                self._upscalers[name] = Upscaler(load_engine(name, self.settings))
        return self._upscalers[name]


def _upscale_one(
    job: Job,
    checked: Checked,
    engines: _Engines,
    request: Request,
    options: GenerationOptions,
    report: UpscaleReport,
    position: str,
) -> None:
    from megasr.imaging.decode import decode_image
    from megasr.imaging.encode import encode_image

    factor = request.size.factor(checked.width, checked.height, request.max_output_pixels)
    upscaler = engines.for_factor(factor, report)
    started = time.monotonic()
    image = decode_image(_read(job.source, request.limits), request.limits)
    with report.bar(f"{position} {job.source.name}", upscaler.progress_unit) as bar:
        result = upscaler.upscale(
            image,
            request.size,
            request.max_output_pixels,
            on_progress=lambda done, total: advance(bar, done, total),
            options=options,
        )
    data = encode_image(
        result.rgb,
        result.alpha,
        checked.output_format,
        quality=request.quality,
        bit_depth=result.bit_depth,
        grayscale=result.grayscale,
    )
    write_atomic(checked.target, data)
    size = (result.rgb.shape[1], result.rgb.shape[0])
    report.wrote(checked.target, size, upscaler.engine.name, time.monotonic() - started)


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
    return Request(
        size=OutputSize(scale=args.scale, width=args.width, height=args.height),
        output_format=None if args.output_format is None else normalize_format(args.output_format),
        quality=args.quality,
        limits=ImageLimits(settings.max_upload_bytes, settings.max_input_pixels),
        max_output_pixels=settings.max_output_pixels,
        quiet=args.quiet,
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
