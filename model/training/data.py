"""Training images: random crops of a folder of HR photographs, or of paired HR/LR folders.

Samples are addressed by a global sample number ``n``, not by file: ``n`` picks the file
(through a permutation of the files drawn per epoch from the seed) and the crop and flip
(from the seed and ``n``). A run that resumes at step ``s`` therefore reads exactly the
samples an uninterrupted run would have read from step ``s`` on, however many data loader
workers either used, and every process of a multi-GPU run reads its own share.

A file that cannot be read is skipped, never fatal: the sample moves on to the next file
of the permutation and the skipped path travels with the batch, so the caller can count it
once. Folders are searched recursively; a pair is an HR and an LR file at the same relative
path (any image suffix each).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from megasr.errors import InvalidParameterError, MegaSRError
from megasr.imaging.decode import decode_image
from megasr.imaging.image import IMAGE_SUFFIXES, ImageLimits

# Training photographs are the user's own files, not uploads: generous limits, still a
# backstop against a decompression bomb in a scraped data set.
TRAINING_LIMITS = ImageLimits(max_bytes=1 << 30, max_pixels=200_000_000)


def find_images(folders: Sequence[Path]) -> list[Path]:
    """Every image file under ``folders`` (recursively), in a fixed order."""
    files: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise InvalidParameterError(f"{folder}: not a folder")
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InvalidParameterError(f"{folder}: no image files in this folder")
        files += [p for p in found if p.is_file()]
    return files


def pair_images(hr_folders: Sequence[Path], lr_folders: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(HR, LR) pairs by relative path without suffix, the i-th HR folder with the i-th LR."""
    if len(hr_folders) != len(lr_folders):
        raise InvalidParameterError("give one LR folder for each HR folder, in the same order")
    pairs = []
    for hr_folder, lr_folder in zip(hr_folders, lr_folders, strict=True):
        lr = {_key(p, lr_folder): p for p in find_images([lr_folder])}
        found = [
            (p, lr[_key(p, hr_folder)])
            for p in find_images([hr_folder])
            if _key(p, hr_folder) in lr
        ]
        if not found:
            raise InvalidParameterError(f"{hr_folder} and {lr_folder} have no file in common")
        pairs += found
    return pairs


@dataclass(frozen=True)
class CropOptions:
    """How a training sample is cut: ``crop`` HR pixels a side; LR sides are ``crop / scale``."""

    crop: int
    scale: int = 4
    hflip: bool = True
    vflip: bool = False
    seed: int = 0
    limits: ImageLimits = TRAINING_LIMITS

    def __post_init__(self) -> None:
        if self.crop < self.scale or self.crop % self.scale:
            raise InvalidParameterError(
                f"the crop ({self.crop}) must be a positive multiple of the scale ({self.scale})"
            )


class TrainingCrops(Dataset):
    """``dataset[n]``: sample number ``n`` as ``{"hr", "lr" (paired only), "skipped"}``."""

    def __init__(
        self, sources: Sequence[Path] | Sequence[tuple[Path, Path]], options: CropOptions
    ) -> None:
        if not sources:
            raise InvalidParameterError("the training set holds no images")
        self.sources = list(sources)
        self.options = options
        self._permutations: dict[int, np.ndarray] = {}

    def __getitem__(self, number: int) -> dict:
        count = len(self.sources)
        epoch, position = divmod(number, count)
        order = self._permutation(epoch)
        rng = np.random.default_rng([self.options.seed, number])
        skipped: list[str] = []
        for attempt in range(count):
            source = self.sources[order[(position + attempt) % count]]
            try:
                sample = self._crop(source, rng)
            except MegaSRError as error:
                skipped.append(f"{_first(source)}: {error.detail}")
                continue
            return {**sample, "skipped": skipped}
        raise InvalidParameterError(f"none of the {count} training images can be read")

    def first_readable(self) -> None:
        """Raise unless some image decodes: an all-broken set fails now, in one line, rather
        than inside a data loader worker."""
        self[0]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.options.seed, epoch, len(self.sources)])
            self._permutations = {epoch: rng.permutation(len(self.sources))}
        return self._permutations[epoch]

    def _crop(self, source: Path | tuple[Path, Path], rng: np.random.Generator) -> dict:
        options = self.options
        if isinstance(source, tuple):
            hr, lr = (read_rgb(path, options.limits) for path in source)
            _check_pair(source, hr, lr, options.scale)
        else:
            hr, lr = read_rgb(source, options.limits), None
        hr = _pad_to(hr, options.crop)
        top = int(rng.integers(0, (hr.shape[0] - options.crop) // options.scale + 1))
        left = int(rng.integers(0, (hr.shape[1] - options.crop) // options.scale + 1))
        flips = rng.random(2)
        sample = {"hr": _cut(hr, top * options.scale, left * options.scale, options.crop)}
        if lr is not None:
            side = options.crop // options.scale
            sample["lr"] = _cut(_pad_to(lr, side), top, left, side)
        for name, image in sample.items():
            if options.hflip and flips[0] < 0.5:
                image = image[:, :, ::-1]
            if options.vflip and flips[1] < 0.5:
                image = image[:, ::-1, :]
            sample[name] = torch.from_numpy(np.ascontiguousarray(image))
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack the images of a batch; gather every path skipped on the way."""
    batch: dict = {"skipped": [path for sample in samples for path in sample["skipped"]]}
    for key in ("hr", "lr"):
        if key in samples[0]:
            batch[key] = torch.stack([sample[key] for sample in samples])
    return batch


class SampleNumbers(Sampler[int]):
    """The endless stream of sample numbers of one process, from micro-batch ``first`` on.

    Micro-batch ``b`` of process ``rank`` (of ``world``) holds samples
    ``((b * world + rank) * batch_size) + 0 .. batch_size - 1``.
    """

    def __init__(self, first: int, batch_size: int, world: int = 1, rank: int = 0) -> None:
        self.first, self.batch_size, self.world, self.rank = first, batch_size, world, rank

    def __iter__(self) -> Iterator[int]:
        index = self.first
        while True:
            start = (index * self.world + self.rank) * self.batch_size
            yield from range(start, start + self.batch_size)
            index += 1


def read_rgb(path: Path, limits: ImageLimits) -> np.ndarray:
    """A file as float32 sRGB (H, W, 3) in [0, 1]; alpha dropped, gray expanded."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidParameterError(f"cannot read the file: {error.strerror}") from error
    return decode_image(data, limits).rgb


def load_held_out(
    folders: Sequence[Path], limits: ImageLimits = TRAINING_LIMITS, most: int | None = None
) -> tuple[list[tuple[str, Tensor]], list[str]]:
    """Every readable image under ``folders`` as (name, (3, H, W) tensor), and the skipped;
    with ``most``, at most that many files, evenly spaced through the sorted list.

    The name (the path under its folder, without suffix) seeds the image's degradation.
    """
    files = [(folder, path) for folder in folders for path in find_images([folder])]
    if most is not None and len(files) > most:
        files = [files[i] for i in np.linspace(0, len(files) - 1, most).round().astype(int)]
    images, skipped = [], []
    for folder, path in files:
        try:
            rgb = read_rgb(path, limits)
        except MegaSRError as error:
            skipped.append(f"{path}: {error.detail}")
            continue
        images.append((_key(path, folder), torch.from_numpy(rgb.transpose(2, 0, 1).copy())))
    return images, skipped


def center_crop(image: Tensor, side: int, multiple: int) -> Tensor:
    """The central part of (C, H, W) no larger than ``side``, sides cut to ``multiple``."""
    height = min(image.shape[-2], side) // multiple * multiple
    width = min(image.shape[-1], side) // multiple * multiple
    if height == 0 or width == 0:
        raise InvalidParameterError(f"an image of {tuple(image.shape[-2:])} is too small")
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top : top + height, left : left + width]


def _pad_to(image: np.ndarray, side: int) -> np.ndarray:
    """Mirror an image smaller than ``side`` out to it (Real-ESRGAN pads small images so)."""
    pad_h, pad_w = max(0, side - image.shape[0]), max(0, side - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
    return image


def _cut(image: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    return image[top : top + side, left : left + side].transpose(2, 0, 1)


def _check_pair(paths: tuple[Path, Path], hr: np.ndarray, lr: np.ndarray, scale: int) -> None:
    expected = (lr.shape[0] * scale, lr.shape[1] * scale)
    if hr.shape[0] // scale * scale != expected[0] or hr.shape[1] // scale * scale != expected[1]:
        raise InvalidParameterError(
            f"HR {hr.shape[1]}x{hr.shape[0]} is not {scale} times its LR {paths[1].name} "
            f"({lr.shape[1]}x{lr.shape[0]})"
        )


def _key(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _first(source: Path | tuple[Path, Path]) -> Path:
    return source[0] if isinstance(source, tuple) else source
