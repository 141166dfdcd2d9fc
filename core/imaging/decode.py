"""Turn uploaded bytes into a :class:`DecodedImage`, or refuse them with a typed error.

Every file goes through Pillow (with pillow-heif registered for HEIC). The byte and pixel limits
are checked on the header, before a single pixel is decoded, so a file that claims 100000 x
100000 pixels costs microseconds to refuse. Pillow's own decompression-bomb guard
(``Image.MAX_IMAGE_PIXELS``, about 179 MP before it raises) is left at its default as a
process-wide backstop; the per-call limit is :attr:`ImageLimits.max_pixels`. Truncated files are
errors because Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays at its default, False: a cut
upload must never come back as an image that is half grey.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError, features

from megasr.errors import (
    ImageTooLargeError,
    InvalidImageError,
    MegaSRError,
    UnsupportedFormatError,
)
from megasr.imaging.color import is_srgb_profile, to_srgb
from megasr.imaging.deep import deep_color_samples, second_pass_rawmode
from megasr.imaging.image import DecodedImage, ImageLimits

pillow_heif.register_heif_opener()

# Pillow's format id -> the name the project reports. MPO is how Pillow sees the JPEGs that
# phones write with a depth map or preview appended; the first image is the photo.
_FORMATS = {
    "PNG": "png",
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "GIF": "gif",
    "HEIF": "heif",
}
if features.check("avif"):
    _FORMATS["AVIF"] = "avif"

# The parsers to try; MPO files come out of the JPEG parser.
_PARSERS = [pillow_format for pillow_format in _FORMATS if pillow_format != "MPO"]
INPUT_FORMATS: tuple[str, ...] = tuple(sorted(set(_FORMATS.values())))

# Source mode -> (working mode without alpha, working mode with alpha or None).
_WORKING_MODES: dict[str, tuple[str, str | None]] = {
    "1": ("L", "LA"),
    "L": ("L", "LA"),
    "LA": ("L", "LA"),
    "La": ("L", "LA"),
    "P": ("RGB", "RGBA"),
    "PA": ("RGB", "RGBA"),
    "RGB": ("RGB", "RGBA"),
    "RGBX": ("RGB", "RGBA"),
    "RGBA": ("RGB", "RGBA"),
    "RGBa": ("RGB", "RGBA"),
    "YCbCr": ("RGB", None),
    "CMYK": ("CMYK", None),
    "LAB": ("LAB", None),
    "I;16": ("I;16", None),
    "I;16L": ("I;16L", None),
    "I;16B": ("I;16B", None),
    "I;16N": ("I;16N", None),
    "I": ("I", None),
    "F": ("F", None),
}
_DEEP_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # these swap width and height
_MULTI_FRAME_KIND = {"TIFF": "multi-page", "HEIF": "multi-image"}
_DEFAULT_LIMITS = ImageLimits()  # frozen, so one shared default is safe


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding the pixels."""

    format: str
    width: int
    height: int
    frames: int
    mode: str


def check_upload(data: bytes, limits: ImageLimits = _DEFAULT_LIMITS) -> ImageInfo:
    """What a gateway needs to know of an upload, without decoding it at full size.

    The header gives the format, size, mode and frame count, checked against ``limits``; the
    size is the upright one (the EXIF orientation read from the header, as :func:`decode_image`
    applies it). Where a check of the whole file is cheap it is made: a PNG's chunk CRCs
    through the end marker (no inflating), a JPEG decoded at 1/8 scale with ``draft()`` (its
    entropy-coded data read to the end, into an image 64 times smaller). Anything else
    in the data is the full decode's to find, on a worker.
    """
    with _open(data, limits) as image:
        with _decode_errors("image"):
            info = _info(image)
            if image.mode not in _WORKING_MODES:
                raise UnsupportedFormatError(
                    f"{image.format} images in mode {image.mode} are not supported"
                )
            transposed = _header_orientation(image) in _TRANSPOSING_ORIENTATIONS
        with _decode_errors(f"{info.format.upper()} image"):
            _check_whole_file(image)
    if transposed:
        return ImageInfo(info.format, info.height, info.width, info.frames, info.mode)
    return info


def decode_image(data: bytes, limits: ImageLimits = _DEFAULT_LIMITS) -> DecodedImage:
    """Decode an upload to sRGB float32 with alpha split off.

    The first frame of an animation or multi-page file is used (and a note says so), the EXIF
    orientation is applied, ICC profiles are converted to sRGB and 16-bit sources keep their
    precision. An alpha channel that is fully opaque everywhere is dropped, so the engines do
    not upscale a plane that carries nothing.
    """
    with _open(data, limits) as image:
        with _decode_errors("image"):
            info = _info(image)
        with _decode_errors(f"{info.format.upper()} image"):
            color, alpha, bit_depth, notes = _read_pixels(image, data)
    if info.frames > 1:
        kind = _MULTI_FRAME_KIND.get(str(image.format), "animated")
        notes.insert(0, f"{kind} {image.format}: first of {info.frames} frames used")
    if alpha is not None and alpha.min() >= 1.0:
        alpha = None
        notes.append("fully opaque alpha channel dropped")
    grayscale = color.shape[2] == 1
    rgb = np.repeat(color, 3, axis=2) if grayscale else color
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        alpha=alpha,
        source_format=info.format,
        bit_depth=bit_depth,
        grayscale=grayscale,
        notes=tuple(notes),
    )


@contextmanager
def _open(data: bytes, limits: ImageLimits) -> Iterator[ImageFile.ImageFile]:
    """Open ``data`` lazily (header only) after the byte checks, then check the pixel count."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(
            f"image of {len(data)} bytes is over the limit of {limits.max_bytes} bytes"
        )
    with _decode_errors("image"):
        image = _identify(data, limits)
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImageError(f"the image header gives an empty size of {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageTooLargeError(
                f"image of {width}x{height} pixels is over the limit of {limits.max_pixels} pixels"
            )
        yield image


def _identify(data: bytes, limits: ImageLimits) -> ImageFile.ImageFile:
    """Open with the accepted formats' parsers only; tell a foreign image from garbage."""
    try:
        return Image.open(io.BytesIO(data), formats=_PARSERS)
    except Image.DecompressionBombError as exc:
        # Pillow raises past 2 * MAX_IMAGE_PIXELS, so the image is over that and maybe ours.
        limit = min(limits.max_pixels, 2 * int(Image.MAX_IMAGE_PIXELS or 0))
        raise ImageTooLargeError(
            f"image is over the limit of {limit} pixels (refused as a possible decompression bomb)"
        ) from exc
    except UnidentifiedImageError:
        pass
    try:
        with Image.open(io.BytesIO(data)) as foreign:
            name = foreign.format
    except Exception:
        raise InvalidImageError(
            "the data is not an image in a known format (or it is corrupt)"
        ) from None
    raise UnsupportedFormatError(
        f"{name} images are not supported; send one of: {', '.join(INPUT_FORMATS)}"
    )


@contextmanager
def _decode_errors(what: str) -> Iterator[None]:
    """Turn whatever Pillow and its plugins raise on a broken file into InvalidImageError.

    Corrupt input surfaces as OSError, SyntaxError, ValueError, EOFError, struct.error and more,
    depending on the plugin, so everything but the project's own errors and MemoryError (a
    server problem, not the client's) is caught.
    """
    try:
        yield
    except (MegaSRError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what} refused as a possible decompression bomb") from exc
    except Exception as exc:
        raise InvalidImageError(f"the {what} is truncated or corrupt: {exc}") from exc


def _check_whole_file(image: ImageFile.ImageFile) -> None:
    """The cheap whole-file checks of :func:`check_upload` (see there)."""
    if image.format == "PNG":
        image.verify()
    elif image.format in ("JPEG", "MPO"):
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()


def _header_orientation(image: ImageFile.ImageFile) -> int:
    """The EXIF orientation the header holds, without loading the pixels (a PNG loads them
    to look for an eXIf chunk after its image data; one that comes first is in ``info``)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return _exif_orientation(image)


def _exif_orientation(image: ImageFile.ImageFile) -> int:
    """The EXIF orientation (1 to 8; 1 is upright) of what has been read so far."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def _info(image: ImageFile.ImageFile) -> ImageInfo:
    pillow_format = str(image.format)
    # An MPO's extra images are depth maps and previews, not frames of the picture.
    frames = 1 if pillow_format == "MPO" else int(getattr(image, "n_frames", 1))
    return ImageInfo(_FORMATS[pillow_format], image.width, image.height, frames, image.mode)


def _read_pixels(
    image: ImageFile.ImageFile, data: bytes
) -> tuple[np.ndarray, np.ndarray | None, int, list[str]]:
    """Decode the first frame: (color (H, W, 1 or 3), alpha (H, W) or None, bit depth, notes).

    Color and alpha are float32 in [0, 1], sRGB, upright.
    """
    if image.mode not in _WORKING_MODES:
        raise UnsupportedFormatError(
            f"{image.format} images in mode {image.mode} are not supported"
        )
    icc_profile = image.info.get("icc_profile") or None
    if icc_profile and is_srgb_profile(icc_profile):
        icc_profile = None
    # Read before the load, which clears the tile that names the raw mode.
    deep_rawmode = second_pass_rawmode(image)
    notes: list[str] = []
    orientation = _orientation(image)
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
    ImageOps.exif_transpose(image, in_place=True)
    if deep_rawmode and icc_profile:
        notes.append("16-bit samples reduced to 8 bits for the ICC conversion")
    elif deep_rawmode and "transparency" not in image.info:
        return *_deep_color(image, data, deep_rawmode), notes
    color, alpha, bit_depth, note = _pillow_pixels(image, icc_profile)
    return color, alpha, bit_depth, [*notes, *([note] if note else [])]


def _deep_color(
    image: ImageFile.ImageFile, data: bytes, rawmode: str
) -> tuple[np.ndarray, np.ndarray | None, int]:
    samples = deep_color_samples(image, data, rawmode)
    channels = samples.shape[2]
    color = _unit(samples[..., :1] if channels == 2 else samples[..., :3])
    alpha = _unit(samples[..., -1]) if channels in (2, 4) else None
    return color, alpha, 16


def _pillow_pixels(
    image: Image.Image, icc_profile: bytes | None
) -> tuple[np.ndarray, np.ndarray | None, int, str | None]:
    """Pixels of a loaded image through Pillow's modes: (color, alpha, bit depth, note)."""
    working = _to_working_mode(image)
    alpha = None
    if working.mode in ("LA", "RGBA"):
        alpha = _unit(np.asarray(working.getchannel("A")))
        working = working.convert(working.mode[:-1])
    note = None
    if icc_profile and working.mode in _DEEP_GRAY_MODES:
        note = "16-bit grayscale reduced to 8 bits for the ICC conversion"
        working = Image.fromarray(_to_uint8(_deep_gray(working)))
    if working.mode in _DEEP_GRAY_MODES:
        return _deep_gray(working)[..., None], alpha, 16, note
    was_gray = working.mode == "L"
    working, color_note = to_srgb(working, icc_profile)
    note = "; ".join(filter(None, (note, color_note))) or None
    if was_gray and working.mode == "RGB":  # a gray profile maps to neutral sRGB
        working = working.convert("L")
    color = _unit(np.asarray(working))
    return (color[..., None] if color.ndim == 2 else color), alpha, 8, note


def _orientation(image: ImageFile.ImageFile) -> int:
    """The EXIF orientation (1 to 8; 1 is upright), read after the load for late EXIF chunks."""
    image.load()
    return _exif_orientation(image)


def _to_working_mode(image: Image.Image) -> Image.Image:
    """Convert to L, LA, RGB, RGBA, CMYK, LAB or a deep gray mode.

    Palette transparency and PNG's single-colour transparency become an alpha channel.
    """
    without_alpha, with_alpha = _WORKING_MODES[image.mode]
    target = with_alpha if with_alpha and image.has_transparency_data else without_alpha
    return image if image.mode == target else image.convert(target)


def _deep_gray(image: Image.Image) -> np.ndarray:
    """Float32 (H, W) of a 16-bit or 32-bit grayscale image.

    Mode I is on Pillow's 16-bit scale (its PNG writer stores I as 0..65535); mode F is taken
    as already in [0, 1].
    """
    samples = np.asarray(image)
    if image.mode == "F":
        return np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return _unit(np.clip(samples, 0, 65535).astype(np.uint16))


def _unit(samples: np.ndarray) -> np.ndarray:
    """Integer samples (8 or 16 bits) as float32 in [0, 1]."""
    values = samples.astype(np.float32)
    values /= 255.0 if samples.dtype.itemsize == 1 else 65535.0
    return values


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (values * 255.0 + 0.5).astype(np.uint8)
