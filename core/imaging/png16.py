"""A 16-bit PNG writer, because Pillow cannot write 48/64-bit RGB(A) or 32-bit gray+alpha PNGs.

The format is small enough to write directly: an IHDR, an sRGB chunk, the zlib-compressed
scanlines and an IEND, each chunk with its CRC. Every scanline uses the "Sub" filter (each byte
minus the same byte of the pixel to its left), which numpy computes in one subtraction and which
compresses smooth photographs far better than no filter.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, ...)
_SUB_FILTER = 1
_SRGB_PERCEPTUAL = b"\x00"
_IDAT_SIZE = 1 << 20  # split the stream so no chunk nears PNG's 2**31 - 1 byte limit


def encode_png16(samples: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG bytes of uint16 ``samples`` (H, W, C), C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA."""
    height, width, channels = samples.shape
    if channels not in _COLOR_TYPES:
        raise ValueError(f"a PNG has 1 to 4 channels, got {channels}")
    rows = np.ascontiguousarray(samples, dtype=">u2").reshape(height, -1).view(np.uint8)
    pixel_bytes = 2 * channels
    scanlines = np.empty((height, 1 + rows.shape[1]), np.uint8)
    scanlines[:, 0] = _SUB_FILTER
    scanlines[:, 1 : 1 + pixel_bytes] = rows[:, :pixel_bytes]
    np.subtract(rows[:, pixel_bytes:], rows[:, :-pixel_bytes], out=scanlines[:, 1 + pixel_bytes :])
    header = struct.pack(">IIBBBBB", width, height, 16, _COLOR_TYPES[channels], 0, 0, 0)
    stream = zlib.compress(scanlines.tobytes(), compress_level)
    idat = (_chunk(b"IDAT", stream[i : i + _IDAT_SIZE]) for i in range(0, len(stream), _IDAT_SIZE))
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"sRGB", _SRGB_PERCEPTUAL),
            *idat,
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
