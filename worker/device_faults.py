"""Errors after which a device cannot be trusted for the rest of the process.

CUDA reports some faults as sticky: after an illegal memory access, a device-side assert, a
launch failure or an uncorrectable ECC error, every later call in the process fails (or
returns garbage). Retrying in the same process would only fail every job that comes next;
the worker hands its jobs back and exits instead. Running out of memory is not one of them
(the engine runner halves the batch and goes on).
"""

from __future__ import annotations

import torch

_STICKY = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cuda error: unknown error",
)


def is_fatal_device_error(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) leaves the device unusable."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return False
        text = str(error).lower()
        if "out of memory" not in text and any(marker in text for marker in _STICKY):
            return True
        error = error.__cause__
    return False
