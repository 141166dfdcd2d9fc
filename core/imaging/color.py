"""Bring decoded pixels into sRGB, the one colour space the engines and encoders assume.

Embedded ICC profiles are applied with LittleCMS (Pillow's ImageCms) at 8 bits per sample,
because that is the precision Pillow's colour management works at. A profile that names itself
sRGB is taken at its word and skipped, which keeps 16-bit sRGB images at full precision.
"""

from __future__ import annotations

import io

from PIL import Image, ImageCms

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_LAB_TO_SRGB = ImageCms.buildTransform(ImageCms.createProfile("LAB"), _SRGB, "LAB", "RGB")


def is_srgb_profile(icc_profile: bytes) -> bool:
    """Whether a profile calls itself sRGB (the common "sRGB IEC61966-2.1" and friends).

    A linear-light profile that borrows the name is not sRGB, so it is still converted.
    """
    try:
        description = ImageCms.getProfileDescription(_read_profile(icc_profile))
    except (ImageCms.PyCMSError, OSError):
        return False
    description = description.strip().lower()
    return description.startswith("srgb") and "linear" not in description


def to_srgb(image: Image.Image, icc_profile: bytes | None) -> tuple[Image.Image, str | None]:
    """The image converted to sRGB, and a note for the user when its colours were changed.

    ``image`` is in mode L, RGB, CMYK or LAB (alpha already split off); the result is L or RGB.
    An unreadable profile, or one for another colour space than the image, is ignored rather
    than refused: the pixels are still worth upscaling, and the note says what happened.
    """
    note = None
    if icc_profile and not is_srgb_profile(icc_profile):
        try:
            profile = _read_profile(icc_profile)
            converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            note = "ICC profile unreadable or not for this image; ignored"
        else:
            name = ImageCms.getProfileDescription(profile).strip() or "unnamed"
            return converted, f"ICC profile '{name}' converted to sRGB"
    if image.mode == "CMYK":
        return image.convert("RGB"), note or "CMYK without an ICC profile converted naively"
    if image.mode == "LAB":
        return ImageCms.applyTransform(image, _LAB_TO_SRGB), note
    return image, note


def _read_profile(icc_profile: bytes) -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
