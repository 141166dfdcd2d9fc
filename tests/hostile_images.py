"""A corpus of hostile uploads, built in code: truncated, bit-flipped, decompression bombs,
huge metadata and ICC profiles, animations, 16-bit, CMYK, zero-size, wrong extensions and
formats the service does not read. Each case is (name, bytes, file name); small sources
(64x48) keep the whole corpus under a second to build and to decode.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from image_files import exif_orientation, png16, png_chunk, png_header_only, save, tiff16
from PIL import Image

Case = tuple[str, bytes, str]

RNG = np.random.default_rng(11)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
PHOTO[::4] //= 3  # some structure, so codecs have edges to keep
DEEP = RNG.integers(0, 65536, (48, 64, 3), dtype=np.uint16)
SOURCES = {
    "png": lambda: save(Image.fromarray(PHOTO), "PNG"),
    "jpeg": lambda: save(Image.fromarray(PHOTO), "JPEG", quality=90),
    "webp": lambda: save(Image.fromarray(PHOTO), "WEBP"),
    "gif": lambda: save(Image.fromarray(PHOTO).convert("P"), "GIF"),
    "tiff": lambda: save(Image.fromarray(PHOTO), "TIFF", compression="tiff_lzw"),
    "bmp": lambda: save(Image.fromarray(PHOTO), "BMP"),
    "heif": lambda: save(Image.fromarray(PHOTO), "HEIF"),
}


def corpus() -> list[Case]:
    """Every case, each with a unique name."""
    cases = [
        *_truncated(),
        *_bit_flipped(),
        *_bombs(),
        *_huge_metadata(),
        *_animated(),
        *_deep_and_cmyk(),
        *_empty_and_foreign(),
    ]
    names = [name for name, _, _ in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def _truncated() -> list[Case]:
    cases = []
    for fmt, build in SOURCES.items():
        data = build()
        for fraction in (0.02, 0.5, 0.9):
            cut = max(8, int(len(data) * fraction))
            cases.append((f"truncated-{fmt}-{int(fraction * 100)}pct", data[:cut], f"x.{fmt}"))
        cases.append((f"truncated-{fmt}-last-byte", data[:-1], f"x.{fmt}"))
    return cases


def _bit_flipped() -> list[Case]:
    cases = []
    for fmt, build in SOURCES.items():
        data = build()
        for attempt in range(4):
            damaged = bytearray(data)
            for position in RNG.integers(8, len(data), 1 + attempt * 3):
                damaged[int(position)] ^= 1 << int(RNG.integers(0, 8))
            cases.append((f"bitflip-{fmt}-{attempt}", bytes(damaged), f"x.{fmt}"))
    return cases


def _bombs() -> list[Case]:
    """Headers that claim far more pixels than the bytes hold, and real highly compressed
    images over the pixel limit."""
    zeros = zlib.compress(b"\0" * (4001 * 3000), 9)  # 4000x3000 gray of zeros: ~12 KB
    real_png_bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4000, 3000, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zeros)
        + png_chunk(b"IEND", b"")
    )
    jpeg = bytearray(SOURCES["jpeg"]())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    gif = bytearray(SOURCES["gif"]())
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen
    webp_bomb = save(Image.new("L", (3000, 3000)), "WEBP", lossless=True)
    return [
        ("bomb-png-header-100000-squared", png_header_only(100_000, 100_000), "bomb.png"),
        ("bomb-png-zeros-12mp", real_png_bomb, "bomb.png"),
        ("bomb-jpeg-sof-65000-squared", bytes(jpeg), "bomb.jpg"),
        ("bomb-gif-screen-65535-squared", bytes(gif), "bomb.gif"),
        ("bomb-webp-9mp-lossless", webp_bomb, "bomb.webp"),
        ("bomb-tiff-header", _tiff_header_only(200_000, 200_000), "bomb.tif"),
    ]


def _tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD claims ``width`` x ``height`` with no strip data."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (262, 3, 1), (273, 4, 8)]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0"


def _huge_metadata() -> list[Case]:
    text = RNG.integers(32, 127, 200_000, dtype=np.uint8).tobytes()
    png = SOURCES["png"]()
    with_text = png[:33] + png_chunk(b"tEXt", b"Comment\0" + text) + png[33:]
    many_chunks = png[:33] + png_chunk(b"tEXt", b"k\0v") * 5000 + png[33:]
    garbage_icc = RNG.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    huge_exif = exif_orientation(6) + b"\0" * 60_000  # one APP1 segment holds < 64 KiB
    bad_orientation = bytearray(exif_orientation(6))
    bad_orientation[-6] = 0xFF  # orientation 255
    return [
        ("metadata-png-200kb-text", with_text, "x.png"),
        ("metadata-png-5000-chunks", many_chunks, "x.png"),
        (
            "metadata-png-garbage-icc",
            save(Image.fromarray(PHOTO), "PNG", icc_profile=garbage_icc),
            "x.png",
        ),
        (
            "metadata-jpeg-garbage-icc",
            save(Image.fromarray(PHOTO), "JPEG", icc_profile=garbage_icc),
            "x.jpg",
        ),
        ("metadata-jpeg-60kb-exif", save(Image.fromarray(PHOTO), "JPEG", exif=huge_exif), "x.jpg"),
        (
            "metadata-jpeg-bad-orientation",
            save(Image.fromarray(PHOTO), "JPEG", exif=bytes(bad_orientation)),
            "x.jpg",
        ),
        (
            "metadata-png16-exif-icc",
            png16(DEEP, exif=exif_orientation(8), icc=garbage_icc[:2000]),
            "x.png",
        ),
    ]


def _animated() -> list[Case]:
    frames = [Image.fromarray(np.roll(PHOTO, shift, axis=1)) for shift in (0, 8, 16)]
    cases = []
    for fmt, params in (("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})):
        data = save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **params)
        cases.append((f"animated-{fmt.lower()}", data, f"x.{fmt.lower()}"))
    tiff = save(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    cases.append(("multipage-tiff", tiff, "x.tif"))
    return cases


def _deep_and_cmyk() -> list[Case]:
    gray16 = Image.fromarray(DEEP[..., 0])
    return [
        ("deep-png16-rgb", png16(DEEP), "x.png"),
        ("deep-png16-gray", save(gray16, "PNG"), "x.png"),
        ("deep-tiff16-rgba", tiff16(np.dstack([DEEP, DEEP[..., :1]]), "zlib"), "x.tif"),
        ("cmyk-jpeg", save(Image.fromarray(PHOTO).convert("CMYK"), "JPEG"), "x.jpg"),
        ("cmyk-tiff", save(Image.fromarray(PHOTO).convert("CMYK"), "TIFF"), "x.tif"),
        ("lab-tiff", save(Image.fromarray(PHOTO).convert("LAB"), "TIFF"), "x.tif"),
        ("one-pixel-png", save(Image.fromarray(PHOTO[:1, :1]), "PNG"), "x.png"),
        ("one-bit-png", save(Image.fromarray(PHOTO[..., 0] > 128), "PNG"), "x.png"),
    ]


def _empty_and_foreign() -> list[Case]:
    png, jpeg = SOURCES["png"](), SOURCES["jpeg"]()
    zero_width = bytearray(png)
    zero_width[16:20] = struct.pack(">I", 0)
    buffer = io.BytesIO()
    Image.fromarray(PHOTO).save(buffer, "PPM")
    return [
        ("empty", b"", "x.png"),
        ("zero-width-png", bytes(zero_width), "x.png"),
        ("png-named-jpg", png, "photo.jpg"),
        ("jpeg-named-png", jpeg, "photo.png"),
        ("text-named-png", b"not an image at all\n" * 40, "photo.png"),
        ("html-named-png", b"<html><script>alert(1)</script></html>", "photo.png"),
        ("svg-named-png", b'<svg xmlns="http://www.w3.org/2000/svg"><script/></svg>', "x.png"),
        ("pdf-named-jpg", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "x.jpg"),
        ("zip-named-png", b"PK\x03\x04" + bytes(60), "x.png"),
        ("ppm", buffer.getvalue(), "x.ppm"),
        ("ico", save(Image.fromarray(PHOTO), "ICO"), "x.ico"),
        ("tga", save(Image.fromarray(PHOTO), "TGA"), "x.tga"),
        ("png-magic-only", b"\x89PNG\r\n\x1a\n", "x.png"),
        ("jpeg-magic-only", b"\xff\xd8\xff\xe0", "x.jpg"),
    ]
