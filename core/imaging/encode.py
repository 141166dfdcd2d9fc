"""Encode an upscaled sRGB float image to PNG, JPEG or WebP bytes.

The output formats are the three every browser shows. PNG and WebP keep alpha; JPEG cannot, so
a transparent image is composited over white first (transparent pixels usually hold black or
garbage colour, which would otherwise show). PNG is written with 16 bits per sample when the
source had 16 (Pillow cannot write 16-bit colour PNGs, see :mod:`megasr.imaging.png16`) and
carries an sRGB chunk; JPEG and WebP are left untagged, which every viewer reads as sRGB.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from PIL import Image, PngImagePlugin

from megasr.errors import InvalidParameterError
from megasr.imaging.png16 import encode_png16


@dataclass(frozen=True)
class OutputFormat:
    """How one output format is served and what it can hold."""

    name: str
    content_type: str
    extension: str
    keeps_alpha: bool
    default_quality: int | None  # None: lossless, ``quality`` is ignored


OUTPUT_FORMATS: Mapping[str, OutputFormat] = MappingProxyType(
    {
        "png": OutputFormat("png", "image/png", ".png", keeps_alpha=True, default_quality=None),
        "jpeg": OutputFormat("jpeg", "image/jpeg", ".jpg", keeps_alpha=False, default_quality=90),
        "webp": OutputFormat("webp", "image/webp", ".webp", keeps_alpha=True, default_quality=90),
    }
)
_ALIASES = {"jpg": "jpeg"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"


def normalize_format(name: str) -> str:
    """The canonical output format for a user's spelling ("JPG" -> "jpeg")."""
    key = name.strip().lower().lstrip(".")
    key = _ALIASES.get(key, key)
    if key not in OUTPUT_FORMATS:
        raise InvalidParameterError(
            f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {name!r}"
        )
    return key


def default_output_format(source_format: str) -> str:
    """The input's own format when it is an output format, else PNG (lossless, keeps alpha)."""
    key = source_format.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in OUTPUT_FORMATS else "png"


def encode_image(
    rgb: np.ndarray,
    alpha: np.ndarray | None,
    fmt: str,
    quality: int | None = None,
    bit_depth: int = 8,
    grayscale: bool = False,
) -> bytes:
    """Encode float32 ``rgb`` (H, W, 3) and ``alpha`` (H, W) or None, all in [0, 1].

    ``quality`` (1 to 100) applies to JPEG and WebP and is ignored for lossless PNG.
    ``bit_depth`` 16 gives a 16-bit PNG and is ignored by the 8-bit-only JPEG and WebP.
    ``grayscale`` writes one luma channel (ITU-R 601, as Pillow's L conversion) for a gray source.
    """
    output = OUTPUT_FORMATS[normalize_format(fmt)]
    if quality is not None and not 1 <= quality <= 100:
        raise InvalidParameterError(f"quality must be between 1 and 100, got {quality}")
    if bit_depth not in (8, 16):
        raise InvalidParameterError(f"bit depth must be 8 or 16, got {bit_depth}")
    if alpha is not None and alpha.shape != rgb.shape[:2]:
        raise ValueError(f"alpha of shape {alpha.shape} does not match rgb of {rgb.shape}")
    if alpha is not None and not output.keeps_alpha:
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])
        alpha = None
    samples = _interleave(rgb, alpha, grayscale)
    if output.name == "png" and bit_depth == 16:
        return encode_png16(_quantize(samples, np.uint16))
    return _encode_8bit(_quantize(samples, np.uint8), output, quality)


def _interleave(rgb: np.ndarray, alpha: np.ndarray | None, grayscale: bool) -> np.ndarray:
    """One float32 (H, W, C) array of color (or luma) and alpha, clipped to [0, 1]."""
    color_channels = 1 if grayscale else 3
    samples = np.empty((*rgb.shape[:2], color_channels + (alpha is not None)), np.float32)
    samples[..., :color_channels] = (rgb @ _LUMA)[..., None] if grayscale else rgb
    if alpha is not None:
        samples[..., -1] = alpha
    return np.clip(samples, 0.0, 1.0, out=samples)


def _quantize(samples: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """Round [0, 1] floats to the full integer range, in place to spare full-size temporaries."""
    samples *= np.iinfo(dtype).max
    samples += 0.5
    return samples.astype(dtype)


def _encode_8bit(pixels: np.ndarray, output: OutputFormat, quality: int | None) -> bytes:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    if output.name == "webp" and image.mode in ("L", "LA"):
        image = image.convert("RGBA" if image.mode == "LA" else "RGB")  # WebP has no gray
    buffer = io.BytesIO()
    if output.name == "png":
        image.save(buffer, "PNG", pnginfo=_srgb_chunk())
    else:
        image.save(buffer, output.name.upper(), quality=quality or output.default_quality)
    return buffer.getvalue()


def _srgb_chunk() -> PngImagePlugin.PngInfo:
    """PNG's 1-byte sRGB chunk (perceptual intent): the pixels are sRGB, without an ICC blob."""
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")
    return info
