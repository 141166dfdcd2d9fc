"""Real image files built in code, for the decode/encode tests.

Pillow, pillow-heif and tifffile write most of them. What those cannot write is crafted by hand
from the specifications: 16-bit PNGs with every scanline filter (Pillow cannot write 16-bit
colour PNGs), a PNG header claiming a huge size, and small ICC profiles.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pillow_heif
import tifffile
from PIL import Image

pillow_heif.register_heif_opener()

BLOCK = 8
HEIGHT, WIDTH = 2 * BLOCK, 3 * BLOCK

# Six flat 8x8 blocks (2 rows x 3 columns), so lossy codecs keep block centres accurate.
BLOCK_RGB = np.array(
    [
        [[220, 30, 40], [40, 200, 60], [30, 60, 210]],
        [[250, 250, 250], [128, 128, 128], [10, 10, 10]],
    ],
    dtype=np.uint8,
)
BLOCK_GRAY = np.array([[0, 60, 120], [180, 230, 255]], dtype=np.uint8)
BLOCK_ALPHA = np.array([[255, 0, 128], [64, 255, 200]], dtype=np.uint8)
BLOCK_GRAY16 = np.array([[0, 1000, 20000], [40000, 65000, 65535]], dtype=np.uint16)


def blocks(values: np.ndarray) -> np.ndarray:
    """Expand (2, 3[, C]) block values to the full (16, 24[, C]) image."""
    return np.repeat(np.repeat(values, BLOCK, axis=0), BLOCK, axis=1)


def block_centres() -> np.ndarray:
    """A (16, 24) mask of the inner 4x4 pixels of every block, away from lossy block edges."""
    inner = np.zeros((BLOCK, BLOCK), dtype=bool)
    inner[2:6, 2:6] = True
    return np.tile(inner, (2, 3))


def save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def tiff16(samples: np.ndarray, compression: str | None = None, byteorder: str = "<") -> bytes:
    """A 16-bit RGB or RGBA (unassociated alpha) TIFF, which Pillow cannot write."""
    extra = {"extrasamples": ["unassalpha"]} if samples.shape[2] == 4 else {}
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, samples, photometric="rgb", compression=compression, byteorder=byteorder, **extra
    )
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR (valid CRC) for an 8-bit RGB image, with no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def png16(samples: np.ndarray, exif: bytes | None = None, icc: bytes | None = None) -> bytes:
    """A 16-bit PNG of (H, W, C) samples, each scanline with the next of the five filters."""
    height, width, channels = samples.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8).astype(np.int32)
    bpp = 2 * channels
    lines = []
    for y in range(height):
        kind = y % 5
        line = rows[y]
        up = rows[y - 1] if y else np.zeros_like(line)
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        predictor = [0, left, up, (left + up) // 2, _paeth(left, up, up_left)][kind]
        lines.append(bytes([kind]) + ((line - predictor) % 256).astype(np.uint8).tobytes())
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    extra = b""
    if icc is not None:
        extra += png_chunk(b"iCCP", b"test\x00\x00" + zlib.compress(icc))
    if exif is not None:
        extra += png_chunk(b"eXIf", exif)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", zlib.compress(b"".join(lines)))
        + png_chunk(b"IEND", b"")
    )


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def linear_icc_profile(gray: bool = False) -> bytes:
    """An ICC v2 display profile with a linear (gamma 1.0) tone curve.

    RGB uses the sRGB primaries (D50-adapted), so the profile differs from sRGB only in its
    curve: a stored 0.5 means half the light, which sRGB encodes as about 0.735.
    """
    description = b"Linear Gray" if gray else b"Linear RGB"
    identity_curve = b"curv" + bytes(4) + struct.pack(">I", 0)
    tags = [(b"desc", _text_description(description)), (b"wtpt", _xyz(0.9642, 1.0, 0.8249))]
    if gray:
        tags.append((b"kTRC", identity_curve))
    else:
        tags += [
            (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)),
            (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", identity_curve),
            (b"gTRC", identity_curve),
            (b"bTRC", identity_curve),
        ]
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        padded = data + bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += padded
    size = 128 + table_size + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + b"\x02\x10\x00\x00"
        + b"mntr"
        + (b"GRAY" if gray else b"RGB ")
        + b"XYZ "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(24)
        + struct.pack(">I", 0)
        + _s15(0.9642, 1.0, 0.8249)
        + bytes(48)
    )
    assert len(header) == 128
    return header + table + body


def _s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x, y, z)


def _text_description(text: bytes) -> bytes:
    return (
        b"desc"
        + bytes(4)
        + struct.pack(">I", len(text) + 1)
        + text
        + b"\x00"
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + bytes(67)
    )
