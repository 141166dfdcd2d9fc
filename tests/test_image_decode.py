"""Decoding real files of every accepted format and mode; refusing bad ones with typed errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from image_files import (
    BLOCK,
    BLOCK_ALPHA,
    BLOCK_GRAY,
    BLOCK_GRAY16,
    BLOCK_RGB,
    HEIGHT,
    WIDTH,
    block_centres,
    blocks,
    exif_orientation,
    linear_icc_profile,
    png16,
    png_header_only,
    save,
    tiff16,
)
from PIL import Image, ImageCms, ImageFile, ImageOps

from megasr.errors import (
    ImageTooLargeError,
    InvalidImageError,
    MegaSRError,
    UnsupportedFormatError,
)
from megasr.imaging.decode import ImageInfo, check_upload, decode_image
from megasr.imaging.image import ImageLimits

RGB = blocks(BLOCK_RGB)
GRAY = blocks(BLOCK_GRAY)
ALPHA = blocks(BLOCK_ALPHA)
RGBA = np.dstack([RGB, ALPHA])
GRAY16 = blocks(BLOCK_GRAY16)
RNG = np.random.default_rng(7)
RGB16 = RNG.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
RGBA16 = RNG.integers(0, 65536, (HEIGHT, WIDTH, 4), dtype=np.uint16)
LA16 = RNG.integers(0, 65536, (HEIGHT, WIDTH, 2), dtype=np.uint16)
# Pure inks, whose naive CMYK -> RGB conversion is exact: cyan, magenta, yellow / white, red, black.
CMYK = blocks(
    np.array(
        [
            [[255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 255, 0]],
            [[0, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 255]],
        ],
        dtype=np.uint8,
    )
)
CMYK_AS_RGB = blocks(
    np.array(
        [[[0, 255, 255], [255, 0, 255], [255, 255, 0]], [[255, 255, 255], [255, 0, 0], [0, 0, 0]]],
        dtype=np.uint8,
    )
)


def _palette(transparent_index: int | None = None) -> Image.Image:
    """A P image of the six block colours, one palette entry per block."""
    image = Image.fromarray(blocks(np.arange(6, dtype=np.uint8).reshape(2, 3)), mode="P")
    image.putpalette(BLOCK_RGB.reshape(-1).tolist())
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return image


def _lab() -> Image.Image:
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    return ImageCms.applyTransform(
        Image.fromarray(RGB), ImageCms.buildTransform(srgb, lab, "RGB", "LAB")
    )


def _bilevel() -> Image.Image:
    return Image.fromarray(GRAY >= 128).convert("1")


BILEVEL = np.where(GRAY >= 128, 255, 0).astype(np.uint8)
PALETTE_ALPHA = np.where(blocks(np.arange(6).reshape(2, 3)) == 1, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Case:
    """A file and the pixels it must decode to (8-bit unless ``scale`` says 65535)."""

    build: Callable[[], bytes]
    rgb: np.ndarray
    alpha: np.ndarray | None = None
    grayscale: bool = False
    bit_depth: int = 8
    scale: float = 255.0
    tolerance: float = 1e-6  # on [0, 1] values; lossy cases only compare block centres
    source_format: str = "png"


def _gray3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _lossy(build: Callable[[], bytes], rgb: np.ndarray, fmt: str, **kw: object) -> Case:
    return Case(build, rgb, tolerance=0.05, source_format=fmt, **kw)  # type: ignore[arg-type]


CASES = {
    # PNG
    "png-1": Case(lambda: save(_bilevel(), "PNG"), _gray3(BILEVEL), grayscale=True),
    "png-L": Case(lambda: save(Image.fromarray(GRAY), "PNG"), _gray3(GRAY), grayscale=True),
    "png-LA": Case(
        lambda: save(Image.fromarray(np.dstack([GRAY, ALPHA])), "PNG"),
        _gray3(GRAY),
        ALPHA,
        grayscale=True,
    ),
    "png-L-tRNS": Case(
        lambda: save(Image.fromarray(GRAY), "PNG", transparency=60),
        _gray3(GRAY),
        np.where(GRAY == 60, 0, 255).astype(np.uint8),
        grayscale=True,
    ),
    "png-P": Case(lambda: save(_palette(), "PNG"), RGB),
    "png-P-transparency": Case(lambda: save(_palette(1), "PNG"), RGB, PALETTE_ALPHA),
    "png-RGB": Case(lambda: save(Image.fromarray(RGB), "PNG"), RGB),
    "png-RGB-tRNS": Case(
        lambda: save(Image.fromarray(RGB), "PNG", transparency=(40, 200, 60)),
        RGB,
        PALETTE_ALPHA,
    ),
    "png-RGBA": Case(lambda: save(Image.fromarray(RGBA), "PNG"), RGB, ALPHA),
    "png-I;16": Case(
        lambda: save(Image.fromarray(GRAY16), "PNG"),
        _gray3(GRAY16),
        grayscale=True,
        bit_depth=16,
        scale=65535.0,
    ),
    "png-RGB16": Case(lambda: png16(RGB16), RGB16, bit_depth=16, scale=65535.0),
    "png-RGBA16": Case(
        lambda: png16(RGBA16), RGBA16[..., :3], RGBA16[..., 3], bit_depth=16, scale=65535.0
    ),
    "png-LA16": Case(
        lambda: png16(LA16),
        _gray3(LA16[..., 0]),
        LA16[..., 1],
        grayscale=True,
        bit_depth=16,
        scale=65535.0,
    ),
    # JPEG
    "jpeg-L": _lossy(
        lambda: save(Image.fromarray(GRAY), "JPEG", quality=95),
        _gray3(GRAY),
        "jpeg",
        grayscale=True,
    ),
    "jpeg-RGB": _lossy(lambda: save(Image.fromarray(RGB), "JPEG", quality=95), RGB, "jpeg"),
    "jpeg-CMYK": _lossy(
        lambda: save(Image.fromarray(CMYK, mode="CMYK"), "JPEG", quality=95), CMYK_AS_RGB, "jpeg"
    ),
    # WebP (lossless, so exact)
    "webp-RGB": Case(
        lambda: save(Image.fromarray(RGB), "WEBP", lossless=True), RGB, source_format="webp"
    ),
    "webp-RGBA": Case(
        lambda: save(Image.fromarray(RGBA), "WEBP", lossless=True, exact=True),
        RGB,
        ALPHA,
        source_format="webp",
    ),
    "webp-lossy-RGB": _lossy(lambda: save(Image.fromarray(RGB), "WEBP", quality=95), RGB, "webp"),
    # TIFF
    "tiff-1": Case(
        lambda: save(_bilevel(), "TIFF"), _gray3(BILEVEL), grayscale=True, source_format="tiff"
    ),
    "tiff-L": Case(
        lambda: save(Image.fromarray(GRAY), "TIFF", compression="tiff_lzw"),
        _gray3(GRAY),
        grayscale=True,
        source_format="tiff",
    ),
    "tiff-P": Case(lambda: save(_palette(), "TIFF"), RGB, source_format="tiff"),
    "tiff-RGB": Case(
        lambda: save(Image.fromarray(RGB), "TIFF", compression="tiff_adobe_deflate"),
        RGB,
        source_format="tiff",
    ),
    "tiff-RGBA": Case(
        lambda: save(Image.fromarray(RGBA), "TIFF"), RGB, ALPHA, source_format="tiff"
    ),
    "tiff-CMYK": Case(
        lambda: save(Image.fromarray(CMYK, mode="CMYK"), "TIFF"), CMYK_AS_RGB, source_format="tiff"
    ),
    "tiff-LAB": Case(
        lambda: save(_lab(), "TIFF"), RGB, tolerance=0.03, source_format="tiff"
    ),  # 8-bit Lab quantises a little
    "tiff-I;16": Case(
        lambda: save(Image.fromarray(GRAY16), "TIFF"),
        _gray3(GRAY16),
        grayscale=True,
        bit_depth=16,
        scale=65535.0,
        source_format="tiff",
    ),
    "tiff-I": Case(
        lambda: save(Image.fromarray(GRAY16.astype(np.int32)), "TIFF"),
        _gray3(GRAY16),
        grayscale=True,
        bit_depth=16,
        scale=65535.0,
        source_format="tiff",
    ),
    "tiff-F": Case(
        # Out-of-range floats are clipped to [0, 1].
        lambda: save(Image.fromarray(GRAY16.astype(np.float32) / 65535 * 1.5 - 0.25), "TIFF"),
        _gray3(np.clip(GRAY16.astype(np.float64) / 65535 * 1.5 - 0.25, 0, 1) * 65535),
        grayscale=True,
        bit_depth=16,
        scale=65535.0,
        source_format="tiff",
    ),
    "tiff-RGB16-raw": Case(
        lambda: tiff16(RGB16), RGB16, bit_depth=16, scale=65535.0, source_format="tiff"
    ),
    "tiff-RGB16-deflate-bigendian": Case(
        lambda: tiff16(RGB16, "zlib", ">"), RGB16, bit_depth=16, scale=65535.0, source_format="tiff"
    ),
    "tiff-RGBA16-deflate": Case(
        lambda: tiff16(RGBA16, "zlib"),
        RGBA16[..., :3],
        RGBA16[..., 3],
        bit_depth=16,
        scale=65535.0,
        source_format="tiff",
    ),
    # BMP
    "bmp-1": Case(
        lambda: save(_bilevel(), "BMP"), _gray3(BILEVEL), grayscale=True, source_format="bmp"
    ),
    "bmp-L": Case(
        lambda: save(Image.fromarray(GRAY), "BMP"),
        _gray3(GRAY),
        grayscale=True,
        source_format="bmp",
    ),
    "bmp-P": Case(lambda: save(_palette(), "BMP"), RGB, source_format="bmp"),
    "bmp-RGB": Case(lambda: save(Image.fromarray(RGB), "BMP"), RGB, source_format="bmp"),
    # GIF
    "gif-P": Case(lambda: save(_palette(), "GIF"), RGB, source_format="gif"),
    "gif-P-transparency": Case(
        lambda: save(_palette(1), "GIF", transparency=1), RGB, PALETTE_ALPHA, source_format="gif"
    ),
    # HEIC (pillow-heif) and AVIF (Pillow), lossy
    "heif-RGB": _lossy(lambda: save(Image.fromarray(RGB), "HEIF", quality=95), RGB, "heif"),
    "heif-RGBA": _lossy(
        lambda: save(Image.fromarray(RGBA), "HEIF", quality=95), RGB, "heif", alpha=ALPHA
    ),
    "avif-RGB": _lossy(lambda: save(Image.fromarray(RGB), "AVIF", quality=95), RGB, "avif"),
    "avif-RGBA": _lossy(
        lambda: save(Image.fromarray(RGBA), "AVIF", quality=95), RGB, "avif", alpha=ALPHA
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decodes_every_format_and_mode_to_the_right_pixels(case: Case) -> None:
    decoded = decode_image(case.build())

    assert decoded.source_format == case.source_format
    assert decoded.rgb.shape == (HEIGHT, WIDTH, 3)
    assert decoded.rgb.dtype == np.float32
    assert decoded.grayscale is case.grayscale
    assert decoded.bit_depth == case.bit_depth
    where = block_centres() if case.tolerance > 1e-6 else np.ones((HEIGHT, WIDTH), dtype=bool)
    expected_rgb = case.rgb.astype(np.float64) / case.scale
    assert np.abs(decoded.rgb - expected_rgb)[where].max() <= case.tolerance
    if case.alpha is None:
        assert decoded.alpha is None
    else:
        assert decoded.alpha is not None
        assert decoded.alpha.dtype == np.float32
        expected_alpha = case.alpha.astype(np.float64) / case.scale
        assert np.abs(decoded.alpha - expected_alpha)[where].max() <= case.tolerance


def test_sixteen_bit_precision_survives() -> None:
    """1000/65535 is not an 8-bit level: it must come out as itself, not as 4/255."""
    samples = np.full((4, 5, 3), 1000, dtype=np.uint16)
    for data in (png16(samples), tiff16(samples), save(Image.fromarray(samples[..., 0]), "PNG")):
        decoded = decode_image(data)
        assert decoded.bit_depth == 16
        assert np.abs(decoded.rgb - 1000 / 65535).max() < 1e-6


def test_exif_orientation_6_turns_a_jpeg_upright() -> None:
    """Orientation 6: the stored picture is turned 90 degrees clockwise for display."""
    stored = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    stored[..., 2] = 255
    stored[:BLOCK, :BLOCK] = (255, 0, 0)  # red in the stored top-left corner
    data = save(Image.fromarray(stored), "JPEG", quality=95, exif=exif_orientation(6))

    decoded = decode_image(data)

    assert (decoded.width, decoded.height) == (HEIGHT, WIDTH)
    assert "EXIF orientation 6 applied" in decoded.notes
    top_right = decoded.rgb[2, decoded.width - 3]
    top_left = decoded.rgb[2, 2]
    assert top_right[0] > 0.9 and top_right[2] < 0.1  # red moved to the top-right corner
    assert top_left[2] > 0.9 and top_left[0] < 0.1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(orientation: int) -> None:
    stored = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = save(Image.fromarray(stored), "PNG", exif=exif_orientation(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))

    decoded = decode_image(data)

    assert np.array_equal(np.round(decoded.rgb * 255).astype(np.uint8), expected)


@pytest.mark.parametrize("orientation", [6, 7])
def test_orientation_applies_to_16_bit_colour_and_alpha(orientation: int) -> None:
    stored = RNG.integers(0, 65536, (5, 7, 4), dtype=np.uint16)
    data = png16(stored, exif=exif_orientation(orientation))
    reference = Image.fromarray(stored[..., 0])  # I;16, which Pillow transposes itself
    reference.info["exif"] = exif_orientation(orientation)
    expected_red = np.asarray(ImageOps.exif_transpose(reference)).astype(np.float64) / 65535

    decoded = decode_image(data)

    assert decoded.bit_depth == 16
    assert decoded.rgb.shape == (7, 5, 3)
    assert np.abs(decoded.rgb[..., 0] - expected_red).max() < 1e-6
    assert decoded.alpha is not None and decoded.alpha.shape == (7, 5)


def _srgb_encode(linear: float) -> float:
    return 1.055 * linear ** (1 / 2.4) - 0.055 if linear > 0.0031308 else 12.92 * linear


def test_icc_profile_is_converted_to_srgb() -> None:
    """Under a linear-light profile, a stored 0.5 is half the light: sRGB brightens it."""
    stored = np.full((4, 6, 3), 128, dtype=np.uint8)
    data = save(Image.fromarray(stored), "PNG", icc_profile=linear_icc_profile())

    decoded = decode_image(data)

    assert np.abs(decoded.rgb - _srgb_encode(128 / 255)).max() <= 2 / 255
    assert "ICC profile 'Linear RGB' converted to sRGB" in decoded.notes


def test_gray_icc_profile_keeps_the_image_grayscale() -> None:
    data = save(
        Image.fromarray(np.full((4, 6), 128, np.uint8)), "PNG", icc_profile=linear_icc_profile(True)
    )

    decoded = decode_image(data)

    assert decoded.grayscale
    assert np.abs(decoded.rgb - _srgb_encode(128 / 255)).max() <= 2 / 255


def test_icc_on_16_bit_colour_is_applied_at_8_bits_and_says_so() -> None:
    decoded = decode_image(png16(np.full((4, 6, 3), 32768, np.uint16), icc=linear_icc_profile()))

    assert decoded.bit_depth == 8
    assert "16-bit samples reduced to 8 bits for the ICC conversion" in decoded.notes
    assert np.abs(decoded.rgb - _srgb_encode(128 / 255)).max() <= 2 / 255


def test_srgb_profile_changes_nothing() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(save(Image.fromarray(RGB), "PNG", icc_profile=srgb))

    assert np.array_equal(np.round(decoded.rgb * 255).astype(np.uint8), RGB)
    assert decoded.notes == ()


def test_unreadable_icc_profile_is_ignored_with_a_note() -> None:
    decoded = decode_image(save(Image.fromarray(RGB), "PNG", icc_profile=b"not a profile"))

    assert np.array_equal(np.round(decoded.rgb * 255).astype(np.uint8), RGB)
    assert "ICC profile unreadable or not for this image; ignored" in decoded.notes


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})]
)
def test_animation_uses_the_first_frame_and_says_so(fmt: str, params: dict[str, object]) -> None:
    rest = [Image.fromarray(np.full_like(RGB, 17 * i)) for i in (1, 2)]
    data = save(
        Image.fromarray(RGB), fmt, save_all=True, append_images=rest, duration=100, **params
    )

    decoded = decode_image(data)

    assert check_upload(data).frames == 3
    assert decoded.notes == (f"animated {fmt}: first of 3 frames used",)
    assert np.array_equal(np.round(decoded.rgb * 255).astype(np.uint8), RGB)


def test_multi_page_tiff_uses_the_first_page() -> None:
    pages = [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)]
    data = save(pages[0], "TIFF", save_all=True, append_images=pages[1:])

    decoded = decode_image(data)

    assert decoded.notes == ("multi-page TIFF: first of 2 frames used",)
    assert np.array_equal(np.round(decoded.rgb[..., 0] * 255).astype(np.uint8), GRAY)


def test_fully_opaque_alpha_is_dropped() -> None:
    opaque = np.dstack([RGB, np.full((HEIGHT, WIDTH), 255, np.uint8)])

    decoded = decode_image(save(Image.fromarray(opaque), "PNG"))

    assert decoded.alpha is None
    assert decoded.notes == ("fully opaque alpha channel dropped",)


def test_the_upload_check_reads_the_header() -> None:
    info = check_upload(save(Image.fromarray(RGBA), "WEBP", lossless=True))

    assert info == ImageInfo(format="webp", width=WIDTH, height=HEIGHT, frames=1, mode="RGBA")


def test_empty_input_is_refused() -> None:
    with pytest.raises(InvalidImageError, match=r"^the image is empty \(0 bytes\)$"):
        decode_image(b"")


def test_text_named_png_is_not_an_image() -> None:
    text = b"Hello! I am a text file called photo.png.\n" * 20

    with pytest.raises(InvalidImageError, match="not an image in a known format"):
        decode_image(text)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"], ids=["truncated-jpeg", "truncated-png"])
def test_truncated_file_is_refused_not_half_grey(fmt: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: data all through
    data = save(Image.fromarray(noise), fmt)

    with pytest.raises(InvalidImageError, match=rf"^the {fmt} image is truncated or corrupt: "):
        decode_image(data[: len(data) // 2])


def test_png_with_a_broken_crc_is_refused() -> None:
    data = bytearray(save(Image.fromarray(RGB), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip a byte of the compressed stream; the CRC no longer matches

    with pytest.raises(InvalidImageError, match="PNG image is truncated or corrupt"):
        decode_image(bytes(data))


def test_header_claiming_100000_squared_pixels_is_refused_before_decoding() -> None:
    """The file has no pixel data: a decode attempt would fail as truncated, not as too large."""
    data = png_header_only(100_000, 100_000)

    with pytest.raises(ImageTooLargeError, match="over the limit of 40000000 pixels"):
        check_upload(data)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(data)


def test_header_over_the_configured_pixel_limit_is_refused_before_decoding() -> None:
    data = png_header_only(8000, 6000)

    with pytest.raises(
        ImageTooLargeError,
        match=r"^image of 8000x6000 pixels is over the limit of 40000000 pixels$",
    ):
        decode_image(data)


def test_pixel_limit_is_per_call() -> None:
    data = save(Image.fromarray(RGB), "PNG")

    with pytest.raises(ImageTooLargeError, match="24x16 pixels is over the limit of 100 pixels"):
        decode_image(data, ImageLimits(max_pixels=100))
    assert decode_image(data).width == WIDTH


def test_input_over_the_byte_limit_is_refused() -> None:
    data = save(Image.fromarray(RGB), "PNG")

    with pytest.raises(
        ImageTooLargeError, match=rf"^image of {len(data)} bytes is over the limit of 100 bytes$"
    ):
        decode_image(data, ImageLimits(max_bytes=100))


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_real_images_in_other_formats_are_unsupported(fmt: str) -> None:
    data = save(Image.fromarray(RGB), fmt)

    with pytest.raises(UnsupportedFormatError, match=rf"^{fmt} images are not supported; send"):
        decode_image(data)
    with pytest.raises(UnsupportedFormatError):
        check_upload(data)


FUZZ_SOURCES = {
    "png": lambda: save(Image.fromarray(RGBA), "PNG"),
    "png16": lambda: png16(RGB16),
    "jpeg": lambda: save(Image.fromarray(RGB), "JPEG"),
    "webp": lambda: save(Image.fromarray(RGBA), "WEBP"),
    "tiff16": lambda: tiff16(RGBA16, "zlib"),
    "gif": lambda: save(_palette(1), "GIF"),
    "heif": lambda: save(Image.fromarray(RGB), "HEIF"),
}


@pytest.mark.filterwarnings("ignore:Truncated File Read:UserWarning")  # Pillow on cut TIFFs
@pytest.mark.parametrize("build", FUZZ_SOURCES.values(), ids=FUZZ_SOURCES.keys())
def test_damaged_files_decode_or_raise_only_project_errors(build: Callable[[], bytes]) -> None:
    """Flipped, cut and inserted bytes: any outcome but a foreign exception type."""
    data = build()
    rng = np.random.default_rng(len(data))
    for attempt in range(40):
        damaged = bytearray(data)
        position = int(rng.integers(8, len(data)))
        if attempt % 3 == 0:
            damaged[position] ^= int(rng.integers(1, 256))
        elif attempt % 3 == 1:
            del damaged[position:]
        else:
            damaged[position:position] = rng.integers(0, 256, 7, dtype=np.uint8).tobytes()
        try:
            decoded = decode_image(bytes(damaged))
        except MegaSRError:
            continue
        assert np.isfinite(decoded.rgb).all() and 0 <= decoded.rgb.min() <= decoded.rgb.max() <= 1


# -- the gateway's check: the header and cheap whole-file checks, never a full decode ---------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_check_upload_gives_the_upright_size_the_decode_gives(orientation: int, fmt: str) -> None:
    data = save(Image.fromarray(RGB), fmt, exif=exif_orientation(orientation))

    info = check_upload(data)

    decoded = decode_image(data)
    assert (info.width, info.height) == (decoded.width, decoded.height)
    assert info.format == decoded.source_format


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"], ids=["truncated-jpeg", "truncated-png"])
def test_check_upload_refuses_a_truncated_jpeg_or_png(fmt: str) -> None:
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), fmt)

    with pytest.raises(InvalidImageError, match=rf"^the {fmt} image is truncated or corrupt: "):
        check_upload(data[: len(data) // 2])


def test_check_upload_refuses_a_png_with_a_broken_crc() -> None:
    data = bytearray(save(Image.fromarray(RGB), "PNG"))
    data[data.index(b"IDAT") + 6] ^= 0xFF

    with pytest.raises(InvalidImageError, match="PNG image is truncated or corrupt"):
        check_upload(bytes(data))


def test_check_upload_applies_the_limits_and_the_formats() -> None:
    with pytest.raises(ImageTooLargeError, match="over the limit of 40000000 pixels"):
        check_upload(png_header_only(100_000, 100_000))
    with pytest.raises(UnsupportedFormatError):
        check_upload(save(Image.fromarray(RGB), "PPM"))
    with pytest.raises(InvalidImageError, match="empty"):
        check_upload(b"")
