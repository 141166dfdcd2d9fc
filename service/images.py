"""What the gateway checks of an upload before it queues any work.

A full decode (not only the header) is the one way to tell a truncated or corrupt file
from a good one, and refusing it here costs one CPU-bound call instead of a GPU worker's
time and a failed job later. Decodes are capped at one per CPU so a burst of large uploads
cannot take all the gateway's memory at once.
"""

from __future__ import annotations

import os
import threading

from anyio.to_thread import run_sync

from megasr.imaging.decode import decode_image
from megasr.imaging.image import ImageLimits
from megasr.jobs import ImageInfo, UpscaleParams
from megasr.settings import Settings

_DECODES = threading.BoundedSemaphore(os.cpu_count() or 1)


async def inspect_image(data: bytes, params: UpscaleParams, settings: Settings) -> ImageInfo:
    """Decode ``data`` under the limits (400/413/415) and check the output size fits (413)."""
    limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_input_pixels)
    image = await run_sync(_decode, data, limits)
    params.output_size().resolve(image.width, image.height, settings.max_output_pixels)
    return ImageInfo(width=image.width, height=image.height, format=image.source_format)


def _decode(data: bytes, limits: ImageLimits):
    with _DECODES:
        return decode_image(data, limits)
