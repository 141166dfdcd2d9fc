"""``megasr client upscale FILE --url URL``: upscale through a running service."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megasr.cli.upscale_arguments import (
    DIFFUSION_FIELDS,
    add_diffusion_arguments,
    add_size_arguments,
)
from megasr.errors import InvalidParameterError
from megasr.jobs import JobStatus, JobView

DEFAULT_URL = "http://127.0.0.1:8000"
PARAMS = (
    "scale", "width", "height", "engine", "output_format", "quality", "webhook_url",
    *DIFFUSION_FIELDS,
)  # fmt: skip


def add_parser(commands: argparse._SubParsersAction) -> None:
    client = commands.add_parser(
        "client", help="use a running MegaSR service", description="Talk to a MegaSR service."
    )
    actions = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    parser = actions.add_parser(
        "upscale",
        help="upload an image, wait for the job, download the result",
        description="Upload FILE to the service, follow the job, and save the result.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the image to upscale")
    parser.add_argument(
        "--url",
        default=os.environ.get("MEGASR_URL", DEFAULT_URL),
        help=f"the service (default: $MEGASR_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MEGASR_API_KEY"),
        help="API key (default: $MEGASR_API_KEY)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="output file or folder (default: FILE's folder, named FILE-megasr.EXT)",
    )
    add_size_arguments(parser)
    parser.add_argument("--engine", default="auto", help="engine name (default: auto)")
    parser.add_argument("--format", dest="output_format", help="png, jpeg or webp")
    parser.add_argument("--quality", type=int, help="JPEG/WebP quality, 1 to 100")
    parser.add_argument("--webhook-url", help="the service POSTs the finished job to this URL")
    add_diffusion_arguments(parser)
    parser.add_argument("--timeout", type=float, default=None, help="give up after seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run_upscale)


def run_upscale(args: argparse.Namespace) -> int:
    from megasr.client import Client

    params = {name: getattr(args, name) for name in PARAMS if getattr(args, name) is not None}
    if not args.file.is_file():
        raise InvalidParameterError(f"no such file: {args.file}")
    report = None if args.quiet else _print_progress
    with Client(args.url, api_key=args.api_key) as client:
        job = client.submit(args.file, **params)
        if not args.quiet:
            print(f"job {job.id}", file=sys.stderr, flush=True)
        try:
            job = client.wait(job.id, on_progress=report, timeout_s=args.timeout)
        except TimeoutError as exc:
            print(f"megasr: {exc}; job {job.id} goes on", file=sys.stderr)
            return 1
        destination = _destination(args.file, args.output, job)
        client.download(job.id, destination)
    if not args.quiet:
        print(f"wrote {destination} ({job.output.width}x{job.output.height})", file=sys.stderr)
    return 0


def _destination(source: Path, output: Path | None, job: JobView) -> Path:
    extension = "jpg" if job.output.format == "jpeg" else job.output.format
    name = f"{source.stem}-megasr.{extension}"
    if output is None:
        return source.parent / name
    if output.is_dir():
        return output / name
    return output


def _print_progress(job: JobView) -> None:
    if job.status is JobStatus.QUEUED and job.queue_position:
        line = f"queued, {job.queue_position} ahead"
    elif job.status is JobStatus.RUNNING:
        line = f"running {job.stage or ''} {job.progress:.0%}".replace("  ", " ")
    else:
        line = str(job.status)
    print(line, file=sys.stderr, flush=True)
