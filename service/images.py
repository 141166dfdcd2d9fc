"""What the gateway checks of an upload before it queues any work.

The header alone (format, size, mode, frames, the EXIF orientation) and the cheap whole-file
checks of :func:`~megasr.imaging.decode.check_upload`: a PNG's CRCs, a JPEG decoded at 1/8
scale. The gateway never decodes an image at full size (a 40 MP photo as float32 is
close to 500 MB); the worker decodes it fully anyway and refuses what only a full decode
finds. Checks run in threads, at most one per CPU the pod's quota grants, so a burst of
large uploads queues for the CPU instead of crowding it.
"""

from __future__ import annotations

import threading

from anyio.to_thread import run_sync

from megasr.cpu_quota import usable_cpus
from megasr.imaging.decode import check_upload
from megasr.imaging.image import ImageLimits
from megasr.jobs import ImageInfo, UpscaleParams
from megasr.settings import Settings

_CHECKS = threading.BoundedSemaphore(usable_cpus())


async def inspect_image(data: bytes, params: UpscaleParams, settings: Settings) -> ImageInfo:
    """Check ``data`` under the limits (400/413/415) and that the output size fits (413)."""
    limits = ImageLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_input_pixels)
    info = await run_sync(_check, data, limits)
    params.output_size().resolve(info.width, info.height, settings.max_output_pixels)
    return ImageInfo(width=info.width, height=info.height, format=info.format)


def _check(data: bytes, limits: ImageLimits):
    with _CHECKS:
        return check_upload(data, limits)
