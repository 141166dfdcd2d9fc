"""``megasr data prepare``: folders of HR photographs (LSDIR, FFHQ, anything alike) into the
layout ``megasr train megasr`` reads, with a manifest that lets anyone check it.

- Every image under each source folder (recursively) is decoded once, as training decodes
  it (the project's decoder: sRGB, orientation applied, alpha dropped), and stored as 8-bit
  PNG.
- A validation split is drawn per *source image*, never per crop, from a hash of the seed
  and the image's path (so it does not move when images are added): ``val/`` holds one
  centre crop of each held-out image, the fixed crop the trainer validates on.
- ``train/`` holds the other images cut into ``crop``-pixel tiles on a grid of ``stride``
  (the last row and column flush with the border, so nothing is left out), as BasicSR's
  sub-image extraction does for DF2K and LSDIR; images smaller than a crop are skipped
  and counted.
- ``manifest.jsonl`` has one line per written file: its path, its sha256, its source and
  the source's sha256, and where it was cut. ``dataset.json`` has the settings and counts.
- A file that cannot be read or decoded makes the whole command fail, with the count and
  the first few names, and nothing is written: a scraped set with broken files should be
  looked at, not silently thinned. ``skip_broken`` writes the rest and records the broken
  ones in ``dataset.json``.

The output folder appears whole or not at all (written beside it and renamed).
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from megasr.errors import InvalidParameterError, MegaSRError
from megasr.files import replace_directory
from megasr.imaging.decode import decode_image
from megasr.model.training.data import TRAINING_LIMITS, find_images

FORMAT = "megasr-dataset/1"
MANIFEST = "manifest.jsonl"
SUMMARY = "dataset.json"
SHOWN_BROKEN = 5


@dataclass(frozen=True)
class PrepareOptions:
    crop: int = 512
    stride: int = 512
    val_fraction: float = 0.01
    """Share of source images held out for validation (at least one when above 0)."""
    seed: int = 0
    skip_broken: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        if self.crop < 8 or self.stride < 1:
            raise InvalidParameterError("the crop must be at least 8 pixels, the stride 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidParameterError("the validation fraction must be in [0, 1)")
        if self.workers < 0:
            raise InvalidParameterError("workers must be 0 or more")


@dataclass
class PrepareSummary:
    sources: int = 0
    train_images: int = 0
    train_crops: int = 0
    val_images: int = 0
    too_small: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    source: Path
    name: str
    """``<source folder name>/<path inside it without suffix>``: unique and readable."""
    split: str


def prepare_dataset(
    folders: Sequence[Path],
    out: Path,
    options: PrepareOptions,
    progress: Callable[[Iterator], Iterator] = iter,
) -> PrepareSummary:
    """Write the training layout of ``folders`` to ``out`` (which must not exist yet)."""
    if out.exists() and any(out.iterdir()):
        raise InvalidParameterError(f"{out} exists and is not empty; choose a new folder")
    jobs = _jobs(folders, options)
    summary = PrepareSummary(sources=len(jobs))

    def fill(folder: Path) -> None:
        with (folder / MANIFEST).open("w") as manifest:
            for job, result in progress(_results(jobs, folder, options)):
                if isinstance(result, str):
                    left_out = (
                        summary.too_small if result.startswith("too small") else summary.broken
                    )
                    left_out.append(f"{job.source}: {result}")
                    continue
                for record in result:
                    manifest.write(json.dumps(record) + "\n")
                _count(summary, job, len(result))
        _refuse_broken(summary, options)
        record = {"format": FORMAT, "sources": [str(f) for f in folders], **asdict(options)}
        record.update(asdict(summary))
        (folder / SUMMARY).write_text(json.dumps(record, indent=2) + "\n")

    replace_directory(out, fill)
    return summary


def _jobs(folders: Sequence[Path], options: PrepareOptions) -> list[_Job]:
    """Every source image with its name and split; at least one held out if any is asked."""
    jobs, names = [], set()
    for folder in folders:
        for path in find_images([folder]):
            name = f"{folder.name}/{path.relative_to(folder).with_suffix('').as_posix()}"
            if name in names:
                raise InvalidParameterError(f"two source images would both be named {name}")
            names.add(name)
            jobs.append(_Job(path, name, "train"))
    draws = [_draw(options.seed, job.name) for job in jobs]
    held = {i for i, draw in enumerate(draws) if draw < options.val_fraction}
    if options.val_fraction > 0 and not held and len(jobs) > 1:
        held = {int(np.argmin(draws))}
    return [_Job(j.source, j.name, "val" if i in held else "train") for i, j in enumerate(jobs)]


def _draw(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by the seed and the image's name."""
    return zlib.crc32(f"{seed}:{name}".encode()) / 2**32


def _results(
    jobs: list[_Job], folder: Path, options: PrepareOptions
) -> Iterator[tuple[_Job, list[dict] | str]]:
    work = [(job, folder, options) for job in jobs]
    if options.workers == 0:
        yield from zip(jobs, map(_prepare_one, work), strict=True)
        return
    with ProcessPoolExecutor(options.workers) as pool:
        yield from zip(jobs, pool.map(_prepare_one, work, chunksize=4), strict=True)


def _prepare_one(work: tuple[_Job, Path, PrepareOptions]) -> list[dict] | str:
    """The manifest records of one source image, or why it was left out."""
    job, folder, options = work
    try:
        data = job.source.read_bytes()
        rgb = decode_image(data, TRAINING_LIMITS).rgb
    except OSError as error:
        return f"cannot read the file: {error.strerror}"
    except MegaSRError as error:
        return error.detail
    pixels = np.round(rgb * 255.0).astype(np.uint8)
    height, width = pixels.shape[:2]
    if min(height, width) < options.crop:
        return f"too small ({width}x{height} < {options.crop})"
    source = {"source": str(job.source), "source_sha256": hashlib.sha256(data).hexdigest()}
    if job.split == "val":
        top, left = (height - options.crop) // 2, (width - options.crop) // 2
        return [_write(folder, f"val/{job.name}.png", pixels, top, left, options, source)]
    return [
        _write(
            folder, f"train/{job.name}_{top:05d}_{left:05d}.png", pixels, top, left, options, source
        )
        for top in _starts(height, options)
        for left in _starts(width, options)
    ]


def _starts(length: int, options: PrepareOptions) -> list[int]:
    starts = list(range(0, length - options.crop + 1, options.stride))
    if starts[-1] != length - options.crop:
        starts.append(length - options.crop)
    return starts


def _write(
    folder: Path,
    name: str,
    pixels: np.ndarray,
    top: int,
    left: int,
    options: PrepareOptions,
    source: dict,
) -> dict:
    tile = pixels[top : top + options.crop, left : left + options.crop]
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="PNG", compress_level=3)
    data = buffer.getvalue()
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        **source,
        "box": [top, left, options.crop, options.crop],
    }


def _count(summary: PrepareSummary, job: _Job, written: int) -> None:
    if job.split == "val":
        summary.val_images += 1
    else:
        summary.train_images += 1
        summary.train_crops += written


def _refuse_broken(summary: PrepareSummary, options: PrepareOptions) -> None:
    if not summary.broken or options.skip_broken:
        if summary.train_crops == 0:
            raise InvalidParameterError("no training crops: every image is too small or broken")
        return
    shown = "; ".join(summary.broken[:SHOWN_BROKEN])
    more = len(summary.broken) - SHOWN_BROKEN
    raise InvalidParameterError(
        f"{len(summary.broken)} of {summary.sources} source files cannot be decoded, nothing "
        f"was written ({shown}{f'; and {more} more' if more > 0 else ''}); remove or fix "
        "them, or pass --skip-broken"
    )


def verify_dataset(folder: Path) -> int:
    """Check every file of ``folder``'s manifest against its sha256; the count checked."""
    checked = 0
    for line in (folder / MANIFEST).read_text().splitlines():
        record = json.loads(line)
        digest = hashlib.sha256((folder / record["file"]).read_bytes()).hexdigest()
        if digest != record["sha256"]:
            raise InvalidParameterError(f"{record['file']}: sha256 differs from the manifest")
        checked += 1
    return checked
