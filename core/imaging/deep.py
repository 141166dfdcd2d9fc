"""Full 16-bit samples of 16-bit colour PNG and TIFF files, decoded by Pillow.

Pillow has no 16-bit colour mode: it reads 48/64-bit RGB(A) into 8-bit RGB(A) through a raw
mode that keeps one byte of each sample (the high one). The file's tile names that raw mode, so
decoding the same tile a second time with the raw mode that keeps the *other* byte recovers the
low bytes, through Pillow's own decompression and PNG unfiltering, with no second decoder.
"""

from __future__ import annotations

import io
import sys

import numpy as np
from PIL import Image, ImageFile, ImageOps

_NATIVE_LOW = "B" if sys.byteorder == "little" else "L"

# The raw mode Pillow picked -> the raw mode that reads the other byte of every sample.
_SECOND_PASS = {
    f"{layout};16{order}": f"{layout};16{other}"
    for layout in ("RGB", "RGBX", "RGBA")
    for order, other in (("B", "L"), ("L", "B"), ("N", _NATIVE_LOW))
}
# A 16-bit gray+alpha PNG is 4 bytes a pixel, so reading it as 8-bit RGBA yields every byte.
_SECOND_PASS["LA;16B"] = "RGBA"


def second_pass_rawmode(image: ImageFile.ImageFile) -> str | None:
    """The raw mode of the low-byte pass, or None when ``image`` is not 16-bit colour.

    Call it before the image is loaded: loading clears the tile.
    """
    rawmodes = {_rawmode(tile.args) for tile in image.tile}
    return _SECOND_PASS.get(rawmodes.pop()) if len(rawmodes) == 1 else None


def deep_color_samples(image: ImageFile.ImageFile, data: bytes, rawmode: str) -> np.ndarray:
    """uint16 samples (H, W, C): C is 2 (gray, alpha), 3 (RGB) or 4 (RGBA).

    ``image`` is the normal (high-byte) decode of ``data``, loaded and EXIF-transposed;
    ``rawmode`` comes from :func:`second_pass_rawmode`.
    """
    second = _decode_with_rawmode(data, str(image.format), rawmode)
    if rawmode == "RGBA":
        return second.view(">u2")
    return (np.asarray(image).astype(np.uint16) << 8) | second


def _decode_with_rawmode(data: bytes, pillow_format: str, rawmode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=[pillow_format]) as image:
        image.tile = [tile._replace(args=_with_rawmode(tile.args, rawmode)) for tile in image.tile]
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return np.asarray(image)


def _rawmode(args: object) -> str | None:
    """PNG tiles carry the raw mode as their args; TIFF tiles as the first item of a tuple."""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(args: object, rawmode: str) -> object:
    return rawmode if isinstance(args, str) else (rawmode, *args[1:])  # type: ignore[index]
